"""Faults from the machine and from the artifacts: a full or read-only disk (exit 6, one line, nothing left to be
trusted, a clean build once space returns), published outputs that vanish, cache entries that rot, NaN/Inf that
appear only in a reduced-precision artifact, and a converter that crashes."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from conftest import parse_progress, run_build

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
X86 = {("trace", None), ("reference", None), ("quantize", "x86_64"), ("metadata", "x86_64"),
       ("validate", "x86_64")}


def cli(*args):
    """The real command line, in this process (torch is already imported: no start-up cost per build)."""
    from toolchain.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def error_lines(result) -> list:
    return [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]


def assert_one_clean_error(result, code, needle):
    assert result.exit_code == code, (result.exit_code, result.stderr[-2000:], result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not an internal error
    assert "Traceback" not in result.output
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert needle in lines[0], lines[0]
    return lines[0]


def sha256(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_report_consistent(model_dir: Path):
    """report.json on disk: every listed artifact exists and has the sha256 and size the report says."""
    report = json.loads((model_dir / "report.json").read_text())
    for name, t in report["targets"].items():
        if "artifact" in t:
            f = model_dir / t["artifact"]
            assert f.is_file(), (name, f)
            assert sha256(f) == t["sha256"] and f.stat().st_size == t["size_bytes"], name
    assert sha256(model_dir / report["fp32_onnx"]["path"]) == report["fp32_onnx"]["sha256"]
    return report


# ---- a small file system ------------------------------------------------------------------------------------
def _mount(d: Path, *options) -> bool:
    d.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(d)], capture_output=True)
    return r.returncode == 0


def _remount(d: Path, *options):
    subprocess.run(["mount", "-o", ",".join(("remount", *options)), str(d)], check=True, capture_output=True)


def _umount(d: Path):
    if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture(scope="module")
def can_mount(tmp_path_factory):
    if os.geteuid() != 0:
        return False
    d = tmp_path_factory.mktemp("mount probe")
    if not _mount(d, "size=64k"):
        return False
    _umount(d)
    return True


def _debris(model_dir: Path) -> list:
    return sorted(p.name for p in model_dir.rglob("*.tmp")) if model_dir.exists() else []


def _used_kb(d: Path) -> int:
    st = os.statvfs(d)
    return (st.f_blocks - st.f_bfree) * st.f_frsize // 1024


@pytest.fixture(scope="module")
def disk_sweep(can_mount, tmp_path_factory, x86_build):
    """The tiny CNN (every stage in a warm cache elsewhere) built into an output directory on a tmpfs too small for
    it, sized to run out at each point of publishing: first a whole build measures the space it needs (U), then
    builds into tmpfs of 16 KiB (the fp32 ONNX does not fit), U/4, U/2, 3U/4, U-16, U-8 and U-4 KiB (the stamp,
    written last, does not fit) and U+64 KiB (everything fits). After each, the same tmpfs grows to 4 MiB, with
    whatever the failed build left in it, and the build is rerun."""
    if not can_mount:
        pytest.skip("needs root and tmpfs mounts for a small file system")
    spec = x86_build.report["provenance"]["spec"]
    cache = x86_build.out / ".cache"
    root = tmp_path_factory.mktemp("full disk")

    def build(out):
        return cli("build", spec, "-o", out, "--cache-dir", cache, "-t", "x86_64")

    probe = root / "disk 99999k"  # every mount point's path has the same length: so has every stamp
    assert _mount(probe, "size=4m")
    try:
        assert build(probe / "build out").exit_code == 0
        need = _used_kb(probe)
    finally:
        _umount(probe)
    assert need > 64
    sizes = sorted({16, *(need * k // 4 // 4 * 4 for k in (1, 2, 3)), need - 16, need - 8, need - 4, need + 64})
    records = []
    for kb in sizes:
        d = root / f"disk {kb:05d}k"
        assert _mount(d, f"size={kb}k")
        try:
            out = d / "build out"
            r = build(out)
            model_dir = out / "tiny_cnn"
            rep = None
            if (model_dir / "report.json").is_file():
                rep = json.loads((model_dir / "report.json").read_text())
            rec = {"kb": kb, "result": r, "report": rep, "debris": _debris(model_dir),
                   "published": sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*.onnx"))
                   if model_dir.exists() else [], "out": out}
            _remount(d, "size=4m")
            again = build(out)
            rec["again"] = again
            rec["again_report"] = assert_report_consistent(model_dir) if again.exit_code == 0 else None
            rec["debris_after"] = _debris(model_dir)
            records.append(rec)
        finally:
            _umount(d)
    codes = {rec["kb"]: rec["result"].exit_code for rec in records}
    assert codes[16] != 0 and codes[need + 64] == 0 and codes[need - 4] != 0, codes
    return records


def test_full_disk_exits_6_with_one_line(disk_sweep):
    for rec in disk_sweep:
        r = rec["result"]
        if r.exit_code == 0:
            assert rec["report"]["status"] == "passed"
            continue
        line = assert_one_clean_error(r, 6, "No space left")
        assert line.startswith("error: cannot write"), (rec["kb"], line)


def test_full_disk_build_recovers_when_space_returns(disk_sweep):
    """Whatever the failed build left behind, the next build with space finishes, from the cache, consistently."""
    for rec in disk_sweep:
        again = rec["again"]
        assert again.exit_code == 0, (rec["kb"], again.stderr[-2000:])
        assert again.stdout.strip() == "tiny_cnn x86_64: passed"
        assert parse_progress(again.stderr)["running"] == set()  # every stage came from the cache
        assert rec["again_report"]["status"] == "passed"


def test_full_disk_leaves_no_report_saying_passed(disk_sweep):
    bad = [rec["kb"] for rec in disk_sweep
           if rec["result"].exit_code != 0 and (rec["report"] or {}).get("status") == "passed"]
    assert bad == [], f"exit 6, yet report.json says passed, on disks of {bad} KiB"


def test_full_disk_leaves_no_published_artifact(disk_sweep):
    bad = {rec["kb"]: rec["published"] for rec in disk_sweep if rec["result"].exit_code != 0 and rec["published"]}
    assert bad == {}, f"exit 6, yet artifacts were left published: {bad}"


def test_full_disk_leaves_no_temp_files(disk_sweep):
    bad = {rec["kb"]: rec["debris"] for rec in disk_sweep if rec["debris"]}
    assert bad == {}, f"half-written temp files left in the model directory: {bad}"
    kept = {rec["kb"]: rec["debris_after"] for rec in disk_sweep if rec["debris_after"]}
    assert kept == {}, f"...and still there after the next successful build: {kept}"


def test_full_disk_error_names_the_file_being_written(disk_sweep):
    for rec in disk_sweep:
        r = rec["result"]
        if r.exit_code == 0:
            continue
        (line,) = error_lines(r)
        named = line.removeprefix("error: cannot write ").rpartition(": No space left")[0]
        if named != "build output":  # a write without a file name (e.g. f.write) says so
            assert named.startswith(str(rec["out"])), (rec["kb"], line)


def test_full_disk_during_a_stage_exits_6(can_mount, tmp_path, write_spec):
    if not can_mount:
        pytest.skip("needs root and tmpfs mounts for a small file system")
    spec = write_spec(tmp_path / "spec")
    d = tmp_path / "small disk"
    assert _mount(d, "size=16k")  # the tiny CNN's fp32 ONNX alone is ~24 KB
    try:
        r = cli("build", spec, "-o", d / "out")  # out and cache both on the small disk
        try:
            assert_one_clean_error(r, 6, "No space left")
        finally:
            _remount(d, "size=4m")
            again = cli("build", spec, "-o", d / "out")
            assert again.exit_code == 0, again.stderr[-2000:]
            assert assert_report_consistent(d / "out" / "tiny_cnn")["status"] == "passed"
    finally:
        _umount(d)


def test_read_only_output_dir_exits_6(can_mount, tmp_path, write_spec):
    spec = write_spec(tmp_path / "spec")
    d = tmp_path / "read only"
    mounted = False
    if can_mount:  # root ignores file modes: a read-only file system it is
        assert _mount(d, "size=1m")
        mounted = True
        _remount(d, "ro")
    else:
        d.mkdir()
        d.chmod(0o555)
    try:
        r = cli("build", spec, "-o", d / "out")
        line = assert_one_clean_error(r, 6, "Read-only file system" if mounted else "Permission denied")
        assert str(d) in line
        assert list(d.iterdir()) == []
    finally:
        if mounted:
            _umount(d)
        else:
            d.chmod(0o755)


# ---- published outputs that vanish --------------------------------------------------------------------------
@pytest.mark.parametrize("victim", ["x86_64/tiny_cnn.int8.onnx", "fp32/tiny_cnn.fp32.onnx", "report.json"])
def test_deleted_output_is_republished_from_the_cache(victim, tmp_path, x86_build):
    spec = x86_build.report["provenance"]["spec"]
    cache = x86_build.out / ".cache"
    first = run_build(spec, tmp_path / "out", cache_dir=cache)
    assert first.code == 0 and first.ran == set()
    (first.model_dir / victim).unlink()
    again = run_build(spec, tmp_path / "out", cache_dir=cache)
    assert again.code == 0
    assert again.ran == set() and again.cached == X86  # republished, nothing rebuilt
    assert (first.model_dir / victim).is_file()
    report = assert_report_consistent(first.model_dir)
    assert report == json.loads(json.dumps(again.report))
    assert report["targets"]["x86_64"]["sha256"] == first.report["targets"]["x86_64"]["sha256"]
    third = run_build(spec, tmp_path / "out", cache_dir=cache)
    assert third.ran == set() and third.cached == set()  # and the stamp is whole again: a no-op
    assert "up to date" in third.progress


# ---- cache entries that rot (trace, quantize, reference, validate: test_build_x86.py) -----------------------
@pytest.fixture(scope="module")
def cuda_cache(tmp_path_factory, write_spec):
    d = tmp_path_factory.mktemp("cuda cache")
    spec = write_spec(d / "spec", targets={"x86_64": None, "cuda": {"max_metric_drop": 1.0}})
    b = run_build(spec, d / "out")
    assert ("fp16", "cuda") in b.ran
    return spec, b


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete entry.json"])
def test_damaged_fp16_entry_is_rebuilt(damage, cuda_cache, tmp_path):
    spec, first = cuda_cache
    cache = tmp_path / "cache"
    shutil.copytree(first.out / ".cache", cache)
    (entry,) = [p for p in (cache / "fp16").iterdir() if p.is_dir()]
    onnx_file = entry / "model.fp16.onnx"
    if damage == "flip a byte":
        data = bytearray(onnx_file.read_bytes())
        data[len(data) // 2] ^= 0x01
        onnx_file.write_bytes(bytes(data))
    elif damage == "truncate":
        onnx_file.write_bytes(b"")
    else:
        (entry / "entry.json").unlink()
    again = run_build(spec, tmp_path / "out", cache_dir=cache)
    assert again.code == 0
    assert ("fp16", "cuda") in again.ran
    # The conversion is deterministic: the same bytes again, so validation (keyed by them) is a cache hit.
    assert {("trace", None), ("reference", None), ("validate", "cuda")} <= again.cached
    t = again.report["targets"]["cuda"]
    assert t["sha256"] == first.report["targets"]["cuda"]["sha256"]  # the same bytes as before the damage
    assert sha256(again.model_dir / t["artifact"]) == t["sha256"]
    entries = [p for p in (cache / "fp16").iterdir()]
    assert [p.name for p in entries] == [entry.name]  # replaced in place, no debris beside it
    third = run_build(spec, tmp_path / "third", cache_dir=cache)
    assert third.ran == set() and ("fp16", "cuda") in third.cached


@pytest.mark.slow
def test_damaged_tflite_entry_is_rebuilt(arm64_build, tmp_path):
    """One more onnx2tf conversion: the int8 TFLite in the cache altered by one byte is a miss, converted again."""
    cache = tmp_path / "cache"
    shutil.copytree(arm64_build.out / ".cache", cache)
    (entry,) = [p for p in (cache / "tflite").iterdir() if (p / "entry.json").is_file()]
    f = entry / "model.int8.tflite"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    damaged = sha256(f)
    again = run_build(arm64_build.report["provenance"]["spec"], tmp_path / "out", cache_dir=cache)
    assert again.code == 0
    assert ("tflite", "arm64") in again.ran and ("trace", None) in again.cached
    t = again.report["targets"]["arm64"]
    assert t["status"] == "passed"
    assert sha256(again.model_dir / t["artifact"]) == t["sha256"]
    # The damaged entry was replaced in place by the new conversion: whole again by its own record. (The artifact
    # is the metadata stage's stamped copy of it, so its sha256 is not the entry's.)
    assert sha256(f) != damaged
    assert sha256(f) == json.loads((entry / "entry.json").read_text())["files"]["model.int8.tflite"]


# ---- NaN/Inf only in the reduced-precision artifact ----------------------------------------------------------
@pytest.fixture(scope="module")
def overflow_build(tmp_path_factory, write_spec):
    d = tmp_path_factory.mktemp("fp16 overflow")
    spec = write_spec(d / "spec", "fp16_overflow", targets={"cuda": {"max_metric_drop": 25.0}})
    return run_build(spec, d / "out")


def _fp16_outputs(path, x):
    """The artifact run with real fp16 arithmetic: onnx's reference evaluator (ONNX Runtime's CPU provider runs
    fp16 graphs through float casts and would hide an overflow)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    with np.errstate(over="ignore", invalid="ignore"):
        (y,) = ReferenceEvaluator(onnx.load(str(path))).run(None, {"input": x})
    return y


