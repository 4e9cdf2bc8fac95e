"""report.json (the contract release pipelines read) and report.md (what a person reads)."""

import math
import os

from .digest import sha256_file
from .formats import FORMATS


def target_entry(name, res, gate, model_dir, budget) -> dict:
    """`budget`: the target's gates, one per output (metrics.output_gates). `max_metric_drop` stays the first
    output's drop budget (None where a floor judges it); `outputs` holds every output's metric, figure, budget
    and verdict."""
    t = res["target"]
    first = budget[0] if budget else {}
    entry = {"status": gate["status"], "reason": gate["reason"], "format": t.format, "precision": t.precision,
             "runtime": t.runtime, "notes": gate.get("notes", []),
             "max_metric_drop": first.get("budget") if first.get("budget_key") == "max_metric_drop" else None,
             "budgets": {g["output"]: {g["budget_key"]: g["budget"], "metric": g["metric"], "unit": g["unit"],
                                       "from": g["budget_from"]} for g in budget}}
    if gate.get("outputs"):
        entry["outputs"] = {r["output"]: _output_row(r) for r in gate["outputs"]}
    if "published" in res:
        entry["artifact"] = os.path.relpath(res["published"], model_dir)
        entry["sha256"] = res["sha256"]
        entry["size_bytes"] = os.path.getsize(res["published"])
        entry["baseline"] = os.path.relpath(res["baseline"], model_dir)
        entry["baseline_size_bytes"] = os.path.getsize(res["baseline"])
        # An artifact of several files (formats.FORMATS, e.g. OpenVINO .xml + .bin): the others, each checked
        fmt = FORMATS[t.format]
        base_files = fmt.files(res["baseline"]) if fmt.own_baseline else [res["baseline"]]
        for key, files in (("companions", fmt.files(res["published"])[1:]), ("baseline_companions", base_files[1:])):
            if files:
                entry[key] = [{"path": os.path.relpath(f, model_dir), "sha256": sha256_file(f),
                               "size_bytes": os.path.getsize(f)} for f in files]
        whole = entry["size_bytes"] + sum(c["size_bytes"] for c in entry.get("companions", []))
        base_whole = entry["baseline_size_bytes"] + sum(c["size_bytes"] for c in entry.get("baseline_companions", []))
        entry["size_ratio"] = whole / base_whole
    if "error" in res:
        e = res["error"]
        entry["failed_stage"] = e.stage
        return entry
    v = res["validation"]
    src = v if "metric" in v else v.get("cpu_check", {})
    for k in ("metric", "metric_drop", "agreement", "non_finite_outputs", "metrics"):
        if k in src:
            entry[k] = src[k]
    if "cpu_check" in v:
        entry["cpu_check"] = v["cpu_check"]
    for k in ("latency_ms", "baseline_latency_ms", "latency_ratio", "latency_protocol", "device", "providers",
              "host", "threads", "io", "latency_note", "app_postprocess",
              "unpruned_latency_ms", "speedup_vs_unpruned", "runtime_options",
              "baseline_same_options_latency_ms", "optimized_op_counts",
              "executor", "arm_cost", "resolver", "resolvers", "host_litert", "host_latency"):
        if k in v:
            entry[k] = v[k]
    if res.get("transform"):
        entry["build"] = res["transform"]
        if res["transform"].get("route"):
            entry["route"] = res["transform"]["route"]
    return entry


def _output_row(r) -> dict:
    row = {k: r[k] for k in ("metric", "unit", "value", "figure", "budget_key", "budget", "passed")}
    row["figure_is"] = "drop" if r["kind"] == "drop" else "value"
    row.update({k: r[k] for k in ("reference_value", "sqnr_db", "top1_agreement") if k in r})
    return row


def _first_budget(t) -> str:
    if t.get("max_metric_drop") is not None:
        return str(t["max_metric_drop"])
    first = next(iter((t.get("outputs") or {}).values()), None)
    return _budget_text(first) if first else "-"


def _fmt(v, spec="{:.3f}"):
    return "-" if v is None else spec.format(v)


