"""The x86 plan's floor: the model a user gets by copying ONNX Runtime's documented recipe (quant_pre_process, then
quantize_static with QDQ, uint8 activations, int8 per-channel weights, MinMax calibration), judged by the same gate
as every plan variant. Where it holds the budget it is a candidate of the plan's closing timing (interleaved with
the searched plans), so the plan never ships something slower than the recipe at the same accuracy. Not with
quantize.speed_search = false: that plan is decided by accuracy alone and rebuilds byte for byte.

The plan makes it with its own calibration and quantizer (precision.Calibration.static with the recipe's settings
on the same quant_pre_process'ed graph): that is the recipe's graph, node for node and initializer for initializer
(tests/test_plan_recipe.py checks it against quantize_static), except where the plan's value-identical rewrites
apply (an int8 RGB stem as SpaceToDepth, qdq_stem.py; a pool moved before a float Relu, qdq_placement.py: the same
outputs, faster in ONNX Runtime). In a model without HardSigmoid/HardSwish (which the plan's variants make int8:
qdq_activations.py) it is the very variant static_u8s8's search starts from, so it is made and judged once. The
spec's forced-float nodes stay float in it too: a user who forces a node float would do the same to the recipe.
"""

from ..errors import reraise_write_error

LABEL = "ort_recipe"
SCHEME = "static_u8s8"
# the recipe's settings, whatever the spec's quantize table says (its HardSigmoid/HardSwish float, as the docs' are)
MAKE_KW = {"per_channel": True, "calib": "minmax", "hard_int8": False}
WHAT = "ORT recipe (static QDQ u8s8 per-channel, MinMax)"


def candidate(make, judge, forced_float, reasons, clock, steps, params) -> dict | None:
    """The recipe's variant as a plan candidate ({path, exclude, judged, reasons, args, make_kw, scheme}), or None
    when it misses the budget or cannot run; the outcome goes into `steps`."""
    if not params["speed_search"]:  # a plan decided by accuracy alone ships its scheme's variant, never a timing
        steps.append(f"{WHAT}: not a candidate (quantize.speed_search = false)")
        return None
    if clock.search_over(3):
        steps.append(f"{WHAT}: not tried (time budget)")
        return None
    exclude = sorted(forced_float)
    try:
        path = make(SCHEME, exclude, None, **MAKE_KW)
        judged = judge(path)
    except Exception as e:  # noqa: BLE001 - a recipe ORT cannot run is a finding, not a failed build
        reraise_write_error(e)
        steps.append(f"{WHAT}: ONNX Runtime cannot run it ({str(e).splitlines()[0][:160]}); not a candidate")
        return None
    forced = f" ({len(exclude)} node(s) forced float by the spec)" if exclude else ""
    if not judged.ok:
        steps.append(f"{WHAT}{forced} -> {judged.text}: misses the budget; not a candidate")
        return None
    steps.append(f"{WHAT}{forced} -> {judged.text}: holds the budget; a candidate of the closing timing")
    return {"path": path, "exclude": set(exclude), "judged": judged, "reasons": dict(reasons),
            "args": (SCHEME, exclude, None), "make_kw": dict(MAKE_KW), "scheme": SCHEME}
