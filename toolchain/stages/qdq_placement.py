"""Where the quantizer's Q/DQ placement meets ONNX Runtime's graph optimizations badly, a rewrite that keeps the
model's arithmetic and lets ORT pick its fast kernels.

Float Relu -> MaxPool in front of an int8 region (a CNN stem kept float): ORT's QDQPropagationTransformer moves the
QuantizeLinear after the MaxPool to before it, so the pool runs on uint8 in NCHW layout, a slow generic kernel: on
the ResNet-18-like suite model with its stem conv kept float, that uint8 MaxPool took longer than all 19 int8 convs
together (0.56x fp32, against 0.34x for the same plan with the propagation switched off). ORT propagates a Q only
across MaxPool, Reshape, Transpose, Squeeze, Unsqueeze and Slice, and Relu commutes with MaxPool exactly
(max(relu(a), relu(b)) = relu(max(a, b))), so pooling first and applying the Relu after it computes the same values,
leaves the Q behind the Relu where it stays, and the pool runs in float next to the float conv that feeds it (on a
quarter of the Relu's work). Duplicating the Q per consumer does not help: ORT's common-subexpression pass merges
the copies back.
"""

from ..rewrites import edges


def pool_before_float_relu(model) -> list:
    """Rewrite `model` (an onnx ModelProto, in place): float Relu -> MaxPool -> QuantizeLinear becomes
    MaxPool -> Relu -> QuantizeLinear where the Relu is not fed by a DequantizeLinear and each edge on the way is its
    producer's only use. Returns the names of the MaxPools moved."""
    graph = model.graph
    producer, consumers = edges(graph)
    outputs = {o.name for o in graph.output}
    moved = []
    for pool in list(graph.node):
        if pool.op_type != "MaxPool" or len(pool.output) != 1 or pool.output[0] in outputs:
            continue  # a MaxPool with indices is not a plain max
        relu = producer.get(pool.input[0])
        if relu is None or relu.op_type != "Relu" or relu.output[0] in outputs:
            continue
        src = producer.get(relu.input[0])
        if src is not None and src.op_type == "DequantizeLinear":  # an int8 region: ORT fuses it, nothing to fix
            continue
        uses = consumers.get(pool.output[0], [])
        if len(consumers.get(relu.output[0], [])) != 1 or len(uses) != 1 or uses[0].op_type != "QuantizeLinear":
            continue
        x, a, b = relu.input[0], relu.output[0], pool.output[0]
        pool.input[0], pool.output[0] = x, a
        relu.input[0], relu.output[0] = a, b
        moved.append(pool.name)
    if moved:
        _toposort(graph)
    return moved


def _toposort(graph):
    """Nodes in an order where every input is made before it is read (the added pairs went to the end)."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                ordered.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or a missing input: leave the order as it was
            return
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
