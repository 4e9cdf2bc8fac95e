"""Make's manners: a no-op build that imports nothing heavy, --explain naming why each stage would rerun,
parallel builds into one output directory and onto one cache, a build killed mid-conversion, and reproducible
artifacts."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import copy_model, parse_progress, run_build, toolchain_exe

HEAVY = ("torch", "tensorflow", "onnx2tf", "onnx", "onnxruntime", "dask", "distributed")
X86 = {("trace", None), ("reference", None), ("quantize", "x86_64"), ("metadata", "x86_64"),
       ("validate", "x86_64")}


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(*roots) -> dict:
    """Every file under roots with its size and mtime: what a command that builds nothing must not change."""
    out = {}
    for root in roots:
        for p in Path(root).rglob("*"):
            if p.is_file():
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def assert_report_consistent(model_dir: Path) -> dict:
    report = json.loads((model_dir / "report.json").read_text())
    for name, t in report["targets"].items():
        if "artifact" in t:
            f = model_dir / t["artifact"]
            assert f.is_file() and sha256(f) == t["sha256"] and f.stat().st_size == t["size_bytes"], name
    return report


@pytest.fixture(scope="module")
def built(tmp_path_factory, models, write_spec):
    """The tiny CNN with private weights and data, built once for x86_64 into its own out dir and cache."""
    d = tmp_path_factory.mktemp("make build")
    m = copy_model(models["tiny_cnn"], d / "model files")
    spec = write_spec(d / "spec", m)
    b = run_build(spec, d / "out")
    assert b.code == 0 and b.ran == X86
    return {"dir": d, "model": m, "spec": spec, "out": d / "out", "cache": d / "out" / ".cache", "first": b}


# ---- (a) the no-op build ------------------------------------------------------------------------------------
_NOOP = r"""
import json, sys, time
t0 = time.perf_counter()
from toolchain.cli import main
code = None
try:
    main(["build", sys.argv[1], "-o", sys.argv[2]], standalone_mode=False)
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "seconds": time.perf_counter() - t0,
                  "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def test_noop_build_runs_nothing_and_imports_nothing_heavy(built):
    before = snapshot(built["out"])
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _NOOP, str(built["spec"]), str(built["out"])], capture_output=True,
                          text=True, timeout=120, cwd=built["dir"])
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    assert result["heavy"] == [], f"a no-op build imported {result['heavy']}"
    progress = parse_progress(proc.stderr)
    assert progress["running"] == set() and progress["cached"] == set()  # no stage, not even a cache lookup
    assert "up to date" in proc.stderr
    assert "tiny_cnn x86_64: passed" in proc.stdout
    assert snapshot(built["out"]) == before  # nothing rewritten, not even the report
    # Generous bounds for a loaded 2-core test machine; the 0.5 s goal is `make bench`'s.
    assert result["seconds"] < 2.0, result
    assert wall < 5.0, wall


# ---- (b) --explain ------------------------------------------------------------------------------------------
def explain(built, spec=None, cache_dir=None) -> dict:
    """toolchain.api.explain as {label: verdict}, checking that it wrote nothing to the build or the cache."""
    from toolchain import api

    roots = [built["out"]] + ([cache_dir] if cache_dir else [])
    before = snapshot(*roots)
    lines = api.explain(spec or built["spec"], built["out"], cache_dir)
    assert snapshot(*roots) == before, "explain wrote to the build directory or the cache"
    labels = [label for label, _ in lines]
    assert len(labels) == len(set(labels)), lines
    return dict(lines)


def test_explain_nothing_changed(built):
    assert explain(built) == {"build": "up to date: nothing changed since the last build"}


def test_explain_cli_nothing_changed(built):
    from toolchain.cli import main

    before = snapshot(built["out"])
    r = CliRunner().invoke(main, ["build", str(built["spec"]), "-o", str(built["out"]), "--explain"])
    assert r.exit_code == 0, r.output
    assert r.stdout.split() == ["build", "up", "to", "date:", "nothing", "changed", "since", "the", "last", "build"]
    assert snapshot(built["out"]) == before


