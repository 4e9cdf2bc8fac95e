"""Executors (toolchain/executors): the arm64 target judged on emulated aarch64 (LiteRT's real ARM kernels under
qemu-user, prepared by `make arm-emulator`), the ARM cost model, the fallback to host LiteRT when the emulator
is missing, and the child-process runner's errors. The tiny CNN's evaluation set is 64 samples."""

import os
import platform
from pathlib import Path

import numpy as np
import pytest

from toolchain.errors import SpecError
from toolchain.executors import ExecutorError
from toolchain.executors.emulated import EmulatedExecutor
from toolchain.executors.litert_entry import COUNT_INVOKES
from toolchain.executors.local import LocalExecutor
from toolchain.runtimes.litert import LiteRTSession
from toolchain.targets import load_target

from conftest import run_build

REPO = Path(__file__).resolve().parents[1]


def _lock(name):
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.lower().startswith(name + "=="):
            return line.split("==")[1].strip()


def _job(names=("input",), shapes=((10,),), resolvers=("default",), count=None):
    return {"models": {"artifact": "artifact.tflite", "baseline": "baseline.tflite"}, "inputs": "inputs.npz",
            "input_names": list(names), "output_names": ["logits"], "output_shapes": [list(s) for s in shapes],
            "threads": 1, "resolvers": list(resolvers), "outputs": "outputs.npz", "result": "result.json",
            "count": count}


@pytest.fixture(scope="module")
def tiny_tflite(arm64_build, models, tmp_path_factory):
    """The tiny CNN's int8 artifact, its fp32 baseline and 8 evaluation inputs."""
    t = arm64_build.report["targets"]["arm64"]
    d = tmp_path_factory.mktemp("tiny tflite")
    with np.load(models["tiny_cnn"].evaluation) as z:
        np.savez(d / "inputs.npz", input=z["input"][:8])
    return {"artifact.tflite": arm64_build.model_dir / t["artifact"],
            "baseline.tflite": arm64_build.model_dir / t["baseline"], "inputs.npz": d / "inputs.npz"}


def test_arm64_report_is_judged_on_emulated_arm(arm64_build):
    t = arm64_build.report["targets"]["arm64"]
    ex = t["executor"]
    assert ex["name"] == "emulated" and not ex.get("fallback"), ex
    assert ex["platform"]["machine"] == "aarch64"
    # the guest read cortex-a76's /proc/cpuinfo (the accuracy core), not the x86 build host's
    assert "CPU part\t: 0xd0b" in ex["platform"]["cpuinfo"] and "Intel" not in ex["platform"]["cpuinfo"], ex
    assert "cortex-a76" in ex["platform"]["cpuinfo_from"] and ex["guest_cpuinfo"] == 1
    assert ex["runtime_versions"] == {"ai-edge-litert": _lock("ai-edge-litert"), "numpy": _lock("numpy")}
    assert ex["cores"] == ["cortex-a76", "cortex-a53"]
    assert t["resolver"] == "default"
    assert set(t["resolvers"]) == {"default", "builtin_without_default_delegates"}
    assert t["resolvers"]["default"]["metric"] == t["metric"]
    assert t["resolvers"]["default"]["max_lsb_vs_default"] == 0
    assert t["status"] == "passed"


def test_arm_cost_counts_both_cores(arm64_build):
    t = arm64_build.report["targets"]["arm64"]
    cost = t["arm_cost"]
    assert set(cost["cores"]) == {"cortex-a76", "cortex-a53"}
    for core, c in cost["cores"].items():
        assert all(v < 0.05 for v in c["spread"].values()), (core, c)
        assert 0 < c["artifact"] and 0 < c["baseline"]
        assert c["ratio"] == pytest.approx(c["artifact"] / c["baseline"])
    md = (arm64_build.model_dir / "report.md").read_text()
    assert "ARM cost per inference: cortex-a76:" in md


def test_validate_key_names_the_executor(arm64_build):
    stamp = (arm64_build.model_dir / "arm64" / ".stamp.json")
    stamps = [p for p in arm64_build.out.rglob("*.json") if '"executor"' in p.read_text(errors="ignore")
              and "validate" in p.read_text(errors="ignore")]
    assert stamps, "no recorded validate key names the executor"
    text = stamps[0].read_text()
    assert "qemu" in text and "cortex-a53" in text


