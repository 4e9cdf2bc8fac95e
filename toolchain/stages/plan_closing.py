"""The x86 plan's closing trials (plan.py), run on the plan chosen by the final timing: the fused-transformer
scheme's confirmation, the other weight granularity and the static quantizer's other settings. Each changes what
ships only if >= 5% faster in two interleaved A/Bs and within the budget; each returns its measurements as the
decision's record."""

SPEED_MARGIN = 0.95  # a change of precision or settings ships only if the model gets at least 5% faster


def confirm_fused(best, candidates, final, timed, clock, params):
    """The fused-transformer scheme changes the graph beyond int8 (GELU's tanh approximation), so being fastest in
    the closing timing is not enough: like the plan's other speed choices it ships only if >= 5% faster than the
    fastest unfused scheme in two more interleaved A/Bs. Returns (the scheme that ships, the decision's record)."""
    from .precision import FUSED

    rivals = [s for s in candidates if s not in FUSED]
    if not rivals:
        return best, {"decision": f"{best}: the only scheme that meets the budget"}
    rival = min(rivals, key=final.get)
    record = {"against": rival, "closing_p50_ms": {best: final[best], rival: final[rival]}}
    if not params["speed_search"]:
        return rival, {**record, "decision": f"not confirmed (quantize.speed_search = false): {rival} ships"}
    if clock.left() < clock.granularity_cost():
        return rival, {**record, "decision": f"not confirmed (time budget spent): {rival} ships"}
    runs = clock.runs_for(2, want=150)
    pair = {"trial": candidates[best]["path"], "current": candidates[rival]["path"]}
    first = timed(pair, runs=runs)
    again = timed(dict(reversed(pair.items())), runs=runs)
    record["p50_ms"] = {best: [first["trial"], again["trial"]], rival: [first["current"], again["current"]]}
    if all(t < c * SPEED_MARGIN for t, c in zip(record["p50_ms"][best], record["p50_ms"][rival])):
        return best, {**record, "decision": f"{best}: >= 5% faster than {rival} twice; ships"}
    return rival, {**record, "decision": f"{best} is not >= 5% faster than {rival} twice; {rival} ships"}


# The static quantizer's other settings, each tried on the chosen plan in turn (kept only if faster twice and within
# the budget): ONNX Runtime's own int8 ops instead of QDQ pairs for it to fuse, 7-bit weights (reduce_range: no
# saturation in the u8 x s8 multiply-add pairs of CPUs without VNNI), uint8 weights.
STATIC_ALTERNATIVES = (("QOperator format", {"fmt": "qoperator"}), ("reduce_range", {"reduce_range": True}),
                       ("uint8 weights", {"weight": "uint8"}))


def weight_granularity(chosen, make, timed, backend, params, clock) -> dict:
    """The chosen plan with the other weight granularity (per-tensor for per-channel and back), timed interleaved
    against it twice (noise must not decide) and judged: kept only if >= 5% faster both times and the budget holds.
    Returns the decision with its measurements (and, when kept, the variant's path and judgement)."""
    kw = chosen.get("make_kw", {})
    other = not kw.get("per_channel", params["per_channel"])
    label = "per-channel" if other else "per-tensor"
    record = {"tried": f"{label} weights", "of": "per-tensor" if other else "per-channel"}
    return _trial(record, chosen, lambda: make(*chosen["args"], **{**kw, "per_channel": other}), timed, backend,
                  params, clock,
                  f"{label} weights", "granularity")


def alternative(label, chosen, make_variant, timed, backend, params, clock) -> dict:
    """One of STATIC_ALTERNATIVES on the chosen plan, decided like the weight granularity."""
    return _trial({"tried": label}, chosen, make_variant, timed, backend, params, clock, label, "settings")


def _trial(record, chosen, make_variant, timed, backend, params, clock, label, what) -> dict:
    if not params["speed_search"]:
        return {**record, "decision": "not tried (quantize.speed_search = false)"}
    if clock.left() < clock.granularity_cost():
        return {**record, "decision": "not tried (time budget spent)"}
    try:
        path = make_variant()
        runs = clock.runs_for(2, want=150)
        first = timed({"current": chosen["path"], "trial": path}, runs=runs)
        again = timed({"trial": path, "current": chosen["path"]}, runs=runs)
    except Exception as e:  # noqa: BLE001 - a variant ORT cannot run is a decision, not a failed build
        reraise_write_error(e)
        return {**record, "decision": f"ONNX Runtime cannot run it ({str(e).splitlines()[0][:160]})"}
    record["p50_ms"] = {"current": [first["current"], again["current"]], "trial": [first["trial"], again["trial"]]}
    faster = all(t < c * SPEED_MARGIN for t, c in zip(record["p50_ms"]["trial"], record["p50_ms"]["current"]))
    if not faster:
        return {**record, "decision": f"kept the current {what} (the other is not >= 5% faster twice)"}
    judged = backend.judge(path)
    record["judged_text"] = judged.text
    if not judged.ok:
        return {**record, "decision": f"kept the current {what} (the faster one misses the budget)"}
    return {**record, "decision": f"{label}: faster twice and within the budget", "kept": True,
            "path": path, "judged": judged}
