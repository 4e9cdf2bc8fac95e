"""Every user error is one line naming the file and key, with its exit code, never a traceback (issue 14, classes
2, 3, 4, 7 and 8): code the spec names that raises, paths that loop, data files of the wrong kind or with forged
headers, shapes no machine can hold, target files with wrong types or unknown providers (found before any stage
runs), manifests with wrong field types, and weights files that are not weights."""

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO, copy_model, one_error_line, parse_progress

from toolchain.errors import SpecError
from toolchain.options import KINDS, SCHEMAS


def cli(*args):
    from toolchain.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def build(spec, out, *extra):
    return cli("build", spec, "-o", out, "-q", *extra)


@pytest.fixture
def tiny(tmp_path, models):
    return copy_model(models["tiny_cnn"], tmp_path / "model files")


@pytest.fixture
def targets_dir(tmp_path):
    """A private copy of the repo's target files, free to be broken."""
    d = tmp_path / "targets"
    shutil.copytree(REPO / "targets", d)
    return d


def nothing_ran(result, out) -> bool:
    return not parse_progress(result.stderr)["running"] and not (Path(out) / ".cache" / "trace").exists()


# ---- code named by the spec -----------------------------------------------------------------------------------
FAILING = '''
import torch

def raises():
    raise ValueError("the model config is broken")

def takes(width=8):
    return torch.nn.Linear(width, 2)
'''


@pytest.mark.parametrize("factory,args,key,needle", [
    ("raises", {}, "model.factory", "ValueError: the model config is broken"),
    ("takes", {"bogus": 3}, "model.factory_args", "bogus"),
], ids=["factory-raises", "unexpected-factory-args"])
def test_factory_errors_are_spec_errors(factory, args, key, needle, tmp_path, write_spec):
    code = tmp_path / "code"
    code.mkdir()
    (code / "failing_models.py").write_text(FAILING)
    spec = write_spec(tmp_path / "spec", model={"factory": f"failing_models:{factory}", "factory_args": args,
                                                "python_path": [str(code)]})
    r = build(spec, tmp_path / "out")
    one_error_line(r, 2, f"{spec.resolve()}: {key}:", needle)
    assert not (tmp_path / "out" / "tiny_cnn" / "report.json").exists()


def test_data_function_that_raises_is_a_spec_error(tmp_path, write_spec, python_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "bad_data.py").write_text("def calib():\n    raise KeyError('no such split')\n")
    spec = write_spec(tmp_path / "spec", model={"python_path": [str(code), str(python_path)]},
                      data={"calibration": "bad_data:calib"})
    one_error_line(build(spec, tmp_path / "out"), 2, "data.calibration", "KeyError")


# ---- paths that loop ------------------------------------------------------------------------------------------
def _loop(d: Path, name: str) -> Path:
    a, b = d / name, d / f"{name}.other"
    a.symlink_to(b)
    b.symlink_to(a)
    return a


@pytest.mark.parametrize("where", ["model.weights", "data.calibration", "model.python_path"])
def test_symlink_loop_is_one_line(where, tmp_path, write_spec, python_path):
    loop = _loop(tmp_path, "loop")
    section, key = where.split(".")
    value = [str(loop), str(python_path)] if key == "python_path" else str(loop)
    spec = write_spec(tmp_path / "spec", **{section: {key: value}})
    one_error_line(build(spec, tmp_path / "out"), 2, where, "symlink loop")


# ---- data files ---------------------------------------------------------------------------------------------------
def test_plain_npy_as_calibration_is_refused(tmp_path, tiny, write_spec):
    with np.load(tiny.calibration) as z:
        np.save(tmp_path / "calib.npy", z["input"])
    spec = write_spec(tmp_path / "spec", tiny, data={"calibration": str(tmp_path / "calib.npy")})
    one_error_line(build(spec, tmp_path / "out"), 2, "calib.npy", "is a .npy file", ".npz")


def _forge_npz(path: Path, shape):
    """A .npz whose member's header declares `shape` while holding 16 bytes."""
    import numpy.lib.format as fmt

    import io

    buf = io.BytesIO()
    fmt.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("input.npy", buf.getvalue() + b"\0" * 16)


@pytest.mark.parametrize("shape", [(1 << 40, 1, 8, 8), (3, 1, 8, 8)], ids=["impossible", "short"])
def test_npz_header_that_lies_about_its_shape(shape, tmp_path, tiny, write_spec):
    _forge_npz(tiny.calibration, shape)
    spec = write_spec(tmp_path / "spec", tiny)
    one_error_line(build(spec, tmp_path / "out"), 2, "calibration.npz", "declares shape", "holds 16 bytes")


def test_input_shape_too_large_to_allocate(tmp_path, write_spec):
    spec = write_spec(tmp_path / "spec", inputs=[{"name": "input", "shape": [1, 1, 10 ** 6, 10 ** 6]}])
    r = build(spec, tmp_path / "out")
    one_error_line(r, 2, "inputs[0].shape", "GiB")