def test_emulated_counts_repeat_exactly_and_errors_are_one_line(tiny_tflite, tmp_path):
    """The same counting job twice gives the same instruction counts; a missing model file is an ExecutorError
    with the entry point's log tail; a time limit kills it and says so."""
    ex = EmulatedExecutor()
    job = _job(resolvers=(), count={"models": ["artifact", "baseline"], "resolver": "default"})
    job["outputs"] = None
    runs = [ex.run(job, tiny_tflite, tmp_path / f"run{i}", 300, cpu="cortex-a53", count=True) for i in range(2)]
    assert runs[0].counts == runs[1].counts and len(runs[0].counts) == 2 * COUNT_INVOKES
    assert runs[0].result["platform"]["machine"] == "aarch64"
    assert "CPU part\t: 0xd03" in runs[0].result["platform"]["cpuinfo"]  # cortex-a53's own, as on the device
    assert set(runs[0].result["count_segments"].values()) == {"artifact", "baseline"}
    broken = {**tiny_tflite, "artifact.tflite": tmp_path / "corrupt.tflite"}
    (tmp_path / "corrupt.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(ExecutorError) as e:
        ex.run(_job(), broken, tmp_path / "broken", 300, cpu="cortex-a76")
    assert "exited with status 1" in str(e.value) and "should be 'TFL3'" in e.value.log_tail
    assert "emulated aarch64 executor (qemu -cpu cortex-a76)" in e.value.one_line()
    with pytest.raises(ExecutorError) as e:
        ex.run(_job(), tiny_tflite, tmp_path / "slow", 0.5, cpu="cortex-a76")
    assert e.value.timed_out and "timed out after 0.5 s" in str(e.value)


def test_emulated_outputs_match_host_litert_bit_for_bit(tiny_tflite, tmp_path):
    """XNNPACK's int8 kernels on emulated ARM and on x86 agree exactly on the tiny CNN; the local executor
    (the host's python in a child process) gives what LiteRT gives in this process."""
    job = _job(resolvers=("default", "builtin_without_default_delegates"))
    arm = EmulatedExecutor().run(job, tiny_tflite, tmp_path / "arm", 300, cpu="cortex-a76")
    local = LocalExecutor().run(job, tiny_tflite, tmp_path / "local", 120)
    assert local.result["platform"]["machine"] == platform.machine()
    with np.load(arm.out_dir / "outputs.npz") as a, np.load(local.out_dir / "outputs.npz") as h:
        np.testing.assert_array_equal(a["default/0"], h["default/0"])
        assert a["default/0"].shape == (8, 10)
        here = LiteRTSession(tiny_tflite["artifact.tflite"], output_shapes=[(10,)])
        with np.load(tiny_tflite["inputs.npz"]) as z:
            x = z["input"]
        want = np.concatenate([here.run({"input": x[i:i + 1]})[0] for i in range(len(x))])
        np.testing.assert_array_equal(h["default/0"], want)


def test_sliced_runs_give_the_whole_sets_outputs(tiny_tflite, models, tmp_path):
    """The judgement's runs side by side (validation/executor_runs.py): with more cores than resolvers each
    resolver's samples are split into slices run by separate emulated processes; put back together they are the
    outputs one run over the whole set gives, bit for bit, for every resolver."""
    from toolchain.validation import executor_runs

    with np.load(models["tiny_cnn"].evaluation) as z:
        x = z["input"][:20]
    whole = {**tiny_tflite, "inputs.npz": tmp_path / "all.npz"}
    np.savez(whole["inputs.npz"], input=x)
    resolvers = ["default", "builtin_without_default_delegates"]
    ex = EmulatedExecutor()
    runs = executor_runs.plan(_job(resolvers=resolvers), resolvers, ["cortex-a76"], False, len(x), cpus=4)
    assert [(r.resolvers, r.samples) for r in runs] == [(("default",), (0, 10)), (("default",), (10, 20)),
                                                        ((resolvers[1],), (0, 10)), ((resolvers[1],), (10, 20))]
    done = {}
    for r in runs:
        a, b = r.samples
        np.savez(tmp_path / f"{a}.npz", input=x[a:b])
        done[r.name] = ex.run(r.job, {**tiny_tflite, "inputs.npz": tmp_path / f"{a}.npz"}, tmp_path / r.name, 300,
                              cpu=r.cpu)
    joined = executor_runs.outputs(done, runs, resolvers, 1)
    one = ex.run(_job(resolvers=resolvers), whole, tmp_path / "whole", 300, cpu="cortex-a76")
    with np.load(one.out_dir / "outputs.npz") as z:
        for r in resolvers:
            assert joined[r][0].shape == (20, 10)
            np.testing.assert_array_equal(joined[r][0], z[f"{r}/0"])
    # a device that times latency gets one run; counting adds one run per core; tiny sets are not split
    timed = executor_runs.plan({**_job(), "latency": {"warmup": 1, "runs": 2}}, resolvers, ["a"], True, 99, cpus=8)
    assert [(r.name, r.resolvers, r.count) for r in timed] == [("accuracy", tuple(resolvers), False), ("a", (), True)]
    assert executor_runs.slices_of(12, 4) == [(0, 12)] and executor_runs.slices_of(350, 2) == [(0, 175), (175, 350)]


def test_emulator_dir_is_the_env_then_the_checkout(monkeypatch, tmp_path):
    """$TOOLCHAIN_ARM_EMULATOR first, else the checkout's .arm-emulator (make's); outside a checkout a per-user cache
    dir (test_python_api.py::test_wheel_carries_the_arm_emulator_setup runs that from the installed wheel)."""
    from toolchain.executors.emulated import emulator_dir, setup_hint

    monkeypatch.setenv("TOOLCHAIN_ARM_EMULATOR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert emulator_dir() == tmp_path / "mine"
    monkeypatch.delenv("TOOLCHAIN_ARM_EMULATOR")
    assert emulator_dir() == REPO / ".arm-emulator"
    assert setup_hint() == "run `toolchain arm-emulator` or make arm-emulator"


def test_arm64_without_the_emulator_is_skipped_never_passed(arm64_build, write_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLCHAIN_ARM_EMULATOR", str(tmp_path / "no emulator here"))
    spec = write_spec(tmp_path / "spec", targets={"x86_64": None, "arm64": {"max_metric_drop": 25.0}})
    b = run_build(spec, tmp_path / "out", cache_dir=arm64_build.out / ".cache")
    t = b.report["targets"]["arm64"]
    assert ("validate", "arm64") in b.ran and ("tflite", "arm64") not in b.ran  # the key names the executor
    assert t["executor"]["fallback"] is True and t["executor"]["wanted"] == "emulated"
    # x86 kernels are not ARM kernels: never a pass, whatever host LiteRT measured
    assert t["status"] == "skipped" and "arm_cost" not in t and "latency_ms" not in t
    assert t["reason"].startswith("not judged on ARM kernels") and "run `toolchain arm-emulator`" in t["reason"]
    assert t["cpu_check"]["where"].startswith("host LiteRT") and "metric" in t["cpu_check"]
    assert b.report["status"] == "passed"  # as CUDA without a GPU: not proven here, not a failed build
    assert "**arm64** NOT judged: no emulated ARM kernels here" in (b.model_dir / "report.md").read_text()


def test_target_file_names_known_cores_only(tmp_path):
    text = (REPO / "targets" / "arm64.toml").read_text().replace('"cortex-a53"]', '"cortex-a99"]')
    (tmp_path / "arm64.toml").write_text(text)
    with pytest.raises(SpecError, match=r"arm64.toml: emulated.cores: unknown core 'cortex-a99'"):
        load_target("arm64", tmp_path)
    assert load_target("arm64").tables["executor"]["cores"] == ["cortex-a76", "cortex-a53"]


def test_child_dies_with_its_parent(tmp_path):
    """The runner's child gets SIGKILL when the build process dies (even by SIGKILL): no orphaned emulator."""
    import signal
    import subprocess
    import sys
    import time

    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys; sys.path.insert(0, %r)\n"
        "from toolchain.executors import process\n"
        "process.run(['sh', '-c', 'echo $$ > %s; exec sleep 60'], 'test child', 120)") % (str(REPO), pidfile)])
    deadline = time.time() + 20
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{child}/stat") as f:
            if f.read().split(")")[-1].split()[0] == "Z":  # reaped by init soon; already dead
                return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the child outlived its parent")


