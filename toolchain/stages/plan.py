"""plan: the x86 precision plan. Quantize what pays, keep in float what hurts, decided by measurement.

For each candidate scheme (static uint8/int8 activations with int8 per-channel weights, or dynamic int8):
  1. start from everything int8 (minus what the spec forces to stay float);
  2. accuracy (plan_search.py, shared with the arm64 plan): while an output misses its budget on the evaluation
     data (every output, by the validate stage's own metrics), keep in float the next most sensitive compute
     nodes (sensitivity = output SQNR to fp32 when only that node is int8; 1, 2, 4, ... nodes per step);
  3. speed: for each kind of compute node still int8 (Conv 1x1 / kxk / depthwise, MatMul, Gemm), measure
     the model with that kind kept float against the current plan, interleaved; keep it float if that is
     >= 5% faster and the budget still holds;
(static_u8s8_by_resolution instead times bands of feature-map sizes against fp32: see by_resolution),
then take the fastest scheme that meets the budget, and try it with the other weight granularity (per-tensor for
per-channel), kept only if faster twice and within the budget (weight_granularity). Every step, the sensitivity table and the timings go
into the stage's meta (and so into report.json). The search stops at its time budget with the best plan
so far. Timing decisions depend on the host, so the host is part of the stage's cache key.
"""

import shutil
import time

from ..errors import StageError, reraise_write_error

NAME = "plan"
VERSION = 12  # 12: unstamped again; the metadata stage (stages/metadata.py) stamps a copy
GLUE = " (every one)"  # a search unit standing for every quantizable glue op of one type
LIBRARIES = ("onnxruntime", "onnx", "numpy")
OUTPUT = "model.int8.onnx"
POST_REASON = ("post-processing after the last compute nodes (decode, NMS, top-K): int8 would round results such "
               "as box coordinates; kept float by quantize.force_float")
SPEED_MARGIN = 0.95  # a kind is kept float only if that makes the model at least 5% faster


def run(fp32_path, params, out_dir, calibration, evaluation, reference, spec, budget, threads) -> dict:
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from . import plan_search, precision

    t0 = time.monotonic()
    deadline = t0 + params["time_budget_s"]
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
    raw = out_dir / "raw.onnx"
    shutil.copyfile(fp32_path, raw)

    calibs = {}
    # Static schemes search over the compute nodes and, as one unit per op type, the quantizable glue (Add, Mul,
    # HardSigmoid, pooling...): each glue op brings its own Q/DQ pair, and where the glue loses the signal
    # (squeeze-excite gates, residual adds) keeping every compute node float cannot meet the budget.
    glue_units = {}
    for n, t in precision.other_quantizable(model, precision.Calibration.op_types_static()):
        kind_of.setdefault(n, t)
        glue_units.setdefault(t + GLUE, []).append(n)

    def expand(names):
        return set().union(*(glue_units.get(n, [n]) for n in names)) if names else set()

    def make(scheme, exclude=(), only=None, per_channel=None):
        exclude, only = expand(exclude), (sorted(expand(only)) if only is not None else None)
        method, act, weight = precision.SCHEMES[scheme]
        per_channel = params["per_channel"] if per_channel is None else per_channel
        counter[0] += 1
        path = out_dir / f"variant{counter[0]}.onnx"
        if method == "static":
            # The tiered scheme quantizes the exported graph as it is: quant_pre_process splits HardSwish into
            # HardSigmoid + Mul, whose extra float boundaries cost more than the int8 convs near them save.
            base = raw if scheme in precision.TIERED else prep
            if base not in calibs:
                calibs[base] = precision.Calibration(base, calibration, names, params["calibrate_method"])
            onnx.save(calibs[base].static(act, weight, per_channel, only, exclude), str(path))
        else:
            precision.dynamic(prep, path, weight, per_channel, only, exclude)
        return path

    class OrtBackend(plan_search.Backend):
        def __init__(self, scheme):
            super().__init__(spec, evaluation, reference, budget)
            self.scheme = scheme

        def make(self, exclude=(), only=None):
            return make(self.scheme, exclude, only)

        def outputs(self, path, data):
            return runner.outputs(path, data)

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
        paths = {label: make(scheme, only=sorted(nodes_)) for label, nodes_ in tiers.items()}
        lat = runner.latency({**paths, "fp32": fp32_path}, feed)
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
    for scheme in params["schemes"]:
        if time.monotonic() > deadline and candidates:
            steps.append(f"{scheme}: not tried (time budget of {params['time_budget_s']} s spent)")
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
        units = nodes
        if precision.SCHEMES[scheme][0] == "static":
            units = nodes + [(u, "glue: " + u[:-len(GLUE)]) for u in sorted(glue_units)
                             if not set(glue_units[u]) & forced_int8]
        found = plan_search.meet_budget(backend, scheme, units, forced_float, forced_int8, deadline, steps, first)
        if found["table"]:
            tables[scheme] = found["table"]
        if not found["ok"]:
            continue
        exclude, path, judged = expand(found["exclude"]), found["path"], found["judged"]
        reasons = {n: POST_REASON if n in post else "forced float by the spec" for n in forced_float}
        for u in found["exclude"] - forced_float:
            why = ("accuracy: among the most sensitive nodes" if u not in glue_units else
                   f"accuracy: the {u[:-len(GLUE)]} glue ops as a unit are among the most sensitive")
            reasons.update({n: why for n in expand([u])})
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
        for kind in (sorted(groups) if params["speed_search"] else []):
            if time.monotonic() > deadline:
                break
            trial = exclude | groups[kind]
            tpath = make(scheme, trial)
            lat = runner.latency({"current": path, "trial": tpath}, feed)
            verdict = lat["trial"] < lat["current"] * SPEED_MARGIN
            if verdict:  # confirm with a second interleaved measurement: noise must not decide precision
                again = runner.latency({"trial": tpath, "current": path}, feed)
                verdict = again["trial"] < again["current"] * SPEED_MARGIN
            tj = backend.judge(tpath) if verdict else None
            tok = bool(tj and tj.ok)
            steps.append(f"{scheme}: {kind} kept float -> p50 {lat['trial']:.4f} vs {lat['current']:.4f} ms"
                         + (" (faster; kept float)" if verdict and tok else " (not kept)"))
            if verdict and tok:
                for n in trial - exclude:
                    kind_of.setdefault(n, "other")
                    reasons[n] = (f"speed: int8 {kind} is slower here (whole-model A/B p50 {lat['current']:.4f} -> "
                                  f"{lat['trial']:.4f} ms with it float)")
                exclude, path, judged = trial, tpath, tj
        candidates[scheme] = {"path": path, "exclude": exclude, "judged": judged, "reasons": reasons,
                              "args": (scheme, sorted(exclude), None)}

    if not candidates:
        raise StageError(NAME, f"no int8 plan meets the budget ({plan_search.budget_text(budget)}): "
                         + "; ".join(steps[-3:]))
    before = make(params["schemes"][0])  # the naive plan: everything int8 with the first scheme
    timed = runner.latency({**{s: c["path"] for s, c in candidates.items()}, "all_int8": before,
                            "fp32": fp32_path}, feed, runs=300, warmup=30)
    best = min(candidates, key=lambda s: timed[s])
    chosen = candidates[best]
    granularity = weight_granularity(chosen, make, runner, feed, OrtBackend(best), params, deadline)
    if granularity.get("kept"):
        chosen = {**chosen, "path": granularity.pop("path"), "judged": granularity.pop("judged")}
    shutil.copyfile(chosen["path"], out_dir / OUTPUT)
    before_judged = OrtBackend(params['schemes'][0]).judge(before)
    for p in out_dir.glob("*.onnx"):
        if p.name != OUTPUT:
            p.unlink()
    method, act, weight = precision.SCHEMES[best]
    top = next(iter(tables.values()), None) or []
    per_channel = params["per_channel"] != bool(granularity.get("kept"))
    return {
        "scheme": {"method": method, "activation_type": act, "weight_type": weight,
                   "per_channel": per_channel, "calibrate_method": params["calibrate_method"]},
        "plan": {
            "chosen": best,
            "kept_float": [{"node": n, "kind": kind_of.get(n, "?"), "reason": chosen["reasons"].get(n, "")}
                           for n in sorted(chosen["exclude"])],
            "int8_compute_nodes": sum(1 for n, k in nodes if n not in chosen["exclude"]
                                      and (method == "static" or not k.startswith("Conv"))),
            "compute_nodes": len(nodes),
            "candidates": {s: plan_search.side(s, c["judged"], p50_ms=timed[s], kept_float=len(c["exclude"]))
                           for s, c in candidates.items()},
            "before": plan_search.side(f"{params['schemes'][0]}, every node int8", before_judged,
                                       p50_ms=timed["all_int8"]),
            "after": plan_search.side(best, chosen["judged"], p50_ms=timed[best]),
            "fp32_p50_ms": timed["fp32"],
            "weight_granularity": granularity,
            "sensitivity_top": top[:10],
            "steps": steps,
            "search_seconds": round(time.monotonic() - t0, 1),
            "decided_by_timing": "speed decisions were measured on this host (see the report's host); another "
                                 "CPU may choose differently",
        },
    }


