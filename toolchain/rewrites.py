"""ONNX graph rewrites: replace a construct a converter or runtime cannot take by one it can, on a private copy
of the fp32 graph, and prove the replacement numerically before it is trusted.

Each rewrite finds its pattern, rewrites every match, and says whether it is exact (the same function, up to
float rounding) or an approximation, with the output error it may cause. `verify` runs ONNX Runtime on the
graph before and after over the calibration inputs and compares every output against that bound; a rewrite that
misses it is refused (RewriteError), never shipped.

    gelu-tanh          Erf-based GELU (x/sqrt2 -> Erf -> +1 -> *x -> *0.5, or the Gelu op) -> the tanh form
                       0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))), written with Mul only (no Erf, no Div).
    gelu-sigmoid       the same GELU -> x * sigmoid(1.702x): fewer ops, a coarser approximation.
    rnn-unroll         LSTM / GRU (forward, default activations) -> the recurrence written out step by step
                       (MatMul, Add, Sigmoid, Tanh, Mul), for converters that cannot take the RNN ops.
    matmul-transpose   MatMul(Transpose(x, p), W) with p keeping the last axis -> Transpose(MatMul(x, W), p).

Nothing here imports torch or TensorFlow; onnx, numpy and onnxruntime only.
"""

import math
from dataclasses import dataclass

import numpy as np


class RewriteError(Exception):
    """A rewrite could not be applied, or its result failed the numerical check."""


@dataclass(frozen=True)
class Rewrite:
    name: str
    exact: bool
    rtol: float  # allowed max abs error on each output, relative to that output's max abs value
    why: str


REWRITES = {
    "gelu-tanh": Rewrite("gelu-tanh", False, 2e-3, "Erf has no TFLite builtin (it becomes a Flex op LiteRT "
                         "cannot run)"),
    "gelu-sigmoid": Rewrite("gelu-sigmoid", False, 5e-2, "Erf has no TFLite builtin"),
    "rnn-unroll": Rewrite("rnn-unroll", True, 1e-4, "the converter cannot take this LSTM/GRU node"),
    "matmul-transpose": Rewrite("matmul-transpose", True, 1e-4, "ONNX Runtime's CPU provider crashes on an fp16 "
                                "MatMul fed by a batch-axis Transpose"),
}


