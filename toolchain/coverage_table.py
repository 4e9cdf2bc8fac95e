"""The conversion coverage table (coverage.py runs the suite): one row per (pattern, target) from the build's
report entry, the route that made the artifact in a few words, and the markdown written to coverage.md and
between the coverage markers of README.md."""

import json
from pathlib import Path

START, END = "<!-- coverage:start -->", "<!-- coverage:end -->"


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
    if (build.get("scheme") or {}).get("quantizer") == "nncf":  # the OpenVINO IR target
        return f"NNCF {build['scheme'].get('preset', '')} int8 OpenVINO IR"
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
    elif entry["status"] == "skipped" and entry.get("cpu_check") and "failed_stage" not in entry \
            and entry["cpu_check"].get("where", "the CPU provider") == "the CPU provider":
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
    from .coverage import MIN_SQNR_DB, N_EVAL, patterns  # the suite's own settings

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
    from .markdown_block import replace_between

    return replace_between(text, START, END, table, "the coverage table")


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