def test_explain_quantize_option_changed(built, write_spec, tmp_path):
    spec = write_spec(tmp_path / "spec", built["model"],
                      targets={"x86_64": {"quantize": {"calibrate_method": "percentile"}}})
    lines = explain(built, spec)
    assert lines["trace"] == "up to date" and lines["reference"] == "up to date"
    assert lines["quantize[x86_64]"] == "would run: params changed: calibrate_method"
    assert lines["validate[x86_64]"] == "would run: its input comes from quantize[x86_64], which reruns"


def test_explain_cli_quantize_option_changed(built, write_spec, tmp_path):
    from toolchain.cli import main

    spec = write_spec(tmp_path / "spec", built["model"], targets={"x86_64": {"quantize": {"per_channel": False}}})
    before = snapshot(built["out"])
    r = CliRunner().invoke(main, ["build", str(spec), "-o", str(built["out"]), "--explain"])
    assert r.exit_code == 0, r.output
    rows = {ln.split(None, 1)[0]: ln.split(None, 1)[1] for ln in r.stdout.splitlines() if ln.strip()}
    assert rows == {"trace": "up to date", "reference": "up to date",
                    "quantize[x86_64]": "would run: params changed: per_channel",
                    "metadata[x86_64]": "would run: its input comes from quantize[x86_64], which reruns",
                    "validate[x86_64]": "would run: its input comes from quantize[x86_64], which reruns"}
    assert snapshot(built["out"]) == before


def test_explain_weights_changed(built, write_spec, tmp_path):
    lines = explain(built, **_damage_weights(built, tmp_path, write_spec))  # a copy: the build's files stay
    assert lines["trace"].startswith("would run: ") and "input changed: model" in lines["trace"]
    assert "library" not in lines["trace"]
    assert lines["reference"] == "would run: its input comes from trace, which reruns"
    assert lines["quantize[x86_64]"] == "would run: its input comes from trace, which reruns"
    assert lines["validate[x86_64]"] == "would run: its input comes from trace, which reruns"


@pytest.mark.parametrize("library", ["torch", "onnxruntime"])
def test_explain_library_version_changed(library, built, monkeypatch):
    """A library upgrade, simulated by what toolchain.versions reports: the stages that use that library rerun,
    saying which version changed to which; the others are up to date."""
    from toolchain import versions

    real = versions.version_of
    monkeypatch.setattr(versions, "version_of", lambda dist: "99.0.0" if dist == library else real(dist))
    was = real(library)
    lines = explain(built)
    changed = f"would run: library version changed: {library} {was} -> 99.0.0"
    if library == "torch":  # trace and reference use torch; quantize and validate do not
        assert lines["trace"].startswith("would run: ")
        assert lines["trace"].endswith(changed.removeprefix("would run: "))
        for label in ("reference", "quantize[x86_64]", "validate[x86_64]"):
            assert lines[label] == "would run: its input comes from trace, which reruns"
    else:  # trace does not use onnxruntime; reference, quantize and validate do
        assert lines["trace"] == "up to date"
        assert lines["reference"] == changed
        assert lines["quantize[x86_64]"] == changed
        assert lines["validate[x86_64]"] == "would run: its input comes from quantize[x86_64], which reruns"


def test_explain_cache_entry_deleted(built, tmp_path):
    """The quantize entry gone from the cache (a copy of it): quantize would run because its output is missing,
    although nothing it depends on changed."""
    cache = tmp_path / "cache copy"
    shutil.copytree(built["cache"], cache)
    (entry,) = [p for p in (cache / "quantize").iterdir() if p.is_dir()]
    shutil.rmtree(entry)
    lines = explain(built, cache_dir=cache)
    assert lines["trace"] == "up to date" and lines["reference"] == "up to date"
    assert lines["quantize[x86_64]"] == "would run: its output is missing from the cache (deleted or corrupt)"
    assert lines["validate[x86_64]"] == "would run: its input comes from quantize[x86_64], which reruns"


def _damage_weights(built, tmp_path, write_spec):
    from safetensors.torch import load_file, save_file

    m = copy_model(built["model"], tmp_path / "files")
    state = load_file(str(m.weights))
    state["classifier.bias"] = state["classifier.bias"] + 1e-3
    save_file(state, str(m.weights))
    return {"spec": write_spec(tmp_path / "spec", m)}


