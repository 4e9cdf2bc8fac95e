"""Start from an nn.Module in Python: write what a build spec needs (weights, data, a generated factory, the spec)
into a sources directory, so the in-memory model goes through the very pipeline, cache and stamp a build.toml does.

The generated factory hands back the registered model object of this process; its file carries a digest of the
model's code (every class's source) and structure, so editing the class or its hyper-parameters rebuilds, as
editing a model module does. Files are rewritten only when their content changes, so a second call with the same
model and data is a no-op build.
"""

import copy
import hashlib
import inspect
import json
import re
from pathlib import Path

from .errors import ToolchainError
from .toml_write import toml_value

_MODELS = {}  # model name -> the nn.Module last given to toolchain.build() under that name in this process


def factory_module(name: str) -> str:
    """One module per model name (a module, once imported, stays in sys.modules)."""
    return "tc_inmemory_" + re.sub(r"\W", "_", name)


def model_for(name: str):
    """Called by a generated factory: a copy of the registered model (the pipeline may modify what it gets)."""
    model = _MODELS.get(name)
    if model is None:
        raise ToolchainError("this spec was generated from an in-memory nn.Module by toolchain.build(); build it "
                             "from that Python program (or write a factory and a build.toml for the CLI)")
    return copy.deepcopy(model)