def reference_line(ref) -> str:
    outs = {o: r for o, r in (ref.get("outputs") or {}).items() if r.get("value") is not None}
    if len(ref.get("outputs") or {}) > 1:
        text = "; ".join(f"{o}: {r['metric']} = {r['value']:.3f}" for o, r in outs.items())
    elif ref.get("value") is not None:
        text = f"{ref['metric']} = {ref['value']:.3f}"
    else:
        text = ""
    text = text or "every output is judged by its agreement with these outputs (sqnr)"
    return f"Reference (fp32 PyTorch): {text} on {ref['samples']} evaluation samples."


def output_rows(report) -> list:
    """(target, output, row) for the per-output table of report.md and report.html."""
    return [(name, o, r) for name, t in report["targets"].items() for o, r in (t.get("outputs") or {}).items()]


def _budget_text(r) -> str:
    op = {"max_metric_drop": "drop <=", "min_sqnr_db": ">=", "min_metric": ">=", "max_metric": "<="}[r["budget_key"]]
    return f"{op} {r['budget']:g} {'dB' if r['unit'] == 'dB' else r['unit']}"


def target_budget(t) -> str:
    """A target's budget in one cell: the top-1 drop allowed, else each output's own budget (sqnr's dB floor...)."""
    if t.get("max_metric_drop") is not None:
        return f"{t['max_metric_drop']:g}"
    return "; ".join(_budget_text(r) for r in (t.get("outputs") or {}).values() if r.get("budget_key")) or "-"


def _figure_text(r) -> str:
    if r["figure_is"] == "drop":
        return f"{r['value']:.3f} (drop {r['figure']:.3f})"
    return f"{r['value']:.2f}"


