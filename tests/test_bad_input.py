"""Bad inputs are refused with one line and the right exit code: untrusted weights and data (exit 2), models
that cannot be exported faithfully (exit 4, stage trace). Nothing is published for a build that failed."""

import json
import os
import shlex

import numpy as np
import pytest
from click.testing import CliRunner

from toolchain.errors import DataError, StageError

from conftest import copy_model, run_build


def cli_build(spec, out, *extra):
    from toolchain.cli import main

    return CliRunner().invoke(main, ["build", str(spec), "-o", str(out), "-q", *extra], catch_exceptions=False)


def one_error_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def published_files(model_dir):
    """Everything a build left in build/<model>/ besides its lock file."""
    if not model_dir.exists():
        return []
    return sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file() and p.name != ".lock")


@pytest.fixture
def tiny(tmp_path, models):
    """A private copy of the tiny CNN's weights and data, free to be damaged."""
    return copy_model(models["tiny_cnn"], tmp_path / "model files")


# ---- weights ------------------------------------------------------------------------------------------------
class _RunsCode:
    """Unpickling this runs a shell command (a harmless one: it creates a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def _malicious_weights(path, marker):
    import torch

    torch.save({"features.0.weight": torch.zeros(8, 1, 3, 3), "payload": _RunsCode(marker)}, str(path))


def test_malicious_pickle_is_live(tmp_path):
    """Control: the payload really runs code when unpickled without restrictions."""
    import torch

    marker = tmp_path / "proof it ran"
    _malicious_weights(tmp_path / "w.pt", marker)
    torch.load(str(tmp_path / "w.pt"), weights_only=False)
    assert marker.exists()


def test_pickle_weights_refused_without_running(tmp_path, tiny, write_spec):
    marker = tmp_path / "pwned marker"
    weights = tmp_path / "model files" / "weights.pt"
    _malicious_weights(weights, marker)
    spec = write_spec(tmp_path / "spec", tiny, model={"weights": str(weights)})
    r = cli_build(spec, tmp_path / "build")
    assert r.exit_code == 2
    line = one_error_line(r)
    assert "pickle" in line and str(weights) in line
    assert not marker.exists()
    assert published_files(tmp_path / "build" / "tiny_cnn") == []


def test_truncated_safetensors(tmp_path, tiny, write_spec):
    data = tiny.weights.read_bytes()
    tiny.weights.write_bytes(data[: len(data) // 2])
    spec = write_spec(tmp_path / "spec", tiny)
    r = cli_build(spec, tmp_path / "build")
    assert r.exit_code == 2
    line = one_error_line(r)
    assert str(tiny.weights) in line and "not a readable safetensors file" in line
    assert published_files(tmp_path / "build" / "tiny_cnn") == []


def test_weights_of_another_model(tmp_path, models, write_spec):
    """The 3-channel model's weights under the 1-channel factory: a strict load names the mismatch."""
    spec = write_spec(tmp_path / "spec", model={"weights": str(models["tiny_rgb"].weights)})
    with pytest.raises(DataError, match=r"weights do not fit the model from tc_tiny_models.models:tiny_cnn.*"
                                        r"features.0.weight"):
        run_build(spec, tmp_path / "build")


# ---- calibration and evaluation data ----------------------------------------------------------------------
def _rewrite_npz(path, **changes):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez(path, **arrays)


def test_nan_in_calibration(tmp_path, tiny, write_spec):
    with np.load(tiny.calibration) as z:
        x = z["input"].copy()
    x[3, 0, 2, 5] = np.nan
    x[7, 0, 0, 0] = np.inf
    _rewrite_npz(tiny.calibration, input=x)
    spec = write_spec(tmp_path / "spec", tiny)
    r = cli_build(spec, tmp_path / "build")
    assert r.exit_code == 2
    line = one_error_line(r)
    assert "calibration" in line and "input 'input'" in line and "2 NaN/Inf values" in line
    model_dir = tmp_path / "build" / "tiny_cnn"
    assert not (model_dir / "x86_64").exists()
    assert "report.json" not in published_files(model_dir)


def test_nan_in_evaluation(tmp_path, tiny, write_spec):
    with np.load(tiny.evaluation) as z:
        x = z["input"].copy()
    x[0, 0, 0, 0] = np.nan
    _rewrite_npz(tiny.evaluation, input=x)
    spec = write_spec(tmp_path / "spec", tiny)
    with pytest.raises(DataError, match=r"evaluation data .*input 'input' contains 1 NaN/Inf values"):
        run_build(spec, tmp_path / "build")


