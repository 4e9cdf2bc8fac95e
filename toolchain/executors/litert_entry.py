"""LiteRT's validation entry point: `python litert_entry.py job.json`, run by an executor in a child process on
the machine that judges the artifact (the host, emulated aarch64, a device over ssh).

Needs only numpy, ai-edge-litert and toolchain/runtimes (shipped next to it: this file puts the directory
holding the `toolchain` package on sys.path and imports nothing else of the project). Paths in the job are
relative to the working directory.

The job:
  models       {"artifact": FILE, "baseline": FILE}
  inputs       an .npz of evaluation inputs in the model's layout, one array per input name
  input_names, output_names, output_shapes, threads
  resolvers    run the artifact on every input with each of these op resolvers; outputs go to job["outputs"]
               (an .npz, keys "RESOLVER/OUTPUT_INDEX")
  count        {"models": [...], "resolver": R}: on aarch64, bracket one invoke of each model on the first input
               with marker syscalls the instruction-count plugin reads (COUNT_INVOKES segments per model, one
               invoke each, after a warm-up invoke); result["count_segments"] maps segment -> model
  latency      {"warmup", "runs", "resolver"}: artifact and baseline timed interleaved on the first input
Writes job["result"]: platform, versions, the segment map, latency_ms.
"""

import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

MARKER_MAGIC = 0x7001C0DE
AARCH64_GETPID = 172  # getpid ignores its arguments; the plugin reads them
# Invokes counted one by one after the warm-up (the median is reported). They repeat exactly across runs of the
# same job and, after the warm-up, to within ~1e-5 of each other within a process (MiniLM: 49205580 three times,
# then +243 and -46), so two are enough for the figure and for the spread the report shows; every counted invoke
# costs a full emulated inference (MiniLM's fp32 baseline: 122 M guest instructions, the slowest kind under qemu).
COUNT_INVOKES = 2


def _die_with_parent():
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _marker():
    import ctypes

    syscall = ctypes.CDLL(None, use_errno=True).syscall

    args = {(seg, phase): (ctypes.c_long(AARCH64_GETPID), ctypes.c_ulong(MARKER_MAGIC), ctypes.c_ulong(seg),
                           ctypes.c_ulong(phase)) for seg in range(64) for phase in (1, 2)}

    def mark(segment, phase):
        syscall(*args[segment, phase])
    return mark


def main(job_path):
    _die_with_parent()
    job = json.load(open(job_path))
    import numpy as np
    import ai_edge_litert

    from toolchain.runtimes.litert import LiteRTSession

    with np.load(job["inputs"]) as z:
        data = {k: z[k] for k in z.files}
    names = job["input_names"]
    # None: a split artifact (its raw outputs are not the spec's; the build applies the app's post-processing)
    shapes = [tuple(s) for s in job["output_shapes"]] if job.get("output_shapes") is not None else None

    def session(model, resolver):
        return LiteRTSession(job["models"][model], job.get("threads", 1), shapes, job.get("output_names"), names,
                             resolver=resolver)

    result = {"platform": {"machine": platform.machine(), "python": platform.python_version(),
                           "uname": " ".join(platform.uname()), "cpuinfo": _cpuinfo()},
              "versions": {"ai-edge-litert": _version("ai-edge-litert", ai_edge_litert),
                           "numpy": np.__version__}}
    outputs, seconds = {}, {}
    n = len(data[names[0]])
    for resolver in job.get("resolvers", []):
        s, t0 = session("artifact", resolver), time.perf_counter()
        runs = [s.run({k: data[k][i:i + 1] for k in names}) for i in range(n)]
        seconds[resolver] = time.perf_counter() - t0
        for j, parts in enumerate(zip(*runs)):
            outputs[f"{resolver}/{j}"] = np.concatenate(parts).astype(np.float32)
    if job.get("outputs"):
        np.savez(job["outputs"], **outputs)
    result["wall_s"] = seconds
    lat = job.get("latency")
    if lat:  # a real device: the same interleaved protocol as on the host (tensors set once, invoke timed)
        from toolchain.validation.latency import interleaved

        feed = {k: data[k][:1] for k in names}
        calls = {m: session(m, lat.get("resolver")).timer(feed) for m in ("artifact", "baseline")}
        result["latency_ms"] = interleaved(calls, lat["warmup"], lat["runs"])
    count = job.get("count")
    if count and platform.machine() == "aarch64":  # the marker is getpid on aarch64 only
        import gc

        mark, segments = _marker(), {}
        gc.disable()  # a collection inside a bracket would be counted
        feed = {k: data[k][:1] for k in names}
        for k, model in enumerate(count["models"]):
            s = session(model, count.get("resolver"))
            s.timer(feed)()  # sets the inputs; warm-up: kernels pack their weights on the first invoke
            invoke = s.interp._interpreter.Invoke  # the C++ call itself: no Python bookkeeping in the count
            for rep in range(1, COUNT_INVOKES + 1):
                seg = COUNT_INVOKES * k + rep
                mark(seg, 1)
                invoke()
                mark(seg, 2)
                segments[str(seg)] = model
        result["count_segments"] = segments
    json.dump(result, open(job["result"], "w"))


def _version(dist, module):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - a vendored copy without metadata
        return getattr(module, "__version__", "unknown")


def _cpuinfo():
    try:
        lines = open("/proc/cpuinfo").read().splitlines()
    except OSError:
        return ""
    keep = [ln for ln in lines if ln.split(":")[0].strip() in ("model name", "CPU part", "CPU implementer",
                                                                 "Features", "Hardware")]
    return "\n".join(dict.fromkeys(keep))


if __name__ == "__main__":
    main(sys.argv[1])
