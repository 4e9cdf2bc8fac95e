"""The arm64 target: onnx2tf full-integer int8 TFLite, run on LiteRT through the runtime adapter (layout
mapping, int8 quantization of inputs, dequantization of outputs), and conversion failures.

One real conversion (the tiny CNN) is shared by the tests of this module that run by default; the conversion
failure test also runs by default; every other conversion is marked slow."""

import platform
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from toolchain.errors import StageError
from toolchain.runtimes.litert import LiteRTSession, _from_tflite, _to_tflite
from toolchain.stages import tflite

from conftest import parse_progress, run_build


def _torch_logits(model, x):
    import torch

    with torch.no_grad():
        return model.torch_model()(torch.from_numpy(x)).numpy()


def _eval(model):
    with np.load(model.evaluation) as z:
        return {k: z[k] for k in z.files}


def _tflite_entry(build):
    (entry,) = [p for p in (build.out / ".cache" / "tflite").iterdir() if (p / "entry.json").is_file()]
    return entry


def _run_each(session, arrays, names):
    """LiteRT runs batch 1: one sample at a time, outputs concatenated."""
    n = len(arrays[names[0]])
    outs = [session.run({k: arrays[k][i:i + 1] for k in names}) for i in range(n)]
    return [np.concatenate(parts) for parts in zip(*outs)]


# ---- the layout mapping, on plain arrays ------------------------------------------------------------------
def test_to_tflite_moves_channels_last():
    a = np.arange(1 * 3 * 4 * 5, dtype=np.float32).reshape(1, 3, 4, 5)
    out = _to_tflite(a, [1, 4, 5, 3])
    assert out.shape == (1, 4, 5, 3)
    assert out[0, 2, 1, 0] == a[0, 0, 2, 1] and out[0, 3, 4, 2] == a[0, 2, 3, 4]
    np.testing.assert_array_equal(out, tflite.nhwc(a))  # the same convention as the calibration data


def test_to_tflite_rank3_and_identity():
    a = np.arange(1 * 4 * 6, dtype=np.float32).reshape(1, 4, 6)
    np.testing.assert_array_equal(_to_tflite(a, (1, 6, 4)), a.transpose(0, 2, 1))
    np.testing.assert_array_equal(_to_tflite(a, (1, 6, 4)), tflite.nhwc(a))
    same = np.zeros((1, 5), np.float32)
    assert _to_tflite(same, [1, 5]) is same  # already in the interpreter's layout: untouched


def test_to_tflite_refuses_unmappable_shapes():
    with pytest.raises(ValueError, match=r"cannot map an input of shape \(1, 1, 8, 8\) onto the TFLite tensor"):
        _to_tflite(np.zeros((1, 1, 8, 8), np.float32), [1, 5])


def test_from_tflite_back_to_model_layout():
    nchw = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    nhwc = nchw.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(_from_tflite(nhwc, (3, 4, 5)), nchw)
    ncl = np.arange(2 * 3 * 7, dtype=np.float32).reshape(2, 3, 7)
    np.testing.assert_array_equal(_from_tflite(ncl.transpose(0, 2, 1), (3, 7)), ncl)
    logits = np.zeros((1, 10), np.float32)
    assert _from_tflite(logits, (10,)) is logits
    assert _from_tflite(logits, None) is logits


# ---- one real conversion ------------------------------------------------------------------------------------
def test_arm64_build_passes(arm64_build):
    b = arm64_build
    assert b.code == 0, b.progress
    assert ("tflite", "arm64") in b.ran and ("validate", "arm64") in b.ran
    t = b.report["targets"]["arm64"]
    assert t["status"] == "passed", t.get("reason")
    assert (t["format"], t["precision"], t["runtime"]) == ("tflite", "int8", "litert")
    artifact = b.model_dir / t["artifact"]
    assert artifact.is_file() and artifact.suffix == ".tflite"
    assert artifact.parent == b.model_dir / "arm64"
    assert sorted(p.name for p in (b.model_dir / "arm64").iterdir()) == ["tiny_cnn.int8.tflite"]
    assert artifact.stat().st_size == t["size_bytes"] < t["baseline_size_bytes"]
    assert t["build"]["full_integer"] is True and t["build"]["calibration_samples"] == 32
    assert t["agreement"]["0"]["top1_agreement"] >= 80.0
    assert t["metric_drop"] <= t["max_metric_drop"]
    for key in ("latency_ms", "baseline_latency_ms"):
        assert 0 < t[key]["p50"] <= t[key]["p90"] <= t[key]["p99"]
    if platform.machine() not in ("aarch64", "arm64"):
        assert "not on an ARM device" in t["latency_note"]