def test_executor_needs_a_litert_target(tmp_path):
    text = (REPO / "targets" / "x86_64.toml").read_text()
    (tmp_path / "x86_64.toml").write_text('executor = "emulated"\n' + text)  # a top-level key: before any table
    with pytest.raises(SpecError, match=r"x86_64.toml: executor: 'emulated' needs runtime = \"litert\""):
        load_target("x86_64", tmp_path)


def test_arm_cost_counts_each_labelled_model_deterministically(tiny_tflite):
    """stages/arm_cost.count (what the arm64 plan's speed search and the bench use): any number of labelled
    models counted in one emulated process, the same figures on a second run, int8 cheaper than fp32."""
    from toolchain.stages import arm_cost

    with np.load(tiny_tflite["inputs.npz"]) as z:
        inputs = {"input": z["input"]}
    models = {"int8 artifact": tiny_tflite["artifact.tflite"], "fp32 baseline": tiny_tflite["baseline.tflite"]}
    arm_cost._COUNTED.clear()
    first = arm_cost.count(models, inputs, ["input"], ["logits"], [(10,)], core="cortex-a76")
    assert set(first) == set(models) and all(isinstance(v, int) and v > 0 for v in first.values())
    assert len(arm_cost._COUNTED) == 2
    arm_cost._COUNTED.clear()  # emulated again, not remembered
    assert arm_cost.count(models, inputs, ["input"], ["logits"], [(10,)], core="cortex-a76") == first
    assert first["int8 artifact"] < first["fp32 baseline"]
    # a model counted before in this process (the same bytes under another label) is not emulated again
    again = arm_cost.count({"same bytes": tiny_tflite["artifact.tflite"], **models}, inputs, ["input"], ["logits"],
                           [(10,)], core="cortex-a76")
    assert again == {"same bytes": first["int8 artifact"], **first} and len(arm_cost._COUNTED) == 2


def test_report_lines_of_an_sqnr_judged_target_have_no_drop():
    """A target judged by a floor (sqnr) has no metric_drop per resolver: report.md must still be written."""
    from toolchain.executors.report_lines import lines

    t = {"executor": {"name": "emulated", "qemu": "7.2", "cores": ["cortex-a76"], "runtime_versions": {}},
         "resolver": "default",
         "resolvers": {"default": {"metric": 21.5, "max_lsb_vs_default": 0.0},
                       "builtin_without_default_delegates": {"metric": 20.9, "max_lsb_vs_default": 3.0}}}
    text = "\n".join(lines("arm64", t))
    assert "metric 21.500, outputs differ" in text and "metric 20.900, outputs differ by at most 3 LSB" in text
