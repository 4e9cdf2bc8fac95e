"""ONNX Runtime targets judged on an ssh device (`--device x86_64=ssh://...`, `--device cuda=ssh://...`) against
the real sshd of tests/sshd_fixture.py on 127.0.0.1: the device's own onnxruntime runs the artifact
(executors/onnxruntime_entry.py), measures latency interleaved with the fp32 baseline, and reports the providers
and node placement it really used. No GPU anywhere: cuda on this "device" is never a pass."""

import json
import sys

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from sshd_fixture import _free_port, _url, sshd  # noqa: F401 - the fixture, by name

from toolchain.executors import config
from toolchain.executors.ssh import SshExecutor

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One stage cache for the module: the tiny CNN is traced and quantized once; each test's validate differs."""
    return tmp_path_factory.mktemp("ssh onnxruntime cache")


@pytest.fixture(autouse=True)
def _no_devices_left():
    yield
    config.DEVICES.clear()  # --device is process state: never leak it into another test


def _build(spec, out, cache, *args):
    from toolchain.cli import main

    return CliRunner().invoke(main, ["build", str(spec), "-o", str(out), "--cache-dir", str(cache), "-q", *args])


def _report(out, target):
    return json.loads((out / "tiny_cnn" / "report.json").read_text())["targets"][target]


def test_x86_64_validated_on_the_ssh_device(sshd, write_spec, tmp_path, cache):
    """The device's ONNX Runtime judges the artifact: gates, interleaved latency, providers, node placement and
    the device record in report.json; the same outputs (same CPU, same onnxruntime) as the host's validation;
    the validate key holds the device's identity and versions (cached on a rebuild, not shared with the host)."""
    spec = write_spec(tmp_path / "spec")
    dev = _build(spec, tmp_path / "dev", cache, "--device", f"x86_64={_url(sshd)}")
    assert dev.exit_code == 0, dev.output
    t = _report(tmp_path / "dev", "x86_64")
    assert t["status"] == "passed" and t["outputs"]["logits"]["passed"] is True
    ex = t["executor"]
    addr = f"{sshd['user']}@127.0.0.1:{sshd['port']}"
    assert (ex["name"], ex["device"], ex["python"]) == ("ssh", addr, sys.executable)
    p = ex["platform"]
    assert p["uname"] and p["cpu"] and p["machine"] == "x86_64" and p["gpus"] is None  # no nvidia-smi here
    assert ex["runtime_versions"]["onnxruntime"] == ort.__version__
    assert ex["remote"]["versions"]["onnxruntime"] == ort.__version__ and ex["remote"]["host"][1] == "x86_64"
    assert "versions_differ_from_lock" not in ex  # the venv's onnxruntime is the lock's
    assert t["providers"] == ["CPUExecutionProvider"]
    assert set(ex["placement"]["nodes"]) == {"CPUExecutionProvider"} and ex["placement"]["off_provider"] == []
    assert t["latency_note"] == f"measured on the device: ssh device {addr} ({p['cpu']})"
    assert t["latency_ms"]["runs"] == t["baseline_latency_ms"]["runs"] == t["latency_protocol"]["runs"] == 20
    assert t["latency_ratio"] == t["latency_ms"]["p50"] / t["baseline_latency_ms"]["p50"]
    assert t["latency_protocol"]["measured_on"].startswith(f"ssh device {addr}: Linux")
    assert t["runtime_options"]["chosen"] in ("default", "extended", "basic")
    # what really runs int8 follows the chosen level: "basic" (a timing pick on a tiny model) leaves the QDQ
    # pairs unfused, the other levels fuse them into QLinearConv
    counts = t["optimized_op_counts"]
    if t["runtime_options"]["chosen"] == "basic":
        assert counts.get("DequantizeLinear", 0) > 0 and counts.get("QLinearConv", 0) == 0, counts
    else:
        assert counts.get("QLinearConv", 0) > 0, counts
    report_md = (tmp_path / "dev" / "tiny_cnn" / "report.md").read_text()
    assert f"- **x86_64** judged on ssh device {addr} with onnxruntime {ort.__version__}" in report_md

    again = _build(spec, tmp_path / "dev2", cache, "--device", f"x86_64={_url(sshd)}")  # the validate key holds
    assert again.exit_code == 0 and _report(tmp_path / "dev2", "x86_64")["executor"] == ex
    config.DEVICES.clear()
    host = _build(spec, tmp_path / "dev", cache)  # the same output, judged here: not up to date, another key
    assert host.exit_code == 0, host.output
    h = _report(tmp_path / "dev", "x86_64")
    assert "executor" not in h and h["latency_ms"] != t["latency_ms"]
    for k in ("metric", "metric_drop", "agreement", "outputs"):
        assert h[k] == t[k], k


