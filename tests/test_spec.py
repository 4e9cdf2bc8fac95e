"""Malformed build specs: each is one SpecError naming the file and the dotted key, and through the CLI one
`error:` line on stderr with exit code 2 and no traceback."""

import subprocess

import pytest
from click.testing import CliRunner

from toolchain.errors import EXIT_USAGE, SpecError, ToolchainError
from toolchain.spec import load_spec

from conftest import run_build, toolchain_exe

# id -> (overrides for write_spec, the dotted key the message must name, fragments it must contain)
BAD_SPECS = {
    "wrong-type": ({"model": {"name": 5}}, "model.name", ["must be a string", "integer"]),
    "wrong-type-budget": ({"targets": {"x86_64": {"max_metric_drop": "half"}}},
                          "targets.x86_64.max_metric_drop", ["must be a number", "string"]),
    "unknown-key": ({"model": {"weigths": "w.safetensors"}}, "model.weigths",
                    ["unknown key", "did you mean 'weights'"]),
    "unknown-top-level-key": ({"modle": {"name": "x"}}, "modle", ["unknown key", "did you mean 'model'"]),
    "unknown-target-key": ({"targets": {"x86_64": {"max_metric_dorp": 1.0}}}, "targets.x86_64.max_metric_dorp",
                           ["unknown key", "did you mean 'max_metric_drop'"]),
    "missing-weights": ({"model": {"weights": "no such weights.safetensors"}}, "model.weights",
                        ["file not found", "no such weights.safetensors"]),
    "missing-calibration": ({"data": {"calibration": "nowhere/calib.npz"}}, "data.calibration",
                            ["file not found", "calib.npz"]),
    "zero-dim-shape": ({"inputs": [{"name": "input", "shape": [1, 0, 8, 8]}]}, "inputs[0].shape",
                       ["positive integers", "[1, 0, 8, 8]"]),
    "negative-dim-shape": ({"inputs": [{"name": "input", "shape": [1, 1, -8, 8]}]}, "inputs[0].shape",
                           ["positive integers"]),
    "empty-shape": ({"inputs": [{"name": "input", "shape": []}]}, "inputs[0].shape", ["non-empty"]),
    "budget-above-100": ({"targets": {"x86_64": {"max_metric_drop": 150.0}}}, "targets.x86_64.max_metric_drop",
                         ["must be in [0.0, 100.0]", "150.0"]),
    "budget-negative": ({"targets": {"x86_64": {"max_metric_drop": -1.0}}}, "targets.x86_64.max_metric_drop",
                        ["must be in [0.0, 100.0]"]),
    "budget-nan": ({"targets": {"x86_64": {"max_metric_drop": float("nan")}}}, "targets.x86_64.max_metric_drop",
                   ["must be in [0.0, 100.0]", "nan"]),
    "missing-budget": ({"targets": {"x86_64": {"max_metric_drop": None}}}, "targets.x86_64.max_metric_drop",
                       ["is required"]),
    "no-targets": ({"targets": {"x86_64": None}}, "targets", ["names no target"]),
    "bad-metric": ({"metric": {"name": "f1"}}, "metric.name", ["must be one of top1, cosine", "'f1'"]),
    "bad-opset": ({"trace": {"opset": 9}}, "trace.opset", ["must be in [13, 21]"]),
    "bad-factory": ({"model": {"factory": "no colon here"}}, "model.factory", ["package.module:function"]),
}


def _message_names(msg: str, spec, key: str):
    assert msg.startswith(f"{spec}: {key}: "), msg


@pytest.mark.parametrize("case", BAD_SPECS, ids=list(BAD_SPECS))
def test_malformed_spec_names_file_and_key(case, tmp_path, write_spec):
    overrides, key, fragments = BAD_SPECS[case]
    spec = write_spec(tmp_path, **overrides)
    with pytest.raises(SpecError) as ei:
        load_spec(spec)
    e = ei.value
    assert e.key == key
    assert e.path == str(spec.resolve())
    _message_names(str(e), spec.resolve(), key)
    for f in fragments:
        assert f in str(e), (f, str(e))
    assert e.exit_code == EXIT_USAGE


def test_valid_spec_loads(tmp_path, write_spec, models):
    """The writer's default spec is valid, so every failure above is caused by its one override."""
    spec = load_spec(write_spec(tmp_path))
    assert spec.name == "tiny_cnn"
    assert spec.inputs[0].shape == (1, 1, 8, 8) and spec.inputs[0].dynamic_axes == {0: "batch"}
    assert spec.weights == models["tiny_cnn"].weights.resolve()
    assert set(spec.targets) == {"x86_64"} and spec.targets["x86_64"].max_metric_drop == 25.0


def test_invalid_toml_names_the_file(tmp_path):
    spec = tmp_path / "build.toml"
    spec.write_text('[model]\nname = "x\nfactory = 3\n')
    with pytest.raises(SpecError) as ei:
        load_spec(spec)
    assert str(ei.value).startswith(f"{spec}: invalid TOML")
    assert ei.value.key is None


def test_non_utf8_spec(tmp_path):
    spec = tmp_path / "build.toml"
    spec.write_bytes(b'[model]\nname = "caf\xe9"\n')
    with pytest.raises(SpecError, match="is not UTF-8 text") as ei:
        load_spec(spec)
    assert str(spec) in str(ei.value)


def test_missing_spec_file(tmp_path):
    spec = tmp_path / "nope" / "build.toml"
    with pytest.raises(SpecError) as ei:
        load_spec(spec)
    assert str(ei.value) == f"{spec}: build spec not found"


