"""Builds on a Dask cluster (toolchain/cluster): a scheduler and two workers with different resources on 127.0.0.1
in this process (Dask's SpecCluster), the real stages, a shared file:// cache. Routing, one task for a stage two
models share, identical artifacts to a local build, and the one-line failures (a resource no worker offers, a
scheduler that does not answer). A worker process killed mid-stage: test_killed_worker_* (slow, real processes)."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import VENV_BIN, one_error_line, run_build, toolchain_exe

from toolchain.executors.process import stop_gracefully

FAST = {"max_metric_drop": 25.0, "latency": {"warmup": 2, "runs": 20}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and two in-process workers on 127.0.0.1: `x86` offers x86_64, `arm` offers arm64 (and x86_64 is
    offered by nobody else). Closed (workers first) when the module's tests are done."""
    from distributed import Scheduler, SpecCluster, Worker

    def worker(name, resources):
        return {"cls": Worker, "options": {"name": name, "nthreads": 1, "resources": resources,
                                           "host": "127.0.0.1", "dashboard": False}}

    c = SpecCluster(scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1", "port": 0,
                                                              "dashboard": False}},
                    workers={"x86": worker("x86", {"x86_64": 1}), "arm": worker("arm", {"arm64": 1})},
                    silence_logs=False)
    try:
        yield c
    finally:
        c.close()


def _cli(args):
    from toolchain.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=True)


def _build_both(cluster, a, b, shared, out):
    """Specs a (tiny_cnn) and b (tiny_cnn_again) built at once on the cluster; (result, report a, report b)."""
    r = _cli(["build", str(a), str(b), "-o", str(out), "--scheduler", cluster.scheduler_address,
              "--cache", shared.as_uri(), "--scheduler-timeout", "30"])
    assert r.exit_code == 0, (r.output[-4000:], r.exception)
    return (r, json.loads((out / "tiny_cnn" / "report.json").read_text()),
            json.loads((out / "tiny_cnn_again" / "report.json").read_text()))


def test_routed_by_resource_and_shared_stage_runs_once(cluster, tmp_path, write_spec, arm64_build):
    """The default run's cheap form of the test below: the client's local cache starts as a copy of the session's
    arm64 build (trace, reference and the onnx2tf conversion are hits here, pushed to the shared cache for the
    workers); quantize[x86_64] and both validates run on the cluster: validate[arm64] on the arm64 worker (its
    LiteRT figures measured there), validate[x86_64] on the x86_64 one, and the two specs' shared quantize runs
    once between them (each model's metadata stamp, its own name inside, is its own artifact: two validates)."""
    import shutil

    a = write_spec(tmp_path / "a", targets={"x86_64": FAST, "arm64": FAST})
    b = write_spec(tmp_path / "b", model={"name": "tiny_cnn_again"})
    shared, local = tmp_path / "shared cache", tmp_path / "out" / ".cache"
    shared.mkdir()
    shutil.copytree(arm64_build.out / ".cache", local, ignore=shutil.ignore_patterns("tmp"))
    r, ra, rb = _build_both(cluster, a, b, shared, tmp_path / "out")
    na, nb = ra["cluster"]["nodes"], rb["cluster"]["nodes"]
    context = (na, nb, r.output[-3000:])
    assert "tflite[arm64]" not in na and "trace" not in na, context  # hits in the client's cache: no task
    assert na["validate[arm64]"]["worker"] == "arm" and na["validate[x86_64]"]["worker"] == "x86", context
    assert nb["validate[x86_64]"]["worker"] == "x86", context
    assert ra["targets"]["arm64"]["status"] == "passed" and ra["targets"]["x86_64"]["status"] == "passed", context
    assert ra["targets"]["arm64"]["sha256"] == arm64_build.report["targets"]["arm64"]["sha256"]
    runs = {n["quantize[x86_64]"]["run"] for n in (na, nb) if "quantize[x86_64]" in n and n["quantize[x86_64]"]["ran"]}
    assert len(runs) == 1, context
    assert na["metadata[x86_64]"]["key"] != nb["metadata[x86_64]"]["key"], context  # its own name in each artifact
    assert ra["targets"]["x86_64"]["sha256"] != rb["targets"]["x86_64"]["sha256"], context
    # the int8 ONNX quantized on a worker is the bytes a local build from an empty cache makes
    local = run_build(write_spec(tmp_path / "local"), tmp_path / "local out", cache_dir=tmp_path / "local cache")
    assert local.report["targets"]["x86_64"]["sha256"] == ra["targets"]["x86_64"]["sha256"], (local.progress,
                                                                                             context)


@pytest.mark.slow
def test_two_models_routed_and_shared_stage_runs_once(cluster, tmp_path, write_spec, models):
    """tiny_cnn for x86_64 and arm64, and the same model under another name for x86_64: validate[arm64] runs on
    the arm64 worker, validate[x86_64] on the x86_64 one; trace, reference and quantize[x86_64] of the two specs
    have the same keys and run once between them; the artifacts are the bytes a local build makes."""
    a = write_spec(tmp_path / "a", targets={"x86_64": FAST, "arm64": FAST})
    b = write_spec(tmp_path / "b", model={"name": "tiny_cnn_again"})
    shared = tmp_path / "shared cache"
    shared.mkdir()
    r, ra, rb = _build_both(cluster, a, b, shared, tmp_path / "out")
    na, nb = ra["cluster"]["nodes"], rb["cluster"]["nodes"]
    # routing: each validate ran on the worker that offers its target's resource, and measured there
    assert na["validate[arm64]"]["worker"] == "arm" and na["validate[x86_64]"]["worker"] == "x86", na
    assert nb["validate[x86_64]"]["worker"] == "x86"
    assert ra["targets"]["arm64"]["status"] == "passed" and ra["targets"]["x86_64"]["status"] == "passed"
    # one execution of each shared stage between the two builds: one run id that executed it (a second
    # submission shares the task, or finds the entry in the shared cache and runs nothing)
    # (none at all where a worker's local cache layer already holds it from an earlier test of this module's cluster)
    for label in ("trace", "reference", "quantize[x86_64]"):
        runs = {n[label]["run"] for n in (na, nb) if label in n and n[label]["ran"]}
        assert len(runs) <= 1, (label, na.get(label), nb.get(label))
        assert len({n[label]["key"] for n in (na, nb) if label in n}) <= 1, (label, na.get(label), nb.get(label))
    # identical to a local build from an empty cache: same fp32 ONNX and x86_64 artifact bytes
    local = run_build(write_spec(tmp_path / "local", model={"name": "tiny_cnn"}), tmp_path / "local out",
                      cache_dir=tmp_path / "local cache")
    assert local.report["fp32_onnx"]["sha256"] == ra["fp32_onnx"]["sha256"]
    assert local.report["targets"]["x86_64"]["sha256"] == ra["targets"]["x86_64"]["sha256"]


def test_resource_no_worker_offers_is_one_line_exit_4(cluster, tmp_path, write_spec):
    spec = write_spec(tmp_path / "s", targets={"x86_64": None, "cuda": {"max_metric_drop": 25.0}})
    shared = tmp_path / "shared"
    shared.mkdir()
    r = _cli(["build", str(spec), "-o", str(tmp_path / "out"), "--scheduler", cluster.scheduler_address,
              "--cache", shared.as_uri(), "--scheduler-timeout", "1"])
    line = one_error_line(r, 4, "'cuda'", "target cuda", "tiny_cnn")
    assert "no worker" in line
    report = json.loads((tmp_path / "out" / "tiny_cnn" / "report.json").read_text())
    assert report["status"] == "stage-failed"  # nothing that looks like success


def test_unreachable_scheduler_is_one_line_exit_4(tmp_path, write_spec, monkeypatch):
    spec = write_spec(tmp_path / "s")
    shared = tmp_path / "shared"
    shared.mkdir()
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    r = _cli(["build", str(spec), "-o", str(tmp_path / "out"), "--scheduler", address, "--cache", shared.as_uri(),
              "--scheduler-timeout", "1"])
    one_error_line(r, 4, address, "unreachable")
    # the same from the environment (what a CI job sets once)
    monkeypatch.setenv("TOOLCHAIN_SCHEDULER", address)
    monkeypatch.setenv("TOOLCHAIN_SCHEDULER_TIMEOUT", "1")
    monkeypatch.setenv("TOOLCHAIN_REMOTE_CACHE", shared.as_uri())
    one_error_line(_cli(["build", str(spec), "-o", str(tmp_path / "out")]), 4, address, "unreachable")


