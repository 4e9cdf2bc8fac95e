"""Artifacts carry what an app needs (toolchain/app_metadata.py): model name and version, input layout and the
transpose the converter made, normalisation, labels and quantization parameters, read back from the built ONNX
and TFLite files with the runtimes' own readers and with `toolchain metadata`."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from conftest import run_build, toolchain_exe

DIGITS = [f"digit {i}" for i in range(10)]


def _ort_metadata(path) -> dict:
    """What an app on ONNX Runtime sees (the README's one-liner)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map


def test_onnx_artifact_carries_name_version_layout_and_quantization(x86_build):
    t = x86_build.report["targets"]["x86_64"]
    props = _ort_metadata(x86_build.model_dir / t["artifact"])
    assert props["model_name"] == "tiny_cnn" and props["model_version"] == "1.0.0"
    (inp,) = json.loads(props["inputs"])
    assert inp["name"] == "input" and inp["dtype"] == "float32" and inp["shape"][1:] == [1, 8, 8]
    assert inp["layout"] == "as the PyTorch model (N,C,H,W)"
    q = inp["quantization"]  # the QDQ graph quantizes its float input with these
    assert q["dtype"] == "uint8" and q["scale"] > 0 and 0 <= q["zero_point"] <= 255
    (out,) = json.loads(props["outputs"])
    assert out["name"] == "logits" and out["quantization"]["scale"] > 0 and "labels" not in out


def test_tflite_artifact_carries_the_transpose_and_int8_parameters(arm64_build):
    from ai_edge_litert.interpreter import Interpreter

    from toolchain.app_metadata import read

    t = arm64_build.report["targets"]["arm64"]
    path = arm64_build.model_dir / t["artifact"]
    doc = read(path)
    assert doc["model_name"] == "tiny_cnn" and doc["model_version"] == "1.0.0"
    (inp,) = doc["inputs"]
    assert inp["layout"] == "transposed from (N,C,H,W) to (N,H,W,C): feed x.transpose(0, 2, 3, 1)"
    assert inp["shape"] == [1, 8, 8, 1] and inp["dtype"] == "int8"
    (out,) = doc["outputs"]
    assert out["name"] == "logits" and out["shape"] == [1, 10]
    interp = Interpreter(model_path=str(path))  # the runtime loads it, and agrees on every parameter
    (d,) = interp.get_input_details()
    assert (inp["quantization"]["scale"], inp["quantization"]["zero_point"]) == pytest.approx(d["quantization"])
    (o,) = interp.get_output_details()
    assert (out["quantization"]["scale"], out["quantization"]["zero_point"]) == pytest.approx(o["quantization"])
    (io_in,) = t["io"]["inputs"]  # report.json's io says the same
    assert io_in["layout"] == inp["layout"] and io_in["scale"] == pytest.approx(inp["quantization"]["scale"])


def test_tflite_metadata_changes_no_numerics_and_is_deterministic(arm64_build, tmp_path, write_spec):
    """Stamping labels into a copy of a built artifact: the interpreter gives bit-identical outputs, the labels
    read back, and the same stamp twice gives the same bytes."""
    from ai_edge_litert.interpreter import Interpreter

    from toolchain.app_metadata import declared, read, stamp_tflite
    from toolchain.spec import load_spec

    src = arm64_build.model_dir / arm64_build.report["targets"]["arm64"]["artifact"]
    spec = load_spec(write_spec(tmp_path / "spec", outputs=[{"name": "logits", "class_names": DIGITS}]))
    copies = [tmp_path / "a.tflite", tmp_path / "b.tflite"]
    for c in copies:
        shutil.copyfile(src, c)
        stamp_tflite(c, declared(spec), spec, [[1, 10]])
    assert copies[0].read_bytes() == copies[1].read_bytes()
    assert read(copies[0])["outputs"][0]["labels"] == DIGITS
    x = np.random.default_rng(0).integers(-128, 128, (1, 8, 8, 1)).astype(np.int8)
    outs = []
    for p in (src, copies[0]):
        interp = Interpreter(model_path=str(p))
        interp.allocate_tensors()
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        outs.append(interp.get_tensor(interp.get_output_details()[0]["index"]).copy())
    assert np.array_equal(outs[0], outs[1])


def _externalize_buffers(src, dest):
    """The same model with every weight buffer stored past the flatbuffer (offset/size from the file's start), as
    litert-torch writes its models."""
    import flatbuffers

    from toolchain.app_metadata import _schema

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(src.read_bytes(), 0)
    moved = []
    for b in model.buffers:
        if b.data is not None and len(b.data) > 0:
            moved.append((b, bytes(np.asarray(b.data, dtype=np.uint8))))
            b.data = None
    for b, _ in moved:
        b.offset, b.size = 1, 1  # placeholders of the final width: the flatbuffer's size must not change below
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    head = len(builder.Output())
    pos, tail = (head + 15) // 16 * 16, b""
    for b, data in moved:
        b.offset, b.size = pos + len(tail), len(data)
        tail += data + b"\0" * (-len(data) % 16)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = bytes(builder.Output())
    assert len(out) == head
    dest.write_bytes(out + b"\0" * (pos - head) + tail)
    return len(moved)


def test_weights_kept_past_the_flatbuffer_are_moved_into_it_not_lost(arm64_build, tmp_path, write_spec):
    """litert-torch keeps its weights past the flatbuffer even for small models (MiniLM's 23 MB): stamping moves
    them into the flatbuffer, and the interpreter computes exactly what it did on the file as converted."""
    from ai_edge_litert.interpreter import Interpreter

    from toolchain.app_metadata import _schema, declared, read, stamp_tflite
    from toolchain.spec import load_spec

    src = arm64_build.model_dir / arm64_build.report["targets"]["arm64"]["artifact"]
    external, stamped = tmp_path / "external.tflite", tmp_path / "stamped.tflite"
    assert _externalize_buffers(src, external) > 0
    spec = load_spec(write_spec(tmp_path / "spec", outputs=[{"name": "logits", "class_names": DIGITS}]))
    shutil.copyfile(external, stamped)
    stamp_tflite(stamped, declared(spec), spec, [[1, 10]])
    assert read(stamped)["outputs"][0]["labels"] == DIGITS
    assert not any((b.offset or 0) > 1 for b in _schema().ModelT.InitFromPackedBuf(stamped.read_bytes(), 0).buffers)
    x = np.random.default_rng(0).integers(-128, 128, (1, 8, 8, 1)).astype(np.int8)
    outs = []
    for p in (src, external, stamped):
        interp = Interpreter(model_path=str(p))
        interp.allocate_tensors()
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        outs.append(interp.get_tensor(interp.get_output_details()[0]["index"]).copy())
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


@pytest.mark.slow  # the stamp takes 0.03 s; validating the new file on arm64 ~10 s
def test_a_new_version_and_labels_restamp_the_tflite_artifact_without_converting_again(arm64_build, tmp_path,
                                                                                      write_spec):
    """onnx2tf's conversion is keyed on the graph and its options: a release that bumps the version and adds
    labels reruns only the metadata node (and the validation of the file that now ships), on the same cache."""
    from ai_edge_litert import schema_py_generated as schema

    from toolchain.app_metadata import read

    spec = write_spec(tmp_path / "spec", model={"version": "2.0.0"},
                      outputs=[{"name": "logits", "class_names": DIGITS}],
                      # a short latency protocol: in validate's key only, never in tflite's
                      targets={"x86_64": None, "arm64": {"max_metric_drop": 25.0,
                                                         "latency": {"warmup": 2, "runs": 20}}})
    b = run_build(spec, tmp_path / "out", cache_dir=arm64_build.out / ".cache")
    assert b.code == 0, b.report
    assert b.ran == {("metadata", "arm64"), ("validate", "arm64")}
    assert ("tflite", "arm64") in b.cached
    old = arm64_build.model_dir / arm64_build.report["targets"]["arm64"]["artifact"]
    new = b.model_dir / b.report["targets"]["arm64"]["artifact"]
    doc = read(new)
    assert doc["model_version"] == "2.0.0" and doc["outputs"][0]["labels"] == DIGITS
    assert doc["inputs"][0]["layout"] == read(old)["inputs"][0]["layout"]  # what the stamp read from the conversion
    tensors = [[(t.Name(), t.ShapeAsNumpy().tolist(), t.Buffer()) for t in
                (g.Tensors(i) for i in range(g.TensorsLength()))]
               for g in (schema.Model.GetRootAs(p.read_bytes(), 0).Subgraphs(0) for p in (old, new))]
    assert tensors[0] == tensors[1]  # the same converted model, other metadata


def test_labels_and_normalisation_reach_every_onnx_artifact(tmp_path, write_spec):
    """A labels file and a declared normalisation: in the int8 (x86_64) and the fp16 (cuda) ONNX artifacts, and
    `toolchain metadata` prints them."""
    (tmp_path / "labels.txt").write_text("\n".join(DIGITS) + "\n")
    spec = write_spec(tmp_path / "spec", inputs=[{"name": "input", "shape": [1, 1, 8, 8],
                                                  "normalization": {"mean": 0.5, "std": 0.25}}],
                      outputs=[{"name": "logits", "class_names": str(tmp_path / "labels.txt")}],
                      targets={"cuda": {"max_metric_drop": 25.0}})
    b = run_build(spec, tmp_path / "out")
    assert b.code == 0, b.report
    for name in ("x86_64", "cuda"):
        props = _ort_metadata(b.model_dir / b.report["targets"][name]["artifact"])
        assert json.loads(props["outputs"])[0]["labels"] == DIGITS, name
        assert json.loads(props["inputs"])[0]["normalization"]["std"] == [0.25], name
    fp16 = b.model_dir / b.report["targets"]["cuda"]["artifact"]
    p = subprocess.run([toolchain_exe(), "metadata", str(fp16)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["model_name"] == "tiny_cnn" and doc["outputs"][0]["labels"] == DIGITS
    assert "quantization" not in doc["inputs"][0]  # fp16 with float32 I/O: nothing to quantize


def test_label_count_must_match_the_output(tmp_path, write_spec):
    from toolchain.errors import SpecError

    spec = write_spec(tmp_path / "spec", outputs=[{"name": "logits", "class_names": ["cat", "dog"]}])
    with pytest.raises(SpecError, match=r"outputs\[0\]\.class_names: has 2 names, but output 'logits' has 10"):
        run_build(spec, tmp_path / "out")


@pytest.mark.parametrize("entry, key, needle", [
    ({"outputs": [{"name": "logits", "class_names": []}]}, "outputs[0].class_names", "non-empty list"),
    ({"outputs": [{"name": "logits", "class_names": "nope.txt"}]}, "outputs[0].class_names", "file not found"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "normalization": {"mean": 0.0, "std": 0.0}}]},
     "inputs[0].normalization.std", "must be > 0"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "normalization": {"mean": [0.1, 0.2], "std": 1}}]},
     "inputs[0].normalization.mean", "one per channel"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "normalization": {"mean": 0.1, "sd": 1}}]},
     "inputs[0].normalization.sd", "did you mean 'std'"),
])
def test_metadata_spec_keys_are_checked(tmp_path, write_spec, entry, key, needle):
    from toolchain.errors import SpecError
    from toolchain.spec import load_spec

    with pytest.raises(SpecError) as e:
        load_spec(write_spec(tmp_path / "spec", **entry))
    assert f": {key}: " in str(e.value) and needle in str(e.value)