# ---- target files: every option typed, checked before any stage ---------------------------------------------------
def _edit_target(targets_dir, name, old, new):
    p = targets_dir / f"{name}.toml"
    text = p.read_text()
    assert old in text, old
    p.write_text(text.replace(old, new, 1))
    return p


@pytest.mark.parametrize("target,old,new,key", [
    ("x86_64", 'providers = ["CPUExecutionProvider"]', "providers = [1, 2]", "providers"),
    ("arm64", "timeout_s = 900", 'timeout_s = "soon"', "convert.timeout_s"),
    ("x86_64", "per_channel = true", 'per_channel = "false"', "quantize.per_channel"),
    ("x86_64", "threads = 1", "threads = 1.5", "threads"),
    ("x86_64", "runs = 200", "runs = true", "latency.runs"),
], ids=["providers-ints", "timeout-soon", "per-channel-string", "threads-float", "runs-bool"])
def test_target_file_errors_before_any_stage(target, old, new, key, tmp_path, targets_dir, write_spec):
    """Every target file is checked completely before the first stage: the arm64 file's error is not found after
    trace, reference and x86_64 have run."""
    path = _edit_target(targets_dir, target, old, new)
    spec = write_spec(tmp_path / "spec", targets={"x86_64": {"max_metric_drop": 25.0},
                                                  "arm64": {"max_metric_drop": 25.0}})
    out = tmp_path / "out"
    r = cli("build", spec, "-o", out, "--targets-dir", targets_dir)
    one_error_line(r, 2, f"{path}: {key}")
    assert nothing_ran(r, out), r.stderr


def test_wrong_type_in_spec_override_names_the_spec(tmp_path, write_spec):
    spec = write_spec(tmp_path / "spec", targets={"x86_64": {"max_metric_drop": 25.0,
                                                             "quantize": {"per_channel": "false"}}})
    r = build(spec, tmp_path / "out")
    one_error_line(r, 2, f"{spec.resolve()}: targets.x86_64.quantize.per_channel: must be true/false")
    assert nothing_ran(r, tmp_path / "out")


WRONG = {"bool": "no", "int": 2.5, "number": "soon", "str": 7, "strs": [1, 2], "table": [1], "tables": 3}


def _every_option():
    for table, options in SCHEMAS.items():
        for name, option in options.items():
            yield table, name, option


@pytest.mark.parametrize("table,name,option", list(_every_option()),
                         ids=[f"{t}.{n}" for t, n, _ in _every_option()])
def test_every_option_of_every_table_is_typed(table, name, option, tmp_path):
    """Property: a value of the wrong type for any option of any table is a SpecError naming the file and key."""
    import tomllib

    from conftest import dumps_toml
    from toolchain.targets import load_target

    base = tomllib.loads((REPO / "targets" / "x86_64.toml").read_text())
    if table == "convert:litert-torch":
        base["convert"] = {"converter": "litert-torch"}
        table = "convert"
    bad = WRONG[option.kind]
    if table == "target":
        base[name] = bad
        key = name
    elif table == "runtime_options":
        base["runtime_options"] = [{"name": "x", name: bad}]
        key = f"runtime_options[0].{name}"
    else:
        base.setdefault(table, {})[name] = bad
        key = f"{table}.{name}"
    d = tmp_path / "targets"
    d.mkdir()
    (d / "x86_64.toml").write_text(dumps_toml(base))
    with pytest.raises(SpecError) as ei:
        load_target("x86_64", d)
    assert str(ei.value).startswith(f"{d / 'x86_64.toml'}: {key}: "), str(ei.value)
    assert KINDS[option.kind][1] in str(ei.value) or "must be" in str(ei.value)


def test_unknown_option_has_did_you_mean(tmp_path, targets_dir, write_spec):
    path = _edit_target(targets_dir, "x86_64", "per_channel = true", "per_chanel = true")
    spec = write_spec(tmp_path / "spec")
    r = cli("build", spec, "-o", tmp_path / "out", "--targets-dir", targets_dir)
    one_error_line(r, 2, f"{path}: quantize.per_chanel: unknown key (did you mean 'per_channel'?)")


# ---- providers ----------------------------------------------------------------------------------------------------
def test_provider_typo_is_a_target_file_error(tmp_path, targets_dir, write_spec):
    """A provider onnxruntime does not know at all is a typo, not a `skipped` target that CI never validates."""
    path = _edit_target(targets_dir, "cuda", 'providers = ["CUDAExecutionProvider"]',
                        'providers = ["CUDAExecutionProvidr"]')
    spec = write_spec(tmp_path / "spec", targets={"x86_64": None, "cuda": {"max_metric_drop": 1.0}})
    r = cli("build", spec, "-o", tmp_path / "out", "--targets-dir", targets_dir)
    one_error_line(r, 2, f"{path}: providers[0]", "did you mean 'CUDAExecutionProvider'")
    assert nothing_ran(r, tmp_path / "out")


