"""stages/qdq_stem.py on real ONNX Runtime: an int8 RGB 7x7 stride-2 stem becomes SpaceToDepth + a 4x4 stride-1
int8 conv on 12 channels, and the int8 model's outputs are identical to ONNX Runtime's own quantize_static of the
same model; float stems and other shapes are left alone."""

import numpy as np
import onnx
from test_qdq_placement import _ort_ops, _session, stem_cnn

from toolchain.stages import precision
from toolchain.stages.qdq_stem import space_to_depth_stems


def _data():
    return {"input": np.random.default_rng(3).standard_normal((8, 3, 32, 32)).astype(np.float32)}


def test_an_int8_rgb_stem_runs_as_space_to_depth_with_identical_outputs(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static

    fp32 = tmp_path / "stem.onnx"
    stem_cnn(fp32)
    data = _data()
    ours = precision.Calibration(fp32, data, ["input"]).static("uint8", "int8")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": data["input"][i:i + 1]} for i in range(len(data["input"]))])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32), str(tmp_path / "ort.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    theirs = onnx.load(str(tmp_path / "ort.onnx"))
    stem = next(n for n in ours.graph.node if n.name == "stem")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in stem.attribute}
    assert attrs["kernel_shape"] == [4, 4] and attrs["strides"] == [1, 1] and attrs["pads"] == [2, 2, 1, 1]
    producer = {o: n for n in ours.graph.node for o in n.output}
    q = producer[producer[stem.input[0]].input[0]]  # the stem's input DequantizeLinear <- QuantizeLinear
    assert q.op_type == "QuantizeLinear" and producer[q.input[0]].op_type == "SpaceToDepth"
    ops = _ort_ops(ours, tmp_path)
    assert "Conv" not in ops and ops.count("QLinearConv") == 2, ops  # the stem stays an int8 conv in ORT
    for i in range(4):
        x = {"input": data["input"][i:i + 1]}
        assert np.array_equal(_session(ours).run(None, x)[0], _session(theirs).run(None, x)[0])


def test_float_stems_and_other_shapes_are_left_alone(tmp_path):
    fp32 = tmp_path / "stem.onnx"
    stem_cnn(fp32)
    calib = precision.Calibration(fp32, _data(), ["input"])
    floated = calib.static("uint8", "int8", exclude=["stem"])
    assert "SpaceToDepth" not in {n.op_type for n in floated.graph.node}
    model = onnx.load(str(fp32))
    stem = next(n for n in model.graph.node if n.name == "stem")
    stem.ClearField("attribute")
    stem.attribute.extend([onnx.helper.make_attribute("strides", [1, 1]), onnx.helper.make_attribute("pads",
                                                                                                    [3, 3, 3, 3])])
    before = model.SerializeToString()
    assert space_to_depth_stems(model) == [] and model.SerializeToString() == before  # not even int8, nor stride 2