def _upgrade_torch(built, tmp_path, write_spec, monkeypatch):
    from toolchain import versions

    real = versions.version_of
    monkeypatch.setattr(versions, "version_of", lambda dist: "99.0.0" if dist == "torch" else real(dist))
    return {}


def _drop_trace_entry(built, tmp_path, write_spec):
    cache = tmp_path / "cache copy"
    shutil.copytree(built["cache"], cache)
    (entry,) = [p for p in (cache / "trace").iterdir() if p.is_dir()]
    shutil.rmtree(entry)
    return {"cache_dir": cache}


@pytest.mark.parametrize("change,expected", [
    ("weights", "would run: input changed: model"),
    ("torch version", "would run: library version changed: torch {torch} -> 99.0.0"),
    ("trace entry deleted", "would run: its output is missing from the cache (deleted or corrupt)"),
])
def test_explain_trace_names_only_what_changed(change, expected, built, tmp_path, write_spec, monkeypatch):
    from toolchain.versions import version_of

    expected = expected.format(torch=version_of("torch"))
    if change == "weights":
        kw = _damage_weights(built, tmp_path, write_spec)
    elif change == "torch version":
        kw = _upgrade_torch(built, tmp_path, write_spec, monkeypatch)
    else:
        kw = _drop_trace_entry(built, tmp_path, write_spec)
    assert explain(built, **kw)["trace"] == expected


def test_explain_predicts_what_build_runs(tmp_path, models, write_spec):
    m = copy_model(models["tiny_cnn"], tmp_path / "files")
    first = run_build(write_spec(tmp_path / "spec", m), tmp_path / "out")
    assert first.code == 0
    from toolchain import api

    spec = write_spec(tmp_path / "spec", m, targets={"x86_64": {"quantize": {"calibrate_method": "percentile"}}})
    lines = api.explain(spec, tmp_path / "out")
    would = {label for label, verdict in lines if verdict.startswith("would run")}
    b = run_build(spec, tmp_path / "out")
    assert b.code == 0
    assert {f"{s}[{t}]" if t else s for s, t in b.ran} == would == {"quantize[x86_64]", "metadata[x86_64]",
                                                                    "validate[x86_64]"}
    assert api.explain(spec, tmp_path / "out") == [("build", "up to date: nothing changed since the last build")]


