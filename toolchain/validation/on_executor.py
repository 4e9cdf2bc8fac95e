"""Judge a LiteRT artifact where it will run: on the target's executor (emulated aarch64, an ssh device).

The artifact's outputs on the evaluation inputs come from the executor's LiteRT with the target's resolver
(default: XNNPACK) and from each other resolver the target names (builtin kernels without XNNPACK, as on a
device built without it); the primary one decides accuracy. On emulated aarch64 the ARM cost model counts
per-inference instructions of the artifact and its fp32 baseline on each pinned core (`arm_cost`): emulated
wall time is no latency proxy (fp32 slows ~3x more than int8 under qemu), instruction counts are deterministic.
Host LiteRT figures stay in the report as information (`host_litert`).

Without the emulator (make arm-emulator failed or was not run) ARM kernels were not available: the target is
`skipped`, never passed, and host LiteRT's figures are kept as a check (`cpu_check`, `executor.fallback`), as for
CUDA without a GPU; a device or a set-up emulator that fails is a stage error (exit 4).
"""

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import StageError
from ..executors import ExecutorError, ExecutorUnavailable, config
from . import executor_runs



def judge(target, artifact, baseline, evaluation, reference, spec, ref_value, result, host_outputs, session,
          accuracy):
    """Updates `result` in place. accuracy: validation.target.accuracy (outputs -> metric, drop, agreement...)."""
    opts = dict(target.tables.get("executor") or {"name": "local"})
    ex = config.for_target(target, opts.get("device"))
    if ex is None:
        return
    try:
        ex.check()
    except ExecutorUnavailable as e:
        if opts["name"] == "emulated" and not opts.get("device"):
            result["executor"] = {"name": "local", "wanted": "emulated", "fallback": True, "reason": e.one_line()}
            return  # validation/target.py makes it `skipped`, with the host figures as a check
        raise StageError("validate", e.one_line(), target.name) from None
    names = [t.name for t in spec.inputs]
    # A split artifact (convert.split_at): the executor returns its raw outputs and the app's post-processing,
    # run here on the build host as the app would, turns them into the spec's outputs before they are judged.
    post = getattr(session, "fn", None) if result.get("app_postprocess") else None
    resolver = opts.get("resolver", "default")
    resolvers = [resolver] + [r for r in opts.get("also_resolvers", []) if r != resolver]
    cores = opts.get("cores") or ["cortex-a76"]
    can_count = getattr(ex, "can_count", lambda: False)()
    timeout = float(opts.get("timeout_s", config.EMULATED_DEFAULTS["timeout_s"]))
    with tempfile.TemporaryDirectory(prefix="toolchain-executor-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "inputs.npz", **{n: np.asarray(evaluation[n]) for n in names})
        files = {"artifact.tflite": artifact, "baseline.tflite": baseline, "inputs.npz": tmp / "inputs.npz"}
        job = {"models": {"artifact": "artifact.tflite", "baseline": "baseline.tflite"}, "inputs": "inputs.npz",
               "input_names": names, "output_names": None if post else [o.name for o in spec.outputs],
               "output_shapes": None if post else [list(r.shape[1:]) for r in reference], "threads": target.threads,
               "resolvers": resolvers, "outputs": "outputs.npz", "result": "result.json",
               "count": {"models": ["artifact", "baseline"], "resolver": resolver} if can_count else None,
               "latency": ({**{k: target.latency[k] for k in ("warmup", "runs")}, "resolver": resolver}
                           if getattr(ex, "measures_latency", False) else None)}
        # One accuracy run per resolver (and per slice of the samples where there are more cores than resolvers)
        # and one counting run per core, side by side (executor_runs.py); a device timing latency runs alone.
        runs = executor_runs.plan(job, resolvers, cores, can_count, len(evaluation[names[0]]))
        for run in runs:
            if run.samples is not None and not (tmp / _slice_file(run.samples)).exists():
                a, b = run.samples
                np.savez(tmp / _slice_file(run.samples), **{n: np.asarray(evaluation[n])[a:b] for n in names})
        with ThreadPoolExecutor(executor_runs.workers(runs)) as pool:
            futures = {run.name: pool.submit(ex.run, run.job, _run_files(files, run, tmp), tmp / f"run-{run.name}",
                                             timeout, cpu=run.cpu, count=run.count) for run in runs}
            try:
                done = {name: f.result() for name, f in futures.items()}
            except ExecutorError as e:
                raise StageError("validate", e.one_line(), target.name) from None
        first = done[next(r.name for r in runs if not r.count)]  # the primary resolver's (first slice's) run
        outs = executor_runs.outputs(done, runs, resolvers, len(spec.outputs) if post is None else None)
        if post is not None:
            outs = {r: _postprocessed(post, o) for r, o in outs.items()}
        counted = {core: (done[core].counts, done[core].result["count_segments"]) for core in cores if core in done}
    # int8 outputs: differences in quantization steps (LSB); float outputs have none (None)
    scales = [o["scale"] or None for o in session.io_details()["outputs"]] \
        if hasattr(session, "io_details") and post is None else [None] * len(spec.outputs)
    host = {k: result[k] for k in ("metric", "metric_drop", "agreement", "non_finite_outputs") if k in result}
    host.update(max_lsb_vs_executor=_max_lsb(host_outputs, outs[resolver], scales),
                max_abs_diff_vs_executor=_max_abs(host_outputs, outs[resolver]),
                note="LiteRT's kernels on this build host: information only")
    result["host_litert"] = host
    for k in ("metrics",):
        result.pop(k, None)
    result.update(accuracy(outs[resolver], evaluation, reference, spec, ref_value))
    result["resolver"] = resolver
    notes = []
    from . import metrics

    # the other resolvers are judged by the target's own per-output gates: a note, the gate is the default resolver's
    gates = metrics.output_gates(spec, target.name, target.precision) if target.name in spec.targets else []
    result["resolvers"] = {}
    for r in resolvers:
        acc = accuracy(outs[r], evaluation, reference, spec, ref_value)
        acc.pop("metrics", None)
        acc["max_lsb_vs_" + resolver] = _max_lsb(outs[r], outs[resolver], scales)
        acc["max_abs_diff_vs_" + resolver] = _max_abs(outs[r], outs[resolver])
        result["resolvers"][r] = acc
        if r != resolver:
            notes += [f"with the {r} resolver (a LiteRT without XNNPACK) {metrics.verdict_text(row)}"
                      for row in metrics.verdicts(acc["outputs"], gates) if not row["passed"]]
    ident = config.identity(target, opts.get("device"))
    ident["platform"] = first.result.get("platform", {})
    if ex.name == "emulated":  # what the guest read is the core's own, written by us (executors/guest_cpuinfo.py)
        ident["platform"]["cpuinfo_from"] = (f"qemu -cpu {cores[0]}: the guest reads that core's /proc/cpuinfo (as "
                                             "qemu 10 emulates it), not the build host's")
    ident["runtime_versions"] = first.result.get("versions", {})
    result["executor"] = ident
    from ..versions import versions

    host_v = versions(("ai-edge-litert", "numpy"))
    differ = {k: (v, host_v.get(k)) for k, v in ident["runtime_versions"].items() if host_v.get(k) not in (None, v)}
    if differ:
        ident["versions_differ_from_build_host"] = differ
        notes.append("the executor's runtime versions differ from the build host's: "
                     + ", ".join(f"{k} {a} there vs {b} here" for k, (a, b) in differ.items()))
    if first.result.get("latency_ms"):
        t = first.result["latency_ms"]
        result["device_latency"] = {
            "latency_ms": t["artifact"], "baseline_latency_ms": t["baseline"],
            "latency_ratio": t["artifact"]["p50"] / t["baseline"]["p50"],
            "protocol": {"batch": 1, "warmup": target.latency["warmup"], "runs": target.latency["runs"],
                         "interleaved_with": "fp32 baseline", "timing": "interpreter.invoke (tensors set once)",
                         "measured_on": f"{ex.name} device {ident.get('device', '')}: "
                                        f"{ident['platform'].get('uname', '')}"}}
    if counted:
        result["arm_cost"] = _arm_cost(counted, resolver, ident)
    elif ex.name == "emulated":
        notes.append("no ARM cost: the instruction-count plugin is not built (run `toolchain arm-emulator`)")
    if result.get("latency_note"):
        result["latency_note"] += f"; information only: the {ex.name} executor judges this target"
    result["executor_notes"] = notes


def _slice_file(samples) -> str:
    return f"inputs-{samples[0]}-{samples[1]}.npz"


def _run_files(files, run, tmp) -> dict:
    """The files a run needs: a slice of the samples gets its own inputs.npz."""
    return files if run.samples is None else {**files, "inputs.npz": tmp / _slice_file(run.samples)}


def _max_abs(a_list, b_list) -> float:
    return max((float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
                for a, b in zip(a_list, b_list)), default=0.0)


def _max_lsb(a_list, b_list, scales):
    """Largest difference between two runs' int8 outputs in quantization steps (LSB); None for float outputs."""
    if not scales or any(s is None for s in scales):
        return None
    return round(max(_max_abs([a], [b]) / s for a, b, s in zip(a_list, b_list, scales)), 3)


def _arm_cost(counted, resolver, ident) -> dict:
    """counted: core -> (segment -> instructions, segment -> model). Per model the median of its counted invokes
    (they differ by ~1% within a process; the same job repeats them exactly)."""
    cores = {}
    for core, (segs, models) in counted.items():
        per = {}
        for seg, model in models.items():
            if seg not in segs:
                raise StageError("validate", f"the instruction-count plugin reported no count for segment {seg} "
                                 f"on {core}", None)
            per.setdefault(model, []).append(segs[seg])
        med = {m: int(np.median(v)) for m, v in per.items()}
        cores[core] = {"artifact": med["artifact"], "baseline": med["baseline"],
                       "ratio": med["artifact"] / med["baseline"],
                       "spread": {m: round((max(v) - min(v)) / med[m], 4) for m, v in per.items()}}
    return {"unit": "guest instructions per inference (median of single invokes, batch 1, after a warm-up invoke)",
            "method": f"qemu {ident.get('qemu', '?')} TCG instruction count between marker syscalls, -cpu CORE, "
                      f"LiteRT {ident.get('runtime_versions', {}).get('ai-edge-litert', '?')}, {resolver} resolver",
            "cores": cores}


def prefer_device_latency(result):
    """After the host timings: a device's own interleaved timings become the target's latency; the host's stay
    as information (host_latency)."""
    dev = result.pop("device_latency", None)
    if not dev:
        return
    result["host_latency"] = {k: result.pop(k) for k in ("latency_ms", "baseline_latency_ms", "latency_ratio",
                                                          "latency_protocol") if k in result}
    result.update(latency_ms=dev["latency_ms"], baseline_latency_ms=dev["baseline_latency_ms"],
                  latency_ratio=dev["latency_ratio"], latency_protocol=dev["protocol"])
    result["latency_note"] = "measured on the device: " + dev["protocol"]["measured_on"]


def _postprocessed(fn, raw) -> list:
    """The app's post-processing, applied one sample at a time as the host session does (batch 1 artifacts)."""
    rows = [[np.asarray(o) for o in fn([r[i:i + 1] for r in raw])] for i in range(len(raw[0]))]
    return [np.concatenate(parts).astype(np.float32) for parts in zip(*rows)]
