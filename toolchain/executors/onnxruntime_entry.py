"""ONNX Runtime's validation entry point: `python onnxruntime_entry.py job.json`, run by an executor in a child
process on the machine that judges the artifact (a CPU host or a GPU host over ssh, with its own onnxruntime or
onnxruntime-gpu).

Needs only numpy, onnxruntime and the few toolchain files shipped next to it (runtimes/onnxruntime.py, the latency
protocol); it imports nothing else of the project. Paths in the job are relative to the working directory.

The job:
  runtime          "onnxruntime"
  models           {"artifact": FILE, "baseline": FILE, "unpruned": FILE (optional)}
  inputs           an .npz of evaluation inputs, one array per input name
  input_names, providers, threads, io_binding, eval_batch
  runtime_options  the target's candidates, searched here (the fastest is chosen on this machine)
  latency          {"warmup", "runs", "batch"}: the host's protocol (latency.against_baseline)
  outputs          an .npz: the artifact's outputs on every input, keys "0", "1", ...
Writes job["result"]: platform (uname, cpu, gpus), versions, available_providers, providers (what the session
really runs), placement (nodes per provider from ONNX Runtime's own profile), latency_ms, runtime_options; or
`unavailable` (the provider is not in this onnxruntime) / `fell_back` (the session or some nodes run elsewhere),
with nothing measured.
"""

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# ONNX Runtime places shape computations (int64/int32 tensors) on the CPU on purpose; anything else that runs
# off the requested provider fell back.
SHAPE_DTYPES = {"int64", "int32"}


def _die_with_parent():
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def device_record() -> dict:
    """What the figures were measured on: uname, the CPU model, and each GPU as nvidia-smi names it (when the
    machine has nvidia-smi)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0:
            gpus = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    return {"machine": platform.machine(), "python": platform.python_version(), "uname": " ".join(platform.uname()),
            "hostname": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(), "gpus": gpus}


def placement(path, providers, provider_options, threads, feed) -> dict:
    """Which provider ran each node, from ONNX Runtime's own profile of one run: {"nodes": provider -> count,
    "off_provider": [{"op", "provider"}] for the nodes that ran elsewhere than providers[0] and are no shape
    computation}."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    so.enable_profiling, so.profile_file_prefix = True, "placement-profile"
    opts = [dict((provider_options or {}).get(p, {})) for p in providers]
    s = ort.InferenceSession(str(path), so, providers=providers, provider_options=opts)
    names = [o.name for o in s.get_outputs()]
    s.run(names, feed)
    profile = Path(s.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    counts, off = {}, []
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        a = e.get("args", {})
        p = a.get("provider", "?")
        counts[p] = counts.get(p, 0) + 1
        dtypes = {k for o in a.get("output_type_shape", []) for k in o}
        if p != providers[0] and not a.get("op_name", "").startswith("Memcpy") and not dtypes <= SHAPE_DTYPES:
            off.append({"op": a.get("op_name", "?"), "provider": p})
    return {"nodes": counts, "off_provider": off}


def main(job_path):
    _die_with_parent()
    job = json.load(open(job_path))
    import numpy as np
    import onnxruntime as ort

    from toolchain.runtimes.base import RuntimeFellBack, RuntimeUnavailable
    from toolchain.runtimes.onnxruntime import OrtSession
    from toolchain.validation.latency import against_baseline, differs_from_default

    dist = "onnxruntime-gpu" if _installed("onnxruntime-gpu") else "onnxruntime"
    result = {"platform": device_record(), "versions": {dist: _version(dist, ort), "numpy": np.__version__},
              "available_providers": ort.get_available_providers()}
    with np.load(job["inputs"]) as z:
        data = {k: z[k] for k in z.files}
    names, providers, threads = job["input_names"], job["providers"], job.get("threads", 1)
    models = job["models"]

    def opener(path, options=None):
        options = options or {}
        return OrtSession(path, providers, threads, provider_options=options.get("provider_options"),
                          io_binding=bool(job.get("io_binding")),
                          graph_optimization=options.get("graph_optimization", "all"))

    try:
        session = opener(models["artifact"])
    except RuntimeUnavailable as e:
        result["unavailable"] = str(e)
        return _write(job, result)
    except RuntimeFellBack as e:
        result["fell_back"] = str(e)
        return _write(job, result)
    result["providers"] = session.providers
    first = {k: np.asarray(data[k][:1], dtype=session._in_types[k]) for k in names}
    result["placement"] = placement(models["artifact"], providers, None, threads, first)
    if result["placement"]["off_provider"]:
        ops = sorted({f"{n['op']} on {n['provider']}" for n in result["placement"]["off_provider"]})
        result["fell_back"] = (f"asked for {providers[0]}, {len(result['placement']['off_provider'])} node(s) ran "
                               f"elsewhere: {', '.join(ops[:8])}")
        return _write(job, result)
    n, size = len(data[names[0]]), int(job.get("eval_batch", 64))
    t0 = time.perf_counter()
    _save_outputs(job, session, data, names, n, size)
    result["wall_s"] = time.perf_counter() - t0
    lat = job["latency"]
    batch = min(lat["batch"], n)
    feed = {k: data[k][:batch] for k in names}
    chosen, record, timed = against_baseline(session.timer(feed), opener, models["baseline"], feed, lat,
                                             job.get("runtime_options") or [], models["artifact"],
                                             models.get("unpruned"), "the target", threads)
    if record:  # the app runs with the chosen options: the outputs judged are the ones it will compute
        if differs_from_default(chosen):
            _save_outputs(job, opener(models["artifact"], chosen), data, names, n, size)
        record["accuracy_measured_with"] = (chosen or {}).get("name", "default")
    result.update(latency_ms=timed, runtime_options=record, chosen=(chosen or {}).get("name", "default"),
                  batch=batch, timing_method=session.timing_method)
    return _write(job, result)


def _save_outputs(job, session, data, names, n, size):
    import numpy as np

    chunks = [session.run({k: data[k][i:i + size] for k in names}) for i in range(0, n, size)]
    np.savez(job["outputs"], **{str(j): np.concatenate(parts).astype(np.float32)
                                for j, parts in enumerate(zip(*chunks))})


def _write(job, result):
    if job.get("outputs") and not Path(job["outputs"]).exists():  # nothing ran: an empty file the executor fetches
        import numpy as np

        np.savez(job["outputs"])
    json.dump(result, open(job["result"], "w"))


def _installed(dist) -> bool:
    try:
        from importlib.metadata import version

        version(dist)
        return True
    except Exception:  # noqa: BLE001 - PackageNotFoundError
        return False


def _version(dist, module):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - a vendored copy without metadata
        return getattr(module, "__version__", "unknown")


if __name__ == "__main__":
    main(sys.argv[1])
