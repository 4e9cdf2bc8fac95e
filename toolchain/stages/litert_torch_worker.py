"""Child process of the litert_torch stage; runs INSIDE the side venv (.venv-litert, `make venv-litert`).

`<side venv>/bin/python -I litert_torch_worker.py JOB` loads the torch.export program (.pt2) the stage saved,
converts it with litert-torch to an fp32 TFLite, quantizes that with one ai-edge-quantizer recipe and writes both
files plus the converter versions. It never imports the user's code (the .pt2 holds the graph and the weights),
nor anything of the toolchain: the side venv has neither. Only the standard library, torch, litert_torch and
ai_edge_quantizer are imported here.

A failure prints one `LITERT_TORCH_FAILED: <step>: <error>` line on stderr and exits 3 (FAILED), so the stage
can name the step (load, convert, quantize) and the error without parsing a traceback.
"""

import ctypes
import json
import os
import signal
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

FAILED = 3
DISTRIBUTIONS = ("litert-torch", "ai-edge-quantizer", "ai-edge-litert", "litert-converter", "torch", "numpy")
_TORCH_DTYPES = ("float32", "float16", "int64", "int32", "uint8", "int8", "bool")


def _die_with_parent(parent_pid):
    """Killed when the build process dies (PR_SET_PDEATHSIG), so no converter outlives an interrupted build."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        return  # not Linux: the stage's time limit still bounds the child
    if parent_pid and os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _fail(step, exc):
    msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:1500]
    traceback.print_exc(file=sys.stderr)
    print(f"LITERT_TORCH_FAILED: {step}: {msg}", file=sys.stderr, flush=True)
    sys.exit(FAILED)


def example_inputs(inputs, torch):
    """The stage's example tensors, rebuilt from [name, shape, dtype] (the same values as trace.example_inputs)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, shape, dtype in inputs:
        dt = getattr(torch, dtype)
        out[name] = torch.randn(shape, generator=g).to(dt) if dt.is_floating_point else torch.ones(shape, dtype=dt)
    return out


def versions():
    found = {}
    for dist in DISTRIBUTIONS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def main(job_path):
    job = json.loads(Path(job_path).read_text())
    _die_with_parent(job.get("parent_pid"))
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    t = time.monotonic()
    try:
        import torch

        program = torch.export.load(job["pt2"])
        module = program.module()
        example = example_inputs(job["inputs"], torch)
    except Exception as e:  # noqa: BLE001 - every failure is reported as one line
        _fail("load", e)
    timings["load_s"] = round(time.monotonic() - t, 2)

    t = time.monotonic()
    try:
        import litert_torch

        if job["named"]:  # the program takes keyword inputs: the TFLite signature keeps the spec's names
            edge = litert_torch.convert(module, sample_kwargs=example)
        else:
            edge = litert_torch.convert(module, tuple(example[n] for n, _, _ in job["inputs"]))
        edge.export(job["fp32"])
    except Exception as e:  # noqa: BLE001
        _fail("convert", e)
    timings["convert_s"] = round(time.monotonic() - t, 2)

    t = time.monotonic()
    try:
        from ai_edge_quantizer import quantizer, recipe

        qt = quantizer.Quantizer(job["fp32"])
        qt.load_quantization_recipe(getattr(recipe, job["recipe"])())
        qt.quantize().export_model(job["int8"], overwrite=True)
    except Exception as e:  # noqa: BLE001
        _fail("quantize", e)
    timings["quantize_s"] = round(time.monotonic() - t, 2)

    Path(job["result"]).write_text(json.dumps({"versions": versions(), "timings": timings}))


if __name__ == "__main__":
    main(sys.argv[1])