def test_arm64_report_io_quantization(arm64_build, models):
    io = arm64_build.report["targets"]["arm64"]["io"]
    (inp,) = io["inputs"]
    assert inp["name"] == "input" and inp["dtype"] == "int8"
    assert inp["shape"] == [1, 8, 8, 1]  # channels last
    assert isinstance(inp["scale"], float) and inp["scale"] > 0
    assert isinstance(inp["zero_point"], int) and -128 <= inp["zero_point"] <= 127
    (out,) = io["outputs"]
    assert out["name"] == "logits" and out["dtype"] == "int8" and out["shape"] == [1, 10]
    assert out["scale"] > 0 and -128 <= out["zero_point"] <= 127
    # The input scale covers the calibration data's range (int8 spans 255 steps of it).
    with np.load(models["tiny_cnn"].calibration) as z:
        x = z["input"]
    span = float(x.max() - x.min())
    assert span / 255 * 0.9 <= inp["scale"] <= span / 255 * 1.1


def test_litert_int8_agrees_with_fp32(arm64_build, models):
    t = arm64_build.report["targets"]["arm64"]
    session = LiteRTSession(arm64_build.model_dir / t["artifact"], output_shapes=[(10,)])
    data = _eval(models["tiny_cnn"])
    (logits,) = _run_each(session, data, ["input"])
    ref = _torch_logits(models["tiny_cnn"], data["input"])
    assert logits.shape == ref.shape == (64, 10) and logits.dtype == np.float32
    agree = float((logits.argmax(1) == ref.argmax(1)).mean() * 100)
    assert agree >= 80.0
    assert agree == pytest.approx(t["agreement"]["0"]["top1_agreement"])
    cos = (logits * ref).sum(1) / (np.linalg.norm(logits, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.95


def test_litert_fp32_baseline_matches_onnx_exactly(arm64_build, models):
    """The fp32 TFLite from the same conversion equals the fp32 ONNX to float tolerance through the adapter (with
    one channel, NCHW -> NHWC is a reshape; the 3-channel slow test checks the transpose itself)."""
    import onnxruntime as ort

    session = LiteRTSession(_tflite_entry(arm64_build) / tflite.BASELINE, output_shapes=[(10,)])
    assert session.inputs[0]["dtype"] == np.float32 and list(session.inputs[0]["shape"]) == [1, 8, 8, 1]
    data = _eval(models["tiny_cnn"])
    (got,) = _run_each(session, data, ["input"])
    fp32_onnx = arm64_build.model_dir / arm64_build.report["fp32_onnx"]["path"]
    (want,) = ort.InferenceSession(str(fp32_onnx), providers=["CPUExecutionProvider"]).run(
        None, {"input": data["input"]})
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_litert_quantize_dequantize_by_hand(arm64_build, models):
    """LiteRTSession.run == quantize with the input's (scale, zero point), invoke, dequantize the int8 output."""
    t = arm64_build.report["targets"]["arm64"]
    session = LiteRTSession(arm64_build.model_dir / t["artifact"], output_shapes=[(10,)])
    (i_d,), (o_d,) = session.inputs, session.outputs
    assert i_d["dtype"] == np.int8 and o_d["dtype"] == np.int8
    s_in, z_in = i_d["quantization"]
    s_out, z_out = o_d["quantization"]
    assert (s_in, z_in) == (t["io"]["inputs"][0]["scale"], t["io"]["inputs"][0]["zero_point"])
    x = _eval(models["tiny_cnn"])["input"][:8]
    for i in range(len(x)):
        sample = x[i:i + 1]
        (got,) = session.run({"input": sample})
        q = np.clip(np.round(sample.transpose(0, 2, 3, 1) / s_in) + z_in, -128, 127).astype(np.int8)
        session.interp.set_tensor(i_d["index"], q)
        session.interp.invoke()
        raw = session.interp.get_tensor(o_d["index"])
        assert raw.dtype == np.int8
        np.testing.assert_array_equal(got, (raw.astype(np.float32) - z_out) * s_out)


def test_litert_input_quantization_saturates(arm64_build, models):
    """Out-of-range inputs clip to the int8 range, as on a device; they do not wrap around."""
    t = arm64_build.report["targets"]["arm64"]
    session = LiteRTSession(arm64_build.model_dir / t["artifact"], output_shapes=[(10,)])
    scale, zero = t["io"]["inputs"][0]["scale"], t["io"]["inputs"][0]["zero_point"]
    lo, hi = (-128 - zero) * scale, (127 - zero) * scale
    x = _eval(models["tiny_cnn"])["input"][:1] * 1000.0  # far outside the calibrated range, both signs
    assert x.min() < lo and x.max() > hi
    (huge,) = session.run({"input": x})
    (clipped,) = session.run({"input": np.clip(x, lo, hi)})
    np.testing.assert_array_equal(huge, clipped)


def test_litert_io_details_name_tensors(arm64_build):
    t = arm64_build.report["targets"]["arm64"]
    io = LiteRTSession(arm64_build.model_dir / t["artifact"]).io_details()
    assert [d["shape"] for d in io["inputs"]] == [[1, 8, 8, 1]]
    assert io["inputs"][0]["name"] == "input"  # the ONNX input name survives the conversion
    assert io["inputs"][0]["tflite_name"]


def test_arm64_second_build_is_cached(arm64_build, tmp_path):
    """A new output directory on the same cache: no conversion reruns, the artifact is the same."""
    spec = arm64_build.report["provenance"]["spec"]
    again = run_build(spec, tmp_path / "out", cache_dir=arm64_build.out / ".cache")
    assert again.ran == set() and ("tflite", "arm64") in again.cached
    assert again.report["targets"]["arm64"]["sha256"] == arm64_build.report["targets"]["arm64"]["sha256"]


def test_tflite_stage_timeout(arm64_build, tmp_path):
    """A conversion past convert.timeout_s is killed and reported as a stage failure, not a hang."""
    spec = SimpleNamespace(inputs=[SimpleNamespace(name="input", shape=(1, 1, 8, 8))])
    calib = {"input": np.zeros((4, 1, 8, 8), np.float32)}
    out = tmp_path / "out"
    out.mkdir()
    fp32 = arm64_build.model_dir / arm64_build.report["fp32_onnx"]["path"]
    with pytest.raises(StageError) as ei:
        tflite.run(fp32, tflite.params_for({"timeout_s": 1}, "arm64.toml"), out, calib, spec, "arm64")
    assert ei.value.stage == "tflite" and ei.value.target == "arm64"
    assert "did not finish within 1 s" in str(ei.value)
    assert list(out.iterdir()) == []


# ---- conversion failure ----------------------------------------------------------------------------------
def _castlike_onnx(path):
    """Conv -> CastLike -> Relu: valid ONNX that ONNX Runtime runs and onnx2tf has no converter for."""
    import onnx
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "W"], ["c"], pads=[1, 1, 1, 1], name="conv0"),
             helper.make_node("CastLike", ["c", "c"], ["cl"], name="castlike0"),
             helper.make_node("Relu", ["cl"], ["logits"], name="relu0")]
    graph = helper.make_graph(nodes, "castlike", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [onnx.numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def test_unsupported_op_is_a_stage_error_naming_the_op(tmp_path):
    import onnxruntime as ort

    src = tmp_path / "castlike.onnx"
    _castlike_onnx(src)
    x = np.random.default_rng(1).standard_normal((4, 1, 8, 8)).astype(np.float32)
    (y,) = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"input": x[:1]})
    assert y.shape == (1, 4, 8, 8)  # the graph itself is fine
    before = src.read_bytes()
    spec = SimpleNamespace(inputs=[SimpleNamespace(name="input", shape=(1, 1, 8, 8))])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StageError) as ei:
        tflite.run(src, tflite.params_for({}, "arm64.toml"), out, {"input": x}, spec, "arm64")
    e = ei.value
    assert e.stage == "tflite" and e.target == "arm64" and e.exit_code == 4
    assert "CastLike" in e.cause
    assert str(e).startswith("stage tflite, target arm64: ")
    assert list(out.iterdir()) == []  # nothing half-written
    assert src.read_bytes() == before  # onnx2tf worked on a private copy