def code_digest(model) -> str:
    """The model's code and structure: the source of every non-torch class in it, and its repr (which names
    layer sizes and options). Weights are digested separately (the weights file)."""
    parts = []
    for cls in sorted({type(m) for m in model.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        name = f"{cls.__module__}.{cls.__qualname__}"
        if cls.__module__.startswith("torch."):
            parts.append(name)
            continue
        try:
            parts.append(name + "\n" + inspect.getsource(cls))
        except (OSError, TypeError):  # defined where no source is kept (e.g. exec): its name and repr stand in
            parts.append(name)
    parts.append(repr(model))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._-")
    return s or "model"


def _write_if_changed(path: Path, data: bytes):
    from .cache import atomic_write

    if path.is_file() and path.read_bytes() == data:
        return
    atomic_write(path, data)


def _arrays(value, what, input_names) -> dict:
    """A dict of arrays, a single array (the model's only input) or a callable returning either."""
    import numpy as np

    if callable(value) and not hasattr(value, "shape"):
        value = value()
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if len(input_names) != 1:
            raise ToolchainError(f"{what}: one array given, but the model has inputs {', '.join(input_names)}; "
                                 "pass a dict of arrays named like the inputs")
        value = {input_names[0]: value}
    if not isinstance(value, dict):
        raise ToolchainError(f"{what}: expected a dict of arrays, an array or a callable, got {type(value).__name__}")
    out = {}
    for k, v in value.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        out[str(k)] = np.ascontiguousarray(np.asarray(v))
    return out


def _write_npz_if_changed(path: Path, arrays: dict):
    """np.savez stamps the time into the zip: rewrite only when the arrays differ, so the digest stays put."""
    import io

    import numpy as np

    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if sorted(z.files) == sorted(arrays) and all(
                        z[k].dtype == arrays[k].dtype and np.array_equal(z[k], arrays[k]) for k in arrays):
                    return
        except (OSError, ValueError, EOFError):
            pass
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _write_if_changed(path, buf.getvalue())


def _inputs(model, inputs):
    """[(name, example tensor)] from a dict of tensors/arrays/shapes, one tensor, or one shape."""
    import numpy as np
    import torch

    if inputs is None:
        raise ToolchainError("inputs: required for an nn.Module (e.g. inputs={'input': (1, 3, 32, 32)} or an "
                             "example tensor)")
    if not isinstance(inputs, dict):
        inputs = {"input": inputs}
    out = []
    for name, v in inputs.items():
        if isinstance(v, (tuple, list)) and all(isinstance(d, int) for d in v):
            v = torch.zeros(tuple(v), dtype=torch.float32)
        elif isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
        if not isinstance(v, torch.Tensor):
            raise ToolchainError(f"inputs.{name}: expected a shape, an array or a tensor, got {type(v).__name__}")
        out.append((str(name), v))
    return out


def _count_outputs(model, examples) -> int:
    import torch

    with torch.no_grad():
        y = copy.deepcopy(model).eval()(*[t for _, t in examples])
    return len(y) if isinstance(y, (tuple, list)) else 1


def _per_name(value, names, what, is_one) -> dict:
    """`value` for the first name (is_one(value)), or a dict of name -> value; checked against the names."""
    if value is None:
        return {}
    if is_one(value):
        return {names[0]: value}
    if not isinstance(value, dict):
        raise ToolchainError(f"{what}: expected a value for the first one or a dict keyed by {', '.join(names)}")
    unknown = [k for k in value if k not in names]
    if unknown:
        raise ToolchainError(f"{what}: {unknown[0]!r} is none of {', '.join(names)}")
    return dict(value)


def _plain(v):
    """numbers or lists of numbers (numpy arrays and scalars too) as TOML can write them"""
    if hasattr(v, "tolist"):
        v = v.tolist()
    return [float(x) for x in v] if isinstance(v, (list, tuple)) else float(v)


# Budgets when none is given: top-1 may drop one point; sqnr has per-precision floors of its own (metrics.py).
DEFAULT_BUDGETS = {"top1": 1.0, "cosine": 0.01}
BUDGET_KEYS = {"top1": "max_metric_drop", "cosine": "max_metric_drop", "sqnr": "min_sqnr_db"}


def write_sources(model, root: Path, *, name=None, version="0.0.0", inputs=None, outputs=None, calibration=None,
                  evaluation=None, labels=None, metric=None, targets=("x86_64",), budgets=None,
                  target_options=None, class_names=None, normalization=None) -> Path:
    """Materialise an in-memory model's build under ROOT/NAME; returns the spec path."""
    import torch
    from safetensors.torch import save

    if not isinstance(model, torch.nn.Module):
        raise ToolchainError(f"model: expected a torch.nn.Module or a build.toml path, got {type(model).__name__}")
    name = _slug(name or type(model).__name__.lower())
    src = Path(root) / name
    src.mkdir(parents=True, exist_ok=True)
    examples = _inputs(model, inputs)
    input_names = [n for n, _ in examples]
    n_out = _count_outputs(model, examples)
    outputs = list(outputs or (["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]))
    if len(outputs) != n_out:
        raise ToolchainError(f"outputs: the model returns {n_out} output(s), {len(outputs)} name(s) given")
    if calibration is None:
        raise ToolchainError("calibration: required (a dict of arrays named like the inputs, an array, or a callable)")
    cal = _arrays(calibration, "calibration", input_names)
    ev = _arrays(evaluation if evaluation is not None else calibration, "evaluation", input_names)
    metric = metric or ("top1" if labels is not None else "sqnr")
    if labels is not None:
        import numpy as np

        ev["labels"] = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels)
    _write_npz_if_changed(src / "calibration.npz", cal)
    _write_npz_if_changed(src / "evaluation.npz", ev)

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    _write_if_changed(src / "weights.safetensors", save(state))

    digest = code_digest(model)
    _MODELS[name] = model
    factory = (f'"""Generated by toolchain.build() for an in-memory {type(model).__qualname__}: it hands back that '
               f'object.\nmodel code digest: {digest}\n"""\n\nfrom toolchain.module_spec import model_for\n\n\n'
               f'def build_model():\n    return model_for({json.dumps(name)})\n')
    _write_if_changed(src / f"{factory_module(name)}.py", factory.encode())

    if isinstance(targets, str):
        targets = (targets,)
    budgets = budgets if isinstance(budgets, dict) else {t: budgets for t in targets} if budgets is not None else {}
    lines = [f"# Generated by toolchain.build() from an in-memory {type(model).__qualname__}; rewritten on each call.",
             "[model]", f"name = {toml_value(name)}", f"version = {toml_value(version)}",
             f'factory = "{factory_module(name)}:build_model"', 'weights = "weights.safetensors"', 'python_path = ["."]', ""]
    norms = _per_name(normalization, input_names, "normalization", lambda v: isinstance(v, dict) and "mean" in v)
    for n, t in examples:
        dtype = str(t.dtype).replace("torch.", "")
        lines += ["[[inputs]]", f"name = {toml_value(n)}", f"shape = {toml_value(list(t.shape))}",
                  f"dtype = {toml_value(dtype)}"]
        if n in norms:
            lines.append(f"normalization = {toml_value({k: _plain(v) for k, v in norms[n].items()})}")
        lines.append("")
    names = _per_name(class_names, outputs, "class_names", lambda v: isinstance(v, (list, tuple)))
    for o in outputs:
        lines += ["[[outputs]]", f"name = {toml_value(o)}"]
        if o in names:
            lines.append(f"class_names = {toml_value([str(c) for c in names[o]])}")
        lines.append("")
    lines += ["[data]", 'calibration = "calibration.npz"', 'evaluation = "evaluation.npz"', 'labels_key = "labels"', "",
              "[metric]", f"name = {toml_value(metric)}", ""]
    key = BUDGET_KEYS.get(metric)  # a user metric ("module:function") names its own budget key via budgets
    for t in targets:
        lines.append(f"[targets.{t}]")
        budget = budgets.get(t, DEFAULT_BUDGETS.get(metric))
        if isinstance(budget, dict):  # {budget key: value}, e.g. {"min_metric": 80.0} for a user metric
            lines += [f"{k} = {toml_value(v)}" for k, v in budget.items()]
        elif budget is not None:
            if key is None:
                raise ToolchainError(f"budgets: metric {metric!r} needs its budget key, e.g. "
                                     f"budgets={{{t!r}: {{'min_metric': 80.0}}}}")
            lines.append(f"{key} = {toml_value(float(budget))}")
        for table, opts in ((target_options or {}).get(t) or {}).items():
            lines.append(f"{table} = {toml_value(opts)}")
        lines.append("")
    spec = src / "build.toml"
    _write_if_changed(spec, "\n".join(lines).encode())
    return spec
