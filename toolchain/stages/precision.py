"""Building blocks of the x86 precision plan, on ONNX Runtime's own quantizer: calibrate once, then make any
variant (scheme x nodes kept in float) from the same activation ranges, run it, time it.

The judgement lives in plan.py; this module only knows how to make and measure variants.
"""

import copy
from pathlib import Path

from .quant_memo import WeightMemo

# The ops whose int8 form carries the compute (and the weights): the units of sensitivity analysis.
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
SCHEMES = {  # name -> (method, activation type, weight type)
    "static_u8s8": ("static", "uint8", "int8"),
    "static_s8s8": ("static", "int8", "int8"),
    "dynamic_s8": ("dynamic", None, "int8"),
    # int8 only where the feature maps are small: tiers of output resolution, timed against each other (plan.py)
    "static_u8s8_by_resolution": ("static", "uint8", "int8"),
    # dynamic int8 of ONNX Runtime's fused transformer graph; transformers only (stages/transformer_fusion.py)
    "dynamic_s8_fused": ("dynamic", None, "int8"),
}
TIERED = {"static_u8s8_by_resolution"}
FUSED = {"dynamic_s8_fused"}


class Calibration:
    """Activation ranges of the pre-processed fp32 model, collected once on the calibration data."""

    def __init__(self, prep_path: Path, arrays: dict, input_names, method="minmax"):
        from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

        from .quantize import _Reader

        self.prep_path = Path(prep_path)
        self.op_types = self.op_types_static()
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[method]
        calibrator = create_calibrator(self.prep_path, self.op_types,
                                       augmented_model_path=str(self.prep_path.with_suffix(".augmented.onnx")),
                                       calibrate_method=method)
        calibrator.collect_data(_Reader(arrays, list(input_names)))
        self.ranges = calibrator.compute_data()
        self.memo = WeightMemo()  # every variant from these ranges quantizes the same weights: once (quant_memo.py)
        del calibrator
        self.prep_path.with_suffix(".augmented.onnx").unlink(missing_ok=True)

    @staticmethod
    def op_types_static() -> list:
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))

    def static(self, activation: str, weight: str, per_channel=True, only=None, exclude=(), fmt="qdq",
               reduce_range=False, hard_int8=False):
        """A static int8 model proto from these activation ranges: every quantizable node, or `only` these, minus
        `exclude`. fmt "qdq": QuantizeLinear/DequantizeLinear pairs ONNX Runtime fuses when it loads the model;
        "qoperator": ONNX Runtime's quantizer writes the fused int8 ops (QLinearConv, QLinearMatMul...) itself.
        hard_int8: HardSigmoid / HardSwish in int8 regions written as QLinearMuls (qdq_activations.py)."""
        from onnxruntime.quantization import QuantizationMode, QuantType
        from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
        from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
        from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

        qt = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        model = load_model_with_shape_infer(self.prep_path)
        common = (qt[weight], qt[activation], copy.deepcopy(self.ranges), list(only or []), list(exclude))
        if fmt == "qoperator":
            from onnxruntime.quantization.registry import QLinearOpsRegistry

            q = ONNXQuantizer(model, per_channel, reduce_range, QuantizationMode.QLinearOps, True, *common,
                              sorted(QLinearOpsRegistry), {})
        else:
            q = QDQQuantizer(model, per_channel, reduce_range, *common, self.op_types, {})
        with self.memo.active():
            q.quantize_model()
        if fmt == "qdq":  # same arithmetic, placed where ONNX Runtime keeps its fast kernels (qdq_placement.py)
            from .qdq_placement import pool_before_float_relu

            from .qdq_stem import space_to_depth_stems

            pool_before_float_relu(q.model.model)
            space_to_depth_stems(q.model.model)  # the same integer sums, faster in ORT (qdq_stem.py)
            if hard_int8:
                import numpy as np

                from .qdq_activations import int8_hard_activations

                int8_hard_activations(q.model.model, {k: tuple(float(np.ravel(v)[0]) for v in d.range_value)
                                                      for k, d in self.ranges.items()})
        return q.model.model