def test_directory_as_spec(tmp_path):
    with pytest.raises(SpecError, match="is not a file"):
        load_spec(tmp_path)


def test_unknown_target_name(tmp_path, write_spec):
    """A target with no targets/NAME.toml is caught before any stage runs, naming the spec and the key."""
    spec = write_spec(tmp_path / "spec", targets={"riscv": {"max_metric_drop": 1.0}})
    load_spec(spec)  # the spec itself is well formed: the target list is checked against targets/
    with pytest.raises(SpecError) as ei:
        run_build(spec, tmp_path / "out")
    msg = str(ei.value)
    _message_names(msg, spec.resolve(), "targets.riscv")
    assert "known targets: arm64, cuda, openvino_x86, x86_64" in msg
    out = tmp_path / "out"
    assert not out.exists() or {p.name for p in out.rglob("*") if p.is_file()} <= {".lock"}  # nothing built


@pytest.mark.parametrize("override,key", [
    ({"quantize": {"calibrate_methd": "percentile"}}, "targets.x86_64.quantize"),
    ({"quantize": {"calibrate_method": "bogus"}}, "targets.x86_64.quantize.calibrate_method"),
    ({"latency": {"runs": 0}}, "targets.x86_64.latency.runs"),
], ids=["unknown-quantize-option", "bad-quantize-value", "bad-latency-value"])
def test_bad_target_override_names_the_spec(override, key, tmp_path, write_spec):
    spec = write_spec(tmp_path / "spec", targets={"x86_64": {"max_metric_drop": 1.0, **override}})
    with pytest.raises(SpecError) as ei:
        run_build(spec, tmp_path / "out")
    assert str(ei.value).startswith(f"{spec.resolve()}: {key}"), str(ei.value)


@pytest.mark.parametrize("convert,key", [
    ({"precision": "mixed"}, "targets.arm64.convert.precision"),
    ({"force_float": ["CONV_2D"]}, "targets.arm64.convert.force_float"),
    ({"precision": "auto", "force_int8": "CONV_2D"}, "targets.arm64.convert.force_int8"),
    ({"precision": "auto", "plan_time_budget_s": 0}, "targets.arm64.convert.plan_time_budget_s"),
], ids=["unknown-precision", "override-without-plan", "override-not-a-list", "no-time"])
def test_bad_arm64_plan_option_names_the_spec(convert, key, tmp_path, write_spec):
    spec = write_spec(tmp_path / "spec", targets={"arm64": {"max_metric_drop": 1.0, "convert": convert}})
    with pytest.raises(SpecError) as ei:
        run_build(spec, tmp_path / "out")
    assert str(ei.value).startswith(f"{spec.resolve()}: {key}"), str(ei.value)


def test_bad_target_override_is_still_a_spec_error(tmp_path, write_spec):
    """Whatever file it names, a bad override is a usage error caught before any stage runs."""
    spec = write_spec(tmp_path / "spec", targets={"x86_64": {"max_metric_drop": 1.0,
                                                             "quantize": {"calibrate_methd": "percentile"}}})
    with pytest.raises(SpecError, match=r"calibrate_methd.*did you mean 'calibrate_method'") as ei:
        run_build(spec, tmp_path / "out")
    assert ei.value.exit_code == EXIT_USAGE
    assert not (tmp_path / "out" / ".cache").exists()


# ---- through the command line -----------------------------------------------------------------------------
def _assert_one_error_line(stderr: str, must_contain):
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    for f in must_contain:
        assert f in lines[0], (f, lines[0])


CLI_CASES = ["wrong-type", "unknown-key", "missing-weights", "zero-dim-shape", "budget-above-100"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_malformed_spec_subprocess(case, tmp_path, write_spec):
    overrides, key, fragments = BAD_SPECS[case]
    spec = write_spec(tmp_path / "a dir", **overrides)
    proc = subprocess.run([toolchain_exe(), "build", str(spec), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    _assert_one_error_line(proc.stderr, [str(spec.resolve()), f": {key}: ", *fragments])
    assert proc.stdout == ""
    assert not (tmp_path / "out").exists()


def _cli(args):
    from toolchain.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_cli_invalid_toml(tmp_path):
    spec = tmp_path / "build.toml"
    spec.write_text("[model\n")
    r = _cli(["build", str(spec), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2
    _assert_one_error_line(r.stderr, [str(spec), "invalid TOML"])


def test_cli_missing_spec_file(tmp_path):
    spec = tmp_path / "missing.toml"
    r = _cli(["build", str(spec), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2
    _assert_one_error_line(r.stderr, [str(spec), "build spec not found"])


def test_cli_unknown_target_name(tmp_path, write_spec):
    spec = write_spec(tmp_path, targets={"x86_64": None, "riscv": {"max_metric_drop": 1.0}})
    r = _cli(["build", str(spec), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2
    _assert_one_error_line(r.stderr, [str(spec.resolve()), "targets.riscv", "no target file"])


def test_cli_target_flag_not_in_spec(tmp_path, write_spec):
    spec = write_spec(tmp_path)
    r = _cli(["build", str(spec), "-o", str(tmp_path / "out"), "-t", "arm64"])
    assert r.exit_code == 2
    _assert_one_error_line(r.stderr, ["--target 'arm64' is not in the spec's targets (x86_64)"])


def test_toolchain_error_exit_codes():
    from toolchain.errors import DataError, StageError

    assert ToolchainError("x").exit_code == 2
    assert DataError("x").exit_code == 2
    assert SpecError("f", "a.b", "m").exit_code == 2
    e = StageError("tflite", "boom", "arm64")
    assert e.exit_code == 4 and str(e) == "stage tflite, target arm64: boom"