def test_scheduler_needs_a_shared_cache(tmp_path, write_spec, monkeypatch):
    monkeypatch.delenv("TOOLCHAIN_REMOTE_CACHE", raising=False)
    spec = write_spec(tmp_path / "s")
    r = _cli(["build", str(spec), "-o", str(tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:8786"])
    one_error_line(r, 2, "--scheduler", "--cache")
    r = _cli(["build", str(spec), "-o", str(tmp_path / "out"), "--scheduler", "127.0.0.1:8786", "--cache",
              (tmp_path).as_uri()])
    one_error_line(r, 2, "tcp://HOST:PORT")


def _start(cmd, log: Path, env=None):
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            cwd=log.parent)




def test_killed_worker_its_stage_is_retried_on_another(tmp_path, write_spec):
    """Real processes: a scheduler and `toolchain worker --no-nanny` that SIGKILLs itself once quantize has written
    its outputs (the fault hook, set in that worker only). The build goes on: the scheduler hands the stage to the
    worker started next, the build passes, and the report says who ran what."""
    from distributed import Client

    exe = toolchain_exe()
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    spec = write_spec(tmp_path / "s")
    shared = tmp_path / "shared"
    shared.mkdir()
    procs = []
    try:
        procs.append(_start([str(VENV_BIN / "python"), "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                             "--port", str(port), "--dashboard-address", "127.0.0.1:0"], tmp_path / "scheduler.log"))

        def worker(name, env=None):
            (tmp_path / name).mkdir()
            return _start([exe, "worker", "--scheduler", address, "--resources", "x86_64=1", "--name", name,
                           "--no-nanny", "--host", "127.0.0.1", "--local-directory", str(tmp_path / name)],
                          tmp_path / f"{name}.log", env)

        killer = worker("killer", {"TOOLCHAIN_FAULT_AT": "quantize.written:sigkill"})
        procs.append(killer)
        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=120)
        build = _start([exe, "build", str(spec), "-o", str(tmp_path / "out"), "--scheduler", address, "--cache",
                        shared.as_uri(), "--scheduler-timeout", "600"], tmp_path / "build.log")
        procs.append(build)
        assert killer.wait(timeout=600) == -signal.SIGKILL, (tmp_path / "killer.log").read_text()[-3000:]
        procs.append(worker("healthy"))
        assert build.wait(timeout=600) == 0, (tmp_path / "build.log").read_text()[-3000:]
    finally:
        for p in reversed(procs):
            stop_gracefully(p)
    report = json.loads((tmp_path / "out" / "tiny_cnn" / "report.json").read_text())
    nodes = report["cluster"]["nodes"]
    assert nodes["trace"]["worker"] == "killer"  # ran before the kill
    assert nodes["quantize[x86_64]"]["worker"] == "healthy" and nodes["quantize[x86_64]"]["ran"]
    assert nodes["validate[x86_64]"]["worker"] == "healthy"
    assert report["status"] == "passed"


def test_noop_build_with_a_scheduler_connects_to_nothing(tmp_path, write_spec):
    """Nothing to build: no connection (the address answers nothing), no Dask import."""
    spec = write_spec(tmp_path / "s")
    assert run_build(spec, tmp_path / "out").code == 0
    code = ("import sys; from toolchain.cli import main\n"
            "try:\n    main(sys.argv[1:], standalone_mode=False)\nexcept SystemExit as e:\n    assert e.code == 0, e\n"
            "print([m for m in ('dask', 'distributed') if m in sys.modules])")
    shared = tmp_path / "shared"
    shared.mkdir()
    proc = subprocess.run([sys.executable, "-c", code, "build", str(spec), "-o", str(tmp_path / "out"),
                           "--scheduler", f"tcp://127.0.0.1:{_free_port()}", "--cache", shared.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert "up to date" in proc.stderr


def test_resource_of_each_target(tmp_path):
    """Where each target's validate is routed: from its runtime, or the target file's own device label."""
    from toolchain.cluster import resource_of
    from toolchain.errors import SpecError
    from toolchain.targets import load_target

    assert {n: resource_of(load_target(n)) for n in ("x86_64", "arm64", "cuda", "openvino_x86")} == {
        "x86_64": "x86_64", "arm64": "arm64", "cuda": "cuda", "openvino_x86": "x86_64"}
    d = tmp_path / "targets"
    d.mkdir()
    base = (Path(__file__).resolve().parents[1] / "targets" / "arm64.toml").read_text()
    (d / "pixel.toml").write_text('resource = "pixel8"\n' + base.replace('name = "arm64"', 'name = "pixel"'))
    assert resource_of(load_target("pixel", d)) == "pixel8"
    (d / "bad.toml").write_text('resource = "pixel 8"\n' + base.replace('name = "arm64"', 'name = "bad"'))
    with pytest.raises(SpecError) as e:
        load_target("bad", d)
    assert str(e.value).startswith(f"{d / 'bad.toml'}: resource: ")


def test_worker_command_defaults_and_resources(monkeypatch):
    """toolchain worker = dask worker with one thread, a share of RAM, the dashboard on loopback."""
    from toolchain.cluster import ClusterUsageError
    from toolchain.cluster.worker import argv, parse_resources

    monkeypatch.delenv("TOOLCHAIN_SCHEDULER", raising=False)
    assert parse_resources(["arm64=1", "cuda", "x86_64=2,lab=1"]) == {"arm64": 1, "cuda": 1, "x86_64": 2, "lab": 1}
    for bad in ("arm64=0", "arm64=x", "bad!=1"):
        with pytest.raises(ClusterUsageError, match="--resources"):
            parse_resources([bad])
    cmd = argv("tcp://127.0.0.1:8786", {"arm64": 1}, extra=("--no-nanny",))
    assert cmd[1:4] == ["-m", "distributed.cli.dask_worker", "tcp://127.0.0.1:8786"]
    pairs = dict(zip(cmd[4::2], cmd[5::2]))
    assert pairs["--nthreads"] == "1" and pairs["--memory-limit"] == "0.75"
    assert pairs["--dashboard-address"] == "127.0.0.1:0" and pairs["--resources"] == "arm64=1"
    assert cmd[-1] == "--no-nanny"
    with pytest.raises(ClusterUsageError, match="no scheduler"):
        argv(None, {})


def test_key_difference_is_named():
    from toolchain.cluster.task import _first_difference

    a = {"stage": "tflite", "libraries": {"onnx2tf": "1.29.24", "numpy": "1.26.4"}, "deps": {"fp32": "ab" * 32}}
    b = {"stage": "tflite", "libraries": {"onnx2tf": "1.28.0", "numpy": "1.26.4"}, "deps": {"fp32": "ab" * 32}}
    assert _first_difference(a, b) == "libraries.onnx2tf: client 1.29.24, worker 1.28.0"


def test_entry_published_while_another_reader_looked_is_kept(tmp_path, monkeypatch):
    """Two models' builds pull the same shared stage into one local cache at once: a reader that found no entry.json
    a moment before the other's rename must read the whole entry, never discard it as debris."""
    from toolchain.cache import ENTRY, StageCache

    cache, key = StageCache(tmp_path), "ab" * 32
    with cache.writer("quantize", key) as tmp:
        (tmp / "model.int8.onnx").write_bytes(b"bytes")
        cache.publish(tmp, "quantize", key, {"x": 1}, {})
    real, raised = Path.read_text, []

    def not_yet_renamed(self, *args, **kwargs):
        if self.name == ENTRY and not raised:
            raised.append(self)
            raise FileNotFoundError(str(self))  # what the reader saw just before the other build's rename
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", not_yet_renamed)
    entry = cache.get("quantize", key)
    assert raised and entry is not None and entry.meta == {"x": 1}
    assert (tmp_path / "quantize" / key / "model.int8.onnx").read_bytes() == b"bytes"
