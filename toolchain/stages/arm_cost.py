"""The ARM cost model as a measuring stick for the arm64 precision plan and the bench: per-inference guest
instruction counts of several TFLite models on one pinned core, counted in one emulated process (qemu TCG
instruction-count plugin between marker syscalls around single invokes; see executors/emulated.py).

Counts are deterministic (the same job repeats them exactly), so a plan that decides by them rebuilds
byte-identically, unlike one that decides by host timings. They are a cost model, not a latency: memory stalls
and cache misses are not in them.
"""

import json
import tempfile
from pathlib import Path

import numpy as np

DEFAULT_CORE = "cortex-a76"


def model_for(target=None) -> dict | None:
    """The cost model a target can use here: {"executor": identity, "core": first pinned core}, or None where the
    emulator or its counting plugin is not set up (the plan then does not search for speed, and says so). Part of
    the tflite stage's parameters, so a plan decided on one emulator is not reused for another."""
    from ..executors.emulated import EmulatedExecutor

    ex = EmulatedExecutor()
    if not ex.can_count():
        return None
    opts = (getattr(target, "tables", {}) or {}).get("executor") or {}
    cores = opts.get("cores") or [DEFAULT_CORE]
    return {"executor": ex.identity(), "core": cores[0]}


# (model sha256, core, first input sample's sha256, emulator) -> instructions: a model counted once in a process
# (the arm64 plan counts its best candidate again next to a combined one) is not emulated again.
_COUNTED = {}


def count(models: dict, inputs: dict, input_names, output_names, output_shapes, core=DEFAULT_CORE,
          timeout_s=3600) -> dict:
    """models: label -> .tflite path. Returns label -> instructions per inference (median of the counted single
    invokes on the first input sample, after a warm-up invoke; default resolver, i.e. XNNPACK, one thread)."""
    from ..digest import sha256_arrays, sha256_file
    from ..executors.emulated import EmulatedExecutor

    ex = EmulatedExecutor()
    sample = sha256_arrays({n: np.asarray(inputs[n][:1]) for n in input_names})
    emulator = json.dumps(ex.identity(), sort_keys=True)
    keys = {label: (sha256_file(p), core, sample, emulator) for label, p in models.items()}
    known = {label: _COUNTED[k] for label, k in keys.items() if k in _COUNTED}
    todo = {label: p for label, p in models.items() if label not in known}
    if todo:
        got = _count(ex, todo, inputs, input_names, output_names, output_shapes, core, timeout_s)
        _COUNTED.update({keys[label]: n for label, n in got.items()})
        known.update(got)
    return {label: known[label] for label in models}


def _count(ex, models, inputs, input_names, output_names, output_shapes, core, timeout_s) -> dict:
    labels = list(models)
    keys = {label: f"m{i}" for i, label in enumerate(labels)}  # file-name-safe model keys
    with tempfile.TemporaryDirectory(prefix="toolchain-armcost-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "inputs.npz", **{n: np.asarray(inputs[n][:1]) for n in input_names})
        files = {f"{keys[k]}.tflite": Path(p) for k, p in models.items()}
        files["inputs.npz"] = tmp / "inputs.npz"
        job = {"models": {keys[k]: f"{keys[k]}.tflite" for k in labels}, "inputs": "inputs.npz",
               "input_names": list(input_names), "output_names": list(output_names),
               "output_shapes": [list(s) for s in output_shapes], "threads": 1, "resolvers": [], "outputs": None,
               "result": "result.json", "count": {"models": [keys[k] for k in labels], "resolver": "default"},
               "latency": None}
        run = ex.run(job, files, tmp / "run", timeout_s, cpu=core, count=True)
        per = {}
        for seg, key in run.result["count_segments"].items():
            per.setdefault(key, []).append(run.counts[seg])
    back = {v: k for k, v in keys.items()}
    return {back[key]: int(np.median(v)) for key, v in per.items()}