def dynamic(prep_path: Path, out_path: Path, weight="int8", per_channel=True, only=None, exclude=(),
            untyped_as_float=False):
    """Dynamic int8 (weights int8, activations quantized at run time). Convolutions are left out: ORT's CPU
    ConvInteger takes only uint8 weights and is rarely faster than float. untyped_as_float: tensors the quantizer
    cannot type are float (a graph with com.microsoft ops, which have no ONNX shape inference)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    quantize_dynamic(str(prep_path), str(out_path), per_channel=per_channel,
                     weight_type={"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[weight],
                     nodes_to_quantize=list(only or []), nodes_to_exclude=list(exclude),
                     op_types_to_quantize=[t for t in IntegerOpsRegistry if t != "Conv"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT} if untyped_as_float else None)
    return out_path


def compute_nodes(model) -> list:
    """(name, kind) of the compute nodes; Conv split by shape, because depthwise and 1x1 convs fare
    differently in int8 (STACK.md: depthwise convs stayed float and made MobileNetV3 int8 slower)."""
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type not in COMPUTE_OPS:
            continue
        kind = n.op_type
        if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits:
            dims = list(inits[n.input[1]].dims)  # [C_out, C_in / group, kH, kW]
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            if group > 1 and dims[1] == 1:
                kind = "Conv(depthwise)"
            elif dims[2:] == [1, 1]:
                kind = "Conv(1x1)"
            else:
                kind = "Conv(kxk)"
        out.append((n.name, kind))
    return out


POST_PROCESSING = "post-processing"  # quantize.force_float entry: the graph's tail after its last compute nodes


def post_processing_nodes(model) -> list:
    """(name, op_type) of the nodes no compute node depends on: a detector's decode, NMS and top-K after its heads,
    a classifier's softmax. Int8 there quantizes results (box coordinates) instead of features."""
    producer = {o: n for n in model.graph.node for o in n.output}
    feeds_compute, stack = set(), [n for n in model.graph.node if n.op_type in COMPUTE_OPS]
    while stack:
        n = stack.pop()
        for i in n.input:
            p = producer.get(i)
            if p is not None and p.name not in feeds_compute and p.op_type not in COMPUTE_OPS:
                feeds_compute.add(p.name)
                stack.append(p)
    return [(n.name, n.op_type) for n in model.graph.node
            if n.op_type not in COMPUTE_OPS and n.name not in feeds_compute]


def output_sizes(model) -> dict:
    """node name -> (H, W) of its first output (1, 1 for anything not a feature map), by ONNX shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    out = {}
    for n in inferred.graph.node:
        dims = shapes.get(n.output[0], []) if n.output else []
        out[n.name] = (dims[2], dims[3]) if len(dims) == 4 and dims[2] and dims[3] else (1, 1)
    return out


def other_quantizable(model, op_types) -> list:
    """(name, op_type) of the quantizable nodes that are not compute nodes (Add, Mul, pooling, ...)."""
    return [(n.name, n.op_type) for n in model.graph.node if n.op_type in op_types and n.op_type not in COMPUTE_OPS]


class Runner:
    """Runs variants on ONNX Runtime's CPU provider: outputs on a data set, and interleaved latency."""

    def __init__(self, threads, input_names):
        self.threads, self.input_names = threads, list(input_names)

    def session(self, path):
        from ..runtimes.onnxruntime import OrtSession

        return OrtSession(path, ["CPUExecutionProvider"], self.threads)

    def outputs(self, path, arrays, limit=None):
        import numpy as np

        from ..data import batches

        s = self.session(path)
        if limit:
            arrays = {k: arrays[k][:limit] for k in self.input_names}
        chunks = [s.run(f) for f in batches(arrays, self.input_names, 64)]
        return [np.concatenate(parts).astype(np.float32) for parts in zip(*chunks)]

    def latency(self, paths: dict, feed: dict, runs=150, warmup=15) -> dict:
        from ..validation.latency import interleaved

        calls = {name: self.session(p).timer(feed) for name, p in paths.items()}
        return {n: r["p50"] for n, r in interleaved(calls, warmup, runs).items()}
