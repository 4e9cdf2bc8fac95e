"""build/index.json and build/index.html: every model built into one directory, one row per model and target,
and which file to ship for it and why."""

import html
import json
from pathlib import Path


def advice(model_dir: Path, t: dict) -> dict:
    """What to ship for one target, and why, from its report entry alone."""
    status = t.get("status")
    if status != "passed":
        why = t.get("reason") or status
        return {"ship": None, "why": f"do not ship: {status} ({why})"}
    ratio, size = t.get("latency_ratio"), t.get("size_ratio")
    where, measure = t.get("device") or "this host", "p50"
    cores = (t.get("arm_cost") or {}).get("cores") or {}
    if cores:  # ARM instruction counts on pinned cores decide, not LiteRT's timing on the x86 build host
        worst = max(cores, key=lambda c: cores[c]["ratio"])
        ratio = cores[worst]["ratio"]
        where, measure = "the ARM cost model (" + ", ".join(f"{c} {v['ratio']:.2f}x" for c, v in cores.items()) + \
            ")", "instructions"
    if ratio is None or ratio < 1.0:
        faster = f", {measure} {ratio:.2f}x fp32 on {where}" if ratio is not None else ""
        return {"ship": t.get("artifact"), "why": f"passed its budget{faster}"}
    smaller = f" and is {size:.2f}x the size" if size is not None and size < 1 else ""
    return {"ship": t.get("artifact"),
            "why": f"passed its budget{smaller}, but is NOT FASTER than fp32 ({ratio:.2f}x on {where}): ship it where "
                   f"size matters, else consider the fp32 baseline {t.get('baseline')}"}


def collect(out_root: Path) -> dict:
    from .report import target_budget

    rows = []
    for report_path in sorted(Path(out_root).glob("*/report.json")):
        try:
            report = json.loads(report_path.read_text())
        except (OSError, ValueError):
            continue  # a report being replaced, or not ours: the next build's index will have it
        if not isinstance(report, dict) or not isinstance(report.get("targets"), dict):
            continue
        model_dir = report_path.parent
        for name, t in report["targets"].items():
            a = advice(model_dir, t)
            ship = f"{model_dir.name}/{a['ship']}" if a["ship"] else None
            rows.append({"model": report.get("model"), "version": report.get("version"), "target": name,
                         "status": t.get("status"), "metric": t.get("metric"), "metric_drop": t.get("metric_drop"),
                         "max_metric_drop": t.get("max_metric_drop"), "budget": target_budget(t),
                         "latency_ratio": t.get("latency_ratio"),
                         "size_ratio": t.get("size_ratio"), "notes": t.get("notes", []), "ship": ship,
                         "why": a["why"], "report": f"{model_dir.name}/report.html"})
    return {"models": sorted({r["model"] for r in rows if r["model"]}), "rows": rows}


def _f(v, spec):
    return "-" if v is None else spec.format(v)


def render(index: dict) -> str:
    esc = html.escape
    body = []
    for r in index["rows"]:
        cls = {"passed": "ok", "failed": "bad"}.get(r["status"], "skip")
        notes = "".join(f"<span class='badge'>{esc(n.split(':')[0])}</span>" for n in r["notes"])
        ship = f"<code>{esc(r['ship'])}</code>" if r["ship"] else "-"
        body.append(
            f"<tr class='{cls}'><td><a href='{esc(r['report'])}'>{esc(str(r['model']))}</a></td>"
            f"<td>{esc(r['target'])}</td><td class='st'>{esc(str(r['status']))}</td>"
            f"<td>{_f(r['metric'], '{:.4g}')}</td><td>{_f(r['metric_drop'], '{:.3g}')} ({esc(str(r['budget']))})</td>"
            f"<td>{_f(r['latency_ratio'], '{:.2f}x')}</td><td>{_f(r['size_ratio'], '{:.2f}x')}</td>"
            f"<td>{ship}<br><small>{esc(r['why'])}</small></td><td>{notes}</td></tr>")
    head = ["model", "target", "status", "metric", "drop (budget)", "p50 vs fp32", "size vs fp32", "ship", "notes"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>builds</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;font-size:13px;vertical-align:top}}tr.ok .st{{color:#080}}tr.bad .st{{color:#b00;font-weight:bold}}
tr.skip .st{{color:#886}}.badge{{display:inline-block;background:#f5a623;color:#000;border-radius:3px;
padding:1px 5px;margin:1px;font-size:11px;white-space:nowrap}}small{{color:#444}}</style></head><body>
<h1>Builds: {len(index['models'])} model(s)</h1>
<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{''.join(body)}</table></body></html>
"""


def write(out_root) -> None:
    from .cache import atomic_write

    out_root = Path(out_root)
    index = collect(out_root)
    atomic_write(out_root / "index.json", json.dumps(index, indent=2, sort_keys=True).encode())
    atomic_write(out_root / "index.html", render(index).encode())
