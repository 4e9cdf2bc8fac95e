"""Which schemes the x86 plan (plan.py) searches at all. A search costs minutes on a real model, so a scheme is
dropped unsearched where it cannot win: the fused-transformer scheme on a graph that is not a transformer, a scheme
whose every-node-int8 variant already loses to a plan found, and one far slower than fp32 and that plan. Each
decision is one interleaved screening run and a line in the plan's steps."""

# Screening: one short interleaved run decides what gets a full A/B; a variant not faster there at all cannot be
# >= 5% faster.
SCREEN_RUNS, SCREEN_MARGIN = 60, 1.0
LOSER_FACTOR = 1.5  # a scheme this much slower than a scheme already found gets no speed search


def cannot_win(scheme, path, candidates, timed, steps) -> bool:
    """A scheme whose every-node-int8 variant misses the budget is searched by keeping nodes float, which moves it
    toward fp32's speed. If even that all-int8 variant is not faster than a plan already found to meet the budget
    (one screening run, interleaved), the search cannot end faster than that plan: drop the scheme unsearched
    (static int8 of a transformer: a search of minutes for a plan that would lose the closing timing)."""
    quick = timed({"this": path, **{s: c["path"] for s, c in candidates.items()}}, runs=SCREEN_RUNS,
                  warmup=SCREEN_RUNS // 6)
    rival = min(candidates, key=quick.get)
    if quick["this"] < quick[rival] * SCREEN_MARGIN:
        return False
    steps.append(f"{scheme}: every node int8 misses the budget and is already not faster than {rival} (p50 "
                 f"{quick['this']:.4f} vs {quick[rival]:.4f} ms in a screening run); keeping nodes float cannot make "
                 "it faster: dropped without an accuracy search")
    return True


def too_slow_to_search(scheme, path, searched, fp32_path, timed, steps) -> bool:
    """A scheme more than LOSER_FACTOR slower than a scheme already found gets no speed search: the search keeps
    kinds float, which moves it toward fp32's speed, and fp32 is either no faster than the scheme found (dynamic int8
    of a CNN: about fp32's speed, 2.5x the static plan's) or itself far faster than this scheme (s8 activations leave
    convs float between Q/DQ pairs on these CPUs: 20x slower here); either way the search would not end ahead. The
    step records all three timings."""
    quick = timed({"this": path, "fp32": fp32_path, **{s: c["path"] for s, c in searched.items()}},
                  runs=SCREEN_RUNS, warmup=SCREEN_RUNS // 6)
    rival = min(searched, key=quick.get)
    if quick["this"] <= quick[rival] * LOSER_FACTOR:
        return False
    steps.append(f"{scheme}: p50 {quick['this']:.4f} ms vs {rival} {quick[rival]:.4f} and fp32 "
                 f"{quick['fp32']:.4f} in a screening run: more than {LOSER_FACTOR}x slower than {rival}, and keeping "
                 "kinds float only moves it toward fp32; dropped without a speed search")
    return True


def fused_scheme_applies(scheme, model, fused_graph, steps) -> bool:
    """The fused-transformer scheme is tried only on a transformer, and only if ORT's optimizer can fuse it: either
    way the reason goes into the steps (a CNN plan pays one look at its graph)."""
    from . import transformer_fusion

    why = transformer_fusion.transformer_reason(model)
    if why:
        steps.append(f"{scheme}: not tried ({why}: the fusions are for transformers)")
        return False
    try:
        fused_graph()
    except Exception as e:  # noqa: BLE001 - a graph the optimizer cannot take disqualifies the scheme, not the build
        reraise_write_error(e)
        steps.append(f"{scheme}: ONNX Runtime's transformer optimizer failed ({type(e).__name__}: "
                     f"{str(e).splitlines()[0][:160] if str(e) else ''}); dropped")
        return False
    return True
