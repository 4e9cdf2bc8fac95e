"""One declared build graph: the pipeline builds its nodes from the stages' declarations and `--explain` walks
the very same nodes, so its labels and reasons match the stages that really run (static x86 quantization, the
auto precision plan, the litert-torch route, every sample spec); the validate key holds only the target's own
runtime's libraries."""

import shutil
from pathlib import Path

import pytest

from conftest import copy_model, run_build

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted(p for p in (ROOT / "sample_models").glob("*/build.toml"))


def explain(spec, out, cache_dir=None) -> dict:
    from toolchain import api

    return dict(api.explain(spec, out, cache_dir))


def labels(ran) -> set:
    return {stage + (f"[{target}]" if target else "") for stage, target in ran}


def would_run(lines) -> set:
    return {label for label, verdict in lines.items() if verdict.startswith("would run")}


PLAN = {"method": "auto", "schemes": ["static_u8s8"], "speed_search": False, "time_budget_s": 60}


@pytest.mark.parametrize("quantize, transform", [({}, "quantize"), (PLAN, "plan")], ids=["static", "auto-plan"])
def test_explain_names_exactly_the_stages_that_run(quantize, transform, models, write_spec, tmp_path):
    """Before the first build, after it, and after an option change: what --explain says would run is what the
    build then runs, under the same labels (quantize.method = "auto" runs plan[x86_64], never quantize)."""
    m = copy_model(models["tiny_cnn"], tmp_path / "files")
    spec = write_spec(tmp_path / "spec", m, targets={"x86_64": {"quantize": quantize}})
    out = tmp_path / "out"
    before = explain(spec, out)
    assert list(before) == ["trace", "reference", f"{transform}[x86_64]", "metadata[x86_64]", "validate[x86_64]"]
    b = run_build(spec, out)
    assert b.code == 0, b.report
    assert labels(b.ran) == would_run(before) == set(before)
    assert explain(spec, out) == {"build": "up to date: nothing changed since the last build"}

    changed = write_spec(tmp_path / "spec2", m, targets={"x86_64": {"quantize": {**quantize, "per_channel": False}}})
    lines = explain(changed, out)
    assert lines[f"{transform}[x86_64]"] == "would run: params changed: per_channel"
    assert lines["metadata[x86_64]"] == f"would run: its input comes from {transform}[x86_64], which reruns"
    assert lines["validate[x86_64]"] == f"would run: its input comes from {transform}[x86_64], which reruns"
    again = run_build(changed, out)
    assert labels(again.ran) == would_run(lines) == {f"{transform}[x86_64]", "metadata[x86_64]", "validate[x86_64]"}


@pytest.mark.parametrize("quantize, transform", [({}, "quantize"), (PLAN, "plan")], ids=["static", "auto-plan"])
def test_a_version_bump_reruns_only_the_metadata_stamp(quantize, transform, models, write_spec, tmp_path):
    """A release bumps model.version: the conversion (quantize, or the precision plan) stays cached; the metadata
    node stamps the new version into a copy of the same converted graph, and validate judges that file, since the
    shipped bytes changed (validate keys on the stamped artifact's digest)."""
    import onnx

    from toolchain.app_metadata import read

    m = copy_model(models["tiny_cnn"], tmp_path / "files")
    spec = write_spec(tmp_path / "spec", m, targets={"x86_64": {"quantize": quantize}})
    out = tmp_path / "out"
    first = run_build(spec, out)
    assert first.code == 0, first.report
    shipped = out / "tiny_cnn" / first.report["targets"]["x86_64"]["artifact"]
    graph = onnx.load(str(shipped)).graph.SerializeToString()

    bumped = write_spec(tmp_path / "spec2", m, model={"version": "1.0.1"}, targets={"x86_64": {"quantize": quantize}})
    lines = explain(bumped, out)
    assert lines[f"{transform}[x86_64]"] == "up to date"
    assert lines["metadata[x86_64]"] == "would run: params changed: app_metadata"
    assert lines["validate[x86_64]"] == "would run: its input comes from metadata[x86_64], which reruns"
    again = run_build(bumped, out)
    assert again.code == 0, again.report
    assert labels(again.ran) == would_run(lines) == {"metadata[x86_64]", "validate[x86_64]"}
    assert (transform, "x86_64") in again.cached
    t = again.report["targets"]["x86_64"]
    assert t["sha256"] != first.report["targets"]["x86_64"]["sha256"]  # other bytes ship: judged again
    assert read(shipped)["model_version"] == "1.0.1"
    assert onnx.load(str(shipped)).graph.SerializeToString() == graph  # the same converted graph
    # ... and the file the conversion (the plan: its judged variant) wrote computes exactly what ships.
    import numpy as np
    import onnxruntime as ort

    (converted,) = (out / ".cache" / transform).glob("*/model.int8.onnx")
    assert "model_version" not in read(converted)  # the conversion's own output carries no metadata
    x = np.load(m.evaluation)["input"][:16]
    outs = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
            for f in (converted, shipped)]
    assert np.array_equal(outs[0], outs[1])


