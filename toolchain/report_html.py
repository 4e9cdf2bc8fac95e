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

    fig, ax = plt.subplots(figsize=(7.2, 4.4), dpi=110)
    ref = report["reference"]["value"]  # None where the first output is judged by a floor (no fp32 figure)
    points = []  # (x, y, label, artifact?)
    for name, t in rows:
        size_kb = t["size_bytes"] / 1024
        ax.scatter(t["latency_ms"]["p50"], t["metric"], s=40 + size_kb / 4, alpha=0.7, zorder=3,
                   color="tab:green" if t["status"] == "passed" else "tab:red")
        points.append((t["latency_ms"]["p50"], t["metric"], f"{name} {t['precision']} ({size_kb:.0f} KB)", True))
        if ref is not None:
            ax.scatter(t["baseline_latency_ms"]["p50"], ref, marker="x", color="gray", zorder=3)
            points.append((t["baseline_latency_ms"]["p50"], ref, f"{name} fp32", False))
    if ref is not None:
        ax.axhline(ref, color="gray", lw=0.6, ls="--")
    ax.set_xscale("log")
    import math

    from matplotlib.ticker import FuncFormatter, ScalarFormatter

    # Limits from the data (a flat metric must not stretch to 92..106 of a percentage), room for the labels.
    xs, ys = [x for x, *_ in points], [y for _, y, *_ in points]
    lo_x, hi_x = math.log10(min(xs)), math.log10(max(xs))
    pad_x = max(0.25 * (hi_x - lo_x), 0.15)
    ax.set_xlim(10 ** (lo_x - pad_x), 10 ** (hi_x + pad_x))
    span = max(ys) - min(ys)
    pad_y = 0.35 * span if span > 0 else max(abs(max(ys)) * 1e-3, 1e-6)
    ax.set_ylim(min(ys) - pad_y, max(ys) + pad_y)
    # Labels beside their points: artifacts above, fp32 baselines below, alternating heights among neighbours;
    # toward the left where a point sits in the right part of the frame, so no label leaves it.
    seen = {True: 0, False: 0}
    for x, y, label, artifact in sorted(points):
        frac = (math.log10(x) - (lo_x - pad_x)) / (hi_x - lo_x + 2 * pad_x)
        right = frac > 0.55
        level, seen[artifact] = seen[artifact] % 3, seen[artifact] + 1
        dy = (8 + 11 * level) if artifact else -(14 + 10 * level)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(-6 if right else 6, dy),
                    ha="right" if right else "left", fontsize=8 if artifact else 7,
                    color="black" if artifact else "dimgray")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.02, not 2x10^-2
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    fmt = ScalarFormatter(useOffset=False)  # plain figures (0.99998), never "1e-5+9.999e-1"
    fmt.set_scientific(False)
    ax.yaxis.set_major_formatter(fmt)
    ax.set_xlabel("p50 latency, ms (log; each on its own runtime/device)")
    ax.set_ylabel(report["reference"]["metric"])
    ax.set_title(f"{report['model']}: accuracy vs latency (marker area ~ size)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


_BADGE = {"NOT FASTER": "warn", "PRUNING DID NOT PAY": "warn"}


def _notes_html(report) -> str:
    """Every note, reason and measurement place as visible badges: a passed target that is not faster than fp32
    must not look like a plain pass."""
    esc = html.escape
    items = []
    for name, t in report["targets"].items():
        parts = [f"<span class='badge {t['status']}'>{esc(name)}: {esc(t['status'])}</span>"]
        if t.get("reason"):
            parts.append(f"<span class='reason'>{esc(t['reason'])}</span>")
        for n in t.get("notes", []):
            head, _, rest = n.partition(":")
            kind = _BADGE.get(head.strip(), "info")
            parts.append(f"<br><span class='badge {kind}'>{esc(head)}</span> {esc(rest.strip())}")
        if t.get("cpu_check") and t["status"] == "skipped":
            where = t["cpu_check"].get("where", "the CPU provider")
            parts.append("<br><span class='badge info'>CPU CHECK ONLY</span> the metric shown comes from running "
                         f"the artifact on {esc(where)} for agreement; the target itself was not judged")
        if t.get("latency_ms"):
            h = t.get("host", {})
            parts.append(f"<br><span class='badge info'>MEASURED ON</span> {esc(str(t.get('device', h.get('cpu'))))} "
                         f"(host arch {esc(str(h.get('arch')))}), {esc(str(t.get('threads')))} thread(s)"
                         + (f"; {esc(t['latency_note'])}" if t.get("latency_note") else ""))
        plan = (t.get("build") or {}).get("plan")
        if plan:
            parts.append(f"<br><span class='badge info'>PLAN</span> {esc(str(plan.get('chosen')))}")
        items.append("<li>" + " ".join(parts) + "</li>")
    return "<ul class='notes'>" + "".join(items) + "</ul>"


def _io_html(report) -> str:
    """How an app feeds each artifact whose inputs or outputs are not the PyTorch model's (TFLite: int8, channels
    last): shape, dtype, quantization and the transpose, as report.json's `io` says."""
    esc = html.escape
    rows = []
    for name, t in report["targets"].items():
        for kind in ("inputs", "outputs"):
            for d in (t.get("io") or {}).get(kind, []):
                q = f"{d['scale']:.6g} / {d['zero_point']}" if d.get("scale") else "-"
                cells = (name, kind[:-1], d.get("name"), str(d.get("shape")), d.get("dtype"), q,
                         d.get("layout", "as the PyTorch model"))
                rows.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>")
    if not rows:
        return ""
    head = ["target", "tensor", "name", "shape", "dtype", "scale / zero point", "layout"]
    return (f"<h2>How to feed each artifact</h2><table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>"
            f"{''.join(rows)}</table><p class='hint'>Every artifact also carries this (with the model's name, "
            "version, labels and normalisation) as metadata: <code>toolchain metadata FILE</code>.</p>")


def render(report) -> str:
    esc = html.escape
    png = _plot_png(report)
    from .report import target_budget

    rows = []
    for name, t in report["targets"].items():
        lat, base = t.get("latency_ms") or {}, t.get("baseline_latency_ms") or {}
        cpu_only = t["status"] == "skipped" and t.get("cpu_check")
        cells = [name, t["status"], f"{t['format']} {t['precision']}", t["runtime"],
                 _f(t.get("metric")) + (" (CPU check)" if cpu_only else ""), _f(t.get("metric_drop")), target_budget(t), _f(lat.get("p50"), 4),
                 _f(base.get("p50"), 4), _f(t.get("latency_ratio"), 2, "x"),
                 _f((t.get("size_bytes") or 0) / 1024 or None, 1), _f(t.get("size_ratio"), 2, "x"),
                 t.get("device", ""), t.get("reason", "")]
        cls = {"passed": "ok", "failed": "bad"}.get(t["status"], "skip")
        rows.append(f"<tr class='{cls}'>" + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>")
    head = ["target", "status", "artifact", "runtime", "metric", "drop", "budget", "p50 ms", "fp32 p50 ms",
            "p50 vs fp32", "KB", "size vs fp32", "measured on", "reason"]
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
tr.skip td:nth-child(2){{color:#886}}.badge{{display:inline-block;border-radius:3px;padding:1px 6px;font-size:12px;
margin:2px 2px 2px 0;background:#dde}}.badge.warn{{background:#f5a623}}.badge.passed{{background:#bfb}}
.badge.failed{{background:#f99}}.badge.skipped{{background:#eed}}ul.notes li{{margin:6px 0;font-size:13px}}
p.hint{{font-size:13px;color:#444}}
</style></head><body>
<h1>{esc(report['model'])} {esc(report['version'])}</h1>
<p>{esc(reference_line(ref))}</p>
<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{''.join(rows)}</table>
{out_table}
<h2>Verdicts and notes</h2>{_notes_html(report)}
{_io_html(report)}
<p>{img}</p></body></html>
"""


def _f(v, digits=3, suffix=""):
    return "-" if v is None else f"{v:.{digits}f}{suffix}"