# ---- graph helpers ----------------------------------------------------------------------------------------
def edges(graph) -> tuple:
    """(tensor -> the node making it, tensor -> the nodes reading it) of one ONNX graph: what every graph rewrite
    walks (these and the QDQ rewrites of stages/qdq_*.py)."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return producer, consumers


class _Graph:
    """Producers, consumers and constant values of one ONNX graph, and fresh names."""

    def __init__(self, model):
        self.model = model
        self.g = model.graph
        self.refresh()
        self._n = 0

    def refresh(self):
        from onnx import numpy_helper

        self.producer, self.consumers = edges(self.g)
        for o in self.g.output:
            self.consumers.setdefault(o.name, []).append(None)  # a graph output counts as a consumer
        self.inits = {i.name: i for i in self.g.initializer}
        self._const = {}
        for n in self.g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self._const[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)

    def const(self, name):
        """The value of a constant input (initializer or Constant node), else None."""
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Identity":  # the exporter shares equal weights through Identity
            return self.const(p.input[0])
        return self._const.get(name)

    def fresh(self, base):
        self._n += 1
        return f"{base}/rw{self._n}"

    def add_const(self, base, value):
        from onnx import numpy_helper

        name = self.fresh(base)
        self.g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def only_consumer(self, tensor):
        c = self.consumers.get(tensor, [])
        return c[0] if len(c) == 1 else None


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _scalar(v):
    if v is None:
        return None
    v = np.asarray(v)
    return float(v.reshape(-1)[0]) if v.size == 1 else None


def _other(node, tensor):
    """The other input of a binary node, given one of them."""
    a, b = node.input[0], node.input[1]
    return b if a == tensor else a if b == tensor else None


def _replace_nodes(graph: _Graph, remove, new_nodes, anchor):
    """Drop `remove`, insert `new_nodes` where `anchor` was (keeps a topological order: every input of the new
    nodes is produced before the anchor)."""
    # By content, not identity: protobuf copies messages when a repeated field is rebuilt, so a node taken
    # before an earlier rewrite is an equal copy of the live one (SSA: no two nodes are equal).
    nodes = list(graph.g.node)
    pos = nodes.index(anchor)
    gone = [any(n == r for r in remove) for n in nodes]
    before = [n for n, g in zip(nodes[:pos], gone[:pos]) if not g]
    after = [n for n, g in zip(nodes[pos:], gone[pos:]) if not g]
    del graph.g.node[:]
    graph.g.node.extend(before + list(new_nodes) + after)
    graph.refresh()


def _drop_dead(graph: _Graph):
    """Remove nodes whose outputs nobody reads (left behind by a rewrite), and unused initializers."""
    outputs = {o.name for o in graph.g.output}
    changed = True
    while changed:
        changed = False
        used = set(outputs)
        for n in graph.g.node:
            used.update(n.input)
        keep = [n for n in graph.g.node if any(o in used for o in n.output if o)]
        if len(keep) != len(graph.g.node):
            del graph.g.node[:]
            graph.g.node.extend(keep)
            changed = True
    used = set(outputs)
    for n in graph.g.node:
        used.update(n.input)
    keep_init = [i for i in graph.g.initializer if i.name in used]
    del graph.g.initializer[:]
    graph.g.initializer.extend(keep_init)
    live = used | {o for n in graph.g.node for o in n.output}
    keep_vi = [v for v in graph.g.value_info if v.name in live]
    del graph.g.value_info[:]
    graph.g.value_info.extend(keep_vi)
    graph.refresh()


# ---- gelu -------------------------------------------------------------------------------------------------
def _match_gelu(graph: _Graph, erf):
    """The nodes of an Erf-based GELU around `erf`, and its input x: x * 0.5 * (1 + erf(x / sqrt2)) in any of
    the orders exporters write it. Returns (x, output tensor, nodes) or None."""
    pre = graph.producer.get(erf.input[0])
    if pre is None:
        return None
    if pre.op_type == "Div" and abs((_scalar(graph.const(pre.input[1])) or 0) - math.sqrt(2)) < 1e-3:
        x = pre.input[0]
    elif pre.op_type == "Mul":
        c = [i for i in pre.input if _scalar(graph.const(i)) is not None]
        if not c or abs(_scalar(graph.const(c[0])) - 1 / math.sqrt(2)) > 1e-3:
            return None
        x = _other(pre, c[0])
    else:
        return None
    add = graph.only_consumer(erf.output[0])
    if add is None or add.op_type != "Add" or _scalar(graph.const(_other(add, erf.output[0]))) != 1.0:
        return None
    nodes = [pre, erf, add]
    # (1 + erf) * x, then * 0.5; or (1 + erf) * 0.5 then * x; or x * 0.5 first, then * (1 + erf)
    m1 = graph.only_consumer(add.output[0])
    if m1 is None or m1.op_type != "Mul":
        return None
    other = _other(m1, add.output[0])
    half = _scalar(graph.const(other))
    m2 = graph.only_consumer(m1.output[0])
    if other == x and m2 is not None and m2.op_type == "Mul" \
            and _scalar(graph.const(_other(m2, m1.output[0]))) == 0.5:
        return x, m2.output[0], nodes + [m1, m2]
    if half == 0.5 and m2 is not None and m2.op_type == "Mul" and _other(m2, m1.output[0]) == x:
        return x, m2.output[0], nodes + [m1, m2]
    hp = graph.producer.get(other)
    if hp is not None and hp.op_type == "Mul" and x in hp.input and _scalar(graph.const(_other(hp, x))) == 0.5 \
            and graph.only_consumer(hp.output[0]) is m1:
        return x, m1.output[0], nodes + [hp, m1]
    return None


def _gelu_nodes(graph, x, out, base, form):
    from onnx import helper

    n = []
    if form == "sigmoid":  # x * sigmoid(1.702 x)
        k = graph.add_const(base + "/k", np.float32(1.702))
        t1, t2 = graph.fresh(base + "/kx"), graph.fresh(base + "/sig")
        n += [helper.make_node("Mul", [x, k], [t1], name=graph.fresh(base + "/Mul")),
              helper.make_node("Sigmoid", [t1], [t2], name=graph.fresh(base + "/Sigmoid")),
              helper.make_node("Mul", [x, t2], [out], name=graph.fresh(base + "/Mul"))]
        return n
    # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) = x * (0.5 + 0.5 tanh(x * (a + b x^2)))
    a = graph.add_const(base + "/a", np.float32(math.sqrt(2 / math.pi)))
    b = graph.add_const(base + "/b", np.float32(math.sqrt(2 / math.pi) * 0.044715))
    half = graph.add_const(base + "/half", np.float32(0.5))
    x2, bx2, inner, arg, th, hth, gate = (graph.fresh(base + s) for s in
                                          ("/x2", "/bx2", "/inner", "/arg", "/tanh", "/htanh", "/gate"))
    n += [helper.make_node("Mul", [x, x], [x2], name=graph.fresh(base + "/Mul")),
          helper.make_node("Mul", [x2, b], [bx2], name=graph.fresh(base + "/Mul")),
          helper.make_node("Add", [bx2, a], [inner], name=graph.fresh(base + "/Add")),
          helper.make_node("Mul", [x, inner], [arg], name=graph.fresh(base + "/Mul")),
          helper.make_node("Tanh", [arg], [th], name=graph.fresh(base + "/Tanh")),
          helper.make_node("Mul", [th, half], [hth], name=graph.fresh(base + "/Mul")),
          helper.make_node("Add", [hth, half], [gate], name=graph.fresh(base + "/Add")),
          helper.make_node("Mul", [x, gate], [out], name=graph.fresh(base + "/Mul"))]
    return n


def _gelu(model, form) -> list:
    graph = _Graph(model)
    done = []
    for node in list(graph.g.node):
        if node.op_type == "Gelu":  # opset 20
            approx = _attr(node, "approximate", b"none")
            base = node.name or node.output[0]
            new = _gelu_nodes(graph, node.input[0], node.output[0], base, form)
            _replace_nodes(graph, [node], new, node)
            done.append({"node": node.name, "op": "Gelu", "approximate": approx.decode() if isinstance(
                approx, bytes) else approx})
        elif node.op_type == "Erf":
            m = _match_gelu(graph, node)
            if m is None:
                continue
            x, out, nodes = m
            base = node.name or node.output[0]
            _replace_nodes(graph, nodes, _gelu_nodes(graph, x, out, base, form), nodes[-1])
            done.append({"node": node.name, "op": "Erf (GELU)"})
    return done


def gelu_tanh(model) -> list:
    return _gelu(model, "tanh")


def gelu_sigmoid(model) -> list:
    return _gelu(model, "sigmoid")


# ---- matmul after a batch-axis transpose ------------------------------------------------------------------
def matmul_transpose(model) -> list:
    from onnx import helper

    graph = _Graph(model)
    done = []
    for node in list(graph.g.node):
        if node.op_type != "MatMul":
            continue
        t = graph.producer.get(node.input[0])
        w = graph.const(node.input[1])
        if t is None or t.op_type != "Transpose" or w is None or w.ndim != 2:
            continue
        perm = list(_attr(t, "perm") or [])
        if len(perm) < 3 or perm[-1] != len(perm) - 1:
            continue
        mm_out = graph.fresh(node.output[0])
        mm = helper.make_node("MatMul", [t.input[0], node.input[1]], [mm_out], name=graph.fresh(node.name or "MatMul"))
        tr = helper.make_node("Transpose", [mm_out], list(node.output), name=graph.fresh(t.name or "Transpose"),
                              perm=perm)
        _replace_nodes(graph, [node], [mm, tr], node)
        done.append({"node": node.name, "op": "MatMul", "transpose": t.name, "perm": perm})
    if done:
        _drop_dead(graph)
    return done


# ---- RNNs unrolled ----------------------------------------------------------------------------------------
def _static_shapes(model) -> dict:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def rnn_unroll(model) -> list:
    graph = _Graph(model)
    shapes = _static_shapes(model)
    done = []
    for node in list(graph.g.node):
        if node.op_type not in ("LSTM", "GRU"):
            continue
        why = _rnn_unsupported(graph, node, shapes)
        if why:
            raise RewriteError(f"rnn-unroll: {node.op_type} node {node.name}: {why}")
        new = _unroll(graph, node, shapes[node.input[0]][0])
        _replace_nodes(graph, [node], new, node)
        done.append({"node": node.name, "op": node.op_type, "steps": shapes[node.input[0]][0]})
    if done:
        _drop_dead(graph)
    return done


def _rnn_unsupported(graph, node, shapes):
    if _attr(node, "direction", b"forward") not in (b"forward", "forward"):
        return "only forward direction is unrolled (bidirectional / reverse are not)"
    if _attr(node, "layout", 0) != 0:
        return "layout=1 is not supported"
    if _attr(node, "clip") is not None or _attr(node, "activations") is not None:
        return "custom activations or clip are not supported"
    if node.op_type == "LSTM" and (_attr(node, "input_forget", 0) or (len(node.input) > 7 and node.input[7])):
        return "peepholes / input_forget are not supported"
    if len(node.input) > 4 and node.input[4]:
        return "sequence_lens is not supported"
    for i in (1, 2):
        if graph.const(node.input[i]) is None:
            return "weights must be constants"
    if len(node.input) > 3 and node.input[3] and graph.const(node.input[3]) is None:
        return "bias must be a constant"
    seq = (shapes.get(node.input[0]) or [None])[0]
    if not seq:
        return "the sequence length must be static"
    return None


def _unroll(graph: _Graph, node, steps):
    from onnx import helper

    lstm = node.op_type == "LSTM"
    gates = 4 if lstm else 3
    W = graph.const(node.input[1])[0]  # [G*H, I]
    R = graph.const(node.input[2])[0]  # [G*H, H]
    hidden = R.shape[1]
    B = graph.const(node.input[3])[0] if len(node.input) > 3 and node.input[3] else np.zeros(2 * gates * hidden,
                                                                                              np.float32)
    wb, rb = B[:gates * hidden], B[gates * hidden:]
    lbr = bool(_attr(node, "linear_before_reset", 0))
    base = node.name or node.output[0]
    new = []

    def mk(op, inputs, attrs=None, n_out=1, tag=None):
        outs = [graph.fresh(f"{base}/{tag or op}") for _ in range(n_out)]
        new.append(helper.make_node(op, inputs, outs, name=graph.fresh(f"{base}/{op}"), **(attrs or {})))
        return outs if n_out > 1 else outs[0]

    axes0 = graph.add_const(base + "/axes0", np.array([0], np.int64))
    # input projection of every step at once: [seq, batch, I] @ [I, G*H] + Wb (+ Rb where it simply adds)
    xb = wb.copy()
    if not lbr or lstm:
        xb = wb + rb
    elif not lstm:  # GRU with linear_before_reset: Rb of the h gate stays inside r * (...)
        xb[:2 * hidden] += rb[:2 * hidden]
    xw = mk("MatMul", [node.input[0], graph.add_const(base + "/WT", np.ascontiguousarray(W.T))])
    xw = mk("Add", [xw, graph.add_const(base + "/xb", xb.astype(np.float32))])
    RT = np.ascontiguousarray(R.T)  # [H, G*H]
    split_sizes = graph.add_const(base + "/split", np.array([hidden] * gates, np.int64))

    def initial(idx):
        if len(node.input) > idx and node.input[idx]:
            return mk("Squeeze", [node.input[idx], axes0])
        return None

    h, c = initial(5), (initial(6) if lstm else None)
    if h is None or (lstm and c is None):  # zeros of [batch, H]: x_0 @ 0
        zeros_w = graph.add_const(base + "/zerosW", np.zeros((W.shape[1], hidden), np.float32))
        x0 = mk("Gather", [node.input[0], graph.add_const(base + "/t0", np.array(0, np.int64))], {"axis": 0})
        z = mk("MatMul", [x0, zeros_w])
        h = h or z
        c = (c or z) if lstm else None
    if lstm:
        rt = graph.add_const(base + "/RT", RT)
    else:  # GRU: z, r from H @ R_zr; the candidate from H @ R_h (+ Rb_h inside r * (...))
        rt_zr = graph.add_const(base + "/RTzr", np.ascontiguousarray(RT[:, :2 * hidden]))
        rt_h = graph.add_const(base + "/RTh", np.ascontiguousarray(RT[:, 2 * hidden:]))
        rb_h = graph.add_const(base + "/Rbh", rb[2 * hidden:].astype(np.float32))
        split_zr = graph.add_const(base + "/splitzr", np.array([hidden, hidden], np.int64))
        split_x = split_sizes
    hs = []
    for t in range(steps):
        xt = mk("Gather", [xw, graph.add_const(base + f"/t{t}", np.array(t, np.int64))], {"axis": 0}, tag=f"x{t}")
        if lstm:
            g = mk("Add", [xt, mk("MatMul", [h, rt])])
            i, o, f, cc = mk("Split", [g, split_sizes], {"axis": 1}, n_out=4)  # ONNX LSTM order: i, o, f, c
            i, o, f, cc = mk("Sigmoid", [i]), mk("Sigmoid", [o]), mk("Sigmoid", [f]), mk("Tanh", [cc])
            c = mk("Add", [mk("Mul", [f, c]), mk("Mul", [i, cc])], tag=f"c{t}")
            h = mk("Mul", [o, mk("Tanh", [c])], tag=f"h{t}")
        else:
            xz, xr, xh = mk("Split", [xt, split_x], {"axis": 1}, n_out=3)  # ONNX GRU order: z, r, h
            hz, hr = mk("Split", [mk("MatMul", [h, rt_zr]), split_zr], {"axis": 1}, n_out=2)
            z = mk("Sigmoid", [mk("Add", [xz, hz])])
            r = mk("Sigmoid", [mk("Add", [xr, hr])])
            if lbr:
                hh = mk("Add", [xh, mk("Mul", [r, mk("Add", [mk("MatMul", [h, rt_h]), rb_h])])])
            else:
                hh = mk("Add", [xh, mk("MatMul", [mk("Mul", [r, h]), rt_h])])
            cand = mk("Tanh", [hh])
            # h = (1 - z) * cand + z * h = cand + z * (h - cand)
            h = mk("Add", [cand, mk("Mul", [z, mk("Sub", [h, cand])])], tag=f"h{t}")
        hs.append(h)
    outs = list(node.output) + [""] * (3 - len(node.output))
    axes01 = graph.add_const(base + "/axes01", np.array([0, 1], np.int64))
    if outs[0]:  # Y: [seq, 1, batch, H]
        parts = [mk("Unsqueeze", [x, axes01]) for x in hs]
        new.append(helper.make_node("Concat", parts, [outs[0]], name=graph.fresh(f"{base}/Concat"), axis=0))
    if outs[1]:
        new.append(helper.make_node("Unsqueeze", [h, axes0], [outs[1]], name=graph.fresh(f"{base}/Unsqueeze")))
    if lstm and outs[2]:
        new.append(helper.make_node("Unsqueeze", [c, axes0], [outs[2]], name=graph.fresh(f"{base}/Unsqueeze")))
    return new


FUNCTIONS = {"gelu-tanh": gelu_tanh, "gelu-sigmoid": gelu_sigmoid, "rnn-unroll": rnn_unroll,
             "matmul-transpose": matmul_transpose}


# ---- applying and proving ---------------------------------------------------------------------------------
def apply(model, names) -> tuple:
    """A rewritten copy of `model` (an onnx ModelProto) and, per rewrite, the nodes it replaced."""
    import copy

    import onnx

    out = copy.deepcopy(model)
    records = []
    for name in names:
        if name not in FUNCTIONS:
            raise RewriteError(f"unknown rewrite {name!r} (known: {', '.join(FUNCTIONS)})")
        matched = FUNCTIONS[name](out)
        if matched:
            _drop_dead(_Graph(out))
        records.append({"rewrite": name, "exact": REWRITES[name].exact, "nodes": matched})
    try:
        onnx.checker.check_model(out)
    except Exception as e:  # noqa: BLE001
        raise RewriteError(f"rewritten graph fails onnx.checker: {e}") from None
    return out, records


def run_onnx(model, feeds: dict) -> list:
    """Outputs of `model` on ONNX Runtime's CPU provider, basic graph optimizations only."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    n = len(feeds[names[0]])
    outs = [sess.run(None, {k: feeds[k][i:i + 1] for k in names}) for i in range(n)]
    return [np.concatenate(parts).astype(np.float64) for parts in zip(*outs)]


