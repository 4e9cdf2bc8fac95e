"""Release bundles: package a build directory, verify the bundle (directory and .tar.gz), refuse a bundle that was
altered, and refuse hostile archives without writing anything outside the directory they unpack into."""

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path

import onnxruntime as ort
import pytest
from click.testing import CliRunner

from conftest import run_build

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def cli(*args):
    from toolchain.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def one_error_line(result, code=5) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory, write_spec):
    """The tiny CNN built for x86_64 (passes) and cuda (skipped on a host without the CUDA provider)."""
    d = tmp_path_factory.mktemp("package build")
    spec = write_spec(d / "spec", targets={"cuda": {"max_metric_drop": 1.0}})
    b = run_build(spec, d / "build")
    assert b.code == 0 and b.report["targets"]["x86_64"]["status"] == "passed"
    return b


@pytest.fixture(scope="module")
def bundle(build_dir, tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist") / "models-1.2.0"
    r = cli("package", build_dir.out, "--version", "1.2.0", "-o", dist)
    assert r.exit_code == 0, r.output
    return dist


def _manifest(dist) -> dict:
    return json.loads((Path(dist) / "manifest.json").read_text())


# ---- package ------------------------------------------------------------------------------------------------------
def test_manifest_lists_each_artifact_with_its_facts(bundle, build_dir, models):
    m = _manifest(bundle)
    assert m["release_version"] == "1.2.0" and m["format_version"] == 1
    report = build_dir.report
    passed = {n for n, t in report["targets"].items() if t["status"] == "passed"}
    assert {a["target"] for a in m["artifacts"]} == passed and "x86_64" in passed
    (a,) = [a for a in m["artifacts"] if a["target"] == "x86_64"]
    t = report["targets"]["x86_64"]
    f = Path(bundle) / a["path"]
    assert a["path"] == "tiny_cnn/x86_64/tiny_cnn.int8.onnx"
    assert a["sha256"] == sha256(f) == t["sha256"] and a["size_bytes"] == f.stat().st_size == t["size_bytes"]
    assert (a["model"], a["model_version"], a["status"]) == ("tiny_cnn", "1.0.0", "passed")
    assert (a["format"], a["precision"], a["runtime"]) == ("onnx", "int8", "onnxruntime")
    sig = a["signature"]
    assert sig["inputs"] == [{"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]
    assert sig["outputs"] == [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}]
    v = a["validation"]
    assert v["metric"] == t["metric"] and v["metric_drop"] == t["metric_drop"] and v["max_metric_drop"] == 25.0
    assert v["latency_ms"]["p50"] > 0 and v["agreement"]["0"]["top1_agreement"] >= 75.0
    assert a["build"]["scheme"]["method"] == "static"
    prov = m["models"]["tiny_cnn"]["provenance"]
    # the bundle names the spec relative to its checkout, or by file name: no absolute path of the build machine
    assert prov == {**report["provenance"], "spec": "build.toml"} and Path(report["provenance"]["spec"]).is_absolute()
    for k in ("spec_sha256", "weights_sha256", "calibration_sha256"):
        assert len(prov[k]) == 64, k
    assert prov["weights_sha256"] == sha256(models["tiny_cnn"].weights)
    assert prov["calibration_sha256"] == sha256(models["tiny_cnn"].calibration)
    assert prov["spec_sha256"] == sha256(report["provenance"]["spec"])
    assert {"torch", "onnx", "onnxruntime", "numpy"} <= set(prov["libraries"])
    assert m["models"]["tiny_cnn"]["fp32_onnx_sha256"] == report["fp32_onnx"]["sha256"]
    sums = (Path(bundle) / "SHA256SUMS").read_text().splitlines()
    assert sums == [f"{x['sha256']}  {x['path']}" for x in m["artifacts"]]


@pytest.mark.skipif(HAS_CUDA, reason="the cuda target passes where a CUDA provider exists: nothing is left out")
def test_skipped_target_is_left_out_with_its_reason(bundle, build_dir):
    m = _manifest(bundle)
    assert m["excluded"] == [{"model": "tiny_cnn", "target": "cuda", "status": "skipped",
                              "reason": build_dir.report["targets"]["cuda"]["reason"]}]
    assert "CUDAExecutionProvider" in m["excluded"][0]["reason"]
    assert not (Path(bundle) / "tiny_cnn" / "cuda").exists()


@pytest.mark.skipif(HAS_CUDA, reason="the cuda target passes where a CUDA provider exists")
def test_allow_failed_includes_the_skipped_target(build_dir, tmp_path):
    dist = tmp_path / "with skipped"
    r = cli("package", build_dir.out, "--version", "1.2.0", "-o", dist, "--allow-failed")
    assert r.exit_code == 0, r.output
    assert "2 artifacts, 0 left out" in r.stdout
    m = _manifest(dist)
    assert m["excluded"] == []
    (a,) = [a for a in m["artifacts"] if a["target"] == "cuda"]
    assert a["status"] == "skipped" and "CUDAExecutionProvider" in a["validation"]["reason"]
    assert (a["format"], a["precision"]) == ("onnx", "fp16")
    assert a["signature"]["inputs"][0]["dtype"] == "float32"  # keep_io_types: float32 at the boundary
    assert a["sha256"] == sha256(dist / a["path"]) == build_dir.report["targets"]["cuda"]["sha256"]
    assert cli("verify", dist).exit_code == 0


def test_tarball_is_reproducible(build_dir, bundle, tmp_path):
    first = bundle.with_name(bundle.name + ".tar.gz")
    again = tmp_path / "elsewhere" / bundle.name  # same name, another place, another time
    again.parent.mkdir()
    assert cli("package", build_dir.out, "--version", "1.2.0", "-o", again).exit_code == 0
    second = again.with_name(again.name + ".tar.gz")
    assert first.read_bytes() == second.read_bytes()
    assert cli("package", build_dir.out, "--version", "1.2.0", "-o", again).exit_code == 0  # over itself
    assert second.read_bytes() == first.read_bytes()
    with tarfile.open(first) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and all(n.startswith("models-1.2.0/") for n in names)
    assert all(m.isfile() and m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.mode == 0o644 for m in members)
    assert set(names) == {"models-1.2.0/manifest.json", "models-1.2.0/SHA256SUMS", "models-1.2.0/provenance.intoto.json",
                          *(f"models-1.2.0/{a['path']}" for a in _manifest(bundle)["artifacts"])}


# ---- verify -------------------------------------------------------------------------------------------------------
def test_verify_directory_and_tarball(bundle):
    for target in (bundle, bundle.with_name(bundle.name + ".tar.gz")):
        r = cli("verify", target)
        assert r.exit_code == 0, r.output
        n = len(_manifest(bundle)["artifacts"])
        assert r.stdout.splitlines()[0] == f"{target}: OK, {n} artifacts verified"


def _copy(bundle, tmp_path) -> Path:
    dist = tmp_path / "copy" / bundle.name
    shutil.copytree(bundle, dist)
    return dist


def _tar(dist: Path) -> Path:
    from toolchain.bundle import _tar_reproducibly

    out = dist.with_name(dist.name + ".tar.gz")
    _tar_reproducibly(dist, out)
    return out


def test_flipped_byte_is_refused_naming_the_file(bundle, tmp_path):
    dist = _copy(bundle, tmp_path)
    f = dist / "tiny_cnn" / "x86_64" / "tiny_cnn.int8.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    tarball = _tar(dist)
    for target in (dist, tarball):
        line = one_error_line(cli("verify", target))
        assert "tiny_cnn/x86_64/tiny_cnn.int8.onnx" in line and "sha256" in line, line


def test_truncated_artifact_is_refused(bundle, tmp_path):
    dist = _copy(bundle, tmp_path)
    f = dist / "tiny_cnn" / "x86_64" / "tiny_cnn.int8.onnx"
    f.write_bytes(f.read_bytes()[:-1])
    line = one_error_line(cli("verify", dist))
    assert "tiny_cnn/x86_64/tiny_cnn.int8.onnx" in line and "size" in line


@pytest.mark.parametrize("where", ["tiny_cnn/x86_64/extra.onnx", "README.txt"])
def test_unlisted_file_is_refused(where, bundle, tmp_path):
    dist = _copy(bundle, tmp_path)
    (dist / where).write_bytes(b"not in the manifest")
    tarball = _tar(dist)
    for target in (dist, tarball):
        line = one_error_line(cli("verify", target))
        assert where in line and "not listed" in line, line


def test_manifest_edited_to_match_a_swapped_artifact_still_disagrees_with_sums(bundle, tmp_path):
    """Replacing an artifact and fixing its manifest entry is caught by SHA256SUMS (and vice versa)."""
    dist = _copy(bundle, tmp_path)
    f = dist / "tiny_cnn" / "x86_64" / "tiny_cnn.int8.onnx"
    f.write_bytes(b"another model")
    m = _manifest(dist)
    m["artifacts"][0].update(sha256=sha256(f), size_bytes=f.stat().st_size)
    (dist / "manifest.json").write_text(json.dumps(m))
    line = one_error_line(cli("verify", dist))
    assert "SHA256SUMS" in line


def test_missing_manifest_is_refused(bundle, tmp_path):
    dist = _copy(bundle, tmp_path)
    (dist / "manifest.json").unlink()
    assert "manifest" in one_error_line(cli("verify", dist))


# ---- hostile archives -----------------------------------------------------------------------------------------------
def _hostile(path: Path, members):
    """A .tar.gz holding a valid-looking bundle plus the given hostile members (TarInfo, bytes or None)."""
    with tarfile.open(path, "w:gz") as tar:
        def add(info, data=None):
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        manifest = json.dumps({"artifacts": []}).encode()
        add(tarfile.TarInfo("bundle/manifest.json"), manifest)
        add(tarfile.TarInfo("bundle/SHA256SUMS"), b"")
        for info, data in members:
            add(info, data)
    return path


def _link(name, target, kind):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """verify unpacks into tempfile's directory: point that into tmp_path, so '..' targets are checkable."""
    tmp = tmp_path / "tmp" / "deeper"
    tmp.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def test_control_a_plain_bundle_tarball_verifies(tmp_path, sandbox):
    """The hostile archives below differ from this one only by their hostile member."""
    r = cli("verify", _hostile(tmp_path / "plain.tar.gz", []))
    assert r.exit_code == 0, r.output
    assert list(sandbox.iterdir()) == []  # unpacked into a temporary directory, removed afterwards


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "symlink then write through"])
def test_hostile_tarball_is_refused(kind, tmp_path, sandbox):
    tag = uuid.uuid4().hex
    victims = []  # paths that must not exist afterwards
    if kind == "dotdot":
        # extracted into sandbox/<tmpdir>/, "../../evil-" lands in sandbox's parent
        members = [(tarfile.TarInfo(f"../../evil-{tag}"), b"pwned")]
        victims = [sandbox.parent / f"evil-{tag}", sandbox / f"evil-{tag}"]
    elif kind == "absolute":
        target = tmp_path / f"abs-evil-{tag}"
        members = [(tarfile.TarInfo(str(target)), b"pwned")]
        victims = [target]
    elif kind == "symlink":
        members = [(_link("bundle/escape", str(tmp_path), tarfile.SYMTYPE), None)]
    elif kind == "hardlink":
        secret = tmp_path / "secret.txt"
        secret.write_text("secret")
        members = [(_link("bundle/secret.txt", str(secret), tarfile.LNKTYPE), None)]
    else:
        outside = tmp_path / f"outside-{tag}"
        outside.mkdir()
        members = [(_link("bundle/dir", str(outside), tarfile.SYMTYPE), None),
                   (tarfile.TarInfo("bundle/dir/evil"), b"pwned")]
        victims = [outside / "evil"]
    tarball = _hostile(tmp_path / f"{kind}.tar.gz", members)
    line = one_error_line(cli("verify", tarball))
    assert "refused" in line, line
    for v in victims:
        assert not v.exists(), v
    assert list(sandbox.iterdir()) == []  # the temporary directory is gone too
    if kind == "hardlink":
        assert (tmp_path / "secret.txt").read_text() == "secret"


def test_device_member_is_refused(tmp_path, sandbox):
    info = tarfile.TarInfo("bundle/fifo")
    info.type = tarfile.FIFOTYPE
    line = one_error_line(cli("verify", _hostile(tmp_path / "fifo.tar.gz", [(info, None)])))
    assert "refused" in line


@pytest.mark.parametrize("damage", ["truncated", "not a tarball"])
def test_unreadable_tarball_is_refused(damage, bundle, tmp_path):
    src = bundle.with_name(bundle.name + ".tar.gz").read_bytes()
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(src[: len(src) // 2] if damage == "truncated" else b"hello, I am not a tarball\n" * 40)
    line = one_error_line(cli("verify", bad))
    assert str(bad) in line
