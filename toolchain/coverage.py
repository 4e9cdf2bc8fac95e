"""Conversion coverage: the patterns edge models are made of (coverage_models.py), each built through every
target by the real pipeline, and a table of what reached which target, how closely, and by which route.

    toolchain coverage [--out DIR] [--only PATTERN,...] [--readme README.md]

For each pattern the suite writes what a user would write: the model module, its deterministic random weights
(safetensors), fixed random calibration and evaluation inputs (.npz, no labels) and a build spec that names no
metric, so every output is judged by the build's default agreement metric, sqnr (validation/metrics.py: the
error against the fp32 output's input-dependent variation, in dB), with the floors of MIN_SQNR_DB (the build's
defaults for int8 and fp16, written out). The precision plans judge their variants by the same gates. Builds run
one at a time (onnx2tf is ~10 s and ~0.7 GiB per conversion).

Where a target cannot run here (cuda without a GPU) the fp16 artifact's agreement comes from the CPU provider and
the table says so. The table is written to DIR/coverage.md (and coverage.json); with --readme it replaces the
block between the coverage markers in README.md.
"""

import time
from pathlib import Path

from .coverage_table import END, START, markdown, replace_block, row_for, route_of, write_outputs  # noqa: F401
from .toml_write import toml_value

TARGETS = ("x86_64", "arm64", "cuda")
# the lowest SQNR (dB) each output may have, per target (metrics.DEFAULT_MIN_SQNR_DB for int8 / fp16)
MIN_SQNR_DB = {"x86_64": 15.0, "arm64": 15.0, "cuda": 40.0}
N_CALIB, N_EVAL = 128, 64
MODULE = "tc_coverage_models"  # the name the suite's model module is imported under (a copy, as a user's)
LATENCY = {"warmup": 2, "runs": 10}  # the suite measures agreement; latency is the build's own business
CLASS_OUTPUTS = ("logits", "probs")  # a first output of class scores: top-1 agreement applies


def patterns() -> dict:
    from . import coverage_models

    return dict(coverage_models.PATTERNS)


def spec_text(pattern: str, inputs, outputs, targets) -> str:
    """The build spec a user would write for one pattern (paths relative to the spec)."""
    lines = ["[model]", f'name = "{pattern}"', 'version = "1.0.0"', f'factory = "{MODULE}:{patterns()[pattern][0]}"',
             'weights = "weights.safetensors"', 'python_path = [".."]', ""]
    for name, shape in inputs:
        lines += ["[[inputs]]", f'name = "{name}"', f"shape = {toml_value(list(shape))}", ""]
    for name in outputs:
        lines += ["[[outputs]]", f'name = "{name}"', ""]
    lines += ["[data]", 'calibration = "calibration.npz"', 'evaluation = "eval.npz"', ""]
    for t in targets:
        lines += [f"[targets.{t}]", f"min_sqnr_db = {MIN_SQNR_DB.get(t, 15.0)!r}", f"latency = {toml_value(LATENCY)}",
                  ""]
    return "\n".join(lines)


def prepare(pattern: str, root: Path, targets=TARGETS) -> Path:
    """Write one pattern's model package, weights, data and spec under root; returns the spec path."""
    import numpy as np
    from safetensors.torch import save_file

    from . import coverage_models

    factory, inputs, outputs, _ = coverage_models.PATTERNS[pattern]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    module_file = root / f"{MODULE}.py"
    src = Path(coverage_models.__file__).read_text()
    if not module_file.is_file() or module_file.read_text() != src:
        module_file.write_text(src)
    d = root / pattern
    d.mkdir(parents=True, exist_ok=True)
    model = getattr(coverage_models, factory)()
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    _write_if_changed(d / "weights.safetensors", lambda p: save_file(state, str(p)))
    seed = 1000 * (1 + sorted(coverage_models.PATTERNS).index(pattern))
    for fname, n, offset in (("calibration.npz", N_CALIB, 1), ("eval.npz", N_EVAL, 2)):
        tensors = coverage_models.example_inputs(pattern, n, seed + offset)
        arrays = {name: t.numpy().astype(np.float32) for (name, _), t in zip(inputs, tensors)}
        _write_if_changed(d / fname, lambda p, a=arrays: np.savez(p, **a))
    spec = d / "build.toml"
    text = spec_text(pattern, inputs, outputs, targets)
    if not spec.is_file() or spec.read_text() != text:
        spec.write_text(text)
    return spec


