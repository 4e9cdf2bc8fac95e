"""The ssh executor against a real OpenSSH sshd on 127.0.0.1 (a high port, its own config, throwaway keys,
key-only, `UsePAM no`, own PidFile), started by a fixture and stopped by its PID.
(tests/sshd_fixture.py). The "device" runs the entry point with this venv's python."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sshd_fixture import _free_port, _url, sshd  # noqa: F401 - the fixture, by name

from toolchain.executors import ExecutorUnavailable
from toolchain.executors.local import LocalExecutor
from toolchain.executors.ssh import SshExecutor

def _job():
    return {"models": {"artifact": "artifact.tflite", "baseline": "baseline.tflite"}, "inputs": "inputs.npz",
            "input_names": ["input"], "output_names": ["logits"], "output_shapes": [[10]], "threads": 1,
            "resolvers": ["default", "builtin_without_default_delegates"], "outputs": "outputs.npz",
            "result": "result.json", "count": None}


@pytest.fixture(scope="module")
def tiny_tflite(arm64_build, models, tmp_path_factory):
    t = arm64_build.report["targets"]["arm64"]
    d = tmp_path_factory.mktemp("tiny tflite ssh")
    with np.load(models["tiny_cnn"].evaluation) as z:
        np.savez(d / "inputs.npz", input=z["input"][:8])
    return {"artifact.tflite": arm64_build.model_dir / t["artifact"],
            "baseline.tflite": arm64_build.model_dir / t["baseline"], "inputs.npz": d / "inputs.npz"}


def test_ssh_executor_runs_the_entry_point_remotely(sshd, tiny_tflite, tmp_path):
    ex = SshExecutor.from_url(_url(sshd))
    ex.check()
    got = ex.run(_job(), tiny_tflite, tmp_path / "ssh", 120)
    want = LocalExecutor().run(_job(), tiny_tflite, tmp_path / "local", 120)
    assert got.result["platform"]["uname"] and got.result["versions"] == want.result["versions"]
    with np.load(got.out_dir / "outputs.npz") as a, np.load(want.out_dir / "outputs.npz") as b:
        assert sorted(a.files) == sorted(b.files) == ["builtin_without_default_delegates/0", "default/0"]
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
    assert ex.identity() == {"name": "ssh", "device": f"{sshd['user']}@127.0.0.1:{sshd['port']}",
                             "python": sys.executable}
    assert list(Path("/tmp/toolchain-validate").glob("*")) == []  # the remote work directory is removed


def test_unreachable_device_is_one_line(sshd):
    dead = _free_port()  # nothing listens there
    with pytest.raises(ExecutorUnavailable) as e:
        SshExecutor.from_url(_url(sshd, dead)).check()
    assert str(e.value) == f"ssh device {sshd['user']}@127.0.0.1:{dead}: unreachable"
    assert "refused" in e.value.one_line()


def test_cli_device_points_arm64_at_the_ssh_device(sshd, arm64_build, write_spec, tmp_path):
    """--device arm64=ssh://... validates the cached arm64 artifact on the device; a dead one exits 4 in one line."""
    from toolchain.cli import main
    from toolchain.executors import config

    spec = write_spec(tmp_path / "spec", targets={"x86_64": None, "arm64": {"max_metric_drop": 25.0}})
    cache = str(arm64_build.out / ".cache")
    try:
        ok = CliRunner().invoke(main, ["build", str(spec), "-o", str(tmp_path / "out"), "--cache-dir", cache, "-q",
                                       "--device", f"arm64={_url(sshd)}"])
        assert ok.exit_code == 0, ok.output
        t = json.loads((tmp_path / "out" / "tiny_cnn" / "report.json").read_text())["targets"]["arm64"]
        assert t["executor"]["name"] == "ssh" and t["executor"]["device"].endswith(f":{sshd['port']}")
        assert t["executor"]["platform"]["machine"] and "arm_cost" not in t
        # the device's own interleaved timings are the target's latency; the build host's are information
        assert t["latency_note"].startswith("measured on the device: ssh device ")
        assert t["latency_protocol"]["runs"] == t["latency_ms"]["runs"] == t["baseline_latency_ms"]["runs"] > 0
        assert t["latency_ratio"] == t["latency_ms"]["p50"] / t["baseline_latency_ms"]["p50"]
        assert set(t["host_latency"]) >= {"latency_ms", "baseline_latency_ms", "latency_ratio"}
        dead = _free_port()
        bad = CliRunner().invoke(main, ["build", str(spec), "-o", str(tmp_path / "out2"), "--cache-dir", cache,
                                        "-q", "--device", f"arm64={_url(sshd, dead)}"])
        assert bad.exit_code == 4, bad.output
        named = [ln for ln in bad.output.splitlines() if f"127.0.0.1:{dead}: unreachable" in ln]
        assert named == [f"tiny_cnn arm64: failed: stage validate failed: ssh device {sshd['user']}@127.0.0.1:{dead}"
                         f": unreachable (last log line: ssh: connect to host 127.0.0.1 port {dead}: Connection "
                         "refused)"], bad.output
        usage = CliRunner().invoke(main, ["build", str(spec), "--device", "arm64=http://x"])  # not ssh://
        assert usage.exit_code == 2 and "--device" in usage.output
        ov = write_spec(tmp_path / "ovspec", targets={"x86_64": None, "openvino_x86": {"max_metric_drop": 25.0}})
        refused = CliRunner().invoke(main, ["build", str(ov), "-o", str(tmp_path / "out3"), "--device",
                                            f"openvino_x86={_url(sshd)}"])
        assert refused.exit_code == 2, refused.output
        assert ("only litert and onnxruntime targets can be validated on a device so far, this one runs "
                "'openvino'") in refused.output
    finally:
        config.DEVICES.clear()
