"""stages/qdq_activations.py on real ONNX Runtime: HardSigmoid / HardSwish in int8 regions become QLinearMuls in the
graph ORT runs, the gate is HardSigmoid on the 1/256 grid exactly, and the model's outputs stay close to the
float-activation quantization of the same model."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from test_qdq_placement import _ort_ops, _session

from toolchain.stages import precision, qdq_activations


def test_the_int8_gate_is_hardsigmoid_on_the_1_256_grid(tmp_path):
    """uint8 codes -> DequantizeLinear -> HardSigmoid, rewritten: ORT (all optimizations, and none) returns
    clip(round(256 alpha x) + 256 beta, 0, 255) / 256 for every code, within 1/256 of the float HardSigmoid."""
    scale, zero, alpha, beta = 0.05, 120, 1 / 6, 0.5
    nodes = [helper.make_node("DequantizeLinear", ["codes", "s", "z"], ["x"]),
             helper.make_node("HardSigmoid", ["x"], ["output"], name="gate", alpha=alpha, beta=beta)]
    graph = helper.make_graph(nodes, "gate", [helper.make_tensor_value_info("codes", TensorProto.UINT8, [256])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [256])],
                              [numpy_helper.from_array(np.array(scale, np.float32), "s"),
                               numpy_helper.from_array(np.array(zero, np.uint8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.graph.node[1].output[0] = "g"  # the rewrite leaves graph outputs alone: read the gate through an Identity
    model.graph.node.append(helper.make_node("Identity", ["g"], ["output"]))
    assert qdq_activations.int8_hard_activations(model) == ["gate"]
    onnx.checker.check_model(model)
    codes = np.arange(256, dtype=np.uint8)
    x = (codes.astype(np.float32) - zero) * np.float32(scale)
    gate = np.clip(np.round(x * np.float32(alpha) * 256) + 128, 0, 255) / 256
    for level in ("all", "off"):
        out = _session(model, level).run(None, {"codes": codes})[0]
        np.testing.assert_allclose(out, gate, atol=1e-6)
    assert np.abs(gate - np.clip(alpha * x + beta, 0, 1)).max() <= 1 / 256 + 1e-6


def mobilenet_block(path):
    """Conv -> HardSwish -> depthwise Conv -> HardSwish -> squeeze-excite (GlobalAveragePool, 1x1 Conv, Relu,
    1x1 Conv, HardSigmoid, Mul) -> 1x1 Conv -> GlobalAveragePool -> Flatten -> Gemm: a MobileNetV3 block."""
    rng = np.random.default_rng(0)

    def init(name, shape, s=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="expand", pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["c1"], ["h1"], name="hs1"),
        helper.make_node("Conv", ["h1", "wd", "bd"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=16),
        helper.make_node("HardSwish", ["c2"], ["h2"], name="hs2"),
        helper.make_node("GlobalAveragePool", ["h2"], ["sq"], name="se_pool"),
        helper.make_node("Conv", ["sq", "wf1", "bf1"], ["f1"], name="se_fc1"),
        helper.make_node("Relu", ["f1"], ["r1"], name="se_relu"),
        helper.make_node("Conv", ["r1", "wf2", "bf2"], ["f2"], name="se_fc2"),
        helper.make_node("HardSigmoid", ["f2"], ["gate"], name="se_gate", alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["h2", "gate"], ["se"], name="se_mul"),
        helper.make_node("Conv", ["se", "w3", "b3"], ["c3"], name="project"),
        helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w4", "b4"], ["output"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])],
        [init("w1", [16, 8, 3, 3]), init("b1", [16]), init("wd", [16, 1, 3, 3]), init("bd", [16]),
         init("wf1", [8, 16, 1, 1]), init("bf1", [8]), init("wf2", [16, 8, 1, 1]), init("bf2", [16]),
         init("w3", [24, 16, 1, 1]), init("b3", [24]), init("w4", [10, 24]), init("b4", [10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_a_mobilenet_block_runs_its_hard_activations_as_qlinearmul(tmp_path):
    """The plan's static quantization of a MobileNetV3 block with hard_int8: no float HardSigmoid/HardSwish/Mul
    left in the graph ORT runs (QLinearMuls instead, the squeeze-excite pool int8 too), and outputs within a few
    8-bit steps of the same quantization with float activations (SQNR to fp32 within 3 dB)."""
    fp32 = tmp_path / "block.onnx"
    mobilenet_block(fp32)
    rng = np.random.default_rng(1)
    data = {"input": rng.standard_normal((16, 8, 16, 16)).astype(np.float32)}
    calib = precision.Calibration(fp32, data, ["input"])
    plain = calib.static("uint8", "int8")
    hard = calib.static("uint8", "int8", hard_int8=True)
    assert qdq_activations.applies(plain)
    ops_plain, ops_hard = _ort_ops(plain, tmp_path), _ort_ops(hard, tmp_path)
    assert {"HardSigmoid", "Mul"} <= set(ops_plain)  # ORT runs HardSwish as HardSigmoid * x in float
    assert not {"HardSigmoid", "HardSwish", "Mul", "GlobalAveragePool"} & set(ops_hard), ops_hard
    # each HardSwish: the gate and the product; the squeeze-excite's gate; its Mul (the quantizer's own)
    assert ops_hard.count("QLinearMul") == 6 and "QLinearGlobalAveragePool" in ops_hard, ops_hard
    ref = _session(onnx.load(str(fp32)))
    outs = {}
    for name, model in (("plain", plain), ("hard", hard)):
        s = _session(model)
        outs[name] = np.concatenate([s.run(None, {"input": data["input"][i:i + 1]})[0] for i in range(16)])
    want = np.concatenate([ref.run(None, {"input": data["input"][i:i + 1]})[0] for i in range(16)])
    from toolchain.validation.metrics import sqnr_db

    assert sqnr_db(outs["plain"], want) > 12 and sqnr_db(outs["hard"], want) > sqnr_db(outs["plain"], want) - 3, \
        (sqnr_db(outs["plain"], want), sqnr_db(outs["hard"], want))


def test_float_regions_and_unranged_float_readers_are_left_alone(tmp_path):
    """A HardSwish fed by a float op (a node the plan keeps float) stays; so does one whose output float ops read
    when no calibrated range says how to quantize it; a model without hard activations is untouched."""
    fp32 = tmp_path / "block.onnx"
    mobilenet_block(fp32)
    rng = np.random.default_rng(1)
    calib = precision.Calibration(fp32, {"input": rng.standard_normal((4, 8, 16, 16)).astype(np.float32)}, ["input"])
    # hs1 reads a float conv; hs2's readers (the squeeze-excite's pool and Mul) stay float
    model = calib.static("uint8", "int8", exclude=["expand", "se_pool", "se_mul"])
    assert qdq_activations.int8_hard_activations(model, ranges={}) == ["se_gate"]
    assert [n.name for n in model.graph.node if n.op_type == "HardSwish"] == ["hs1", "hs2"]
    plain = onnx.load(str(fp32))
    before = plain.SerializeToString()
    for n in plain.graph.node:
        if n.op_type in qdq_activations.OPS:
            n.op_type = "Relu"
            del n.attribute[:]
    assert not qdq_activations.applies(plain)
    plain2 = onnx.load(str(fp32))
    assert qdq_activations.int8_hard_activations(plain2) == [] and plain2.SerializeToString() == before