def test_known_provider_without_its_library_is_skipped_not_an_error(tmp_path, targets_dir, write_spec):
    """Control: a provider this onnxruntime knows but cannot run here still makes the target `skipped`."""
    import onnxruntime as ort

    absent = [p for p in ("TensorrtExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider")
              if p not in ort.get_available_providers()]
    if not absent:
        pytest.skip("every candidate provider is available here")
    from toolchain.targets import load_target

    _edit_target(targets_dir, "cuda", 'providers = ["CUDAExecutionProvider"]', f'providers = ["{absent[0]}"]')
    assert load_target("cuda", targets_dir).providers == (absent[0],)


# ---- weights files --------------------------------------------------------------------------------------------------
def test_file_of_zeros_is_not_a_valid_weights_file(tmp_path, write_spec):
    """A (large) file of zeros is not a pickle that would run code; it is not weights. Sparse: 64 MiB, no I/O."""
    weights = tmp_path / "zeros.pt"
    with open(weights, "wb") as f:
        f.truncate(64 << 20)
    spec = write_spec(tmp_path / "spec", model={"weights": str(weights)})
    line = one_error_line(build(spec, tmp_path / "out"), 2, str(weights), "not a valid weights file")
    assert "pickle" not in line and "run code" not in line


def test_pickle_refusal_gives_no_torch_advice(tmp_path, tiny, write_spec):
    """The refusal names what the pickle would run; torch's advice (weights_only=False) and warnings stay out."""
    import torch

    weights = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(2), "payload": os.system}, str(weights))
    spec = write_spec(tmp_path / "spec", tiny, model={"weights": str(weights)})
    r = build(spec, tmp_path / "out")
    line = one_error_line(r, 2, "refused", "pickle that would run code", "posix.system")
    assert "weights_only" not in line and "Warning" not in r.output


# ---- package and verify -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(x86_build, tmp_path_factory):
    dist = tmp_path_factory.mktemp("user error bundle") / "models-1.0.0"
    r = cli("package", x86_build.out, "--version", "1.0.0", "-o", dist)
    assert r.exit_code == 0, r.output
    return dist


@pytest.mark.parametrize("field,value", [("size_bytes", "12"), ("path", 5), ("sha256", None), ("", "text")],
                         ids=["size-string", "path-int", "sha-null", "entry-not-object"])
def test_verify_manifest_with_wrong_types_exits_5(field, value, bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    if field:
        m["artifacts"][0][field] = value
    else:
        m["artifacts"][0] = value
    (copy / "manifest.json").write_text(json.dumps(m))
    one_error_line(cli("verify", copy), 5, "manifest.json", f"artifacts[0]{'.' + field if field else ''}")


def test_package_onto_an_existing_file_is_refused(x86_build, tmp_path):
    f = tmp_path / "a file"
    f.write_text("keep me")
    one_error_line(cli("package", x86_build.out, "--version", "1", "-o", f), 2, "exists and is not a directory")
    assert f.read_text() == "keep me"


def test_corrupt_report_is_one_line_for_package_and_rebuilt_by_build(x86_build, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(x86_build.out / "tiny_cnn", out / "tiny_cnn")
    (out / "tiny_cnn" / "report.json").write_text('{"model": "tiny_cnn", "targets": ')
    one_error_line(cli("package", out, "--version", "1", "-o", tmp_path / "dist"), 2, "report.json",
                   "not a readable report")
    (out / "tiny_cnn" / "report.json").write_text("[1, 2, 3]")
    one_error_line(cli("package", out, "--version", "1", "-o", tmp_path / "dist"), 2, "not a build report")
    spec = x86_build.report["provenance"]["spec"]
    r = cli("build", spec, "-o", out, "--cache-dir", x86_build.out / ".cache", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "tiny_cnn" / "report.json").read_text())["status"] == "passed"


# ---- gate messages --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("drop,budget,shown", [(1.8e-05, 1e-05, "1.8e-05"), (12.3456, 12.34, "12.35"),
                                               (0.5, 0.25, "0.5"), (float("nan"), 1.0, "nan")])
def test_gate_message_shows_the_digits_that_fail(drop, budget, shown):
    from toolchain.gates import judge

    gate = {"output": "logits", "index": 0, "metric": "top1", "unit": "pp", "budget_key": "max_metric_drop",
            "kind": "drop", "budget": budget, "higher_is_better": True}
    validation = {"non_finite_outputs": 0, "outputs": {"logits": {"value": 99.0, "drop": drop}}}
    g = judge("x86_64", validation, [gate], {})
    assert g["status"] == "failed"
    assert g["reason"] == f"output logits: top1 drop {shown} (pp) exceeds the budget max_metric_drop={budget}"
