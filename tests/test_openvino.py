"""The fourth target, added as data plus one stage, one runtime and registry rows: OpenVINO int8 IR (.xml + .bin)
for x86 CPUs, quantized by NNCF on the spec's calibration data and judged on OpenVINO's CPU runtime against the
OpenVINO fp32 IR with the same interleaved latency protocol. Real NNCF, real OpenVINO, a tiny CNN."""

import hashlib
import json
from pathlib import Path

import pytest

from conftest import run_build

TARGET = {"max_metric_drop": 25.0, "latency": {"warmup": 2, "runs": 20}}


def sha256(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(models, write_spec, tmp_path_factory):
    d = tmp_path_factory.mktemp("openvino build")
    spec = write_spec(d / "spec", "tiny_cnn", targets={"x86_64": None, "openvino_x86": TARGET})
    b = run_build(spec, d / "out")
    return {"dir": d, "spec": spec, "build": b}


def test_tiny_model_builds_and_validates_on_openvino(built):
    b = built["build"]
    assert b.code == 0, b.report
    assert {("openvino_int8", "openvino_x86"), ("validate", "openvino_x86")} <= b.ran
    t = b.report["targets"]["openvino_x86"]
    assert t["status"] == "passed" and (t["format"], t["precision"], t["runtime"]) == ("openvino", "int8", "openvino")
    # an IR is two files, both published and checksummed; the fp32 baseline is an OpenVINO IR too
    assert t["artifact"].endswith(".int8.xml") and t["baseline"].endswith(".fp32.xml")
    (bin_,) = t["companions"]
    assert bin_["path"] == t["artifact"].removesuffix(".xml") + ".bin"
    assert sha256(b.model_dir / bin_["path"]) == bin_["sha256"] and sha256(b.model_dir / t["artifact"]) == t["sha256"]
    assert [c["path"] for c in t["baseline_companions"]] == [t["baseline"].removesuffix(".xml") + ".bin"]
    assert all(p.startswith("OpenVINO") and p.endswith("CPU") for p in t["providers"])
    assert t["build"]["fake_quantize_nodes"] > 0 and t["build"]["scheme"]["quantizer"] == "nncf"
    assert t["latency_ratio"] > 0 and t["latency_protocol"]["interleaved_with"].startswith("fp32 baseline")
    assert t["outputs"]["logits"]["passed"] is True and t["agreement"]


def test_the_published_ir_runs_on_openvino_and_agrees_with_the_report(built):
    import numpy as np
    import openvino as ov

    b = built["build"]
    t = b.report["targets"]["openvino_x86"]
    compiled = ov.Core().compile_model(str(b.model_dir / t["artifact"]), "CPU")  # finds its .bin beside it
    x = np.zeros((1, 1, 8, 8), np.float32)
    assert compiled(x)[0].shape == (1, 10)


def test_release_bundle_carries_both_files_and_verify_checks_the_bin(built, tmp_path):
    from toolchain.bundle import VerifyError, package, verify

    b = built["build"]
    dist = tmp_path / "dist"
    manifest = package(b.out, "1.0.0", dist)
    (a,) = [a for a in manifest["artifacts"] if a["target"] == "openvino_x86"]
    (c,) = a["companions"]
    assert (dist / a["path"]).is_file() and (dist / c["path"]).is_file()
    assert [i["name"] for i in a["signature"]["inputs"]] == ["input"]
    assert c["path"] in (dist / "SHA256SUMS").read_text()
    verify(dist)
    (dist / c["path"]).write_bytes(b"\0" + (dist / c["path"]).read_bytes()[1:])
    with pytest.raises(VerifyError, match=r"\.bin"):
        verify(dist)


def test_explain_walks_the_openvino_nodes(built, write_spec, tmp_path):
    from toolchain import api

    spec = write_spec(tmp_path / "spec", "tiny_cnn", targets={"x86_64": None, "openvino_x86": {
        **TARGET, "nncf": {"preset": "mixed"}}})
    lines = dict(api.explain(spec, built["build"].out))
    assert lines["trace"] == "up to date" and lines["reference"] == "up to date"
    assert lines["openvino_int8[openvino_x86]"] == "would run: params changed: preset"
    assert lines["validate[openvino_x86]"] == \
        "would run: its input comes from openvino_int8[openvino_x86], which reruns"


@pytest.mark.parametrize("table, message", [
    ({"preset": 1}, "nncf.preset"), ({"presett": "mixed"}, "nncf.presett"), ({"subset_size": 0}, "nncf.subset_size"),
])
def test_nncf_option_errors_name_the_key(table, message, write_spec, tmp_path):
    from toolchain.errors import SpecError
    from toolchain.pipeline import Pipeline
    from toolchain.spec import load_spec

    spec = load_spec(write_spec(tmp_path / "spec", "tiny_cnn", targets={"openvino_x86": {**TARGET, "nncf": table}}))
    with pytest.raises(SpecError) as e:
        Pipeline(spec, tmp_path / "out")
    assert message in str(e.value) and len(str(e.value).splitlines()) == 1


def test_revalidate_checks_every_file_of_the_ir(built, tmp_path):
    """`toolchain validate` re-judges the published IR on this machine, and refuses one whose .bin changed."""
    import shutil

    from toolchain import api
    from toolchain.errors import ToolchainError

    out = tmp_path / "out"
    shutil.copytree(built["build"].out, out)
    report, code = api.validate(built["spec"], out, targets=["openvino_x86"])
    assert code == 0 and report["targets"]["openvino_x86"]["status"] == "passed"
    t = report["targets"]["openvino_x86"]
    (c,) = t["companions"]
    f = out / "tiny_cnn" / c["path"]
    f.write_bytes(f.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ToolchainError, match=r"\.bin: sha256 differs"):
        api.validate(built["spec"], out, targets=["openvino_x86"])


def test_a_runtime_that_cannot_run_the_format_names_the_key(tmp_path):
    """formats.FORMATS says which runtimes judge a format: an OpenVINO IR on onnxruntime is one line naming runtime."""
    from toolchain.errors import SpecError
    from toolchain.targets import load_target

    d = tmp_path / "targets"
    d.mkdir()
    text = (Path(__file__).resolve().parents[1] / "targets" / "openvino_x86.toml").read_text()
    (d / "ov.toml").write_text(text.replace('runtime = "openvino"', 'runtime = "onnxruntime"'))
    with pytest.raises(SpecError) as e:
        load_target("ov", d)
    assert str(e.value) == f"{d / 'ov.toml'}: runtime: onnxruntime cannot run format openvino (runs it: openvino)"
