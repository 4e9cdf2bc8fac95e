"""Shared fixtures: a tiny model package written into a temporary directory (whose path has a space in it),
deterministic weights (safetensors) and data (.npz), a build-spec writer, and build helpers that report which
stages ran.

Everything is built once per session into tmp dirs, never into the source tree. The models are real PyTorch
modules; every build below runs the real exporter, ONNX Runtime, onnx2tf and LiteRT.
"""

import io
import json
import math
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PACKAGE = "tc_tiny_models"  # the importable name of the temporary model package
MODELS_SRC = Path(__file__).with_name("tiny_models_src.py")


# ---- a minimal TOML writer (tomllib only reads) ------------------------------------------------------------
_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _key(k) -> str:
    k = str(k)
    return k if _BARE.fullmatch(k) else json.dumps(k)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, (str, Path)):
        return json.dumps(str(v))  # a TOML basic string: JSON's escapes are valid TOML escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _is_table_array(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dumps_toml(doc: dict) -> str:
    lines = []

    def table(prefix, d):
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and not _is_table_array(v)}
        if prefix and (scalars or not any(isinstance(v, dict) for v in d.values())):
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{_key(k)} = {_value(v)}")
        for k, v in d.items():
            name = f"{prefix}.{_key(k)}" if prefix else _key(k)
            if isinstance(v, dict):
                lines.append("")
                table(name, v)
            elif _is_table_array(v):
                for item in v:
                    lines.append("")
                    lines.append(f"[[{name}]]")
                    for ik, iv in item.items():
                        lines.append(f"{_key(ik)} = {_value(iv)}")

    table("", doc)
    return "\n".join(lines).strip() + "\n"


