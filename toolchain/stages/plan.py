"""plan: the x86 precision plan. Quantize what pays, keep in float what hurts, decided by measurement.

For each candidate scheme (static uint8/int8 activations with int8 per-channel weights, or dynamic int8):
  1. start from everything int8 (minus what the spec forces to stay float);
  2. accuracy (plan_search.py, shared with the arm64 plan): while an output misses its budget on the evaluation
     data (every output, by the validate stage's own metrics), keep in float the next most sensitive compute
     nodes (sensitivity = output SQNR to fp32 when only that node is int8; 1, 2, 4, ... nodes per step);
  3. speed: for each kind of compute node still int8 (Conv 1x1 / kxk / depthwise, MatMul, Gemm), measure
     the model with that kind kept float against the current plan, interleaved; keep it float if that is
     >= 5% faster and the budget still holds;
(static_u8s8_by_resolution instead times bands of feature-map sizes against fp32: see by_resolution; dynamic_s8_fused
is dynamic_s8 on ONNX Runtime's fused transformer graph, tried on transformers only: see transformer_fusion.py),
then take the fastest scheme that meets the budget (ONNX Runtime's documented recipe, judged first by the same gate,
is a candidate too: plan_recipe.py; and a static plan's percentile-calibrated twin: plan_calibration.py), and try it
with the other weight granularity (per-tensor for per-channel), kept only if faster twice and within the budget
(weight_granularity). Which schemes are searched at all: plan_admission.py; the closing trials: plan_closing.py.
Every step, the sensitivity table and the timings go into the stage's meta (and so into
report.json). The search stops at its time budget with the best plan so far. Timing decisions depend on the host,
so the host is part of the stage's cache key.
"""

import shutil
import time

from ..errors import StageError, reraise_write_error
from .plan_admission import SCREEN_MARGIN, SCREEN_RUNS, cannot_win, fused_scheme_applies, too_slow_to_search
from .plan_closing import SPEED_MARGIN, STATIC_ALTERNATIVES, alternative, confirm_fused, weight_granularity

NAME = "plan"
VERSION = 19  # 19: no speed search for a scheme 1.5x slower than one found (plan_admission); 18: both 17s
# merged; 17: a scheme that cannot win is not searched (cannot_win), and int8 HardSigmoid/HardSwish in static
# variants (qdq_activations.py); 16: both 14s merged; 15: percentile twin, pooled-first stem; 14: the ORT recipe is
# a candidate,
# and the fused-transformer scheme dynamic_s8_fused (stages/transformer_fusion.py); 13: unstamped again
# (stages/metadata.py stamps a copy); 12: time budget kept with a reserve, other static settings, runtime-cheap
# screening; 11: app metadata
GLUE = " (every one)"  # a search unit standing for every quantizable glue op of one type
LIBRARIES = ("onnxruntime", "onnx", "numpy")
OUTPUT = "model.int8.onnx"
POST_REASON = ("post-processing after the last compute nodes (decode, NMS, top-K): int8 would round results such "
               "as box coordinates; kept float by quantize.force_float")


