"""report.html: the per-target table and one picture of accuracy vs latency vs size (matplotlib)."""

import base64
import html
import io


def _plot_png(report) -> bytes | None:
    rows = [(n, t) for n, t in report["targets"].items() if t.get("latency_ms") and t.get("metric") is not None]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ref = report["reference"]["value"]  # None where the first output is judged by a floor (no fp32 figure)
    for i, (name, t) in enumerate(rows):
        size_kb = t["size_bytes"] / 1024
        ax.scatter(t["latency_ms"]["p50"], t["metric"], s=40 + size_kb / 4, alpha=0.7,
                   color="tab:green" if t["status"] == "passed" else "tab:red")
        ax.annotate(f"{name} {t['precision']} ({size_kb:.0f} KB)", (t["latency_ms"]["p50"], t["metric"]),
                    textcoords="offset points", xytext=(6, 8 + 12 * i), fontsize=8)
        base = t["baseline_latency_ms"]["p50"]
        if ref is not None:
            ax.scatter(base, ref, marker="x", color="gray")
            ax.annotate(f"{name} fp32", (base, ref), textcoords="offset points", xytext=(6, -12 - 10 * i),
                        fontsize=7, color="gray")
    if ref is not None:
        ax.axhline(ref, color="gray", lw=0.6, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency, ms (log; each on its own runtime/device)")
    ax.set_ylabel(report["reference"]["metric"])
    ax.set_title(f"{report['model']}: accuracy vs latency (marker area ~ size)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def render(report) -> str:
    esc = html.escape
    png = _plot_png(report)
    rows = []
    for name, t in report["targets"].items():
        lat, base = t.get("latency_ms") or {}, t.get("baseline_latency_ms") or {}
        cells = [name, t["status"], f"{t['format']} {t['precision']}", t["runtime"],
                 _f(t.get("metric")), _f(t.get("metric_drop")), _f(t.get("max_metric_drop"), 3), _f(lat.get("p50"), 4),
                 _f(base.get("p50"), 4), _f(t.get("latency_ratio"), 2, "x"),
                 _f((t.get("size_bytes") or 0) / 1024 or None, 1), _f(t.get("size_ratio"), 2, "x"),
                 t.get("device", ""), t.get("reason", "")]
        cls = {"passed": "ok", "failed": "bad"}.get(t["status"], "skip")
        rows.append(f"<tr class='{cls}'>" + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>")
    head = ["target", "status", "artifact", "runtime", "metric", "drop", "budget", "p50 ms", "fp32 p50 ms",
            "speed", "KB", "size vs fp32", "measured on", "reason"]
    from .report import _budget_text, _figure_text, output_rows, reference_line

    out_rows = "".join(
        f"<tr class='{'ok' if r['passed'] else 'bad'}'>" + "".join(
            f"<td>{esc(str(c))}</td>" for c in (name, "pass" if r["passed"] else "FAIL", o, r["metric"],
                                                 _figure_text(r), _budget_text(r), _f(r.get("sqnr_db"), 1),
                                                 _f(r.get("top1_agreement"), 1))) + "</tr>"
        for name, o, r in output_rows(report))
    out_head = ["target", "verdict", "output", "metric", "figure", "budget", "sqnr dB", "top-1 agreement %"]
    out_table = (f"<h2>Every output, judged</h2><table><tr>{''.join(f'<th>{h}</th>' for h in out_head)}</tr>"
                 f"{out_rows}</table>" if out_rows else "")
    img = (f"<img alt='accuracy vs latency' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
           if png else "<p>No latency figures to plot.</p>")
    ref = report["reference"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(report['model'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;font-size:13px}}tr.ok td:nth-child(2){{color:#080}}tr.bad td:nth-child(2){{color:#b00}}
tr.skip td:nth-child(2){{color:#886}}</style></head><body>
<h1>{esc(report['model'])} {esc(report['version'])}</h1>
<p>{esc(reference_line(ref))}</p>
<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{''.join(rows)}</table>
{out_table}
<p>{img}</p></body></html>
"""


def _f(v, digits=3, suffix=""):
    return "-" if v is None else f"{v:.{digits}f}{suffix}"