def test_fp16_range_guard_keeps_overflowing_nodes_float32(overflow_build, models):
    """fp32 PyTorch is finite; the fp16 stage measures the graph's tensors on calibration data, keeps the nodes
    that would overflow fp16 in float32 and names them; the artifact is finite under real fp16 arithmetic."""
    import torch

    b = overflow_build
    with np.load(models["fp16_overflow"].evaluation) as z:
        x = z["input"]
    with torch.no_grad():
        assert np.isfinite(models["fp16_overflow"].torch_model()(torch.from_numpy(x)).numpy()).all()
    cuda = b.report["targets"]["cuda"]
    kept = cuda["build"]["kept_float32_for_range"]
    assert kept and all("reaches" in k["reason"] for k in kept)
    assert np.isfinite(_fp16_outputs(b.model_dir / cuda["artifact"], x)).all()
    if not HAS_CUDA:
        assert cuda["status"] == "skipped" and cuda["cpu_check"]["non_finite_outputs"] == 0
    x86 = b.report["targets"]["x86_64"]
    assert x86["status"] == "passed" and x86["non_finite_outputs"] == 0


def test_without_the_range_guard_fp16_overflows(tmp_path, write_spec, models):
    """Why the guard exists: with range_guard = false the same model's fp16 artifact overflows."""
    spec = write_spec(tmp_path / "spec", "fp16_overflow",
                      targets={"x86_64": None, "cuda": {"max_metric_drop": 25.0, "fp16": {"range_guard": False}}})
    b = run_build(spec, tmp_path / "out")
    cuda = b.report["targets"]["cuda"]
    assert cuda["build"]["kept_float32_for_range"] == []
    with np.load(models["fp16_overflow"].evaluation) as z:
        y = _fp16_outputs(b.model_dir / cuda["artifact"], z["input"])
    assert (~np.isfinite(y)).sum() > y.size // 2


