"""The x86_64 target end to end: the report contract, a real int8 QDQ ONNX artifact that ONNX Runtime runs, the
content-addressed cache (what reruns when what changes, corrupt entries), and a failed accuracy gate."""

import json
import os
import re
import subprocess

import numpy as np
import pytest

from conftest import copy_model, run_build, toolchain_exe

TARGET_KEYS = {"status", "reason", "artifact", "sha256", "format", "precision", "runtime", "size_bytes",
               "baseline_size_bytes", "metric", "metric_drop", "max_metric_drop", "agreement", "latency_ms",
               "baseline_latency_ms", "latency_ratio", "device", "host", "build", "notes"}
PIPELINE = {("trace", None), ("reference", None), ("quantize", "x86_64"), ("metadata", "x86_64"),
            ("validate", "x86_64")}


def _eval_inputs(model):
    with np.load(model.evaluation) as z:
        return z["input"], z["labels"]


# ---- the report and the artifact ---------------------------------------------------------------------------
def test_first_build_runs_every_stage(x86_build):
    assert x86_build.code == 0
    assert x86_build.ran == PIPELINE
    assert x86_build.cached == set()


def test_report_contract(x86_build):
    r = json.loads((x86_build.model_dir / "report.json").read_text())
    assert r == json.loads(json.dumps(x86_build.report))  # what build returned is what it wrote
    assert {"model", "version", "status", "reference", "targets", "provenance"} <= set(r)
    assert r["model"] == "tiny_cnn" and r["version"] == "1.0.0" and r["status"] == "passed"
    assert r["reference"]["metric"] == "top1"
    assert r["reference"]["value"] == 100.0  # labels are the fp32 model's own argmax
    assert r["reference"]["samples"] == 64
    for k in ("spec_sha256", "weights_sha256", "calibration_sha256", "evaluation_sha256", "libraries"):
        assert r["provenance"][k], k
    assert set(r["targets"]) == {"x86_64"}
    t = r["targets"]["x86_64"]
    assert TARGET_KEYS <= set(t), TARGET_KEYS - set(t)
    assert t["status"] == "passed" and t["reason"] == ""
    assert (t["format"], t["precision"], t["runtime"]) == ("onnx", "int8", "onnxruntime")
    assert t["max_metric_drop"] == 25.0
    assert t["metric_drop"] == pytest.approx(r["reference"]["value"] - t["metric"])
    assert 0 <= t["metric_drop"] <= 25.0
    assert t["agreement"]["0"]["top1_agreement"] >= 75.0
    assert t["agreement"]["0"]["cosine_min"] > 0.9
    from toolchain.targets import load_target

    protocol = load_target("x86_64").latency  # the target file's protocol (the spec overrides none here)
    for key in ("latency_ms", "baseline_latency_ms"):
        lat = t[key]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"], lat
        assert lat["runs"] == protocol["runs"]
    assert t["latency_protocol"]["batch"] == 1 and t["latency_protocol"]["interleaved_with"].startswith("fp32 baseline")
    assert t["latency_ratio"] == pytest.approx(t["latency_ms"]["p50"] / t["baseline_latency_ms"]["p50"])
    assert t["providers"][0] == "CPUExecutionProvider"
    assert t["build"]["scheme"]["method"] == "static" and t["build"]["calibration_samples"] == 32


def test_artifact_is_int8_qdq_onnx_that_ort_runs(x86_build, models):
    import hashlib

    import onnx
    import onnxruntime as ort

    t = x86_build.report["targets"]["x86_64"]
    artifact = x86_build.model_dir / t["artifact"]
    assert artifact.is_file()
    assert artifact.parent.name == "x86_64" and artifact.name == "tiny_cnn.int8.onnx"
    assert hashlib.sha256(artifact.read_bytes()).hexdigest() == t["sha256"]
    assert artifact.stat().st_size == t["size_bytes"] < t["baseline_size_bytes"]

    model = onnx.load(str(artifact))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 3  # two convolutions and the classifier

    sess = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    x, _ = _eval_inputs(models["tiny_cnn"])
    (logits,) = sess.run(None, {"input": x})
    assert logits.shape == (64, 10) and np.isfinite(logits).all()
    import torch

    with torch.no_grad():
        ref = models["tiny_cnn"].torch_model()(torch.from_numpy(x)).numpy()
    agree = float((logits.argmax(1) == ref.argmax(1)).mean() * 100)
    assert agree == pytest.approx(t["agreement"]["0"]["top1_agreement"])
    assert np.abs(logits - ref).max() < 0.25 * np.abs(ref).max()  # int8, not garbage


