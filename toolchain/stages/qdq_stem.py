"""An int8 ImageNet-style stem (a k x k stride-2 conv on 3 input channels, k >= 5) as SpaceToDepth + a stride-1 conv
on 12 channels: the same integer sums, in a shape ONNX Runtime's int8 conv runs far faster.

ORT's int8 conv gathers, for each output pixel and kernel tap, the input channels of one pixel: 3 bytes per tap for
an RGB stem, so its 7x7 stem spends its time gathering rather than multiplying. Measured on the ResNet-18-like suite
model (224x224, 1 thread, ORT's own profiler, two runs on a loaded host): the int8 7x7 stem took 1.6-3.7 ms, a fifth
of the whole int8 model; as SpaceToDepth(2) + a 4x4 stride-1 conv on 12 channels, 0.8-1.1 ms. Interleaved (1 thread,
60 rounds, twice), the every-node-int8 model went from 0.34x to 0.30x ORT fp32 (p10; p50 0.35x -> 0.32x).

The rewrite: x (N, C, H, W) -> SpaceToDepth(2) -> (N, 4C, H/2, W/2), channel (dy * 2 + dx) * C + c holding
x[c, 2i + dy, 2j + dx]; tap (ky, kx) of the original kernel lands at tap (a, b) of the new one with
ky - pad_top = 2 (a - A) + dy (A: the new top padding), the other taps zero. Per-tensor quantization commutes with
the rearrangement, so SpaceToDepth runs on the float input before its QuantizeLinear; the int8 weights are
rearranged code for code (zeros where the new kernel has no tap) and keep their per-output-channel scales, so the
int8 model computes the same integer sums: its outputs are identical (tests/test_qdq_stem.py). Float stems are left
alone: ORT's float NCHWc kernel is slower this way (the suite ResNet with its stem float: 0.357x -> 0.373x fp32).
"""

import numpy as np

from ..rewrites import edges

MIN_KERNEL = 5  # the measured case is the 7x7 ImageNet stem; small kernels gain little and were not measured


def space_to_depth_stems(model) -> list:
    """Rewrite `model` (a QDQ onnx ModelProto with shapes inferred, in place); returns the convs rewritten."""
    from onnx import helper, numpy_helper

    graph = model.graph
    producer, consumers = edges(graph)
    inits = {i.name: i for i in graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(graph.input) + list(graph.value_info)}
    done = []
    for conv in list(graph.node):
        if conv.op_type != "Conv" or len(conv.input) < 2:
            continue
        dq_x, dq_w = producer.get(conv.input[0]), producer.get(conv.input[1])
        if not (dq_x and dq_w and dq_x.op_type == dq_w.op_type == "DequantizeLinear"):
            continue  # a float stem, or weights the quantizer did not make
        q_x = producer.get(dq_x.input[0])
        if (q_x is None or q_x.op_type != "QuantizeLinear" or len(consumers.get(q_x.output[0], [])) != 1
                or len(consumers.get(dq_x.output[0], [])) != 1 or dq_w.input[0] not in inits):
            continue
        a = {x.name: helper.get_attribute_value(x) for x in conv.attribute}
        w_q = numpy_helper.to_array(inits[dq_w.input[0]])
        shape = shapes.get(q_x.input[0], [])
        if (w_q.ndim != 4 or w_q.shape[1] != 3 or min(w_q.shape[2:]) < MIN_KERNEL
                or list(a.get("strides", [1, 1])) != [2, 2] or a.get("group", 1) != 1
                or list(a.get("dilations", [1, 1])) != [1, 1]
                or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or len(shape) != 4
                or not all(shape[2:]) or shape[2] % 2 or shape[3] % 2 or len(consumers.get(q_x.input[0], [])) != 1):
            continue
        pads = list(a.get("pads", [0, 0, 0, 0]))
        geometry = [_axis(pads[i], pads[i + 2], w_q.shape[2 + i], shape[2 + i]) for i in (0, 1)]
        if any(g is None for g in geometry):
            continue
        (ah, kh, top, bottom), (aw, kw, left, right) = geometry
        zero = _weight_zero(dq_w, inits, numpy_helper, w_q)
        o, c = w_q.shape[:2]
        w2 = np.broadcast_to(zero.reshape(o, 1, 1, 1), (o, 4 * c, kh, kw)).copy()
        for ky in range(w_q.shape[2]):
            ty, dy = divmod(ky - pads[0], 2)
            for kx in range(w_q.shape[3]):
                tx, dx = divmod(kx - pads[1], 2)
                for ch in range(c):
                    w2[:, (dy * 2 + dx) * c + ch, ty - ah, tx - aw] = w_q[:, ch, ky, kx]
        name = conv.name or conv.output[0]
        old = dq_w.input[0]
        graph.initializer.append(numpy_helper.from_array(w2.astype(w_q.dtype), old + "_s2d"))
        dq_w.input[0] = old + "_s2d"
        if len(consumers.get(old, [])) == 1:
            graph.initializer.remove(inits[old])
        stale = {dq_w.output[0], q_x.output[0], dq_x.output[0]}  # their shapes change: ORT infers them again
        for v in [v for v in graph.value_info if v.name in stale]:
            graph.value_info.remove(v)
        x = q_x.input[0]
        q_x.input[0] = x + "_s2d"
        graph.node.insert(list(graph.node).index(q_x),
                          helper.make_node("SpaceToDepth", [x], [x + "_s2d"], name=name + "_s2d", blocksize=2))
        keep = [x for x in conv.attribute if x.name not in ("strides", "pads", "kernel_shape")]
        del conv.attribute[:]
        conv.attribute.extend(keep + [helper.make_attribute("strides", [1, 1]),
                                      helper.make_attribute("pads", [top, left, bottom, right]),
                                      helper.make_attribute("kernel_shape", [kh, kw])])
        done.append(name)
    return done


def _axis(pad_begin, pad_end, k, size):
    """(first tap offset, new kernel size, new pad before, new pad after) along one axis, or None."""
    out = (size + pad_begin + pad_end - k) // 2 + 1
    first, last = (-pad_begin) // 2, (k - 1 - pad_begin) // 2
    k2, before = last - first + 1, -first
    after = out - 1 + k2 - before - size // 2
    return None if after < 0 or before < 0 else (first, k2, before, after)


def _weight_zero(dq_w, inits, numpy_helper, w_q):
    """The weights' zero point per output channel (the code that means 0.0 in the new kernel's empty taps)."""
    if len(dq_w.input) > 2 and dq_w.input[2] in inits:
        z = numpy_helper.to_array(inits[dq_w.input[2]]).astype(w_q.dtype)
        return np.broadcast_to(z.reshape(-1), (w_q.shape[0],)) if z.size in (1, w_q.shape[0]) else np.zeros(
            w_q.shape[0], w_q.dtype)
    return np.zeros(w_q.shape[0], w_q.dtype)