# ---- (c) parallel builds --------------------------------------------------------------------------------------
def _popen(*args):
    return subprocess.Popen([toolchain_exe(), "build", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait(procs, timeout=300):
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append((p.returncode, stdout, stderr))
    return out


@pytest.fixture(scope="module")
def parallel(tmp_path_factory, write_spec):
    """Three command-line builds started together on one --cache-dir: the tiny CNN for x86_64 and for cuda into
    one output directory, and the same network under another name (so the keys of trace, reference and the
    conversions are the same and the builds race to publish those entries; only the metadata stamp, the name the
    artifact carries, differs) into another."""
    d = tmp_path_factory.mktemp("parallel builds")
    cache = d / "shared cache"
    spec = write_spec(d / "spec", targets={"cuda": {"max_metric_drop": 1.0}})
    twin = write_spec(d / "twin", model={"name": "tiny_twin"})
    out, twin_out = d / "build out", d / "twin out"
    results = _wait([_popen(spec, "-o", out, "-t", "x86_64", "--cache-dir", cache),
                     _popen(spec, "-o", out, "-t", "cuda", "--cache-dir", cache),
                     _popen(twin, "-o", twin_out, "--cache-dir", cache)])
    for code, stdout, stderr in results:
        assert code == 0, stderr[-3000:]
        assert "Traceback" not in stderr
    return {"spec": spec, "twin": twin, "out": out, "twin_out": twin_out, "cache": cache, "results": results}


def test_parallel_builds_of_two_targets_into_one_out_dir(parallel):
    results, out = parallel["results"], parallel["out"]
    # Each prints the report's targets: its own, and the other's if that one finished first.
    assert "tiny_cnn x86_64: passed" in results[0][1].splitlines()
    assert any(ln.startswith("tiny_cnn cuda: ") for ln in results[1][1].splitlines())
    report = assert_report_consistent(out / "tiny_cnn")
    assert set(report["targets"]) == {"x86_64", "cuda"}
    assert report["targets"]["x86_64"]["status"] == "passed"
    assert report["targets"]["cuda"]["status"] in ("passed", "skipped")
    assert report["status"] == "passed"
    # Both targets are now built: a build of both is a publish from the cache, and then a no-op.
    again = run_build(parallel["spec"], out, cache_dir=parallel["cache"])
    assert again.code == 0 and again.ran == set()
    assert run_build(parallel["spec"], out, cache_dir=parallel["cache"]).cached == set()


def test_parallel_builds_of_two_models_share_one_cache(parallel, tmp_path):
    assert parallel["results"][2][1].strip() == "tiny_twin x86_64: passed"
    cnn = assert_report_consistent(parallel["out"] / "tiny_cnn")
    twin = assert_report_consistent(parallel["twin_out"] / "tiny_twin")
    assert twin["status"] == "passed"
    # One conversion for both names (quantize keys on the graph and its options only); each artifact is a copy of
    # it stamped with its own model's name (stages/metadata.py), so each ships and is judged as its own bytes.
    import onnx

    from toolchain.app_metadata import read

    shipped = [d / r["targets"]["x86_64"]["artifact"]
               for d, r in ((parallel["out"] / "tiny_cnn", cnn), (parallel["twin_out"] / "tiny_twin", twin))]
    graphs = [onnx.load(str(f)).graph.SerializeToString() for f in shipped]
    assert graphs[0] == graphs[1] and twin["targets"]["x86_64"]["sha256"] != cnn["targets"]["x86_64"]["sha256"]
    assert [read(f)["model_name"] for f in shipped] == ["tiny_cnn", "tiny_twin"]
    cache = parallel["cache"]
    for stage, n in (("trace", 1), ("reference", 1), ("quantize", 1), ("fp16", 1), ("metadata", 3),
                     ("validate", 3)):
        entries = list((cache / stage).iterdir())  # one whole entry per key, whoever won the race
        assert len(entries) == n and all((p / "entry.json").is_file() for p in entries), (stage, entries)
    assert not (cache / "tmp").exists() or list((cache / "tmp").iterdir()) == []
    again = run_build(parallel["twin"], tmp_path / "again", cache_dir=cache)
    assert again.code == 0 and again.ran == set() and again.cached == X86


# ---- (d) a build killed mid-conversion -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def killed_build(tmp_path_factory, write_spec):
    """An arm64 build SIGKILLed about 2 s into its tflite stage (the build process only, as the OOM killer or
    `kill -9 PID` would), with what it left behind."""
    import psutil

    d = tmp_path_factory.mktemp("killed build")
    spec = write_spec(d / "spec", targets={"x86_64": None, "arm64": {"max_metric_drop": 25.0}})
    out = d / "out"
    scratch = d / "tmp"  # the converter's scratch directory goes here, not into the system's /tmp
    scratch.mkdir()
    proc = subprocess.Popen([toolchain_exe(), "build", str(spec), "-o", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, TMPDIR=str(scratch)))
    seen = threading.Event()
    lines = []

    def read():
        for line in proc.stderr:
            lines.append(line)
            if "tflite[arm64]" in line and "running" in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(180), "".join(lines)[-3000:]
        time.sleep(2.0)
        assert proc.poll() is None, "the conversion finished within 2 s: nothing was interrupted"
        workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                   if "tflite_worker" in " ".join(c.cmdline())]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        time.sleep(0.5)
        orphans = []
        for w in workers:
            try:
                if w.is_running() and w.status() != psutil.STATUS_ZOMBIE:
                    orphans.append(w.pid)
            except psutil.NoSuchProcess:
                pass
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the converter child, if it outlived its parent
        except ProcessLookupError:
            pass
        proc.wait(30)
    left = {"entries": sorted(str(p.relative_to(out / ".cache")) for p in (out / ".cache").glob("tflite/*")),
            "tmp": sorted(p.name for p in (out / ".cache" / "tmp").glob("*")) if (out / ".cache" / "tmp").exists()
            else [],
            "arm64": sorted(p.name for p in (out / "tiny_cnn" / "arm64").glob("*"))
            if (out / "tiny_cnn" / "arm64").exists() else [],
            "report": (out / "tiny_cnn" / "report.json").is_file()}
    return {"spec": spec, "out": out, "workers": workers, "orphans": orphans, "left": left,
            "scratch": sorted(p.name for p in scratch.iterdir()), "progress": "".join(lines)}


@pytest.mark.slow
def test_killed_build_leaves_nothing_half_made_and_rebuilds(killed_build):
    k = killed_build
    assert k["workers"], "the converter ran in a child process"
    assert k["left"]["entries"] == [], k["left"]  # no tflite entry, whole or partial, outside cache/tmp
    assert k["left"]["arm64"] == [] and not k["left"]["report"]
    assert all(name.startswith("tflite-") for name in k["left"]["tmp"]), k["left"]["tmp"]
    # The shared stages finished before the kill and are whole entries the next build reuses.
    again = run_build(k["spec"], k["out"])
    assert again.code == 0 and again.report["status"] == "passed"
    assert ("tflite", "arm64") in again.ran and {("trace", None), ("reference", None)} <= again.cached
    t = assert_report_consistent(again.model_dir)["targets"]["arm64"]
    assert t["status"] == "passed"
    assert sorted(p.name for p in (again.model_dir / "arm64").iterdir()) == ["tiny_cnn.int8.tflite"]


@pytest.mark.slow
def test_killed_build_leaves_no_converter_running(killed_build, tmp_path):
    """The converter dies with its parent. Its scratch folder (toolchain-onnx2tf-*, a copy of the model and the
    calibration data) cannot be removed by a process killed with SIGKILL; its name carries its owner's PID, and the
    next build removes it."""
    from toolchain import debris

    assert killed_build["orphans"] == []
    scratch = killed_build["out"].parent / "tmp"
    left = [n for n in killed_build["scratch"] if n.startswith("toolchain-onnx2tf")]
    assert left and all(debris.orphaned(n) for n in left), killed_build["scratch"]
    r = subprocess.run([toolchain_exe(), "build", str(killed_build["spec"]), "-o", str(tmp_path / "next"),
                        "--cache-dir", str(killed_build["out"] / ".cache"), "-q"], capture_output=True, text=True,
                       env=dict(os.environ, TMPDIR=str(scratch)), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in scratch.iterdir()) == []


# ---- (e) reproducible artifacts ------------------------------------------------------------------------------------
def test_clean_builds_are_byte_identical(parallel, tmp_path):
    """A build in this process from an empty cache gives the same bytes as the command-line builds above (other
    processes, other hash seeds, their own empty cache) for the fp32 ONNX and every artifact."""
    a = run_build(parallel["spec"], tmp_path / "out")
    assert a.code == 0 and X86 <= a.ran and ("fp16", "cuda") in a.ran
    b = assert_report_consistent(parallel["out"] / "tiny_cnn")
    assert a.report["fp32_onnx"]["sha256"] == b["fp32_onnx"]["sha256"]
    for name in ("x86_64", "cuda"):
        assert a.report["targets"][name]["sha256"] == b["targets"][name]["sha256"], name
        assert sha256(a.model_dir / a.report["targets"][name]["artifact"]) == b["targets"][name]["sha256"]


@pytest.mark.slow
def test_clean_arm64_builds_are_byte_identical(tmp_path, write_spec, arm64_build):
    """A second onnx2tf conversion from an empty cache: the same int8 TFLite bytes as the session's first."""
    spec = write_spec(tmp_path / "spec", targets={"x86_64": None, "arm64": {"max_metric_drop": 25.0}})
    b = run_build(spec, tmp_path / "out")
    assert b.code == 0 and ("tflite", "arm64") in b.ran
    assert b.report["targets"]["arm64"]["sha256"] == arm64_build.report["targets"]["arm64"]["sha256"]
