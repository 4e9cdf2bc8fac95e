"""Whatever ends a build other than success leaves nothing that looks like success (issue 14, classes 1 and 5).

Property: a seeded good build of the tiny CNN (x86_64), then new inputs (the weights change), then a rebuild with a
fault injected at each stage boundary (toolchain/faults.py: TOOLCHAIN_FAULT_AT, a test hook): an exception (a bug,
exit 1), SIGINT (Ctrl-C, exit 130, one line), SIGTERM (handled like Ctrl-C, exit 143, one line) or SIGKILL. After
each: no report says `passed` for the new inputs, `package` refuses, and the next clean build succeeds for the new
inputs and leaves no debris."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import REPO, copy_model, run_build

from toolchain import debris, faults

STAGES = ("trace", "reference", "quantize", "metadata", "validate")
POINTS = faults.stage_points(STAGES)
# The signal kinds run the command line in a child process (~4 s each): one point each by default, all with
# -m slow.
DEFAULT_SIGNAL_POINTS = {"sigint": "validate", "sigterm": "quantize.written", "sigkill": "quantize.written"}


def cli(*args):
    from toolchain.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def sha256(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, models, write_spec):
    """The tiny CNN with private weights, built once (passed); `renew()` gives it new weights (a seeded change of
    one bias, so every stage's key changes and the gate still holds)."""
    from safetensors.torch import load_file

    d = tmp_path_factory.mktemp("fault property")
    m = copy_model(models["tiny_cnn"], d / "model files")
    spec = write_spec(d / "spec", m)
    state = {"spec": spec, "weights": m.weights, "out": d / "out", "tmpdir": d / "tmp", "dist": d / "dist" / "b",
             "base": load_file(str(m.weights)), "variant": 0}
    state["tmpdir"].mkdir()
    first = run_build(spec, state["out"])
    assert first.code == 0 and first.report["status"] == "passed"
    return state


def renew(state):
    from safetensors.torch import save_file

    state["variant"] += 1
    w = {k: v.clone() for k, v in state["base"].items()}
    bias = [k for k in w if k.endswith("bias")][-1]
    w[bias] += 1e-3 * state["variant"]
    save_file(w, str(state["weights"]))


def ensure_good(state):
    """Each case starts from a passed build of the current inputs (whatever an earlier case left)."""
    rp = state["out"] / "tiny_cnn" / "report.json"
    if not rp.is_file() or json.loads(rp.read_text()).get("status") != "passed":
        assert run_build(state["spec"], state["out"]).code == 0


def run_child(state, point, kind):
    env = dict(os.environ, **{faults.ENV: f"{point}:{kind}", "TMPDIR": str(state["tmpdir"]),
                              "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    return subprocess.run([sys.executable, "-m", "toolchain.cli", "build", str(state["spec"]), "-o", str(state["out"]),
                           "-q"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def assert_nothing_looks_good(state):
    model_dir = state["out"] / "tiny_cnn"
    rp = model_dir / "report.json"
    if rp.exists():
        report = json.loads(rp.read_text())
        assert report["status"] != "passed", report
        assert all(t["status"] != "passed" for t in report["targets"].values()), report["targets"]
    for name in ("report.md", "report.html"):
        assert not (model_dir / name).exists() or "passed" not in (model_dir / name).read_text(), name
    p = cli("package", state["out"], "--version", "1.0.0", "-o", state["dist"])
    assert p.exit_code == 2, p.output
    assert "did not finish" in p.stderr and "Traceback" not in p.output, p.stderr
    assert not state["dist"].exists()


def debris_left(state, previous=True) -> list:
    """Temp files and scratch; previous=False: not the last finished report kept aside while a rebuild is due."""
    model_dir, cache = state["out"] / "tiny_cnn", state["out"] / ".cache"
    left = [str(p) for p in model_dir.rglob("*.tmp")]
    left += [str(p) for p in (model_dir / ".previous-report.json",) if p.exists() and previous]
    left += [str(p) for p in (cache / "tmp").glob("*")] if (cache / "tmp").exists() else []
    left += [str(p) for p in state["tmpdir"].iterdir()]
    return left


def assert_clean_build_recovers(state):
    again = run_build(state["spec"], state["out"])
    assert again.code == 0 and again.report["status"] == "passed", again.report
    assert "up to date" not in again.progress  # the fault left no stamp that calls the new inputs built
    assert again.report["provenance"]["weights_sha256"] == sha256(state["weights"])
    t = again.report["targets"]["x86_64"]
    assert t["status"] == "passed" and sha256(again.model_dir / t["artifact"]) == t["sha256"]
    assert debris_left(state) == []


def _fault_case(state, point, kind):
    ensure_good(state)
    renew(state)
    if kind == "exception":
        os.environ[faults.ENV] = f"{point}:exception"
        try:
            r = cli("build", state["spec"], "-o", state["out"], "-q")
        finally:
            del os.environ[faults.ENV]
        assert r.exit_code == 1 and isinstance(r.exception, faults.InjectedFault), (r.exit_code, r.exception)
    else:
        r = run_child(state, point, kind)
        if kind in ("sigint", "sigterm"):  # SIGTERM (kill, a CI runner's cancel) unwinds like Ctrl-C
            code, line, cause = {"sigint": (130, "error: interrupted (Ctrl-C)", "(Ctrl-C / SIGINT)"),
                                 "sigterm": (143, "error: terminated (SIGTERM)", "terminated (SIGTERM)")}[kind]
            assert r.returncode == code, (r.returncode, r.stderr[-3000:])
            lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
            assert "Traceback" not in r.stderr and "Aborted!" not in r.stderr, r.stderr
            assert lines and lines[-1].startswith(line), r.stderr
            assert [ln for ln in lines if ln.startswith("error:")] == [lines[-1]]
            report = json.loads((state["out"] / "tiny_cnn" / "report.json").read_text())
            assert report["status"] == "stale" and cause in report["reason"], report
        else:
            assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])
    if kind != "sigkill":  # a bug or Ctrl-C unwinds: the build removes its own temp files on the way out
        assert debris_left(state, previous=False) == []
    assert_nothing_looks_good(state)
    assert_clean_build_recovers(state)


@pytest.mark.parametrize("point", POINTS)
def test_exception_at_every_boundary_leaves_nothing_that_looks_good(point, seeded):
    _fault_case(seeded, point, "exception")


def _signal_cases():
    for kind in ("sigint", "sigterm", "sigkill"):
        for point in POINTS:
            marks = [] if DEFAULT_SIGNAL_POINTS[kind] == point else [pytest.mark.slow]
            yield pytest.param(kind, point, marks=marks, id=f"{kind}-{point}")


@pytest.mark.parametrize("kind,point", list(_signal_cases()))
def test_signal_at_every_boundary_leaves_nothing_that_looks_good(kind, point, seeded):
    _fault_case(seeded, point, kind)


def test_points_cover_every_stage_of_the_build(seeded):
    """The property's points are the build's: every stage the x86_64 build runs has its boundaries in POINTS."""
    b = run_build(seeded["spec"], seeded["out"] / ".." / "points")
    stages = {s for s, _ in b.cached | b.ran}
    assert stages == set(STAGES), stages


# ---- debris of killed builds --------------------------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_next_build_reclaims_debris_whose_owner_is_gone(tmp_path, write_spec, x86_build, monkeypatch):
    """A SIGKILLed build leaves its converter scratch folder in the system temp dir and an entry under the cache's
    tmp/: names carry host and PID, and the next build removes those whose owner is gone (never a live one's)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "system tmp"))
    (tmp_path / "system tmp").mkdir()
    cache = tmp_path / "cache"
    import shutil

    shutil.copytree(x86_build.out / ".cache", cache)
    dead, live = _dead_pid(), os.getppid()
    host = debris.owned_name("x").split(".")[1]

    def make(d: Path, prefix, pid):
        p = d / f"{prefix}.{host}.{pid}.0123456789ab"
        (p / "sub").mkdir(parents=True)
        (p / "sub" / "model.onnx").write_bytes(b"x" * 100)
        return p

    gone = [make(tmp_path / "system tmp", "toolchain-onnx2tf", dead), make(cache / "tmp", "tflite-0123456789abcdef", dead)]
    kept = [make(tmp_path / "system tmp", "toolchain-onnx2tf", live), make(cache / "tmp", "quantize-0123", live),
            tmp_path / "system tmp" / "someone-elses-dir"]
    kept[-1].mkdir()
    assert all(debris.orphaned(p.name) for p in gone) and not any(debris.orphaned(p.name) for p in kept)
    spec = x86_build.report["provenance"]["spec"]
    b = run_build(spec, tmp_path / "out", cache_dir=cache)
    assert b.code == 0
    assert [p for p in gone if p.exists()] == []
    assert all(p.exists() for p in kept)


def test_validate_refuses_a_stale_report(x86_build, tmp_path):
    """`toolchain validate` re-judges built artifacts: never those of a build that did not finish."""
    import shutil

    from toolchain.api import _mark_stale

    out = tmp_path / "out"
    shutil.copytree(x86_build.out / "tiny_cnn", out / "tiny_cnn")
    _mark_stale(out / "tiny_cnn", "the last build failed with an internal error (InjectedFault: x)")
    r = cli("validate", x86_build.report["provenance"]["spec"], "-o", out)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "did not finish" in r.stderr and "internal error" in r.stderr
    assert json.loads((out / "tiny_cnn" / "report.json").read_text())["status"] == "stale"


def test_a_spec_that_no_longer_loads_leaves_no_passed_report(x86_build, tmp_path):
    """Broken TOML: the model's name cannot be read, yet its last report must not go on saying `passed`."""
    import shutil

    spec = Path(x86_build.report["provenance"]["spec"])
    work = tmp_path / "spec"
    shutil.copytree(spec.parent, work)
    out = tmp_path / "out"
    assert run_build(work / spec.name, out, cache_dir=x86_build.out / ".cache").code == 0
    other = out / "someone_else"  # a build of another spec in the same directory is left alone
    shutil.copytree(out / "tiny_cnn", other)
    stamp_file = other / ".stamp.json"
    record = json.loads(stamp_file.read_text())
    record["inputs"] = {str(tmp_path / "elsewhere.toml"): v for v in record["inputs"].values()}
    stamp_file.write_text(json.dumps(record))
    (work / spec.name).write_text((work / spec.name).read_text() + "\n[model\n")
    r = cli("build", work / spec.name, "-o", out)
    assert r.exit_code == 2 and "invalid TOML" in r.stderr and "Traceback" not in r.output, r.output
    report = json.loads((out / "tiny_cnn" / "report.json").read_text())
    assert report["status"] == "stale" and "did not start" in report["reason"] and "invalid TOML" in report["reason"]
    assert json.loads((other / "report.json").read_text())["status"] == "passed"