def test_fp32_onnx_published_and_report_md(x86_build):
    r = x86_build.report
    fp32 = x86_build.model_dir / r["fp32_onnx"]["path"]
    assert fp32.is_file() and fp32.stat().st_size == r["targets"]["x86_64"]["baseline_size_bytes"]
    md = (x86_build.model_dir / "report.md").read_text()
    assert md.startswith("# tiny_cnn 1.0.0")
    assert re.search(r"^\|\s*x86_64\s*\|\s*\*\*passed\*\*\s*\|", md, re.M), md
    assert "top1 = 100.000 on 64 evaluation samples" in md


# ---- the cache ---------------------------------------------------------------------------------------------
@pytest.fixture
def private_build(tmp_path, models, write_spec):
    """A fresh x86_64 build of the tiny CNN with private copies of its weights and data."""
    m = copy_model(models["tiny_cnn"], tmp_path / "model files")
    spec = write_spec(tmp_path / "spec", m)
    first = run_build(spec, tmp_path / "out")
    assert first.code == 0 and first.ran == PIPELINE
    return m, spec, first


def test_second_build_runs_no_stage(private_build, tmp_path):
    m, spec, first = private_build
    again = run_build(spec, tmp_path / "out")
    assert again.code == 0
    assert again.ran == set()
    assert again.report["targets"]["x86_64"]["sha256"] == first.report["targets"]["x86_64"]["sha256"]


def test_new_output_dir_with_shared_cache_runs_no_stage(private_build, tmp_path):
    """Past the no-op stamp: every stage is looked up in the cache, and every one hits."""
    m, spec, first = private_build
    other = run_build(spec, tmp_path / "other out", cache_dir=tmp_path / "out" / ".cache")
    assert other.code == 0
    assert other.ran == set()
    assert other.cached == PIPELINE
    assert other.report["targets"]["x86_64"]["sha256"] == first.report["targets"]["x86_64"]["sha256"]
    assert (other.model_dir / other.report["targets"]["x86_64"]["artifact"]).is_file()


def test_quantize_option_reruns_quantize_and_validate_only(private_build, tmp_path, write_spec):
    m, spec, first = private_build
    spec = write_spec(tmp_path / "spec", m, targets={"x86_64": {"quantize": {"calibrate_method": "percentile"}}})
    again = run_build(spec, tmp_path / "out")
    assert again.code == 0
    assert again.ran == {("quantize", "x86_64"), ("metadata", "x86_64"), ("validate", "x86_64")}
    assert {("trace", None), ("reference", None)} <= again.cached
    assert again.report["targets"]["x86_64"]["build"]["scheme"]["calibrate_method"] == "percentile"
    assert first.report["targets"]["x86_64"]["build"]["scheme"]["calibrate_method"] == "minmax"


