"""The x86 plan's fused-transformer scheme (`dynamic_s8_fused`): ONNX Runtime's transformer optimizer
(onnxruntime.transformers.optimizer, model type "bert") rewrites the fp32 graph into ORT's fused CPU ops, then
dynamic int8 quantizes its MatMuls like `dynamic_s8`. The plan makes, judges and times it like any other scheme;
fastest in the closing timing, it must also be >= 5% faster than the fastest unfused scheme in two more interleaved
A/Bs to ship (plan_closing.confirm_fused), since it changes more than precision.

What the fusion does here: LayerNormalization after a residual Add becomes SkipLayerNormalization, and the
bias Add + exact GELU (Erf) becomes FastGelu, GELU's tanh approximation with the bias folded in: an approximation
(the judge sees it), taken because Erf GELU is ~12 % of MiniLM's dynamic-int8 time on one thread (ORT profiler).
Attention fusion stays off: fused Attention quantizes to QAttention, which measured no faster than the unfused
attention with DynamicQuantizeMatMul projections (ORT 1.23, AVX512-VNNI, MiniLM seq 128, 1 thread), and it would
hide the Q/K/V MatMuls the plan's sensitivity search keeps float one by one. Every MatMul keeps its name, so
the plan's search units (precision.compute_nodes of the pre-processed graph) name the same nodes here.

(On MiniLM as exported here the attention fusion does not even match: its mask bias is computed before the
Unsqueezes, and the scale Mul and the mask Mul meet at one Add; both had to be rewritten by hand to measure it.)

Only for transformers (`transformer_reason`): a graph without a LayerNormalization, or without a Softmax over a
MatMul product, is skipped before anything is made, so CNN plans pay one look at their graph for this scheme.
"""

from pathlib import Path

NUM_HEADS = HIDDEN = 0  # 0: the optimizer reads them from the graph's reshapes


def transformer_reason(model) -> str | None:
    """None when the graph looks like a transformer encoder (attention: Softmax of a MatMul product; and a
    LayerNormalization), else why not, for the plan's steps."""
    producer = {o: n for n in model.graph.node for o in n.output}
    ops = {n.op_type for n in model.graph.node}
    if "LayerNormalization" not in ops:
        return "no LayerNormalization in the graph"

    def from_matmul(name, depth=3):
        n = producer.get(name)
        if n is None or depth == 0:
            return False
        return n.op_type == "MatMul" or any(from_matmul(i, depth - 1) for i in n.input)

    if not any(n.op_type == "Softmax" and from_matmul(n.input[0]) for n in model.graph.node):
        return "no attention (Softmax over a MatMul product) in the graph"
    return None


def fuse(src: Path, out: Path) -> dict:
    """ORT's transformer optimizer on the fp32 graph `src` (the plan's pre-processed graph) -> `out`; returns the
    optimizer's op counts (non-zero ones). opt_level 0: only the optimizer's own pattern fusions, no ORT session
    passes baked into the file (the session applies those at load time, as it does for every other variant)."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_attention = False  # see the module doc: QAttention measured no faster
    options.enable_embed_layer_norm = False  # needs the attention fusion's mask
    options.enable_gelu_approximation = True
    m = optimizer.optimize_model(str(src), model_type="bert", num_heads=NUM_HEADS, hidden_size=HIDDEN, opt_level=0,
                                 optimization_options=options)
    m.save_model_to_file(str(out))
    return {k: v for k, v in sorted(m.get_fused_operator_statistics().items()) if v}


def dynamic(fused_path: Path, out_path: Path, weight="int8", per_channel=True, only=None, exclude=()):
    """Dynamic int8 of the fused graph: precision.dynamic, with untyped tensors taken as float (the com.microsoft
    ops have no ONNX shape inference)."""
    from .precision import dynamic as dynamic_int8

    return dynamic_int8(fused_path, out_path, weight, per_channel, only, exclude, untyped_as_float=True)