def test_metadata_command_refuses_other_files_in_one_line(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    p = subprocess.run([toolchain_exe(), "metadata", str(bad)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "not an ONNX or TFLite file" in p.stderr


def test_output_layout_note_says_how_to_read_it_back():
    from toolchain.runtimes.litert import layout_note

    assert layout_note((1, 3, 4, 5), (1, 4, 5, 3), output=True) == \
        "transposed from (N,C,H,W) to (N,H,W,C): read y.transpose(0, 3, 1, 2) for the model's layout"
    assert layout_note((1, 4, 6), (1, 6, 4), output=True).endswith("read y.transpose(0, 2, 1) for the model's layout")


@pytest.mark.slow
def test_labels_reach_the_tflite_artifact_of_a_full_build(tmp_path, write_spec):
    spec = write_spec(tmp_path / "spec", outputs=[{"name": "logits", "class_names": DIGITS}],
                      targets={"x86_64": None, "arm64": {"max_metric_drop": 25.0}})
    b = run_build(spec, tmp_path / "out")
    assert b.code == 0, b.report
    from toolchain.app_metadata import read

    assert read(b.model_dir / b.report["targets"]["arm64"]["artifact"])["outputs"][0]["labels"] == DIGITS


def test_python_api_class_names_and_normalization_reach_the_spec(tmp_path):
    """toolchain.build(model, class_names=..., normalization=...) writes them into the generated spec; a name
    that is no output (or input) is one ToolchainError."""
    import torch
    from torch import nn

    from toolchain.errors import ToolchainError
    from toolchain.module_spec import write_sources
    from toolchain.spec import load_spec

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.zeros(4, 3, 8, 8)
    spec = load_spec(write_sources(model, tmp_path, name="net", inputs={"image": (1, 3, 8, 8)}, calibration=x,
                                   class_names=["cat", "dog", "bird"],
                                   normalization={"mean": np.array([0.5, 0.4, 0.3]), "std": 0.25}))
    assert spec.outputs[0].class_names == ("cat", "dog", "bird")
    assert spec.inputs[0].normalization == {"mean": [0.5, 0.4, 0.3], "std": [0.25]}
    with pytest.raises(ToolchainError, match="class_names: 'logits' is none of output"):
        write_sources(model, tmp_path, name="net", inputs={"image": (1, 3, 8, 8)}, calibration=x,
                      class_names={"logits": ["a", "b", "c"]})
