"""Judge an ONNX Runtime artifact (x86_64 int8, cuda fp16) on an executor's own ONNX Runtime: a CPU or GPU host
over ssh (`--device cuda=ssh://user@gpuhost`, or `executor = "ssh"` with an [ssh] table in the target file).

The device runs executors/onnxruntime_entry.py with the target's providers: the artifact's outputs on the
evaluation inputs (judged here by the target's gates, as on the host), the runtime-options search and the
interleaved latency against the fp32 baseline (the host's protocol, validation/latency.py), the providers the
session really uses and where ONNX Runtime placed each node (its profile), the device record (uname, CPU,
nvidia-smi's GPUs) and the device's onnxruntime version (a version other than the lock's is noted in the report).

No silent fallback: a device whose onnxruntime lacks the provider fails the target with that reason. Unlike a
build host without a GPU (where cuda is `skipped`), the user named this device to have the artifact proved there,
so a device that cannot run it is a failed build, not exit 0 (the agreement on this host's CPU provider is recorded
as information);
a session or a node that runs off the provider fails the target. A device that does not answer is a stage error
naming it (exit 4).
"""

import tempfile
from pathlib import Path

import numpy as np

from ..errors import StageError
from ..executors import ExecutorError, ExecutorUnavailable, config

DEFAULT_TIMEOUT_S = 3600
EVAL_BATCH = 64


def judge(target, artifact, baseline, evaluation, reference, spec, ref_value, unpruned, result) -> dict:
    from .target import accuracy, cpu_check, record_latency

    opts = dict(target.tables.get("executor") or {"name": "local"})
    ex = config.for_target(target, opts.get("device"))
    try:
        ex.check()
    except ExecutorUnavailable as e:
        raise StageError("validate", e.one_line(), target.name) from None
    names = [t.name for t in spec.inputs]
    lat = target.latency
    timeout = float((opts.get("ssh") or {}).get("timeout_s", DEFAULT_TIMEOUT_S))
    with tempfile.TemporaryDirectory(prefix="toolchain-executor-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "inputs.npz", **{n: np.asarray(evaluation[n]) for n in names})
        files = {"artifact.onnx": artifact, "baseline.onnx": baseline, "inputs.npz": tmp / "inputs.npz"}
        models = {"artifact": "artifact.onnx", "baseline": "baseline.onnx"}
        if unpruned is not None:
            files["unpruned.onnx"], models["unpruned"] = unpruned, "unpruned.onnx"
        job = {"runtime": "onnxruntime", "models": models, "inputs": "inputs.npz", "input_names": names,
               "providers": list(target.providers), "threads": target.threads,
               "io_binding": bool(lat.get("io_binding")), "eval_batch": EVAL_BATCH,
               "runtime_options": target.tables.get("runtime_options") or [],
               "latency": {k: lat[k] for k in ("warmup", "runs", "batch")},
               "outputs": "outputs.npz", "result": "result.json"}
        try:
            run = ex.run(job, files, tmp / "run", timeout)
        except ExecutorError as e:
            raise StageError("validate", e.one_line(), target.name) from None
        r = run.result
        outputs = None
        if not (r.get("unavailable") or r.get("fell_back")):
            with np.load(run.out_dir / "outputs.npz") as z:
                outputs = [z[str(i)] for i in range(len(z.files))]
    where = f"{ex.name} device {ex.address}" if hasattr(ex, "address") else ex.name
    ident = config.identity(target, opts.get("device"))
    ident.update(platform=r.get("platform", {}), runtime_versions=r.get("versions", {}),
                 available_providers=r.get("available_providers", []))
    notes = _version_notes(ident)
    result["executor"], result["executor_notes"] = ident, notes
    if r.get("unavailable"):  # a device named to prove the artifact that cannot run it: a failed build
        missing = [p for p in target.providers if p not in ident["available_providers"]]
        result.update(status="failed", reason=f"{where}: {', '.join(missing) or r['unavailable']} not available "
                                               f"in {_ort(ident)} there (available: "
                                               f"{', '.join(ident['available_providers'])})")
        result["cpu_check"] = cpu_check(target, artifact, evaluation, reference, spec, ref_value)
        result["cpu_check"]["note"] += " (on the build host, not on the device)"
        return result
    if r.get("fell_back"):
        ident["placement"] = r.get("placement")
        result.update(status="failed", reason=f"runtime fell back on {where}: {r['fell_back']}",
                      providers=r.get("providers") or [])
        return result
    result.update(accuracy(outputs, evaluation, reference, spec, ref_value))
    result["providers"], ident["placement"] = r["providers"], r["placement"]
    dev = ident["platform"]
    result["device"] = (dev.get("gpus") or ["CUDA device (nvidia-smi gave no name)"])[0].split(",")[0].strip() \
        if target.providers[0] == "CUDAExecutionProvider" else dev.get("cpu", "unknown CPU")
    record_latency(result, r["latency_ms"], r["chosen"], r["batch"], lat, r["timing_method"])
    result["latency_protocol"]["measured_on"] = f"{where}: {dev.get('uname', '')}"
    result["latency_note"] = f"measured on the device: {where} ({result['device']})"
    if r.get("runtime_options"):
        result["runtime_options"] = r["runtime_options"]
    if target.precision == "int8":  # the graph ONNX Runtime's CPU provider runs (the NOT FASTER note reads it)
        from ..runtimes.onnxruntime import optimized_op_counts

        chosen = (r.get("runtime_options") or {}).get("options", {})
        result["optimized_op_counts"] = optimized_op_counts(artifact, chosen.get("graph_optimization", "all"),
                                                            target.threads)
    return result


def _ort(ident) -> str:
    v = ident["runtime_versions"]
    dist = next((d for d in ("onnxruntime-gpu", "onnxruntime") if d in v), "onnxruntime")
    return f"{dist} {v.get(dist, '?')}"


def _version_notes(ident) -> list:
    """The device's onnxruntime (or onnxruntime-gpu, the same version line) and numpy against the lock's."""
    from ..versions import locked_version

    differ = {}
    for dist, v in ident["runtime_versions"].items():
        want = locked_version("onnxruntime" if dist == "onnxruntime-gpu" else dist)
        if want and v != want:
            differ[dist] = {"device": v, "lock": want}
    if not differ:
        return []
    ident["versions_differ_from_lock"] = differ
    return ["the device's runtime versions differ from the lock: "
            + ", ".join(f"{d} {x['device']} there vs {x['lock']} locked" for d, x in differ.items())]