def test_conversion_failure_in_full_build(tmp_path, write_spec):
    """One target's stage failure does not stop the others: x86_64 passes, arm64 fails, exit code 4."""
    spec = write_spec(tmp_path / "spec", "with_castlike",
                      targets={"arm64": {"max_metric_drop": 25.0}})
    b = run_build(spec, tmp_path / "out")
    assert b.code == 4
    assert b.report["status"] == "stage-failed"
    x86, arm = b.report["targets"]["x86_64"], b.report["targets"]["arm64"]
    assert x86["status"] == "passed" and (b.model_dir / x86["artifact"]).is_file()
    assert arm["status"] == "failed" and arm["failed_stage"] == "tflite"
    assert arm["reason"].startswith("stage tflite failed: ") and "CastLike" in arm["reason"]
    assert "artifact" not in arm and not (b.model_dir / "arm64").exists()
    assert ("tflite", "arm64") in parse_progress(b.progress)["failed"]
    # Failures are never cached: the conversion is tried again next time, the rest comes from the cache.
    assert not (b.out / ".cache" / "tflite").exists() or not any(
        (p / "entry.json").is_file() for p in (b.out / ".cache" / "tflite").iterdir())


# ---- slow conversions -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_three_channel_model_converts_offline(tmp_path, write_spec, models, monkeypatch):
    """onnx2tf downloads sample calibration images for 3-channel inputs unless a local file stands in; with
    every proxy pointing at a closed port, any download attempt would fail the conversion."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    spec = write_spec(tmp_path / "spec", "tiny_rgb", targets={"x86_64": None, "arm64": {"max_metric_drop": 25.0}})
    b = run_build(spec, tmp_path / "out")
    assert b.code == 0, b.report["targets"]["arm64"].get("reason")
    t = b.report["targets"]["arm64"]
    assert t["status"] == "passed"
    assert t["io"]["inputs"][0]["shape"] == [1, 8, 8, 3]
    session = LiteRTSession(b.model_dir / t["artifact"], output_shapes=[(10,)])
    data = _eval(models["tiny_rgb"])
    (got,) = _run_each(session, data, ["input"])
    ref = _torch_logits(models["tiny_rgb"], data["input"])
    assert float((got.argmax(1) == ref.argmax(1)).mean()) >= 0.8
    # The fp32 TFLite equals PyTorch through the adapter; fed without the channels-last transpose, it does not.
    base = LiteRTSession(_tflite_entry(b) / tflite.BASELINE, output_shapes=[(10,)])
    (fp32,) = _run_each(base, data, ["input"])
    np.testing.assert_allclose(fp32, ref, atol=1e-4, rtol=1e-4)
    x = data["input"][:1]
    base.interp.set_tensor(base.inputs[0]["index"], np.ascontiguousarray(x.reshape(1, 8, 8, 3)))
    base.interp.invoke()
    assert not np.allclose(base.interp.get_tensor(base.outputs[0]["index"]), ref[:1], atol=1e-2)


@pytest.mark.slow
def test_two_input_model_in_spec_order(tmp_path, write_spec, models):
    spec = write_spec(tmp_path / "spec", "two_inputs", targets={"x86_64": None, "arm64": {"max_metric_drop": 25.0}})
    b = run_build(spec, tmp_path / "out")
    assert b.code == 0
    t = b.report["targets"]["arm64"]
    assert [d["tflite_name"] for d in t["io"]["inputs"]] == ["serving_default_zimg:0", "serving_default_aux:0"]
    assert t["agreement"]["0"]["top1_agreement"] >= 80.0
