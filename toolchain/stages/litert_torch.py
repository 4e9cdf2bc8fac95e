"""litert_torch: PyTorch -> TFLite with litert-torch, then int8 with one ai-edge-quantizer recipe (dynamic range by
default: int8 weights, float activations), plus the fp32 TFLite baseline from the same conversion.

The ARM route for models onnx2tf cannot take to a usable int8 TFLite (transformers: MiniLM loses its neighbours
under full-integer int8). litert-torch needs ai-edge-litert 2.3 and numpy 2, which the project venv cannot hold,
so it lives in a side venv (`make venv-litert` creates .venv-litert) and runs only as a child process:

  build process (project venv)                     child (side venv, litert_torch_worker.py)
  torch.export.export(model) -> model.pt2   --->   torch.export.load -> litert_torch.convert -> fp32 .tflite
                                                   ai_edge_quantizer <recipe> -> int8 .tflite

The child never imports the user's code (the .pt2 holds graph and weights) nor the toolchain. It runs under a
time limit, dies with the build (PR_SET_PDEATHSIG), and a crash, a hang or an error becomes a StageError naming
the step. Both files are then loaded and run once on the project's own LiteRT (ai-edge-litert from the project
venv, in a child process): what the converter's newer LiteRT wrote must run on the runtime the target validates
and ships with.

Shapes are fixed at the spec's example shapes (litert-torch does not convert MiniLM with dynamic sequence length);
int64 inputs become int32 in the TFLite (litert-torch downcasts 64-bit types). The TFLite signature keeps the
spec's input and output names when they are Python identifiers (positional args_N / output_N otherwise).
"""

import json
import keyword
import os
import shutil
import sys
import time
from pathlib import Path

from ..debris import scratch_dir
from ..errors import StageError, reraise_write_error
from ..executors import process
from ..executors.base import ExecutorError
from ..options import check_table, defaults
from .litert_side_venv import CHECKOUT, lock_digest, side_python, side_versions, venv_dir  # noqa: F401
from .litert_side_venv import _public

NAME = "litert_torch"
CHILD_PROCESS = True  # its converter runs in child processes: the pipeline runs its target in a second lane
VERSION = 3  # 3: unstamped again; the metadata stage (stages/metadata.py) stamps a copy
LIBRARIES = ("torch", "ai-edge-litert")
OUTPUT = "model.int8.tflite"
BASELINE = "model.fp32.tflite"
DEFAULTS = defaults("convert:litert-torch")  # options, types and defaults: options.SCHEMAS
# Recipes that need no calibration data, and what each makes of the model.
RECIPES = {
    "dynamic_wi8_afp32": "dynamic-range int8: int8 weights, float activations",
    "dynamic_legacy_wi8_afp32": "dynamic-range int8 (legacy: only layers with >= 1024 weights): int8 weights, "
                                "float activations",
    "weight_only_wi8_afp32": "weight-only int8: int8 weights dequantized to float, float compute",
}
# The side venv's distributions that can change an artifact: part of the stage's cache key (side_versions).
WORKER = Path(__file__).with_name("litert_torch_worker.py")
WORKER_FAILED = 3  # litert_torch_worker.FAILED (not imported: the worker module belongs to the side venv)


