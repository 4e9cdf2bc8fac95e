"""HardSigmoid and HardSwish in int8 on ONNX Runtime's CPU provider, written with ops it already fuses.

ONNX Runtime's quantizer leaves HardSigmoid and HardSwish float (neither is in its QDQ registry), so every
MobileNetV3 activation and squeeze-excite gate in an int8 region runs as DequantizeLinear -> HardSigmoid -> Mul ->
QuantizeLinear (ORT expands HardSwish into HardSigmoid and Mul), float passes over the feature map, and the float
ops pin Transposes between the NHWC int8 convolutions and the NCHW float ops. Profiled on the MobileNetV3-Small-like
suite model (224x224, 1 thread), those float activations and their Q/DQ took about a third of the int8 model's
kernel time, as much as its int8 convolutions.

HardSigmoid(x) = clip(alpha x + beta, 0, 1) is, at 8 bits, a multiply and a requantization: quantize alpha x with
scale 1/256 and zero point round(256 beta) (saturation at 0 and 255 is the clip), then read the same uint8 codes
with zero point 0, which is alpha x + beta on the grid [0, 255/256]. In QDQ form that is DQ(x) * DQ(alpha) -> Q ->
DQ, which ORT fuses into one QLinearMul. HardSwish(x) = x HardSigmoid(x) is a second QLinearMul. A HardSwish output
read by float ops (a squeeze-excite's GlobalAveragePool and Mul) gets its own Q/DQ from the calibrated range, so
those become QLinearGlobalAveragePool and QLinearMul too.

This is not the same arithmetic as the float activations: the gate is rounded to 1/256 (the ORT quantizer would
quantize it the same way if it quantized HardSigmoid) and HardSwish outputs read by float ops are rounded to 8 bits.
So the plan judges every variant made with it and times it against the float-activation twin (plan.py).
"""

import numpy as np

from ..rewrites import edges

GATE_SCALE = 1 / 256  # the gate's grid: zero point round(256 beta) is an integer for MobileNet's beta = 1/2
OPS = ("HardSigmoid", "HardSwish")


def applies(model) -> bool:
    """Whether the graph has an activation this rewrite could take (a cheap look before any variant is made)."""
    return any(n.op_type in OPS for n in model.graph.node)


def int8_hard_activations(model, ranges=None) -> list:
    """Rewrite `model` (a QDQ onnx ModelProto, in place). Every HardSigmoid / HardSwish whose input is a
    DequantizeLinear's output becomes the QLinearMul form above. `ranges`: tensor name -> (low, high) calibrated
    ranges; a HardSwish output with a consumer other than QuantizeLinear is quantized with its range (without one it
    is left float). Returns the names of the nodes rewritten."""
    from onnx import helper, numpy_helper

    graph = model.graph
    producer, consumers = edges(graph)
    outputs = {o.name for o in graph.output}
    ranges = ranges or {}
    done = []

    def const(name, value, dtype):
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype), name))
        return name

    for node in list(graph.node):
        if node.op_type not in OPS:
            continue
        src = producer.get(node.input[0])
        y = node.output[0]
        users = consumers.get(y, [])
        if src is None or src.op_type != "DequantizeLinear" or y in outputs or not users:
            continue
        float_users = any(u.op_type != "QuantizeLinear" for u in users)
        if node.op_type == "HardSwish" and float_users and y not in ranges:
            continue  # its output would have to stay float: nothing gained
        attrs = {a.name: a.f for a in node.attribute}
        alpha, beta = (1 / 6, 0.5) if node.op_type == "HardSwish" else (attrs.get("alpha", 0.2), attrs.get("beta", 0.5))
        zero = int(round(beta / GATE_SCALE))
        if not 0 <= zero <= 255:
            continue
        p = (node.name or y) + "_int8"
        x = node.input[0]
        gate = y if node.op_type == "HardSigmoid" else p + "_gate"
        new = [
            helper.make_node("DequantizeLinear", [const(p + "_alpha_q", 1, np.uint8),
                                                  const(p + "_alpha", alpha, np.float32),
                                                  const(p + "_zero", 0, np.uint8)], [p + "_alpha_f"]),
            helper.make_node("Mul", [x, p + "_alpha_f"], [p + "_ax"], name=p + "_scale"),
            helper.make_node("QuantizeLinear", [p + "_ax", const(p + "_grid", GATE_SCALE, np.float32),
                                                const(p + "_beta", zero, np.uint8)], [p + "_codes"]),
            # the same codes read with zero point 0: alpha x + beta, clipped to [0, 255/256] by the saturation
            helper.make_node("DequantizeLinear", [p + "_codes", p + "_grid", p + "_zero"], [gate]),
        ]
        if node.op_type == "HardSwish":
            new.append(helper.make_node("Mul", [x, gate], [y], name=p + "_times_x"))
            if float_users:
                new += _qdq(y, ranges[y], p, const, users)
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for k, n in enumerate(new):
            graph.node.insert(at + k, n)
        done.append(node.name or y)
    return done


def _qdq(y, rng, p, const, users) -> list:
    """Q/DQ (uint8, asymmetric over `rng`, widened to hold 0) on `y`; its readers are moved to the DQ output."""
    from onnx import helper

    lo, hi = min(float(rng[0]), 0.0), max(float(rng[1]), 0.0)
    scale = (hi - lo) / 255 or 1.0
    zero = int(np.clip(round(-lo / scale), 0, 255))
    for u in users:
        for i, name in enumerate(u.input):
            if name == y:
                u.input[i] = p + "_out"
    return [helper.make_node("QuantizeLinear", [y, const(p + "_out_scale", scale, np.float32),
                                                const(p + "_out_zero", zero, np.uint8)], [p + "_out_q"]),
            helper.make_node("DequantizeLinear", [p + "_out_q", p + "_out_scale", p + "_out_zero"], [p + "_out"])]