def markdown(report: dict) -> str:
    ref = report["reference"]
    lines = [f"# {report['model']} {report['version']}", "",
             reference_line(ref),
             "", "| target | status | metric | drop (budget) | p50 ms | fp32 p50 ms | p50 vs fp32 | size KB | size vs fp32 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, t in report["targets"].items():
        lat, base = t.get("latency_ms") or {}, t.get("baseline_latency_ms") or {}
        ratio = t.get("latency_ratio")
        size = t.get("size_bytes")
        lines.append(
            f"| {name} | **{t['status']}** | {_fmt(t.get('metric'))} | {_fmt(t.get('metric_drop'))} "
            f"({_first_budget(t)}) | {_fmt(lat.get('p50'))} | {_fmt(base.get('p50'))} | "
            f"{_fmt(ratio, '{:.2f}x')} | {_fmt(size / 1024 if size else None, '{:.1f}')} | "
            f"{_fmt(t.get('size_ratio'), '{:.2f}x')} |")
    lines.append("")
    rows = output_rows(report)
    if rows:
        lines += ["Every output is judged by its own metric and budget:", "",
                  "| target | output | metric | figure | budget | verdict | sqnr dB | top-1 agreement % |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, o, r in rows:
            lines.append(f"| {name} | {o} | {r['metric']} | {_figure_text(r)} | {_budget_text(r)} | "
                         f"{'pass' if r['passed'] else '**FAIL**'} | {_fmt(r.get('sqnr_db'), '{:.1f}')} | "
                         f"{_fmt(r.get('top1_agreement'), '{:.1f}')} |")
        lines.append("")
    if report.get("prune"):
        p = report["prune"]
        lines += [f"Pruned ({p['method']}, ratio {p['ratio']}): params {p['params_before']} -> {p['params_after']} "
                  f"({p['params_after'] / p['params_before']:.2f}x), MACs {p['macs_before']} -> {p['macs_after']} "
                  f"({p['macs_after'] / max(p['macs_before'], 1):.2f}x); metric {p['metric_before']:.3f} -> "
                  f"{p['metric_after_prune']:.3f} after pruning -> "
                  + (f"{p['metric_after_recovery']:.3f} after recovery." if p.get("metric_after_recovery")
                     is not None else "no recovery."), ""]
        if p.get("note"):
            lines += [f"Note: {p['note']}", ""]
        for name, t in report["targets"].items():
            if t.get("speedup_vs_unpruned"):
                lines.append(f"- **{name}** pruned vs unpruned (interleaved): p50 {t['latency_ms']['p50']:.4f} ms vs "
                             f"{t['unpruned_latency_ms']['p50']:.4f} ms, {t['speedup_vs_unpruned']:.2f}x faster")
        lines.append("")
    for name, t in report["targets"].items():
        if t.get("reason"):
            lines.append(f"- **{name}** {t['status']}: {t['reason']}")
        for n in t.get("notes", []):
            lines.append(f"- **{name}** note: {n}")
        plan = (t.get("build") or {}).get("plan")
        if plan:
            lines.append(f"- **{name}** precision plan: " + _plan_line(plan))
        if t.get("runtime_options"):
            ro = t["runtime_options"]
            tried = ", ".join(f"{n} {v:.4f} ms" for n, v in ro["p50_ms"].items())
            lines.append(f"- **{name}** runtime options: chose {ro['chosen']} ({tried})"
                         + (f"; could not run: {', '.join(ro['failed'])}" if ro["failed"] else ""))
        if t.get("latency_ms"):
            h = t["host"]
            lines.append(f"- **{name}** latency measured on {t.get('device', h['cpu'])} (host arch {h['arch']}), "
                         f"{t.get('threads')} thread(s), {t['latency_protocol']['timing']}"
                         + (f"; {t['latency_note']}" if t.get("latency_note") else ""))
        for d in (t.get("io") or {}).get("inputs", []):  # how an app feeds it, where that is not as in PyTorch
            if d.get("layout") or d.get("scale"):
                lines.append(f"- **{name}** input `{d['name']}`: {d['dtype']} {d['shape']}"
                             + (f", scale {d['scale']:.6g} zero point {d['zero_point']}" if d.get("scale") else "")
                             + (f"; {d['layout']}" if d.get("layout") else ""))
        if t.get("executor"):  # where the target was judged (toolchain/executors)
            from .executors.report_lines import lines as executor_lines

            lines += executor_lines(name, t)
    if report.get("html"):
        lines += ["", f"Plot and tables: [{report['html']}]({report['html']})"]
    return "\n".join(lines) + "\n"


def _plan_line(plan) -> str:
    """The chosen plan, what it keeps float and why, and before/after (p50 where the plan timed its variants)."""
    def figures(side):
        p50 = f", p50 {side['p50_ms']:.4f} ms" if "p50_ms" in side else ""
        judged = side.get("judged") or f"drop {side['metric_drop']:.3f}"
        return f"{judged}{p50}"
    kept = ", ".join(f"{k['node']} ({k['reason'].split(':')[0]})" for k in plan["kept_float"][:6]) or "none"
    top = ", ".join(f"{r['node']} sqnr {r['sqnr_db']:.1f} dB" if r.get("sqnr_db") is not None else
                    f"{r['node']} cos {r['cosine']:.4f}" for r in plan.get("sensitivity_top", [])[:3]
                    if r.get("sqnr_db") is not None or r.get("cosine") is not None)
    text = plan["chosen"]
    if "compute_nodes" in plan:
        text += f", {plan['int8_compute_nodes']}/{plan['compute_nodes']} compute nodes int8"
    text += f"; kept float: {kept}. Before ({plan['before']['plan']}): {figures(plan['before'])}; " \
            f"after: {figures(plan['after'])}"
    if "fp32_p50_ms" in plan:
        text += f"; fp32 p50 {plan['fp32_p50_ms']:.4f} ms"
    speed = plan.get("speed")
    if isinstance(speed, dict):  # the arm64 plan's search on the ARM cost model
        raw = speed.get("onnx2tf_full_integer_instructions")
        text += (f". Speed (ARM cost model, {speed.get('core')}): {speed.get('chosen')}, "
                 f"{speed.get('chosen_instructions')} instructions per inference"
                 + (f" (onnx2tf full integer: {raw})" if raw else "") + f"; {len(speed.get('counts', {}))} variants counted")
    elif speed:
        text += f". Speed: {speed}"
    return text + (f". Most sensitive: {top}" if top else "")


def strict_json(obj):
    """report.json is read by release pipelines with strict JSON parsers: a figure that could not be measured (NaN,
    +-Inf) is written as null; the reason beside it says why."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj
