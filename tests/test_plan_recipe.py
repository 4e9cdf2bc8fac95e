"""The x86 plan's floor (stages/plan_recipe.py): the variant it makes with the recipe's settings is ONNX Runtime's
documented recipe itself (quant_pre_process + quantize_static QDQ u8s8 per-channel MinMax), node for node and
initializer for initializer, so "at worst the recipe" is about the very model a user would copy. Real ONNX Runtime
on a tiny residual CNN written with onnx.helper."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def residual_cnn(path):
    """input -> Conv+Relu -> Conv -> Add(skip) -> Relu -> MaxPool -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)

    def init(name, shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["output"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "residual", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])],
        [init("w1", [8, 3, 3, 3]), init("b1", [8]), init("w2", [8, 8, 3, 3]), init("b2", [8]), init("w3", [10, 8]),
         init("b3", [10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _reader(x):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": x[i:i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.it, None)
    return Reader()


def test_the_plans_recipe_variant_is_the_recipes_model(tmp_path):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from toolchain.stages import plan_recipe, precision

    residual_cnn(tmp_path / "fp32.onnx")
    prep = tmp_path / "prep.onnx"
    quant_pre_process(str(tmp_path / "fp32.onnx"), str(prep), skip_symbolic_shape=True)  # as plan.run does
    x = np.random.default_rng(1).standard_normal((16, 3, 16, 16)).astype(np.float32)

    # the documented recipe, as a user copies it (bench_peers.ort_recipe makes the bench's peer the same way)
    quantize_static(str(prep), str(tmp_path / "recipe.onnx"), _reader(x), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    # the plan's variant with the recipe's settings
    method, act, weight = precision.SCHEMES[plan_recipe.SCHEME]
    assert (method, act, weight) == ("static", "uint8", "int8")
    kw = plan_recipe.MAKE_KW
    cal = precision.Calibration(prep, {"input": x}, ["input"], kw["calib"])
    cal.static(act, weight, kw["per_channel"], exclude=["conv1"])  # another variant first: its weights are memoized
    ours = cal.static(act, weight, kw["per_channel"])
    assert cal.memo.hits > 0  # ... and reused here (stages/quant_memo.py), with the recipe's results

    recipe = onnx.load(str(tmp_path / "recipe.onnx"))

    def nodes(m):
        return sorted((n.op_type, tuple(n.input), tuple(n.output)) for n in m.graph.node)

    def inits(m):
        return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}

    assert nodes(ours) == nodes(recipe)
    assert sum(op == "QuantizeLinear" for op, _, _ in nodes(ours)) >= 5  # really quantized, not a float copy
    a, b = inits(ours), inits(recipe)
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
