"""stages/qdq_placement.py on real ONNX Runtime: a CNN whose stem conv and MaxPool the plan keeps float, the rest int8.
As the quantizer places it (Relu -> MaxPool -> Q), ORT moves a Q in front of the MaxPool and runs the pool on uint8;
pooled first (MaxPool -> Relu -> Q) the pool stays float and the outputs are the same values."""

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def stem_cnn(path):
    """input -> stem Conv -> Relu -> MaxPool -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)

    def init(name, shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="stem", pads=[3, 3, 3, 3], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"], name="stem_relu"),
        helper.make_node("MaxPool", ["r1"], ["p"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["output"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "stem", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])],
        [init("w1", [16, 3, 7, 7]), init("b1", [16]), init("w2", [16, 16, 3, 3]), init("b2", [16]),
         init("w3", [10, 16]), init("b3", [10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _session(model, level="all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _ort_graph(model, tmp_path):
    """The graph ORT really runs (its optimized model, written by ORT itself)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp_path / "optimized.onnx")).graph


def _ort_ops(model, tmp_path):
    """Op types of the graph ORT really runs."""
    return [n.op_type for n in _ort_graph(model, tmp_path).node]


def _pool_input_in_ort(model, tmp_path):
    """The op type feeding the MaxPool in the graph ORT really runs."""
    g = _ort_graph(model, tmp_path)
    producer = {o: n for n in g.node for o in n.output}
    pools = [n for n in g.node if "MaxPool" in n.op_type]
    assert len(pools) == 1, [n.op_type for n in g.node]
    return producer[pools[0].input[0]].op_type


def test_a_float_pool_before_int8_convs_is_pooled_first_and_stays_float(tmp_path):
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    from toolchain.stages import precision, qdq_placement

    stem_cnn(tmp_path / "fp32.onnx")
    x = np.random.default_rng(1).standard_normal((16, 3, 32, 32)).astype(np.float32)
    cal = precision.Calibration(tmp_path / "fp32.onnx", {"input": x}, ["input"])
    # as the quantizer places it: the plan's variant before the rewrite
    q = QDQQuantizer(load_model_with_shape_infer(tmp_path / "fp32.onnx"), True, False, QuantType.QInt8,
                     QuantType.QUInt8, copy.deepcopy(cal.ranges), [], ["stem", "pool"], cal.op_types, {})
    q.quantize_model()
    placed = q.model.model
    # what the plan makes (Calibration.static applies the rewrite to every QDQ variant)
    ours = cal.static("uint8", "int8", True, exclude=["stem", "pool"])

    assert qdq_placement.pool_before_float_relu(copy.deepcopy(placed)) == ["pool"]
    producer = {o: n for n in ours.graph.node for o in n.output}
    pool = next(n for n in ours.graph.node if n.op_type == "MaxPool")
    assert producer[pool.input[0]].name == "stem"  # pooled first ...
    relu = next(n for n in ours.graph.node if n.name == "stem_relu")
    assert producer[relu.input[0]].name == "pool"  # ... then the Relu, then the Q
    assert any(n.op_type == "QLinearConv" or n.op_type == "QuantizeLinear" for n in ours.graph.node)

    # the same values, with and without ORT's optimizations
    for level in ("off", "all"):
        sa, sb = _session(placed, level), _session(ours, level)
        for i in range(4):
            a, b = sa.run(None, {"input": x[i:i + 1]})[0], sb.run(None, {"input": x[i:i + 1]})[0]
            assert np.array_equal(a, b), level

    # what ORT runs: a Q in front of the pool (uint8 pool) as placed; a float pool fed by the float stem after
    assert _pool_input_in_ort(placed, tmp_path) == "QuantizeLinear"
    assert _pool_input_in_ort(ours, tmp_path) != "QuantizeLinear"


def test_an_int8_relu_pool_is_left_alone(tmp_path):
    """Where the pool's input is int8 already (every node quantized), ORT fuses it well: nothing is rewritten."""
    from toolchain.stages import precision, qdq_placement

    stem_cnn(tmp_path / "fp32.onnx")
    x = np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)
    every = precision.Calibration(tmp_path / "fp32.onnx", {"input": x}, ["input"]).static("uint8", "int8", True)
    assert qdq_placement.pool_before_float_relu(every) == []