def _write_if_changed(path: Path, write):
    """Write through a temp file; keep the old file (and its mtime, so the no-op stamp holds) when identical."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write(tmp)
    if path.is_file() and path.read_bytes() == tmp.read_bytes():
        tmp.unlink()
    else:
        tmp.replace(path)


# ---- one row per pattern and target -----------------------------------------------------------------------


def run(out_dir="build/coverage", only=None, targets=TARGETS, progress=None, echo=print) -> list:
    """Build every pattern (or those in `only`) for every target, one at a time. Returns the table rows."""
    from .api import build
    from .errors import StageError, ToolchainError
    from .progress import Progress

    known = patterns()
    names = list(only) if only else list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ToolchainError(f"coverage: unknown pattern {unknown[0]!r} (known: {', '.join(known)})")
    out_dir = Path(out_dir)
    specs_dir, build_dir = out_dir / "specs", out_dir / "build"
    rows = []
    for name in names:
        t0 = time.monotonic()
        spec = prepare(name, specs_dir, targets)
        prog = progress(name) if progress else Progress(name, quiet=True)
        try:
            report, _ = build(spec, build_dir, None, list(targets), None, prog)
            entries = report.get("targets", {})
        except StageError as e:  # a shared stage (trace, reference) failed: every target of the pattern fails
            entries = {t: {"status": "failed", "reason": str(e), "failed_stage": e.stage} for t in targets}
        for t in targets:
            row = row_for(name, t, entries.get(t))
            if row["top1_agreement"] is None and row["cosine"] is not None:
                row["top1_agreement"] = top1_agreement(spec, build_dir, t, entries[t])
            rows.append(row)
        if echo:
            got = ", ".join(f"{r['target']} {r['status']}" + (f" {r['sqnr_db']:.1f} dB" if r["sqnr_db"] is not None
                                                              else "")
                            for r in rows[-len(targets):])
            echo(f"coverage {name}: {got} ({time.monotonic() - t0:.0f} s)")
    return rows


def top1_agreement(spec_path, build_dir, target_name, entry):
    """% of evaluation samples whose top-1 class is PyTorch's, for a model whose first output is class scores
    (2-D, several columns), by running the built artifact here (the build reports it under the top1 metric only).
    A cuda artifact runs on the CPU provider where no CUDA device is present. None where it does not apply."""
    import numpy as np

    from .data import load_arrays
    from .runtimes import RuntimeUnavailable, open_artifact
    from .spec import load_spec
    from .stages import reference
    from .targets import load_target
    from .validation.target import outputs_on

    spec = load_spec(spec_path)
    model_dir = Path(build_dir) / spec.name
    if "artifact" not in entry or spec.outputs[0].name not in CLASS_OUTPUTS:
        return None
    ref = reference.load(model_dir / "fp32")
    if ref[0].ndim != 2 or ref[0].shape[1] < 2:
        return None
    target = load_target(target_name, None, spec.targets[target_name].overrides, spec.path)
    names = [t.name for t in spec.inputs]
    kw = {"output_shapes": [r.shape[1:] for r in ref], "output_names": [o.name for o in spec.outputs],
          "input_names": names}
    try:
        session = open_artifact(target, model_dir / entry["artifact"], **kw)
    except RuntimeUnavailable:
        if target.runtime != "onnxruntime":
            return None
        session = open_artifact(target, model_dir / entry["artifact"], providers=["CPUExecutionProvider"])
    out = outputs_on(session, load_arrays(spec.evaluation, spec, "evaluation"), names)
    return float((out[0].argmax(1) == ref[0].argmax(1)).mean() * 100.0)


# ---- the table ---------------------------------------------------------------------------------------------