def test_litert_torch_route_depends_on_the_model_only(built_x86, write_spec, tmp_path):
    """tflite on the litert-torch route converts the PyTorch model itself: with trace rerunning it is never
    "blocked by trace", and its validation waits on it."""
    from safetensors.torch import load_file, save_file

    m, out = built_x86
    m2 = copy_model(m, tmp_path / "files")
    state = load_file(str(m2.weights))
    state["classifier.bias"] = state["classifier.bias"] + 1e-3
    save_file(state, str(m2.weights))
    spec = write_spec(tmp_path / "spec", m2, targets={"arm64": {"max_metric_drop": 25.0, "convert": {
        "converter": "litert-torch"}}})
    lines = explain(spec, out)
    assert "tflite[arm64]" not in lines
    assert lines["trace"].startswith("would run: ") and "input changed: model" in lines["trace"]
    assert not lines["litert_torch[arm64]"].startswith("would run: its input comes from")
    assert lines["validate[arm64]"] == "would run: its input comes from litert_torch[arm64], which reruns"
    assert lines["validate[x86_64]"] == "would run: its input comes from trace, which reruns"


@pytest.fixture(scope="module")
def built_x86(models, write_spec, tmp_path_factory):
    d = tmp_path_factory.mktemp("graph build")
    m = copy_model(models["tiny_cnn"], d / "files")
    spec = write_spec(d / "spec", m)
    b = run_build(spec, d / "out")
    assert b.code == 0
    return m, d / "out"


def test_validate_key_holds_only_its_own_runtimes_libraries(built_x86, write_spec, tmp_path, monkeypatch):
    """A LiteRT (or OpenVINO) upgrade does not re-validate an ONNX Runtime target."""
    from toolchain import versions
    from toolchain.pipeline import Pipeline
    from toolchain.spec import load_spec

    m, out = built_x86
    spec = load_spec(write_spec(tmp_path / "spec", m, targets={"cuda": {"max_metric_drop": 25.0}}))
    real = versions.version_of
    monkeypatch.setattr(versions, "version_of",
                        lambda d: "99.0.0" if d in ("ai-edge-litert", "openvino") else real(d))
    pipe = Pipeline(spec, out)
    lines = dict(pipe.explain({}))
    assert lines["validate[x86_64]"] == "up to date", lines
    for name in ("x86_64", "cuda"):
        (node,) = [n for n in pipe.nodes() if n.label == f"validate[{name}]"]
        assert set(node.libraries) == {"onnxruntime", "onnxruntime-gpu", "numpy"}


def _expected_transform(spec, name) -> str:
    t = spec.targets[name].overrides
    if name == "x86_64":
        return "plan" if t.get("quantize", {}).get("method") == "auto" else "quantize"
    if name == "arm64":
        return "litert_torch" if t.get("convert", {}).get("converter") == "litert-torch" else "tflite"
    return {"cuda": "fp16"}[name]


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.parent.name for p in SAMPLES])
def test_every_sample_spec_explains_its_own_graph(sample, tmp_path):
    """A fresh build directory: --explain lists every node the build would run, under the stage that really makes
    each target's artifact, and blocks a node only on a node its declared inputs come from."""
    from toolchain.pipeline import Pipeline
    from toolchain.spec import load_spec

    spec = load_spec(sample)
    pipe = Pipeline(spec, tmp_path / "out")
    nodes = {n.label: n for n in pipe.nodes()}
    lines = pipe.explain({})
    assert [label for label, _ in lines] == list(nodes)
    for name in spec.targets:
        transform = f"{_expected_transform(spec, name)}[{name}]"
        assert transform in nodes, (name, list(nodes))
        assert f"validate[{name}]" in nodes
    for label, verdict in lines:
        if verdict.startswith("would run: its input comes from "):
            blocker = verdict.removeprefix("would run: its input comes from ").removesuffix(", which reruns")
            chain, todo = set(), list(nodes[label].upstream())
            while todo:  # the blocker is up this node's chain of declared inputs
                u = todo.pop()
                chain.add(u)
                todo += nodes[u].upstream() if u in nodes else []
            assert blocker in chain, (label, verdict)
        else:
            assert verdict == "would run: no previous build of this stage is recorded", (label, verdict)
    if "litert_torch[arm64]" in nodes:
        assert dict(lines)["litert_torch[arm64]"] == "would run: no previous build of this stage is recorded"


def test_explain_names_libraries_that_left_or_joined_a_key():
    """A node whose declared libraries changed (validate after this change: only its own runtime's) says which."""
    from toolchain.explain import _why

    now = {"stage": "validate", "stage_version": 3, "params": {}, "deps": {}, "toolchain": "0.1.0",
           "libraries": {"numpy": "1.26.4", "onnxruntime": "1.23.0"}}
    prev = {**now, "libraries": {**now["libraries"], "ai-edge-litert": "2.1.0"}}
    assert _why(prev, now) == "libraries in its key changed: -ai-edge-litert"
