"""The x86 plan's choice between int8 and float HardSigmoid / HardSwish (qdq_activations.py), made by measurement.

The plan makes its static QDQ variants with the int8 form of those activations, so the accuracy search and the speed
search judge and time what would ship. At the closing timing, each static candidate's float-activation twin (the
same plan with ONNX Runtime's quantizer output left as it is) is timed side by side with the candidates; where the
twin is faster than the fastest candidate, it ships instead (judged first). Measured on the MobileNetV3-Small-like
suite model (224x224, 1 thread, interleaved, p10 of 200 runs on a loaded 2-core host): the shipped plan's variant with
int8 activations 0.77-0.78x fp32 against 0.83-0.86x with float ones (two runs), SQNR 15.6 dB against 16.8 dB
(floor 15 dB).
"""

TWIN = " (float hard activations)"


def float_twins(candidates, make, steps) -> dict:
    """label + TWIN -> the candidate made again with float HardSigmoid/HardSwish, for every static candidate whose
    int8 activations changed its graph. One variant each (the plan's calibration is reused); made even when the
    search's time is spent, since without it the choice would not be measured."""
    from .precision import SCHEMES

    twins = {}
    for label, c in candidates.items():
        kw = c.get("make_kw", {})
        if SCHEMES[c.get("scheme", label)][0] != "static" or kw.get("hard_int8") is False:
            continue  # dynamic schemes have no activation Q/DQ; the ORT recipe is made as the docs make it
        path = make(*c["args"], **{**kw, "hard_int8": False})  # make() books its time in the budget
        if path == c["path"] or path.read_bytes() == c["path"].read_bytes():
            continue  # every HardSigmoid/HardSwish is in a float region of this plan: nothing to compare
        twins[label + TWIN] = {**c, "path": path, "make_kw": {**kw, "hard_int8": False},
                               "scheme": c.get("scheme", label), "judged": None}
    if twins:
        steps.append(f"hard activations: {len(twins)} candidate(s) timed at the closing with float HardSigmoid/"
                     "HardSwish too (" + ", ".join(twins) + ")")
    return twins


def decide(best, candidates, twins, final, backend_for, steps) -> dict:
    """After the closing timing: the fastest candidate `best` against its float-activation twin. Returns the record
    for the plan's meta; with "twin": label when the twin ships (faster and within the budget)."""
    label = best + TWIN
    if label not in twins:
        why = ("made as ONNX Runtime's docs make it, its HardSigmoid/HardSwish float" if
               candidates[best].get("make_kw", {}).get("hard_int8") is False else
               "no int8 HardSigmoid/HardSwish in it, or not a static scheme")
        return {"decision": f"{best}: no float-activation twin to time ({why})"}
    record = {"p50_ms": {"int8": final[best], "float": final[label]}}
    if final[label] >= final[best]:
        steps.append(f"hard activations: int8 {final[best]:.4f} ms vs float {final[label]:.4f} ms in the closing "
                     "timing (int8 kept)")
        return {**record, "decision": "int8 (faster in the closing timing)"}
    twin = twins[label]
    twin["judged"] = backend_for(twin["scheme"]).judge(twin["path"])
    record["float_judged"] = twin["judged"].text
    if not twin["judged"].ok:
        steps.append(f"hard activations: float twin faster ({final[label]:.4f} vs {final[best]:.4f} ms) but misses "
                     f"the budget ({twin['judged'].text}); int8 kept")
        return {**record, "decision": "int8 (the faster float twin misses the budget)"}
    steps.append(f"hard activations: float {final[label]:.4f} ms vs int8 {final[best]:.4f} ms in the closing timing "
                 "(float ships)")
    return {**record, "decision": "float (faster in the closing timing)", "twin": label}
