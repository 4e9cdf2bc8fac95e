"""`toolchain init`: write a commented build.toml for a model factory, with placeholders for the data."""

import json
import re
from pathlib import Path

from .errors import ToolchainError
from .spec import DTYPES


def parse_input(text: str) -> tuple:
    """NAME:D0xD1x...[:DTYPE] (or commas between dimensions) -> (name, [dims], dtype)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not re.fullmatch(r"[A-Za-z_][\w.]*", parts[0]):
        raise ToolchainError(f"--input {text!r}: expected NAME:SHAPE[:DTYPE], e.g. input:1x3x224x224")
    try:
        dims = [int(d) for d in re.split(r"[x,]", parts[1])]
    except ValueError:
        dims = []
    if not dims or any(d <= 0 for d in dims):
        raise ToolchainError(f"--input {text!r}: the shape must be positive integers joined by 'x', e.g. 1x3x224x224")
    dtype = parts[2] if len(parts) == 3 else "float32"
    if dtype not in DTYPES:
        raise ToolchainError(f"--input {text!r}: dtype must be one of {', '.join(DTYPES)}")
    return parts[0], dims, dtype


def render(factory, inputs, outputs, name, targets, weights, python_path, labels=True) -> str:
    q = json.dumps
    lines = [
        "# Build spec written by `toolchain init`; the README's \"The build spec\" section documents every key.",
        "[model]",
        f"name = {q(name)}",
        'version = "0.1.0"',
        f"factory = {q(factory)}   # importable; returns a torch.nn.Module",
        f"weights = {q(weights)}   # TODO: a safetensors file or a torch state_dict (plain tensors only)",
        f"python_path = {q(python_path)}   # where the factory's module is imported from, relative to this file",
        "",
    ]
    for n, dims, dtype in inputs:
        lines += ["[[inputs]]", f"name = {q(n)}", f"shape = {dims}   # batch first", f"dtype = {q(dtype)}",
                  'dynamic_axes = { 0 = "batch" }',
                  "# normalization = { mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] }   # optional: "
                  "what the app does to raw data, recorded in the artifacts' metadata", ""]
    for o in outputs:
        lines += ["[[outputs]]", f"name = {q(o)}",
                  '# class_names = "labels.txt"   # optional: one class name a line, carried in the artifacts', ""]
    lines += [
        "[data]",
        '# TODO: .npz files with one array per input (same names), or "module:function" returning such a dict.',
        'calibration = "data/calibration.npz"   # a few hundred representative samples: int8 scales come from these',
        'evaluation = "data/eval.npz"           # samples the artifacts are judged on' +
        (" (plus a 1-D integer array of labels)" if labels else ""),
        'labels_key = "labels"',
        "",
        "[metric]",
        f'name = {q("top1" if labels else "sqnr")}   # top1 (labels needed), sqnr (agreement with fp32, dB), '
        'cosine, or "module:function"',
        "",
    ]
    for t in targets:
        budget = ("max_metric_drop = 1.0   # points of top-1 accuracy the artifact may lose" if labels else
                  "min_sqnr_db = 20.0   # the floor, in dB, of the artifact's agreement with fp32")
        lines += [f"[targets.{t}]", budget, ""]
    return "\n".join(lines)


def write(path, factory, input_texts, outputs, name, targets, weights, python_path, labels) -> Path:
    from .spec import _factory_ref

    problem = _factory_ref(factory)
    if problem:
        raise ToolchainError(f"init: factory {problem}")
    path = Path(path)
    if path.exists():
        raise ToolchainError(f"{path}: exists; init never overwrites a spec (choose another path with -o)")
    inputs = [parse_input(t) for t in input_texts]
    if not inputs:
        raise ToolchainError("init: give at least one --input NAME:SHAPE")
    name = name or factory.partition(":")[0].split(".")[-1]
    text = render(factory, inputs, list(outputs) or ["output"], name, targets, weights, python_path, labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
