"""The x86 plan's other calibration: a static scheme's plan, made again with percentile activation ranges (ONNX
Runtime's percentile calibrator: the extreme 0.001% of each tensor's calibration values clipped, so the common
values get finer steps), then the nodes the plan kept float for ACCURACY are offered back to int8 one unit at a
time, least sensitive first, each kept int8 only where the budget still holds.

Where that gives a node back, the result (the "twin") is another candidate of the plan's closing timing, interleaved
with the rest: the plan ships it only if it is faster. Measured on the ResNet-18-like suite model (random init,
SQNR floor 15 dB): every conv int8 reached 13.0 dB with MinMax ranges and 13.8 dB with percentile ones; the MinMax
plan had to keep the 7x7 stem and one more 3x3 conv float (15.1 dB), the percentile twin only the stem (15.7 dB).
On the MobileNetV3-Small-like model percentile ranges were no better (7.6 vs 7.8 dB every node int8), and the twin is
then not a candidate: the same float nodes with other ranges cannot be faster.
"""

METHOD = "percentile"


def twin(scheme, cand, units, table, make, judge, expand, clock, steps, params, sessions) -> dict | None:
    """cand: the scheme's candidate ({path, exclude, judged, reasons}); units: the search units the accuracy search
    kept float (node names and glue units such as 'Add (every one)'); table: its sensitivity rows (worst first) or
    None. Returns the twin candidate, or None (the reason goes into `steps`)."""
    label = f"{scheme}_{METHOD}"
    if params["calibrate_method"] == METHOD or not params["speed_search"]:  # speed_search false: accuracy alone,
        return None  # one candidate per scheme, no timing decides what ships
    accuracy = [u for u in units if any(cand["reasons"].get(n, "").startswith("accuracy") for n in expand([u]))]
    if not accuracy:
        return None  # nothing is float for accuracy: other ranges cannot give anything back
    if clock.search_over(sessions):
        steps.append(f"{label}: not tried (time budget)")
        return None
    exclude = set(cand["exclude"])
    path = make(scheme, sorted(exclude), None, calib=METHOD)
    judged = judge(path)
    steps.append(f"{label}: {scheme}'s plan with percentile activation ranges -> {judged.text}")
    if not judged.ok:
        steps.append(f"{label}: misses the budget; not a candidate")
        return None
    rank = {r["node"]: i for i, r in enumerate(table or [])}
    reasons = dict(cand["reasons"])
    for unit in sorted(accuracy, key=lambda u: -rank.get(u, 0)):  # least sensitive first
        if clock.search_over(sessions):
            steps.append(f"{label}: giving nodes back stopped (time budget)")
            break
        trial = exclude - expand([unit])
        tpath = make(scheme, sorted(trial), None, calib=METHOD)
        tj = judge(tpath)
        if tj.ok:
            exclude, path, judged = trial, tpath, tj
            for n in expand([unit]):
                reasons.pop(n, None)
        steps.append(f"{label}: {unit} back to int8 -> {tj.text}"
                     + (" (budget still holds)" if tj.ok else " (misses; stays float)"))
    if exclude == set(cand["exclude"]):
        steps.append(f"{label}: no node given back; not a candidate (the same float nodes cannot be faster)")
        return None
    steps.append(f"{label}: {len(set(cand['exclude']) - exclude)} node(s) int8 that {scheme} keeps float; a "
                 "candidate of the closing timing")
    return {"label": label, "path": path, "exclude": exclude, "judged": judged, "reasons": reasons,
            "args": (scheme, sorted(exclude), None), "make_kw": {"calib": METHOD}, "scheme": scheme}