# ---- a converter that crashes (a timeout is covered in test_arm64.py) ------------------------------------------
def test_gru_model_builds_for_x86_64(tmp_path, write_spec):
    """torch's own shape checks inside nn.GRU raise TracerWarnings about Python booleans; they are not control flow
    on data, and the model must trace (the converter crash below needs it to get that far)."""
    spec = write_spec(tmp_path / "spec", "gru_seq")
    b = run_build(spec, tmp_path / "out")
    assert b.code == 0, b.report["targets"]["x86_64"].get("reason")
    assert b.report["targets"]["x86_64"]["status"] == "passed"


@pytest.mark.slow
def test_converter_sigsegv_fails_only_arm64(tmp_path, write_spec):
    """onnx2tf's int8 calibration dies with SIGSEGV on a GRU: the converter child dies, the build does not; arm64
    fails naming the signal, x86_64 still passes, exit 4, nothing cached or published for arm64."""
    # routes = "plain": the raw onnx2tf int8 path (the one that crashes); the default routes add -eru and avoid it
    spec = write_spec(tmp_path / "spec", "gru_seq", targets={"arm64": {"max_metric_drop": 25.0,
                                                                       "convert": {"routes": "plain"}}})
    b = run_build(spec, tmp_path / "out")
    assert b.code == 4 and b.report["status"] == "stage-failed"
    x86, arm = b.report["targets"]["x86_64"], b.report["targets"]["arm64"]
    assert x86["status"] == "passed" and (b.model_dir / x86["artifact"]).is_file()
    assert arm["status"] == "failed" and arm["failed_stage"] == "tflite" and "SIGSEGV" in arm["reason"]
    assert not (b.model_dir / "arm64").exists()
    assert not any((p / "entry.json").is_file() for p in (b.out / ".cache" / "tflite").glob("*"))