def run(fp32_path, params, out_dir, calibration, evaluation, reference, spec, budget, threads) -> dict:
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from . import (plan_budget, plan_calibration, plan_hard_activations, plan_recipe, plan_search, precision,
                   qdq_activations, transformer_fusion)

    t0 = time.monotonic()
    clock = plan_budget.TimeBudget(params["time_budget_s"])  # the search stops in time for the closing steps
    names = [t.name for t in spec.inputs]
    prep = out_dir / "prep.onnx"
    quant_pre_process(str(fp32_path), str(prep), skip_symbolic_shape=True)
    model = onnx.load(str(prep))
    nodes = precision.compute_nodes(model)
    kind_of = dict(nodes)

    def fail(message):
        raise StageError(NAME, "quantize." + message)

    # "post-processing" names the graph's tail (decode, NMS, top-K): float in every variant, never searched
    post = dict(precision.post_processing_nodes(model)) if precision.POST_PROCESSING in params["force_float"] else {}
    forced_float = plan_search.resolve([p for p in params["force_float"] if p != precision.POST_PROCESSING], nodes,
                                       "force_float", fail) | set(post)
    kind_of.update({n: f"post-processing ({t})" for n, t in post.items()})
    forced_int8 = plan_search.resolve(params["force_int8"], nodes, "force_int8", fail)
    runner = precision.Runner(threads, names)
    feed = {n: evaluation[n][:1] for n in names}
    counter = [0]
    made, judged_by_path = {}, {}  # each variant is made and judged once, whichever step asks for it again
    raw = out_dir / "raw.onnx"
    shutil.copyfile(fp32_path, raw)

    calibs = {}
    # Static schemes search over the compute nodes and, as one unit per op type, the quantizable glue (Add, Mul,
    # HardSigmoid, pooling...): each glue op brings its own Q/DQ pair, and where the glue loses the signal
    # (squeeze-excite gates, residual adds) keeping every compute node float cannot meet the budget.
    glue_units = {}
    # HardSigmoid/HardSwish int8 in static variants, the float twin timed at the closing (plan_hard_activations.py)
    has_hard = params["speed_search"] and qdq_activations.applies(model)
    for n, t in precision.other_quantizable(model, precision.Calibration.op_types_static()):
        kind_of.setdefault(n, t)
        glue_units.setdefault(t + GLUE, []).append(n)

    def expand(names):
        return set().union(*(glue_units.get(n, [n]) for n in names)) if names else set()

    def make(scheme, exclude=(), only=None, per_channel=None, fmt="qdq", reduce_range=False, weight=None, calib=None,
             hard_int8=True):
        exclude, only = expand(exclude), (sorted(expand(only)) if only is not None else None)
        method, act, scheme_weight = precision.SCHEMES[scheme]
        weight = weight or scheme_weight
        per_channel = params["per_channel"] if per_channel is None else per_channel
        calib = calib or params["calibrate_method"]
        hard_int8 = bool(hard_int8 and has_hard and method == "static" and fmt == "qdq")  # qdq_activations.py
        key = (scheme, frozenset(exclude), tuple(only) if only is not None else None, per_channel, fmt, reduce_range,
               weight, calib, hard_int8)
        if key in made:
            return made[key]
        started = clock.now()
        made[key] = path = _make(scheme, method, act, weight, exclude, only, per_channel, fmt, reduce_range, calib,
                                 hard_int8)
        clock.track("make", started)
        return path

    def _make(scheme, method, act, weight, exclude, only, per_channel, fmt, reduce_range, calib, hard_int8):
        counter[0] += 1
        path = out_dir / f"variant{counter[0]}.onnx"
        if method == "static":
            # The tiered scheme quantizes the exported graph as it is: quant_pre_process splits HardSwish into
            # HardSigmoid + Mul, whose extra float boundaries cost more than the int8 convs near them save.
            base = raw if scheme in precision.TIERED else prep
            if (base, calib) not in calibs:  # one calibration per graph and method, shared by every variant
                started = clock.now()
                calibs[base, calib] = precision.Calibration(base, calibration, names, calib)
                clock.track("calibrate", started)
            onnx.save(calibs[base, calib].static(act, weight, per_channel, only, exclude, fmt, reduce_range,
                                                 hard_int8), str(path))
        elif scheme in precision.FUSED:
            transformer_fusion.dynamic(fused_graph(), path, weight, per_channel, only, exclude)
        else:
            precision.dynamic(prep, path, weight, per_channel, only, exclude)
        return path

    fusion = {}  # the fused-transformer scheme's fp32 graph, made once (and what was fused, for the meta)

    def fused_graph():
        if "path" not in fusion:
            started = clock.now()
            path = out_dir / "fused.fp32.onnx"
            fusion["record"] = {"fused_ops": transformer_fusion.fuse(prep, path),
                                "by": "onnxruntime.transformers.optimizer (model_type bert, opt_level 0, attention "
                                      "fusion off, GELU tanh approximation)"}
            fusion["path"] = path
            clock.track("make", started)
        return fusion["path"]

    class OrtBackend(plan_search.Backend):
        def __init__(self, scheme):
            super().__init__(spec, evaluation, reference, budget)
            self.scheme = scheme

        def make(self, exclude=(), only=None):
            return make(self.scheme, exclude, only)

        def outputs(self, path, data):
            return runner.outputs(path, data)

        def judge(self, path):
            if path not in judged_by_path:
                started = clock.now()
                judged_by_path[path] = super().judge(path)
                clock.track("judge", started)
            return judged_by_path[path]

    def timed(paths, runs=150, warmup=15):
        """Interleaved p50s of these variants; what it cost teaches the budget what one timed inference costs."""
        started = clock.now()
        lat = runner.latency(paths, feed, runs=runs, warmup=warmup)
        clock.track("timing", started, inferences=len(paths) * (runs + warmup))
        return lat

    def by_resolution(scheme, backend):
        """int8 for the compute nodes whose output size lies in a band [lo, hi] of the model's feature-map sizes,
        for every band (with depthwise convs float, then int8 too), all timed interleaved against fp32 in one run;
        the fastest tier that meets the budget wins. In a small CNN the early, high-resolution layers have few
        channels and big tensors, and squeeze-excite convs work on 1x1 maps: there the Quantize/Dequantize work
        can cost more than int8 saves, while the middle and late layers gain."""
        raw_model = onnx.load(str(raw))
        size = precision.output_sizes(raw_model)
        eligible = [(n, k) for n, k in precision.compute_nodes(raw_model) if n not in forced_float]
        sizes = sorted({size[n] for n, _ in eligible}, key=lambda s: s[0] * s[1])
        tiers = {}
        for i, lo in enumerate(sizes):
            for hi in sizes[i:]:
                band = [(n, k) for n, k in eligible if lo[0] * lo[1] <= size[n][0] * size[n][1] <= hi[0] * hi[1]]
                where = f"outputs {lo[0]}x{lo[1]}" + (f" to {hi[0]}x{hi[1]}" if hi != lo else "")
                dense = frozenset({n for n, k in band if k != "Conv(depthwise)"} | forced_int8)
                for label, nodes_ in ((f"{where}, depthwise float", dense),
                                      (where, frozenset(n for n, _ in band) | forced_int8)):
                    if nodes_ and nodes_ not in tiers.values():
                        tiers[label] = nodes_
        if not tiers:
            steps.append(f"{scheme}: no compute node left to quantize; dropped")
            return None
        paths = {}
        for label, nodes_ in tiers.items():
            if paths and clock.search_over(len(candidates) + len(paths) + 3):
                steps.append(f"{scheme}: {len(tiers) - len(paths)} of {len(tiers)} tiers not made (time budget)")
                break
            paths[label] = make(scheme, only=sorted(nodes_))
        runs = clock.runs_for(len(paths) + 1, want=150, keep=clock.reserve(len(candidates) + 3))  # what time allows
        lat = timed({**paths, "fp32": fp32_path}, runs=runs, warmup=max(runs // 10, 3))
        steps.append(f"{scheme}: tiers timed against fp32 {lat['fp32']:.4f} ms: "
                     + ", ".join(f"{label} {lat[label]:.4f}" for label in paths))
        for label in sorted(paths, key=lat.get):
            judged = backend.judge(paths[label])
            steps.append(f"{scheme}: {label} -> {judged.text}" + (" (meets the budget; chosen)" if judged.ok else ""))
            if judged.ok:
                kept = {n for n, _ in precision.compute_nodes(raw_model)} - tiers[label]
                reasons = {n: (POST_REASON if n in post else "forced float by the spec") if n in forced_float else
                           f"speed: outside the fastest resolution tier ({label}, p50 {lat[label]:.4f} ms vs "
                           f"fp32 {lat['fp32']:.4f} ms)" for n in kept}
                return {"path": paths[label], "exclude": kept, "judged": judged, "reasons": reasons,
                        "args": (scheme, (), sorted(tiers[label]))}
        steps.append(f"{scheme}: no tier meets the budget; dropped")
        return None

    candidates, steps, tables = {}, [], {}
    not_applicable = set()  # schemes this model is not for (the fused-transformer scheme on a CNN)
    # The recipe a user can copy from ONNX Runtime's docs, judged by the same gate first (its variant is also where
    # static_u8s8's search starts, made once): where it holds the budget it is a candidate of the closing timing,
    # so the plan ships at worst the recipe's model.
    recipe = plan_recipe.candidate(make, OrtBackend(plan_recipe.SCHEME).judge, forced_float,
                                   {n: POST_REASON if n in post else "forced float by the spec" for n in forced_float},
                                   clock, steps, params)
    if recipe:
        candidates[plan_recipe.LABEL] = recipe
    for scheme in params["schemes"]:
        if scheme in precision.FUSED and not fused_scheme_applies(scheme, model, fused_graph, steps):
            not_applicable.add(scheme)
            continue
        if candidates and not params["speed_search"]:  # accuracy alone: no timing may decide between schemes
            steps.append(f"{scheme}: not tried (quantize.speed_search = false: the first scheme in order that meets "
                         "the budget ships)")
            continue
        if candidates and clock.search_over(len(candidates) + 3):
            steps.append(f"{scheme}: not tried (time budget of {params['time_budget_s']} s spent, keeping time for "
                         "the closing steps)")
            continue
        backend = OrtBackend(scheme)
        if scheme in precision.TIERED:
            found = by_resolution(scheme, backend)
            if found:
                candidates[scheme] = found
            continue
        path = make(scheme, forced_float)
        try:
            first = (path, backend.judge(path))
        except Exception as e:  # noqa: BLE001 - a variant ORT cannot run disqualifies the scheme, not the build
            reraise_write_error(e)
            steps.append(f"{scheme}: ONNX Runtime cannot run it ({str(e).splitlines()[0][:160]}); dropped")
            continue
        if not first[1].ok and candidates and params["speed_search"]:
            if cannot_win(scheme, path, candidates, timed, steps):
                continue
        units = nodes
        if precision.SCHEMES[scheme][0] == "static":
            units = nodes + [(u, "glue: " + u[:-len(GLUE)]) for u in sorted(glue_units)
                             if not set(glue_units[u]) & forced_int8]
        found = plan_search.meet_budget(backend, scheme, units, forced_float, forced_int8, clock, steps, first)
        if found["table"]:
            tables[scheme] = found["table"]
        if not found["ok"]:
            continue
        exclude, path, judged = expand(found["exclude"]), found["path"], found["judged"]
        searched = {s: c for s, c in candidates.items() if s != plan_recipe.LABEL}
        if searched and params["speed_search"] and too_slow_to_search(scheme, path, searched, fp32_path, timed, steps):
            continue
        reasons = {n: POST_REASON if n in post else "forced float by the spec" for n in forced_float}
        for u in found["exclude"] - forced_float:
            why = ("accuracy: among the most sensitive nodes" if u not in glue_units else
                   f"accuracy: the {u[:-len(GLUE)]} glue ops as a unit are among the most sensitive")
            reasons.update({n: why for n in expand([u])})
        twin = None  # percentile ranges may need fewer float nodes (plan_calibration.py); before the speed search,
        if precision.SCHEMES[scheme][0] == "static":  # whose timings are what a tight budget runs out of
            twin = plan_calibration.twin(scheme, {"exclude": set(exclude), "reasons": dict(reasons)},
                                         found["exclude"] - forced_float, tables.get(scheme), make, backend.judge,
                                         expand, clock, steps, params, len(candidates) + 4)
        # Kinds of compute node, plus the quantizable glue (Add, Mul, activations, pooling): in static schemes
        # each glue op brings its own Q/DQ pairs, which can cost more than its int8 form saves.
        groups = {}
        for n, k in nodes:
            if n not in exclude | forced_int8:
                groups.setdefault(k, set()).add(n)
        if precision.SCHEMES[scheme][0] == "static":
            glue = {n for n, _ in precision.other_quantizable(model, precision.Calibration.op_types_static())}
            if glue - forced_int8 - exclude:
                groups["other ops (Add, Mul, activations, pooling)"] = glue - forced_int8 - exclude
        kinds = sorted(groups) if params["speed_search"] else []
        trials = {}
        for kind in kinds:
            if clock.search_over(len(candidates) + 3):
                steps.append(f"{scheme}: speed search stopped (time budget): "
                             f"{', '.join(k for k in kinds if k not in trials)} not tried")
                break
            trials[kind] = make(scheme, exclude | groups[kind])
        # every kind kept float is first timed in one screening run with the current plan: a kind not faster
        # there at all cannot be >= 5% faster, so it gets no A/B of its own
        screen = timed({"current": path, **trials}, runs=SCREEN_RUNS, warmup=SCREEN_RUNS // 6) if trials else {}
        for kind in sorted(trials, key=lambda k: screen[k] / screen["current"]):
            if screen[kind] >= screen["current"] * SCREEN_MARGIN:  # obviously loses: no A/B of its own
                steps.append(f"{scheme}: {kind} kept float -> p50 {screen[kind]:.4f} vs {screen['current']:.4f} ms "
                             f"in the screening run of all {len(trials)} kinds (not faster; not kept)")
                continue
            if clock.search_over(len(candidates) + 3):
                steps.append(f"{scheme}: {kind} kept float: not confirmed (time budget)")
                break
            trial = exclude | groups[kind]
            tpath = make(scheme, trial)
            lat = timed({"current": path, "trial": tpath})
            verdict = lat["trial"] < lat["current"] * SPEED_MARGIN
            if verdict:  # confirm with a second interleaved measurement: noise must not decide precision
                again = timed({"trial": tpath, "current": path})
                verdict = again["trial"] < again["current"] * SPEED_MARGIN
            tj = backend.judge(tpath) if verdict else None
            tok = bool(tj and tj.ok)
            steps.append(f"{scheme}: {kind} kept float -> p50 {lat['trial']:.4f} vs {lat['current']:.4f} ms"
                         f" (screening {screen[kind]:.4f} vs {screen['current']:.4f})"
                         + (" (faster; kept float)" if verdict and tok else " (not kept)"))
            if verdict and tok:
                for n in trial - exclude:
                    kind_of.setdefault(n, "other")
                    reasons[n] = (f"speed: int8 {kind} is slower here (whole-model A/B p50 {lat['current']:.4f} -> "
                                  f"{lat['trial']:.4f} ms with it float)")
                exclude, path, judged = trial, tpath, tj
        candidates[scheme] = {"path": path, "exclude": exclude, "judged": judged, "reasons": reasons,
                              "args": (scheme, sorted(exclude), None)}
        if twin:
            candidates[twin["label"]] = twin

    if not candidates:
        raise StageError(NAME, f"no int8 plan meets the budget ({plan_search.budget_text(budget)}): "
                         + "; ".join(steps[-3:]))
    naive = next(s for s in params["schemes"] if s not in not_applicable)
    before = make(naive)  # the naive plan: everything int8 with the first scheme (made once)
    twins = plan_hard_activations.float_twins(candidates, make, steps) if has_hard else {}
    closing = {**{s: c["path"] for s, c in candidates.items()}, **{t: c["path"] for t, c in twins.items()},
               "all_int8": before, "fp32": fp32_path}
    # what the time left affords, keeping time for the granularity trial (and the fused scheme's confirmation)
    runs = clock.runs_for(len(closing), keep=clock.granularity_cost() * (2 if set(candidates) & precision.FUSED else 1))
    final = timed(closing, runs=runs, warmup=max(runs // 10, 3))
    best = min(candidates, key=lambda s: final[s]) if params["speed_search"] else next(iter(candidates))
    hard = plan_hard_activations.decide(best, candidates, twins, final, OrtBackend, steps) if twins else None
    if hard and hard.get("twin"):
        candidates[hard["twin"]] = twins[hard["twin"]]
        best = hard["twin"]
    if best in precision.FUSED:
        best, fusion["record"]["confirmation"] = confirm_fused(best, candidates, final, timed, clock, params)
    chosen = candidates[best]
    base_scheme = chosen.get("scheme", best)  # the recipe candidate is a static_u8s8 variant with fixed settings
    kw = chosen.get("make_kw", {})
    granularity = weight_granularity(chosen, make, timed, OrtBackend(base_scheme), params, clock)
    settings = {"per_channel": kw.get("per_channel", params["per_channel"]), "fmt": "qdq", "reduce_range": False,
                "weight": precision.SCHEMES[base_scheme][2]}
    if granularity.get("kept"):
        chosen = {**chosen, "path": granularity.pop("path"), "judged": granularity.pop("judged")}
        settings["per_channel"] = not settings["per_channel"]
    alternatives = []
    if precision.SCHEMES[base_scheme][0] == "static":  # the static quantizer's other settings, on the chosen plan
        for label, change in STATIC_ALTERNATIVES:
            trial = {**settings, **change}
            if trial == settings:
                continue
            rec = alternative(label, chosen, lambda t=trial: make(*chosen["args"], **{**kw, **t}), timed,
                              OrtBackend(base_scheme), params, clock)
            if rec.get("kept"):
                chosen = {**chosen, "path": rec.pop("path"), "judged": rec.pop("judged")}
                settings = trial
            alternatives.append(rec)
    shutil.copyfile(chosen["path"], out_dir / OUTPUT)
    before_judged = OrtBackend(naive).judge(before)  # judged already when it was a step
    for p in out_dir.glob("*.onnx"):
        if p.name != OUTPUT:
            p.unlink()
    method, act, _ = precision.SCHEMES[base_scheme]
    top = next(iter(tables.values()), None) or []
    return {
        "scheme": {"method": method, "activation_type": act, "weight_type": settings["weight"],
                   "per_channel": settings["per_channel"],
                   "calibrate_method": kw.get("calib", params["calibrate_method"]),
                   **({"quant_format": {"qdq": "QDQ", "qoperator": "QOperator"}[settings["fmt"]],
                       "reduce_range": settings["reduce_range"]} if method == "static" else {}),
                   **({"hard_activations": "int8" if kw.get("hard_int8", True) and settings["fmt"] == "qdq"
                       else "float"} if has_hard and method == "static" else {})},
        "plan": {
            "chosen": best,
            "kept_float": [{"node": n, "kind": kind_of.get(n, "?"), "reason": chosen["reasons"].get(n, "")}
                           for n in sorted(chosen["exclude"])],
            "int8_compute_nodes": sum(1 for n, k in nodes if n not in chosen["exclude"]
                                      and (method == "static" or not k.startswith("Conv"))),
            "compute_nodes": len(nodes),
            "candidates": {s: plan_search.side(s, c["judged"], p50_ms=final[s], kept_float=len(c["exclude"]))
                           for s, c in candidates.items()},
            "before": plan_search.side(f"{naive}, every node int8", before_judged,
                                       p50_ms=final["all_int8"]),
            "after": plan_search.side(best, chosen["judged"], p50_ms=final[best]),
            "fp32_p50_ms": final["fp32"],
            "closing_runs": runs,
            **({"hard_activations": hard} if hard else {}),
            "weight_granularity": granularity,
            "alternatives": alternatives,
            "sensitivity_top": top[:10],
            **({"transformer_fusion": {**fusion["record"], "chosen": best in precision.FUSED}}
               if "record" in fusion else {}),
            "steps": steps,
            "search_seconds": round(time.monotonic() - t0, 1),
            "time_budget": clock.record(),
            "decided_by_timing": "speed decisions were measured on this host (see the report's host); another "
                                 "CPU may choose differently",
        },
    }


# ---- declaration (stages/__init__.py): quantize.method = "auto" --------------------------------------------
TABLE = SCHEMA = "quantize"


def applies(target) -> bool:
    return target.table(TABLE).get("method") == "auto"


def params_for(table, path, prefix="quantize") -> dict:
    from .quantize import params_for as quantize_params

    return quantize_params(table, path, prefix)


def needs(params) -> tuple:
    # timing decisions depend on the host; the budget and thread count decide what is kept float
    return ("fp32", "calibration", "evaluation", "reference", "host", "budget", "threads")


def build(inp, params, out_dir) -> dict:
    return run(inp.fp32, params, out_dir, inp.calibration, inp.evaluation, inp.reference, inp.spec, inp.budget,
               inp.threads)