def params_for(table: dict, path, prefix="convert") -> dict:
    from ..errors import SpecError

    from ..spec import _Table

    _Table(path, prefix, table).reject_unknown(set(DEFAULTS))  # did-you-mean
    check_table(path, prefix, table, "convert:litert-torch")  # types, allowed values
    params = {**DEFAULTS, **table}
    if params["converter"] != "litert-torch":
        raise SpecError(path, f"{prefix}.converter",
                        f"unknown converter {params['converter']!r} for this stage (known: litert-torch)")
    if params["recipe"] not in RECIPES:
        raise SpecError(path, f"{prefix}.recipe",
                        f"unknown recipe {params['recipe']!r} (known: {', '.join(RECIPES)}; static recipes need "
                        "calibration, which this stage does not run)")
    t = params["timeout_s"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
        raise SpecError(path, f"{prefix}.timeout_s", f"must be a positive number of seconds, got {t!r}")
    v = params["venv"]
    if not isinstance(v, str) or not v.strip():
        raise SpecError(path, f"{prefix}.venv", f"must be a non-empty path to the side venv, got {v!r}")
    return params


def run(model, params: dict, out_dir, spec, target_name) -> dict:
    """Convert the torch model (built, weights loaded, eval mode) and write OUTPUT and BASELINE into out_dir."""
    import torch

    out_dir = Path(out_dir)
    python = side_python(params, target_name)
    side = side_versions(params)
    if side.get("torch") and _public(side["torch"]) != _public(torch.__version__):
        raise StageError(NAME, f"the side venv {venv_dir(params)} has torch {side['torch']} but the build runs torch "
                               f"{torch.__version__}; a torch.export program loads only on the torch that saved it: "
                               "`make venv-litert` rebuilds the side venv", target_name)
    timings = {}
    with scratch_dir("toolchain-litert-torch") as scratch:
        scratch = Path(scratch)
        t0 = time.monotonic()
        named = export_program(model, spec, scratch / "model.pt2", target_name)
        timings["export_s"] = round(time.monotonic() - t0, 2)
        job = {"pt2": str(scratch / "model.pt2"), "out": str(scratch / "out"),
               "fp32": str(scratch / "out" / BASELINE), "int8": str(scratch / "out" / OUTPUT),
               "result": str(scratch / "out" / "result.json"), "recipe": params["recipe"], "named": named,
               "inputs": [[t.name, list(t.shape), t.dtype] for t in spec.inputs]}
        t0 = time.monotonic()
        result = _run_worker(python, job, scratch, params["timeout_s"], target_name)
        timings.update(result.get("timings", {}))
        timings["worker_s"] = round(time.monotonic() - t0, 2)
        produced = {name: scratch / "out" / name for name in (OUTPUT, BASELINE)}
        for name, p in produced.items():
            if not p.is_file() or p.stat().st_size == 0:
                raise StageError(NAME, f"litert-torch finished without writing {name}", target_name)
        left = max(params["timeout_s"] - timings["worker_s"], 60)
        io = _check_on_litert([produced[BASELINE], produced[OUTPUT]], left, target_name)
        for name, p in produced.items():
            shutil.copyfile(p, out_dir / name)
    dtypes = sorted({d["dtype"] for d in io["inputs"]})
    shapes = [f"{t.name}:" + ",".join(str(d) for d in t.shape) for t in spec.inputs]
    meta = {"converter": "litert-torch",
            "route": f"pytorch -> litert-torch -> tflite, ai-edge-quantizer {params['recipe']}",
            "recipe": params["recipe"], "full_integer": False,
            "note": f"{RECIPES[params['recipe']]}; inputs {', '.join(dtypes)}",
            "converter_versions": result.get("versions") or side,
            "input_shapes": shapes, "named_io": named, "io": io, "timings": timings,
            "sizes": {name: (out_dir / name).stat().st_size for name in (OUTPUT, BASELINE)}}
    if any(t.dynamic_axes for t in spec.inputs):
        meta["fixed_shapes"] = "the spec's dynamic axes are fixed at its example shapes (litert-torch converts " \
                               "fixed shapes only)"
    return meta


# ---- the handoff: torch.export program, inputs and outputs named as in the spec ---------------------------
def _identifiers(names) -> bool:
    return (len(set(names)) == len(names)
            and all(n.isidentifier() and not keyword.iskeyword(n) and n not in ("self", "inner") for n in names))


def _wrapper(model, in_names, out_names, tuple_out, torch):
    """A module whose forward takes the spec's input names as keywords and returns {output name: tensor}: the
    TFLite signature then carries the spec's names (litert-torch names inputs after keywords, outputs after keys)."""
    ret = "{" + ", ".join(f"{n!r}: y[{i}]" if tuple_out else f"{n!r}: y" for i, n in enumerate(out_names)) + "}"
    src = f"def forward(self, {', '.join(in_names)}):\n    y = self.inner({', '.join(in_names)})\n    return {ret}\n"
    scope = {}
    exec(compile(src, "<litert_torch named io>", "exec"), scope)  # names checked: identifiers, not keywords
    cls = type("NamedIO", (torch.nn.Module,), {"forward": scope["forward"]})
    w = cls()
    w.inner = model
    return w.eval()


def export_program(model, spec, path, target_name=None) -> bool:
    """torch.export the model on example inputs of the spec's shapes and dtypes and save it to path (.pt2).
    Returns whether the program takes named inputs (the spec's names) and returns named outputs."""
    import torch

    from .trace import example_inputs

    args = example_inputs(spec.inputs, torch)
    in_names = [t.name for t in spec.inputs]
    out_names = [o.name for o in spec.outputs]
    with torch.no_grad():
        try:
            result = model(*args)
        except Exception as e:  # noqa: BLE001 - any failure of the user's forward
            reraise_write_error(e)
            raise StageError(NAME, f"the model's forward failed on example inputs: {type(e).__name__}: "
                                   f"{_short(e)}", target_name) from None
    results = result if isinstance(result, (tuple, list)) else (result,)
    if isinstance(result, dict) or not all(isinstance(r, torch.Tensor) for r in results):
        raise StageError(NAME, f"the model returns a {type(result).__name__}; export needs a tensor or a tuple of "
                               f"tensors (wrap the model to return {', '.join(out_names)})", target_name)
    if len(results) != len(out_names):
        raise StageError(NAME, f"the model returns {len(results)} tensors but the spec names {len(out_names)} "
                               "outputs", target_name)
    named = _identifiers(in_names) and _identifiers(out_names)
    try:
        if named:
            wrapped = _wrapper(model, in_names, out_names, not isinstance(result, torch.Tensor), torch)
            program = torch.export.export(wrapped, (), dict(zip(in_names, args)))
        else:
            program = torch.export.export(model, args)
        torch.export.save(program, str(path))
    except Exception as e:  # noqa: BLE001
        reraise_write_error(e)
        raise StageError(NAME, f"torch.export failed: {type(e).__name__}: {_short(e)}. The litert-torch route needs "
                               "a model torch.export can capture (no data-dependent control flow, no Python-side "
                               "state); the other targets still build", target_name) from None
    return named


def _short(e, n=400):
    return " ".join(str(e).split())[:n]


# ---- the child converter ------------------------------------------------------------------------------------
def _run_worker(python, job, scratch, timeout_s, target_name) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}  # nothing of the project venv
    env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    job_path = scratch / "job.json"
    job_path.write_text(json.dumps({**job, "parent_pid": os.getpid()}))
    # -I: isolated (no user site, no PYTHON* variables, and the worker's folder is not put first on sys.path,
    # where toolchain/stages/trace.py would shadow the standard library's trace module).
    try:  # the one child-process runner (executors/process.py): time limit, dies with us, group killed
        proc = process.run_child([str(python), "-I", str(WORKER), str(job_path)], "litert-torch", timeout_s,
                                 env=env, cwd=scratch)
    except ExecutorError:
        raise StageError(NAME, f"litert-torch did not finish within {timeout_s} s (convert.timeout_s); killed",
                         target_name) from None
    log = proc.log
    if proc.returncode < 0:
        raise StageError(NAME, f"the litert-torch converter process died with {proc.signal}; {_cause(log)}",
                         target_name)
    if proc.returncode == WORKER_FAILED:
        raise StageError(NAME, _cause(log), target_name)
    if proc.returncode != 0:
        raise StageError(NAME, f"the litert-torch converter process exited with status {proc.returncode}: "
                               f"{_cause(log)}", target_name)
    try:
        return json.loads((Path(job["result"])).read_text())
    except (OSError, ValueError):
        return {}


