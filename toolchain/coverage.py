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

import json
import time
from pathlib import Path

TARGETS = ("x86_64", "arm64", "cuda")
# the lowest SQNR (dB) each output may have, per target (metrics.DEFAULT_MIN_SQNR_DB for int8 / fp16)
MIN_SQNR_DB = {"x86_64": 15.0, "arm64": 15.0, "cuda": 40.0}
N_CALIB, N_EVAL = 128, 64
MODULE = "tc_coverage_models"  # the name the suite's model module is imported under (a copy, as a user's)
START, END = "<!-- coverage:start -->", "<!-- coverage:end -->"
LATENCY = {"warmup": 2, "runs": 10}  # the suite measures agreement; latency is the build's own business
CLASS_OUTPUTS = ("logits", "probs")  # a first output of class scores: top-1 agreement applies


def patterns() -> dict:
    from . import coverage_models

    return dict(coverage_models.PATTERNS)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def spec_text(pattern: str, inputs, outputs, targets) -> str:
    """The build spec a user would write for one pattern (paths relative to the spec)."""
    lines = ["[model]", f'name = "{pattern}"', 'version = "1.0.0"', f'factory = "{MODULE}:{patterns()[pattern][0]}"',
             'weights = "weights.safetensors"', 'python_path = [".."]', ""]
    for name, shape in inputs:
        lines += ["[[inputs]]", f'name = "{name}"', f"shape = {_toml_value(list(shape))}", ""]
    for name in outputs:
        lines += ["[[outputs]]", f'name = "{name}"', ""]
    lines += ["[data]", 'calibration = "calibration.npz"', 'evaluation = "eval.npz"', ""]
    for t in targets:
        lines += [f"[targets.{t}]", f"min_sqnr_db = {MIN_SQNR_DB.get(t, 15.0)!r}", f"latency = {_toml_value(LATENCY)}",
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
def _agreement(entry) -> dict | None:
    if entry.get("agreement") and "cpu_check" not in entry:
        return entry["agreement"]
    cpu = entry.get("cpu_check") or {}
    return cpu.get("agreement") or entry.get("agreement")


def route_of(target: str, entry: dict) -> str:
    """Which converter, flags and rewrites made the artifact, in a few words."""
    build = entry.get("build") or {}
    if target == "arm64" or entry.get("format") == "tflite":
        if build.get("converter") == "litert-torch":
            return build.get("route", "litert-torch")
        if build.get("route_label"):
            return build["route_label"]
        return "onnx2tf int8" if build else "onnx2tf int8 (not built)"
    if entry.get("precision") == "fp16":
        label = "onnxconverter-common fp16"
        if build.get("kept_float32_casts"):
            label += f" + {len(build['kept_float32_casts'])} Cast node(s) kept float32"
        if build.get("kept_float32_for_range"):
            label += f" + {len(build['kept_float32_for_range'])} node(s) kept float32 for range"
        if build.get("op_block_list"):
            label += " + op block list " + ", ".join(build["op_block_list"])
        for r in (build.get("rewrites") or {}).get("applied", []):
            label += f" + rewrite {r['rewrite']}"
        return label
    plan = build.get("plan")
    if plan:
        return f"ORT precision plan {plan['chosen']}, {plan['int8_compute_nodes']}/{plan['compute_nodes']} int8"
    scheme = build.get("scheme") or {}
    if scheme:
        acts = {"uint8": "u8", "int8": "s8"}
        return (f"ORT {scheme.get('method', 'static')} QDQ {acts.get(scheme.get('activation_type'), '?')}"
                f"{acts.get(scheme.get('weight_type'), '?')}")
    return "ORT int8"


def row_for(pattern: str, target: str, entry: dict | None) -> dict:
    """The table row of one (pattern, target) from the build's report entry."""
    if entry is None:
        return {"pattern": pattern, "target": target, "status": "not built", "sqnr_db": None, "cosine": None,
                "max_abs_error": None, "top1_agreement": None, "route": "-",
                "reason": "the build did not reach this target", "measured_on": None}
    agreement = _agreement(entry)
    sqnr = cos = mae = top1 = None
    if agreement:
        cos = min(a["cosine_mean"] for a in agreement.values())
        mae = max(a["max_abs_error"] for a in agreement.values())
        sq = [a["sqnr_db"] for a in agreement.values() if "sqnr_db" in a]
        sqnr = min(sq) if sq else None
        t1 = [a["top1_agreement"] for a in agreement.values() if "top1_agreement" in a]
        top1 = t1[0] if t1 else None
    reason = entry.get("reason") or ""
    measured = "target runtime"
    if entry["status"] == "passed":
        status = "pass"
    elif entry["status"] == "skipped" and entry.get("cpu_check") and "failed_stage" not in entry:
        measured = "fp16 on CPU provider"
        judged = entry.get("outputs") or {}  # the gate's verdicts on the CPU provider's outputs
        ok = bool(judged) and all(r["passed"] for r in judged.values()) \
            and not entry["cpu_check"].get("non_finite_outputs")
        status = "pass (CPU provider)" if ok else "FAIL"
        if not ok:
            reason = "; ".join(n for n in entry.get("notes", []) if n.startswith("on the CPU provider")) or reason
    elif entry["status"] == "skipped":
        status = "skipped"
    else:
        status = "FAIL"
    if measured == "target runtime" and entry.get("runtime") == "litert" and entry.get("host", {}).get("arch") \
            not in (None, "aarch64", "arm64"):
        measured = f"LiteRT's {entry['host']['arch']} kernels"
    return {"pattern": pattern, "target": target, "status": status, "sqnr_db": sqnr, "cosine": cos,
            "max_abs_error": mae, "top1_agreement": top1, "route": route_of(target, entry), "reason": reason, "measured_on": measured}


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
def _fmt(v, f="{:.4f}"):
    return "-" if v is None else f.format(v)


def _cell(r) -> str:
    if r["status"] == "not built":
        return "not built"
    mark = {"pass": "pass", "pass (CPU provider)": "pass&#185;"}.get(r["status"], f"**{r['status']}**")
    return f"{mark} {_fmt(r.get('sqnr_db'), '{:.1f} dB')}"


def markdown(rows, targets=None, describe=True) -> str:
    """Pattern x target: status and the lowest output SQNR; then per target row the route, cosine, error and top-1
    agreement; then why anything failed."""
    order = []
    for r in rows:
        if r["pattern"] not in order:
            order.append(r["pattern"])
    targets = list(targets or dict.fromkeys(r["target"] for r in rows))
    by = {(r["pattern"], r["target"]): r for r in rows}
    info = patterns()
    gates = ", ".join(f"`{t}` SQNR >= {MIN_SQNR_DB.get(t, 15.0):g} dB" for t in targets)
    lines = [f"Gates: {gates} on every output (the error against the fp32 PyTorch output's variation around its "
             f"mean over {N_EVAL} fixed random inputs; the lowest over a model's outputs is shown). The models' "
             "outputs are standardized (unit spread per output unit), so a max abs error reads in standard "
             "deviations; plain mean cosine is shown next to it.", "",
             "| pattern | " + " | ".join(f"`{t}`" for t in targets) + " |",
             "|---|" + "---|" * len(targets)]
    for p in order:
        label = f"`{p}`" + (f": {info[p][3]}" if describe and p in info else "")
        lines.append(f"| {label} | " + " | ".join(_cell(by[(p, t)]) if (p, t) in by else "-" for t in targets)
                     + " |")
    lines += ["", "| pattern | target | route | cosine | max abs error | top-1 agreement % |",
              "|---|---|---|---|---|---|"]
    for p in order:
        for t in targets:
            r = by.get((p, t))
            if r is not None:
                lines.append(f"| `{p}` | `{t}` | {r['route']} | {_fmt(r.get('cosine'))} | "
                             f"{_fmt(r['max_abs_error'])} | {_fmt(r['top1_agreement'], '{:.1f}')} |")
    if any(r["status"] == "pass (CPU provider)" for r in rows):
        lines += ["", "&#185; fp16 on CPU provider: no CUDA device where this table was made; the fp16 artifact was "
                  "built and its agreement measured with ONNX Runtime's CPU provider (`cpu_check` in report.json)."]
    kernels = sorted({r["measured_on"] for r in rows if (r["measured_on"] or "").startswith("LiteRT's")})
    if kernels:
        lines += ["", f"arm64 artifacts were run with {', '.join(kernels)} on the host that made this table, not on an "
                  "ARM device."]
    failed = [r for r in rows if not r["status"].startswith("pass")]
    if failed:
        lines += ["", "Failures:", ""]
        for r in failed:
            lines.append(f"- `{r['pattern']}` on `{r['target']}`: {_one_line(r['reason'])}")
    return "\n".join(lines) + "\n"


def _one_line(text: str, limit=600) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def replace_block(text: str, table: str) -> str:
    """README text with the block between the coverage markers replaced by `table`."""
    from .errors import ToolchainError

    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ToolchainError(f"README: needs exactly one {START} ... {END} block for the coverage table")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table.rstrip()}\n{END}{tail}"


def write_outputs(rows, out_dir, readme=None, targets=None) -> str:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, targets)
    (out_dir / "coverage.md").write_text(table)
    (out_dir / "coverage.json").write_text(json.dumps(rows, indent=1) + "\n")
    if readme:
        path = Path(readme)
        new = replace_block(path.read_text(), table)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(new)
        tmp.replace(path)
    return table
