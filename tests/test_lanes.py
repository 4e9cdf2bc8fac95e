"""Targets whose converter runs in child processes (onnx2tf, the litert-torch side venv) run their chain in a second
thread while the build works on the other targets: what it builds is the same, only the wall time shrinks."""

import io

import pytest


def _pipeline(spec, out, cache_dir):
    from toolchain.pipeline import Pipeline
    from toolchain.progress import Progress
    from toolchain.spec import load_spec

    return Pipeline(load_spec(spec), out, cache_dir=cache_dir, progress=Progress("lanes", stream=io.StringIO()))


@pytest.fixture
def both_targets(tmp_path, write_spec, arm64_build):
    """A spec with x86_64 and arm64 whose arm64 nodes are in arm64_build's cache (the test run's one conversion)."""
    spec = write_spec(tmp_path / "spec", targets={"arm64": {"max_metric_drop": 25.0}})
    return spec, arm64_build.out / ".cache"


def test_the_converter_target_runs_in_its_own_lane(both_targets, tmp_path):
    spec, cache = both_targets
    pipe = _pipeline(spec, tmp_path / "out", cache)
    assert pipe.background_targets() == {"arm64"}
    trace, ref, results = pipe.run()
    assert set(results) == {"x86_64", "arm64"} and not any("error" in r for r in results.values())
    assert pipe.lane_of["tflite[arm64]"] == pipe.lane_of["validate[arm64]"] == "toolchain-lane"
    assert pipe.lane_of["quantize[x86_64]"] == pipe.lane_of["validate[x86_64]"] == pipe.lane_of["trace"] \
        == "MainThread"
    assert results["arm64"]["artifact"].is_file() and results["x86_64"]["artifact"].is_file()


def test_serial_switch_runs_every_node_in_one_thread(both_targets, tmp_path, monkeypatch):
    from toolchain.pipeline import SERIAL_ENV

    monkeypatch.setenv(SERIAL_ENV, "1")
    spec, cache = both_targets
    pipe = _pipeline(spec, tmp_path / "out", cache)
    assert pipe.background_targets() == set()
    pipe.run()
    assert set(pipe.lane_of.values()) == {"MainThread"}


def test_a_failure_in_the_lane_stops_only_its_target(both_targets, tmp_path):
    """The arm64 conversion fails in the lane (onnx2tf killed by its time limit); x86_64 still builds."""
    spec, cache = both_targets
    text = spec.read_text().replace("[targets.arm64]", "[targets.arm64]\nconvert = { timeout_s = 0.01 }")
    spec.write_text(text)
    pipe = _pipeline(spec, tmp_path / "out", tmp_path / "fresh cache")
    _, _, results = pipe.run()
    assert "error" in results["arm64"] and results["arm64"]["error"].stage == "tflite"
    assert "error" not in results["x86_64"] and results["x86_64"]["artifact"].is_file()
    assert pipe.lane_of["tflite[arm64]"] == "toolchain-lane"


def test_report_says_where_the_build_time_went(tmp_path, write_spec):
    """report.json `stage_timings`: seconds and lane of every stage that ran; a second build finds them cached."""
    from conftest import run_build

    spec = write_spec(tmp_path / "spec")
    first = run_build(spec, tmp_path / "out").report["stage_timings"]
    assert set(first) == {"trace", "reference", "quantize[x86_64]", "metadata[x86_64]", "validate[x86_64]"}
    assert all(v["seconds"] >= 0 and v["lane"] == "MainThread" for v in first.values()), first
    (tmp_path / "out" / "tiny_cnn" / "report.json").unlink()  # not a no-op: the stages are looked up again
    again = run_build(spec, tmp_path / "out").report["stage_timings"]
    assert again == {k: {"cached": True} for k in first}