_STEPS = {"load": "loading the exported program in the side venv failed",
          "convert": "litert-torch could not convert the model",
          "quantize": "ai-edge-quantizer could not quantize the converted model"}


def _cause(log: str) -> str:
    """The worker's LITERT_TORCH_FAILED line (step and error), else the last error line of its output."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    failed = [ln for ln in lines if ln.startswith("LITERT_TORCH_FAILED:")]
    if failed:
        _, step, msg = (failed[-1].split(":", 2) + ["", ""])[:3]
        return f"{_STEPS.get(step.strip(), step.strip())}: {msg.strip()[:600]}"
    errors = [ln for ln in lines if "Error" in ln or "error:" in ln or "Exception" in ln]
    if errors:
        return errors[-1][:600]
    return (lines[-1][:600] if lines else "no output")


# ---- the check on the project's LiteRT ----------------------------------------------------------------------
def _check_on_litert(paths, timeout_s, target_name) -> dict:
    """Load and run each file once on the project venv's ai-edge-litert, in a child process (a crash of the
    runtime on what a newer converter wrote must not take the build down). Returns the last file's I/O details."""
    try:
        proc = process.run_child([sys.executable, "-m", "toolchain.stages.litert_check", "--check",
                                  *map(str, paths)], "LiteRT check", timeout_s,
                                 cwd=CHECKOUT if CHECKOUT.is_dir() else None)
    except ExecutorError:
        raise StageError(NAME, f"the converted model did not run on LiteRT within {int(timeout_s)} s; killed",
                         target_name) from None
    out = proc.log
    if proc.returncode != 0:
        lines = [ln for ln in out.splitlines() if ln.startswith("LITERT_CHECK_FAILED:")]
        msg = (lines[-1].split(":", 1)[1].strip() if lines else
               f"LiteRT died with {proc.signal}" if proc.returncode < 0 else _cause(out))
        raise StageError(NAME, f"litert-torch converted the model but the result does not run on the project's "
                               f"LiteRT (ai-edge-litert {_litert_version()}): {msg[:600]}", target_name)
    reports = [ln for ln in out.splitlines() if ln.startswith("LITERT_IO:")]
    return json.loads(reports[-1].split(":", 1)[1]) if reports else {"inputs": [], "outputs": []}


def _litert_version():
    from ..versions import version_of

    return version_of("ai-edge-litert")


# ---- declaration (stages/__init__.py): PyTorch -> TFLite without ONNX (its own venv) -----------------------
TABLE, SCHEMA = "convert", "convert:litert-torch"  # the target file's other convert options are onnx2tf's


def applies(target) -> bool:
    return target.table(TABLE).get("converter") == "litert-torch"


def needs(params) -> tuple:
    return ("model", "io")  # the model only: this route never reads the traced ONNX


def extra_deps(params) -> dict:
    return {"converter_lock": lock_digest(params)}


def build(inp, params, out_dir) -> dict:
    return run(inp.model, params, out_dir, inp.spec, inp.target_name)
