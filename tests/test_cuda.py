"""The cuda target: an fp16 ONNX with float32 inputs and outputs. Without a CUDA provider it is built, checked
for agreement on the CPU provider, and skipped with the reason; with one (marked gpu) it must pass on CUDA."""

import numpy as np
import onnxruntime as ort
import pytest

from conftest import run_build

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def cuda_build(tmp_path_factory, write_spec):
    d = tmp_path_factory.mktemp("cuda build")
    spec = write_spec(d / "spec", targets={"x86_64": None, "cuda": {"max_metric_drop": 1.0}})
    return run_build(spec, d / "out")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDAExecutionProvider; see test_cuda_target_passes_on_gpu")
def test_cuda_skipped_without_provider(cuda_build):
    b = cuda_build
    t = b.report["targets"]["cuda"]
    assert t["status"] == "skipped"
    assert "CUDAExecutionProvider" in t["reason"] and "not available" in t["reason"]
    assert b.code == 0 and b.report["status"] == "passed"  # README: skipped with a reason is not a failure
    assert "latency_ms" not in t  # no figure is made up for a device that was not there
    assert ("fp16", "cuda") in b.ran


def test_cuda_fp16_artifact(cuda_build):
    import onnx

    b = cuda_build
    t = b.report["targets"]["cuda"]
    artifact = b.model_dir / t["artifact"]
    assert artifact.is_file() and artifact.parent == b.model_dir / "cuda" and artifact.suffix == ".onnx"
    assert (t["format"], t["precision"], t["runtime"]) == ("onnx", "fp16", "onnxruntime")
    model = onnx.load(str(artifact))
    onnx.checker.check_model(model, full_check=True)
    f32 = onnx.TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [f32]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [f32]
    weights = [i for i in model.graph.initializer if i.dims and np.prod(i.dims) > 1]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    assert t["size_bytes"] < 0.7 * t["baseline_size_bytes"]  # half-size weights
    assert t["build"]["keep_io_types"] is True and t["build"]["cast_nodes"] >= 2


def test_cuda_cpu_check_agreement(cuda_build, models):
    t = cuda_build.report["targets"]["cuda"]
    if t["status"] == "passed":
        pytest.skip("CUDA ran the artifact: no CPU stand-in check is made")
    c = t["cpu_check"]
    assert "not a pass" in c["note"]
    a = c["agreement"]["0"]
    assert a["top1_agreement"] == 100.0
    assert a["cosine_min"] > 0.9999 and a["max_abs_error"] < 1e-2
    assert c["non_finite_outputs"] == 0
    assert c["metric"] == 100.0 and c["metric_drop"] == 0.0
    # The same figure by hand: the fp16 artifact on the CPU provider against fp32 PyTorch.
    import torch

    with np.load(models["tiny_cnn"].evaluation) as z:
        x = z["input"]
    sess = ort.InferenceSession(str(cuda_build.model_dir / t["artifact"]), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"input": x})
    assert got.dtype == np.float32
    with torch.no_grad():
        ref = models["tiny_cnn"].torch_model()(torch.from_numpy(x)).numpy()
    assert float(np.abs(got - ref).max()) == pytest.approx(a["max_abs_error"], rel=1e-3, abs=1e-6)


@pytest.mark.gpu
def test_cuda_target_passes_on_gpu(cuda_build):
    if not HAS_CUDA:
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider here "
                    f"(available: {', '.join(ort.get_available_providers())})")
    b = cuda_build
    t = b.report["targets"]["cuda"]
    assert t["status"] == "passed", t["reason"]
    assert b.code == 0
    assert t["providers"][0] == "CUDAExecutionProvider"
    assert t["device"] and t["device"] != t["host"]["cpu"]
    assert t["agreement"]["0"]["top1_agreement"] >= 99.0
    assert 0 < t["latency_ms"]["p50"] <= t["latency_ms"]["p99"]
    assert t["latency_protocol"]["timing"].startswith("io_binding")