def test_changed_weights_rerun_trace(private_build, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    m, spec, first = private_build
    state = load_file(str(m.weights))
    state["classifier.bias"] = state["classifier.bias"] + torch.tensor([1e-3] + [0.0] * 9)
    save_file(state, str(m.weights))
    again = run_build(spec, tmp_path / "out")
    assert again.code == 0
    assert again.ran == PIPELINE  # new model: every stage downstream of it too
    assert again.report["provenance"]["weights_sha256"] != first.report["provenance"]["weights_sha256"]
    assert again.report["fp32_onnx"]["sha256"] != first.report["fp32_onnx"]["sha256"]


def _flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _entry(cache, stage):
    (d,) = [p for p in (cache / stage).iterdir() if p.is_dir()]
    return d


@pytest.mark.parametrize("stage,file", [("trace", "model.fp32.onnx"), ("quantize", "model.int8.onnx"),
                                        ("metadata", "model.int8.onnx"), ("reference", "reference.npz"),
                                        ("trace", "entry.json"), ("validate", "entry.json")])
def test_corrupt_cache_entry_is_a_miss(stage, file, private_build, tmp_path):
    m, spec, first = private_build
    cache = tmp_path / "out" / ".cache"
    entry = _entry(cache, stage)
    _flip_byte(entry / file, offset=0 if file == "entry.json" else None)  # entry.json: break its syntax
    again = run_build(spec, tmp_path / "rebuilt", cache_dir=cache)  # a new output dir: the cache is consulted
    assert again.code == 0
    assert (stage, "x86_64" if stage in ("quantize", "metadata", "validate") else None) in again.ran
    assert ("trace", None) in again.ran or ("trace", None) in again.cached
    if stage != "trace":
        assert ("trace", None) in again.cached  # only the corrupt entry and what depends on it rerun
    t = again.report["targets"]["x86_64"]
    assert t["status"] == "passed"
    assert t["sha256"] == first.report["targets"]["x86_64"]["sha256"] or stage == "quantize"
    # The entry was replaced by a whole, valid one: the next lookup hits.
    third = run_build(spec, tmp_path / "third", cache_dir=cache)
    assert third.ran == set() and third.cached == PIPELINE


def test_corrupt_entry_meta_is_a_miss(private_build, tmp_path):
    m, spec, first = private_build
    cache = tmp_path / "out" / ".cache"
    entry_json = _entry(cache, "reference") / "entry.json"
    text = entry_json.read_text()
    assert text.count('"value": 100.0') == 1
    entry_json.write_text(text.replace('"value": 100.0', '"value": 900.0'))  # one byte changed
    again = run_build(spec, tmp_path / "rebuilt", cache_dir=cache)
    assert again.report["reference"]["value"] == 100.0
    assert ("reference", None) in again.ran


def test_explain_names_what_changed(private_build, tmp_path, write_spec):
    """--explain builds nothing and says which stages would rerun because of a params change."""
    from toolchain import api

    m, spec, first = private_build
    spec = write_spec(tmp_path / "spec", m, targets={"x86_64": {"quantize": {"per_channel": False}}})
    lines = dict(api.explain(spec, tmp_path / "out"))
    assert lines["trace"] == "up to date" and lines["reference"] == "up to date"
    assert lines["quantize[x86_64]"].startswith("would run") and "per_channel" in lines["quantize[x86_64]"]
    assert lines["validate[x86_64]"].startswith("would run")
    assert json.loads((tmp_path / "out" / "tiny_cnn" / "report.json").read_text())["targets"]["x86_64"][
        "build"]["scheme"]["per_channel"] is True  # nothing was rebuilt


# ---- a failed gate -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hard_eval(tmp_path_factory, models):
    """Evaluation samples on which the fp32 model's top two logits are nearly tied: int8 flips many of them."""
    import torch

    model = models["tiny_cnn"].torch_model()
    x = np.random.default_rng(1234).standard_normal((4096, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    top2 = np.sort(logits, axis=1)[:, -2:]
    hardest = np.argsort(top2[:, 1] - top2[:, 0])[:128]
    path = tmp_path_factory.mktemp("hard eval") / "hard_eval.npz"
    np.savez(path, input=x[hardest], labels=logits[hardest].argmax(1).astype(np.int64))
    return path


def test_too_tight_budget_fails_gate_and_keeps_artifact(tmp_path, write_spec, hard_eval):
    spec = write_spec(tmp_path / "spec", data={"evaluation": str(hard_eval)},
                      targets={"x86_64": {"max_metric_drop": 0.0}})
    b = run_build(spec, tmp_path / "out")
    assert b.code == 3
    assert b.report["status"] == "failed"
    t = b.report["targets"]["x86_64"]
    assert t["status"] == "failed"
    assert t["metric_drop"] > 0
    assert "exceeds the budget max_metric_drop=0.0" in t["reason"]
    assert "failed_stage" not in t
    artifact = b.model_dir / t["artifact"]
    assert artifact.is_file() and artifact.stat().st_size == t["size_bytes"]  # kept, and marked failed
    assert re.search(r"^\|\s*x86_64\s*\|\s*\*\*failed\*\*\s*\|", (b.model_dir / "report.md").read_text(), re.M)
    # The same inputs with a budget that covers the drop pass, from the cache (only the gate changed).
    spec = write_spec(tmp_path / "spec", data={"evaluation": str(hard_eval)},
                      targets={"x86_64": {"max_metric_drop": min(100.0, t["metric_drop"] + 1.0)}})
    again = run_build(spec, tmp_path / "out")
    assert again.code == 0 and again.ran == set()
    assert again.report["targets"]["x86_64"]["status"] == "passed"


# ---- the command line, with spaces in every path -----------------------------------------------------------
def test_cli_build_paths_with_spaces(tmp_path, write_spec):
    spec = write_spec(tmp_path / "my spec dir", filename="build spec.toml")
    out = tmp_path / "build out"
    assert " " in str(spec) and " " in str(out)
    assert "tiny models" in spec.read_text()  # weights, data and python_path have spaces too
    cmd = [toolchain_exe(), "build", str(spec), "-o", str(out), "-t", "x86_64", "-q"]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "tiny_cnn x86_64: passed"
    assert "Traceback" not in proc.stderr
    report = json.loads((out / "tiny_cnn" / "report.json").read_text())
    assert report["status"] == "passed"
    assert (out / "tiny_cnn" / report["targets"]["x86_64"]["artifact"]).is_file()
    # Nothing changed: the second run is a no-op with the same answer.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and again.stdout == proc.stdout


# ---- model code is part of the cache key --------------------------------------------------------------------
_SUBPKG_MODELS = '''
import torch
from torch import nn

from .layers.act import act


class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.classifier = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.classifier(act(self.conv(x)).flatten(1)){scale}


def build():
    return M()
'''
_SUBPKG_ACT = "import torch\n\n\ndef act(x):\n    return {body}\n"


@pytest.fixture
def code_package(tmp_path, write_spec):
    """A model package with a subpackage (layers/), built once through the CLI in a fresh process."""
    import torch
    from safetensors.torch import save_file

    code = tmp_path / "src code"
    pkg = code / "tc_edit_me"
    (pkg / "layers").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "layers" / "__init__.py").write_text("")
    (pkg / "models.py").write_text(_SUBPKG_MODELS.replace("{scale}", ""))
    (pkg / "layers" / "act.py").write_text(_SUBPKG_ACT.format(body="torch.relu(x)"))
    torch.manual_seed(0)
    state = {f"conv.{k}": v for k, v in torch.nn.Conv2d(1, 4, 3, padding=1).state_dict().items()}
    state.update({f"classifier.{k}": v for k, v in torch.nn.Linear(256, 10).state_dict().items()})
    save_file(state, str(tmp_path / "w.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", input=rng.standard_normal((8, 1, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "ev.npz", input=rng.standard_normal((16, 1, 8, 8)).astype(np.float32),
             labels=rng.integers(0, 10, 16).astype(np.int64))
    spec = write_spec(tmp_path / "spec", model={"name": "edit_me", "factory": "tc_edit_me.models:build",
                                                "weights": str(tmp_path / "w.safetensors"),
                                                "python_path": [str(code)]},
                      data={"calibration": str(tmp_path / "cal.npz"), "evaluation": str(tmp_path / "ev.npz")},
                      targets={"x86_64": {"max_metric_drop": 100.0}})
    first = _cli_build(spec, tmp_path / "out")
    assert first["ran"] == PIPELINE
    return pkg, spec, tmp_path / "out", first


def _cli_build(spec, out):
    from conftest import parse_progress

    proc = subprocess.run([toolchain_exe(), "build", str(spec), "-o", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "edit_me" / "report.json").read_text())
    return {"ran": parse_progress(proc.stderr)["running"], "fp32": report["fp32_onnx"]["sha256"]}


def test_edited_model_module_reruns_trace(code_package):
    pkg, spec, out, first = code_package
    (pkg / "models.py").write_text(_SUBPKG_MODELS.replace("{scale}", " * 2.0"))
    again = _cli_build(spec, out)
    assert ("trace", None) in again["ran"]
    assert again["fp32"] != first["fp32"]


def test_edited_subpackage_code_reruns_trace(code_package):
    pkg, spec, out, first = code_package
    (pkg / "layers" / "act.py").write_text(_SUBPKG_ACT.format(body="torch.tanh(x) * 3.0"))
    again = _cli_build(spec, out)
    assert ("trace", None) in again["ran"]
    assert again["fp32"] != first["fp32"]


# ---- another metric ---------------------------------------------------------------------------------------------
def test_cosine_metric_needs_no_labels(tmp_path, models, write_spec):
    m = copy_model(models["tiny_cnn"], tmp_path / "files")
    with np.load(m.evaluation) as z:
        np.savez(m.evaluation, input=z["input"])  # no labels
    spec = write_spec(tmp_path / "spec", m, metric={"name": "cosine"},
                      targets={"x86_64": {"max_metric_drop": 0.05}})
    b = run_build(spec, tmp_path / "out")
    assert b.code == 0
    assert b.report["reference"]["metric"] == "cosine"
    assert b.report["reference"]["value"] == pytest.approx(1.0)  # fp32 PyTorch against itself
    t = b.report["targets"]["x86_64"]
    assert t["status"] == "passed"
    assert 0.95 < t["metric"] <= 1.0 + 1e-9
    assert t["metric"] == pytest.approx(t["agreement"]["0"]["cosine_mean"])
    assert t["metric_drop"] == pytest.approx(b.report["reference"]["value"] - t["metric"])