def deep_merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base`; a value of None removes the key."""
    out = dict(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# ---- the tiny model package -------------------------------------------------------------------------------
@dataclass
class TinyModel:
    """One model of the package, with its weights and data files."""

    factory: str  # function name in the package's models module
    weights: Path
    calibration: Path
    evaluation: Path
    inputs: list  # [{"name", "shape"}]
    outputs: list = field(default_factory=lambda: ["logits"])

    def torch_model(self):
        """The fp32 PyTorch model with its saved weights (imports the temporary package)."""
        import importlib

        from safetensors.torch import load_file

        module = importlib.import_module(f"{PACKAGE}.models")
        model = getattr(module, self.factory)()
        model.load_state_dict(load_file(str(self.weights)))
        return model.eval()


# name -> (factory, [(input name, example shape)])
MODEL_TABLE = {
    "tiny_cnn": ("tiny_cnn", [("input", (1, 1, 8, 8))]),
    "tiny_rgb": ("tiny_rgb", [("input", (1, 3, 8, 8))]),
    "branchy": ("branchy", [("input", (1, 1, 8, 8))]),
    "dict_out": ("dict_out", [("input", (1, 1, 8, 8))]),
    "frozen_scale": ("frozen_scale", [("input", (1, 1, 8, 8))]),
    "with_castlike": ("with_castlike", [("input", (1, 1, 8, 8))]),
    "two_inputs": ("two_inputs", [("zimg", (1, 1, 8, 8)), ("aux", (1, 5))]),
    "fp16_overflow": ("fp16_overflow", [("input", (1, 1, 8, 8))]),
    "gru_seq": ("gru_seq", [("input", (1, 8, 4))]),
    "const_plus_small": ("const_plus_small", [("x", (1, 16))]),
    "two_heads": ("two_heads", [("input", (1, 1, 8, 8))]),
}
OUTPUTS = {"two_heads": ["logits", "probs"], "const_plus_small": ["probs"]}  # others: one output, "logits"
NO_LABELS = {"const_plus_small"}  # evaluation data without labels: the default metric is then sqnr
N_CALIB, N_EVAL = 32, 64


def _outputs(model, arrays, names):
    import torch

    with torch.no_grad():
        out = model(*(torch.from_numpy(arrays[n]) for n in names))
    if isinstance(out, tuple):  # several outputs: the first holds the class scores
        out = out[0]
    return out.numpy() if isinstance(out, torch.Tensor) else None


def _make_model(root: Path, key: str, seed: int) -> TinyModel:
    import torch
    from safetensors.torch import save_file

    factory, inputs = MODEL_TABLE[key]
    d = root / key
    d.mkdir()
    module = sys.modules[f"{PACKAGE}.models"]
    torch.manual_seed(seed)
    model = getattr(module, factory)().eval()
    weights = d / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))

    rng = np.random.default_rng(seed)
    names = [n for n, _ in inputs]

    def sample(n):
        return {name: rng.standard_normal((n, *shape[1:])).astype(np.float32) for name, shape in inputs}

    calib, evaluation = sample(N_CALIB), sample(N_EVAL)
    np.savez(d / "calibration.npz", **calib)
    logits = _outputs(model, evaluation, names)
    if logits is None:  # the dict-returning model: any labels of the right count
        logits = rng.standard_normal((N_EVAL, 10))
    # Labels are the fp32 model's own predictions, so the reference top-1 accuracy is exactly 100.
    labels = {} if key in NO_LABELS else {"labels": logits.argmax(1).astype(np.int64)}
    np.savez(d / "eval.npz", **labels, **evaluation)
    return TinyModel(factory, weights, d / "calibration.npz", d / "eval.npz",
                     [{"name": n, "shape": list(s)} for n, s in inputs], list(OUTPUTS.get(key, ["logits"])))


@pytest.fixture(scope="session")
def model_root(tmp_path_factory) -> Path:
    """A directory with a space in its path holding the importable package `tc_tiny_models`."""
    root = tmp_path_factory.mktemp("tiny models")
    pkg = root / "code" / PACKAGE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Tiny models for the toolchain tests."""\n')
    shutil.copyfile(MODELS_SRC, pkg / "models.py")
    return root


@pytest.fixture(scope="session")
def models(model_root) -> dict:
    """name -> TinyModel, weights and data built once, deterministically."""
    import importlib

    code = str(model_root / "code")
    sys.path.insert(0, code)
    try:
        importlib.import_module(f"{PACKAGE}.models")
        return {key: _make_model(model_root, key, seed) for seed, key in enumerate(MODEL_TABLE)}
    finally:
        sys.path.remove(code)


@pytest.fixture(scope="session")
def python_path(model_root) -> Path:
    return model_root / "code"


@pytest.fixture(scope="session")
def write_spec(models, python_path):
    """write_spec(directory, which="tiny_cnn", filename="build.toml", **overrides) -> Path of a build spec.

    `which` names a model of MODEL_TABLE (or is a TinyModel, e.g. a private copy from copy_model).

    Overrides are top-level sections deep-merged into a valid spec (None removes a key). The default spec builds
    the x86_64 target only, with a short latency protocol. Paths in it are absolute (they contain a space).
    """

    def write(directory, which="tiny_cnn", filename="build.toml", **overrides):
        m = models[which] if isinstance(which, str) else which
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        name = which if isinstance(which, str) else m.factory
        base = {
            "model": {"name": name, "version": "1.0.0", "factory": f"{PACKAGE}.models:{m.factory}",
                      "weights": str(m.weights), "python_path": [str(python_path)]},
            "inputs": [dict(i) for i in m.inputs],
            "outputs": [{"name": o} for o in m.outputs],
            "data": {"calibration": str(m.calibration), "evaluation": str(m.evaluation), "labels_key": "labels"},
            "metric": {"name": "top1"},
            "targets": {"x86_64": {"max_metric_drop": 25.0, "latency": {"warmup": 2, "runs": 20}}},
        }
        doc = deep_merge(base, overrides)
        path = directory / filename
        path.write_text(dumps_toml(doc), encoding="utf-8")
        return path

    return write


def copy_model(model: TinyModel, directory: Path) -> TinyModel:
    """A private copy of a model's weights and data, for tests that change them."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for attr in ("weights", "calibration", "evaluation"):
        src = getattr(model, attr)
        files[attr] = directory / src.name
        shutil.copyfile(src, files[attr])
    return TinyModel(model.factory, files["weights"], files["calibration"], files["evaluation"],
                     [dict(i) for i in model.inputs], list(model.outputs))


def write_module(root: Path, module: str, source: str, factory: str):
    """Write a model module into root (a directory a spec's python_path can name) and return its factory."""
    import importlib

    (root / f"{module}.py").write_text(source)
    sys.path.insert(0, str(root))
    try:
        return getattr(importlib.import_module(module), factory)
    finally:
        sys.path.remove(str(root))


# ---- running builds ---------------------------------------------------------------------------------------
_LINE = re.compile(r"^\[[^\]]*\] (?P<stage>\w+)(?:\[(?P<target>[^\]]+)\])?\s+(?P<what>running|cached|done|FAILED)")


def parse_progress(text: str) -> dict:
    """Progress lines -> {"running": {(stage, target)}, "cached": {...}, "failed": {...}}."""
    out = {"running": set(), "cached": set(), "failed": set()}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        key = (m["stage"], m["target"])
        if m["what"] == "running":
            out["running"].add(key)
        elif m["what"] == "cached":
            out["cached"].add(key)
        elif m["what"] == "FAILED":
            out["failed"].add(key)
    return out


@dataclass
class BuildResult:
    report: dict
    code: int
    out: Path
    progress: str

    @property
    def ran(self) -> set:
        return parse_progress(self.progress)["running"]

    @property
    def cached(self) -> set:
        return parse_progress(self.progress)["cached"]

    @property
    def model_dir(self) -> Path:
        return self.out / self.report["model"]


def run_build(spec, out, targets=None, cache_dir=None) -> BuildResult:
    """toolchain.api.build with progress captured; raises what build raises."""
    from toolchain.api import build
    from toolchain.progress import Progress
    from toolchain.spec import load_spec

    stream = io.StringIO()
    progress = Progress(load_spec(spec).name, stream=stream)
    report, code = build(spec, out, cache_dir, targets, None, progress)
    return BuildResult(report, code, Path(out), stream.getvalue())


@pytest.fixture(scope="session")
def x86_build(tmp_path_factory, write_spec) -> BuildResult:
    """The tiny CNN built for x86_64 once (default latency protocol)."""
    d = tmp_path_factory.mktemp("x86 build")
    spec = write_spec(d / "spec", targets={"x86_64": {"max_metric_drop": 25.0, "latency": None}})
    return run_build(spec, d / "out")


@pytest.fixture(scope="session")
def arm64_build(tmp_path_factory, write_spec) -> BuildResult:
    """The tiny CNN built for arm64 once: the one onnx2tf conversion of the default test run."""
    d = tmp_path_factory.mktemp("arm64 build")
    spec = write_spec(d / "spec", targets={"x86_64": None, "arm64": {"max_metric_drop": 25.0}})
    return run_build(spec, d / "out")


def toolchain_exe() -> str:
    exe = VENV_BIN / "toolchain"
    if not exe.exists():
        pytest.skip(f"the toolchain console script is not installed in {VENV_BIN}")
    return str(exe)


def one_error_line(result, code=2, *needles) -> str:
    """A click result that ended as a user error: exit `code`, no traceback, one `error:` line holding needles."""
    assert result.exit_code == code, (result.exit_code, result.output[-3000:], result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not an internal error
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]