@pytest.mark.parametrize("bad,message", [
    (lambda x: x[:, :, :7, :7], r"input 'input' has shape \[32, 1, 7, 7\], axis 2 must be 8"),
    (lambda x: x[:, 0], r"input 'input' has shape \(32, 8, 8\), the spec says rank 4"),
    (lambda x: x.astype(np.float64), r"input 'input' has dtype float64, the spec says float32"),
    (lambda x: x[:0], r"input 'input' holds no samples"),
], ids=["wrong-spatial-size", "wrong-rank", "wrong-dtype", "empty"])
def test_calibration_of_wrong_shape(bad, message, tmp_path, tiny, write_spec):
    with np.load(tiny.calibration) as z:
        x = z["input"]
    _rewrite_npz(tiny.calibration, input=np.ascontiguousarray(bad(x)))
    spec = write_spec(tmp_path / "spec", tiny)
    with pytest.raises(DataError, match=message) as ei:
        run_build(spec, tmp_path / "build")
    assert ei.value.exit_code == 2
    assert "calibration data" in str(ei.value)
    assert not (tmp_path / "build" / "tiny_cnn" / "x86_64").exists()


def test_calibration_wrong_shape_cli_exit_2(tmp_path, tiny, write_spec):
    with np.load(tiny.calibration) as z:
        x = z["input"]
    _rewrite_npz(tiny.calibration, input=np.ascontiguousarray(x[:, :, :, :4]))
    spec = write_spec(tmp_path / "spec", tiny)
    r = cli_build(spec, tmp_path / "build")
    assert r.exit_code == 2
    assert "axis 3 must be 8" in one_error_line(r)


def test_calibration_missing_input_array(tmp_path, tiny, write_spec):
    np.savez(tiny.calibration, image=np.zeros((4, 1, 8, 8), np.float32))
    spec = write_spec(tmp_path / "spec", tiny)
    with pytest.raises(DataError, match=r"no array named 'input' \(has image\)"):
        run_build(spec, tmp_path / "build")


def test_npz_with_pickled_object_array_refused(tmp_path, tiny, write_spec):
    np.savez(tiny.calibration, input=np.array([{"a": 1}], dtype=object))
    spec = write_spec(tmp_path / "spec", tiny)
    with pytest.raises(DataError, match="cannot be read without unpickling"):
        run_build(spec, tmp_path / "build")


def test_evaluation_without_labels(tmp_path, tiny, write_spec):
    with np.load(tiny.evaluation) as z:
        np.savez(tiny.evaluation, input=z["input"])
    spec = write_spec(tmp_path / "spec", tiny)
    with pytest.raises(DataError, match=r"no labels array 'labels' \(needed by metric top1\)"):
        run_build(spec, tmp_path / "build")


# ---- models that cannot be exported faithfully ------------------------------------------------------------
@pytest.mark.parametrize("which,cause", [
    ("branchy", "data-dependent control flow"),
    ("dict_out", "the model returns a dict"),
    ("frozen_scale", "ONNX output 'logits' differs from PyTorch on the evaluation data"),
])
def test_untraceable_model_fails_stage_trace(which, cause, tmp_path, write_spec):
    spec = write_spec(tmp_path / "spec", which)
    r = cli_build(spec, tmp_path / "build")
    assert r.exit_code == 4
    line = one_error_line(r)
    assert line.startswith("error: stage trace: ") and cause in line, line
    model_dir = tmp_path / "build" / which
    report = json.loads((model_dir / "report.json").read_text())
    assert report["status"] == "stage-failed"
    t = report["targets"]["x86_64"]
    assert t["status"] == "failed" and t["failed_stage"] == "trace" and cause in t["reason"]
    assert not (model_dir / "x86_64").exists()
    assert not any(p.suffix in (".onnx", ".tflite") for p in model_dir.rglob("*"))


def test_untraceable_model_raises_stage_error(tmp_path, write_spec):
    spec = write_spec(tmp_path / "spec", "branchy")
    with pytest.raises(StageError) as ei:
        run_build(spec, tmp_path / "build")
    assert ei.value.stage == "trace" and ei.value.exit_code == 4
    # Failures are never cached: the trace stage has no entry.
    cache = tmp_path / "build" / ".cache"
    assert not (cache / "trace").exists() or not any((cache / "trace").iterdir())


def test_failed_rebuild_does_not_leave_previous_report_passed(tmp_path, tiny, write_spec):
    spec = write_spec(tmp_path / "spec", tiny)
    first = run_build(spec, tmp_path / "build")
    assert first.code == 0
    data = tiny.weights.read_bytes()
    tiny.weights.write_bytes(data[: len(data) // 2])
    r = cli_build(spec, tmp_path / "build")
    assert r.exit_code == 2
    report_path = tmp_path / "build" / "tiny_cnn" / "report.json"
    assert not report_path.exists() or json.loads(report_path.read_text())["status"] != "passed"
