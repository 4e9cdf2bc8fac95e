"""Gates: turn a target's validation figures into passed / failed / skipped, with the reason and notes."""

from .validation.metrics import verdict_text, verdicts


def judge(name, validation: dict, budget: list, transform_meta: dict) -> dict:
    """Returns {"status", "reason", "notes", "outputs"} for one target. `budget`: one gate per output of the
    model (metrics.output_gates); every output is judged, and any output that misses fails the target."""
    notes = []
    if validation.get("status") in ("skipped", "failed"):
        cpu = validation.get("cpu_check") or {}
        where = cpu.get("where", "the CPU provider")
        if cpu.get("non_finite_outputs"):  # not runnable here, but already known to be broken
            return {"status": "failed", "notes": notes,
                    "reason": f"{cpu['non_finite_outputs']} NaN/Inf values in the artifact's outputs on the "
                              f"evaluation data (checked on {where}; {validation['reason']})"}
        rows = verdicts(cpu.get("outputs", {}), budget) if cpu else []
        for row in rows:
            if not row["passed"]:
                notes.append(f"on {where} {verdict_text(row)}: expect this target to fail where it can run")
        return {"status": validation["status"], "reason": validation["reason"], "notes": notes, "outputs": rows}
    reasons = []
    if validation["non_finite_outputs"]:
        reasons.append(f"{validation['non_finite_outputs']} NaN/Inf values in the artifact's outputs on the "
                       "evaluation data")
    rows = verdicts(validation.get("outputs", {}), budget)
    reasons += [verdict_text(r) for r in rows if not r["passed"]]
    speedup = validation.get("speedup_vs_unpruned")
    if speedup is not None and speedup <= 1.0:
        notes.append(f"PRUNING DID NOT PAY: the pruned artifact's p50 is {1 / speedup:.2f}x the unpruned one's on "
                     "this target (measured interleaved)")
    ratio = validation.get("latency_ratio")
    if validation.get("arm_cost"):  # ARM targets: the instruction-count cost model decides, host timings inform
        slow = {c: v["ratio"] for c, v in validation["arm_cost"]["cores"].items() if v["ratio"] >= 1.0}
        if slow:
            notes.append("NOT FASTER on ARM: per-inference instructions are " + ", ".join(
                f"{r:.2f}x the fp32 baseline's on {c}" for c, r in slow.items()) + " (ARM cost model, emulated)")
    elif ratio is not None and ratio >= 1.0:
        notes.append(_slower_note(ratio, validation, transform_meta))
    notes += validation.get("executor_notes", [])
    if reasons:
        return {"status": "failed", "reason": "; ".join(reasons), "notes": notes, "outputs": rows}
    return {"status": "passed", "reason": "", "notes": notes, "outputs": rows}


def _slower_note(ratio, validation, transform_meta):
    note = (f"NOT FASTER: p50 is {ratio:.2f}x the fp32 baseline on {validation.get('device', 'this host')}")
    ops = validation.get("optimized_op_counts")
    if ops:
        q = sum(v for k, v in ops.items() if k.startswith("QLinear") or k in ("ConvInteger", "MatMulInteger"))
        fl = sum(v for k, v in ops.items() if k in ("Conv", "FusedConv", "MatMul", "Gemm", "FusedMatMul"))
        note += (f"; after ONNX Runtime's graph optimizations {q} compute ops run in int8 and {fl} stay float, "
                 f"with {ops.get('QuantizeLinear', 0)} QuantizeLinear / {ops.get('DequantizeLinear', 0)} "
                 "DequantizeLinear conversions between them")
    plan = transform_meta.get("plan") or {}
    if plan.get("fp32_p50_ms") and plan.get("candidates"):
        fp = plan["fp32_p50_ms"]
        tried = ", ".join(f"{k} {c['p50_ms'] / fp:.2f}x" for k, c in plan["candidates"].items())
        note += (f"; the precision plan timed its candidates against fp32 in the build ({tried}; interleaved) and "
                 f"ships the fastest that meets the budget ({plan['chosen']}): no int8 form of this model was "
                 "clearly faster here")
    if validation.get("latency_note"):
        note += "; " + validation["latency_note"]
    if ops or plan.get("candidates"):
        return note
    if transform_meta.get("cast_nodes"):
        note += (f"; the fp16 graph carries {transform_meta['cast_nodes']} Cast nodes, and at small batch kernel "
                 "launch overhead dominates")
    return note