def verify(original, rewritten, feeds: dict, names, samples=16) -> dict:
    """ORT before vs after on up to `samples` calibration inputs. Raises RewriteError when any output's max abs
    error exceeds the loosest bound of the rewrites applied; returns the figures otherwise."""
    rtol = max([REWRITES[n].rtol for n in names] or [1e-4])
    feeds = {k: np.asarray(v)[:samples] for k, v in feeds.items()}
    before, after = run_onnx(original, feeds), run_onnx(rewritten, feeds)
    figures = []
    for i, (a, b) in enumerate(zip(before, after)):
        scale = float(np.abs(a).max()) or 1.0
        err = float(np.abs(a - b).max())
        fa, fb = a.reshape(len(a), -1), b.reshape(len(b), -1)
        cos = float(((fa * fb).sum(1) / np.maximum(np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1),
                                                     1e-12)).min())
        figures.append({"output": i, "max_abs_error": err, "bound": rtol * scale, "cosine_min": cos})
    result = {"rewrites": list(names), "samples": len(next(iter(feeds.values()))), "outputs": figures,
              "max_abs_error": max(f["max_abs_error"] for f in figures),
              "runtime": "onnxruntime CPU, before vs after"}
    bad = [f for f in figures if not f["max_abs_error"] <= f["bound"]]
    if bad:
        f = bad[0]
        raise RewriteError(f"rewrite {', '.join(names)} changed output {f['output']} by {f['max_abs_error']:.3g} "
                           f"(bound {f['bound']:.3g}) on the calibration inputs; not trusted")
    return result