def test_the_target_file_can_name_the_device(sshd, write_spec, tmp_path, cache):
    """executor = "ssh" with an [ssh] table in a target file of one's own routes that target to the device."""
    from conftest import REPO

    d = tmp_path / "targets"
    d.mkdir()
    text = (REPO / "targets" / "x86_64.toml").read_text()
    (d / "x86_64.toml").write_text('executor = "ssh"\n' + text + f'\n[ssh]\nurl = "{_url(sshd)}"\ntimeout_s = 300\n')
    spec = write_spec(tmp_path / "spec")
    r = _build(spec, tmp_path / "out", cache, "--targets-dir", str(d))
    assert r.exit_code == 0, r.output
    t = _report(tmp_path / "out", "x86_64")
    assert t["status"] == "passed" and t["executor"]["device"] == f"{sshd['user']}@127.0.0.1:{sshd['port']}"
    assert t["latency_note"].startswith("measured on the device: ssh device ")


@pytest.mark.gpu
def test_cuda_passes_on_a_gpu_device(sshd, write_spec, tmp_path, cache):
    """Where this machine has CUDA (the fixture's "device" is this machine): the cuda target is judged there,
    on CUDAExecutionProvider with every non-shape node on it, and the device record names the GPU."""
    if not HAS_CUDA:
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider here "
                    f"(available: {', '.join(ort.get_available_providers())})")
    spec = write_spec(tmp_path / "spec", targets={"x86_64": None, "cuda": {"max_metric_drop": 1.0}})
    r = _build(spec, tmp_path / "out", cache, "--device", f"cuda={_url(sshd)}")
    t = _report(tmp_path / "out", "cuda")
    assert r.exit_code == 0 and t["status"] == "passed", (r.output, t.get("reason"))
    assert t["providers"][0] == "CUDAExecutionProvider" and t["executor"]["placement"]["off_provider"] == []
    assert t["executor"]["platform"]["gpus"] and t["device"] in t["executor"]["platform"]["gpus"][0]
    assert t["latency_protocol"]["timing"].startswith("io_binding")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA: see test_cuda_passes_on_a_gpu_device")
def test_cuda_on_a_device_without_cuda_is_never_passed(sshd, write_spec, tmp_path, cache):
    """The device's onnxruntime has no CUDAExecutionProvider: the user named this device to prove the artifact
    there, so the target fails (exit 3) with one reason naming the device and the provider; a build host without
    a GPU skips cuda, a named device that cannot run it does not."""
    spec = write_spec(tmp_path / "spec", targets={"x86_64": None, "cuda": {"max_metric_drop": 1.0}})
    addr = f"{sshd['user']}@127.0.0.1:{sshd['port']}"
    r = _build(spec, tmp_path / "out", cache, "--device", f"cuda={_url(sshd)}")
    t = _report(tmp_path / "out", "cuda")
    have = ", ".join(ort.get_available_providers())
    reason = (f"ssh device {addr}: CUDAExecutionProvider not available in onnxruntime {ort.__version__} there "
              f"(available: {have})")
    assert t["status"] == "failed" and t["reason"] == reason
    assert r.exit_code == 3, r.output
    assert [ln for ln in r.output.splitlines() if "CUDAExecutionProvider" in ln] == [
        f"tiny_cnn cuda: failed: {reason}"], r.output
    assert "latency_ms" not in t and t["executor"]["available_providers"] == ort.get_available_providers()
    assert "not a pass" in t["cpu_check"]["note"] and t["cpu_check"]["agreement"]["0"]["top1_agreement"] == 100.0
    md = (tmp_path / "out" / "tiny_cnn" / "report.md").read_text()
    assert f"- **cuda** NOT judged on ssh device {addr} (onnxruntime {ort.__version__}, available providers" in md