def weight_granularity(chosen, make, runner, feed, backend, params, deadline) -> dict:
    """The chosen plan with the other weight granularity (per-tensor for per-channel and back), timed interleaved
    against it twice (noise must not decide) and judged: kept only if >= 5% faster both times and the budget holds.
    Returns the decision with its measurements (and, when kept, the variant's path and judgement)."""
    scheme, exclude, only = chosen["args"]
    other = not params["per_channel"]
    label = "per-channel" if other else "per-tensor"
    record = {"tried": f"{label} weights", "of": "per-channel" if params["per_channel"] else "per-tensor"}
    if not params["speed_search"]:
        return {**record, "decision": "not tried (quantize.speed_search = false)"}
    if time.monotonic() > deadline:
        return {**record, "decision": "not tried (time budget spent)"}
    try:
        path = make(scheme, exclude, only, per_channel=other)
        first = runner.latency({"current": chosen["path"], "trial": path}, feed)
        again = runner.latency({"trial": path, "current": chosen["path"]}, feed)
    except Exception as e:  # noqa: BLE001 - a variant ORT cannot run is a decision, not a failed build
        reraise_write_error(e)
        return {**record, "decision": f"ONNX Runtime cannot run it ({str(e).splitlines()[0][:160]})"}
    record["p50_ms"] = {"current": [first["current"], again["current"]], "trial": [first["trial"], again["trial"]]}
    faster = all(t < c * SPEED_MARGIN for t, c in zip(record["p50_ms"]["trial"], record["p50_ms"]["current"]))
    if not faster:
        return {**record, "decision": "kept the current granularity (the other is not >= 5% faster twice)"}
    judged = backend.judge(path)
    record["judged_text"] = judged.text
    if not judged.ok:
        return {**record, "decision": "kept the current granularity (the faster one misses the budget)"}
    return {**record, "decision": f"{label} weights: faster twice and within the budget", "kept": True,
            "path": path, "judged": judged}


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