def test_nodes_off_the_requested_provider_fail(sshd, tmp_path, x86_build, models):
    """A session that loads with the requested provider first but runs the nodes on another (here: the Azure
    provider, which runs none of a CNN's nodes, ahead of the CPU) is a fallback: the entry point says so from
    ONNX Runtime's own profile and measures nothing."""
    if "AzureExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no AzureExecutionProvider to ask for")
    t = x86_build.report["targets"]["x86_64"]
    with np.load(models["tiny_cnn"].evaluation) as z:
        np.savez(tmp_path / "inputs.npz", input=z["input"][:4])
    files = {"artifact.onnx": x86_build.model_dir / t["artifact"], "baseline.onnx": x86_build.model_dir / t["baseline"],
             "inputs.npz": tmp_path / "inputs.npz"}
    job = {"runtime": "onnxruntime", "models": {"artifact": "artifact.onnx", "baseline": "baseline.onnx"},
           "inputs": "inputs.npz", "input_names": ["input"], "threads": 1, "io_binding": False, "eval_batch": 64,
           "providers": ["AzureExecutionProvider", "CPUExecutionProvider"], "runtime_options": [],
           "latency": {"warmup": 1, "runs": 2, "batch": 1}, "outputs": "outputs.npz", "result": "result.json"}
    got = SshExecutor.from_url(_url(sshd)).run(job, files, tmp_path / "run", 120).result
    assert got["fell_back"].startswith("asked for AzureExecutionProvider, ")
    assert "on CPUExecutionProvider" in got["fell_back"] and "latency_ms" not in got
    assert got["placement"]["nodes"]["CPUExecutionProvider"] == len(got["placement"]["off_provider"]) > 0


def test_unreachable_gpu_host_exits_4_in_one_line(sshd, write_spec, tmp_path, cache):
    spec = write_spec(tmp_path / "spec", targets={"x86_64": None, "cuda": {"max_metric_drop": 1.0}})
    dead = _free_port()
    r = _build(spec, tmp_path / "out", cache, "--device", f"cuda={_url(sshd, dead)}")
    assert r.exit_code == 4, r.output
    named = [ln for ln in r.output.splitlines() if f"127.0.0.1:{dead}" in ln]
    assert named == [f"tiny_cnn cuda: failed: stage validate failed: ssh device {sshd['user']}@127.0.0.1:{dead}: "
                     f"unreachable (last log line: ssh: connect to host 127.0.0.1 port {dead}: Connection refused)"]


def test_a_device_onnxruntime_other_than_the_lock_is_noted():
    from toolchain.validation.ort_on_executor import _version_notes
    from toolchain.versions import locked_version

    ident = {"runtime_versions": {"onnxruntime-gpu": "0.0.1", "numpy": locked_version("numpy")}}
    assert _version_notes(ident) == [f"the device's runtime versions differ from the lock: onnxruntime-gpu 0.0.1 "
                                     f"there vs {locked_version('onnxruntime')} locked"]
    assert ident["versions_differ_from_lock"] == {"onnxruntime-gpu": {"device": "0.0.1",
                                                                      "lock": locked_version("onnxruntime")}}
