"""Starting from Python and pip: an nn.Module built through the real pipeline, `init`, `targets`, `--json`, and a
wheel that works outside the checkout."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, toolchain_exe

MODULE_SRC = '''
import torch
from torch import nn


class SmallNet(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        return self.head(self.body(x))
'''


@pytest.fixture(scope="module")
def small_net(tmp_path_factory):
    from conftest import write_module

    root = tmp_path_factory.mktemp("api model")
    return write_module(root, "api_small_net", MODULE_SRC, "SmallNet")


def _data(model):
    import torch

    x = np.random.default_rng(0).standard_normal((48, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        labels = model(torch.from_numpy(x)).argmax(1).numpy()
    return x, labels


def test_build_from_nn_module_then_noop_then_rebuild_on_change(tmp_path, small_net):
    import torch

    from toolchain.python_api import build

    torch.manual_seed(0)
    model = small_net().eval()
    x, labels = _data(model)
    out = tmp_path / "out dir"
    r = build(model, inputs={"input": (1, 1, 8, 8)}, calibration=x, labels=labels, out=out, targets=["x86_64"],
              budgets=25.0)
    assert r.ok and r.status == "passed" and r.exit_code == 0
    t = r.targets["x86_64"]
    assert t.status == "passed" and t.artifact.is_file() and t.artifact.suffix == ".onnx"
    assert t.metric == pytest.approx(100.0, abs=25.0) and t.latency_ratio > 0
    assert json.loads(r.report_path.read_text())["targets"]["x86_64"]["sha256"] == t.sha256
    spec = tomllib.loads(r.spec.read_text())
    assert spec["metric"]["name"] == "top1" and spec["inputs"][0]["shape"] == [1, 1, 8, 8]

    # Same model and data: a no-op (the stamp holds; nothing is rewritten).
    stamp = r.out_dir / ".stamp.json"
    before = stamp.stat().st_mtime_ns
    again = build(model, inputs={"input": (1, 1, 8, 8)}, calibration=x, labels=labels, out=out,
                  targets=["x86_64"], budgets=25.0)
    assert again.ok and again.targets["x86_64"].sha256 == t.sha256
    assert stamp.stat().st_mtime_ns == before

    # Other weights: a new artifact.
    torch.manual_seed(1)
    other = small_net().eval()
    changed = build(other, inputs={"input": (1, 1, 8, 8)}, calibration=x, labels=_data(other)[1], out=out,
                    targets=["x86_64"], budgets=25.0, name=r.model)
    assert changed.ok and changed.targets["x86_64"].sha256 != t.sha256


def test_module_code_digest_sees_structure_and_source(small_net):
    from toolchain.module_spec import code_digest

    assert code_digest(small_net(8)) == code_digest(small_net(8))
    assert code_digest(small_net(8)) != code_digest(small_net(16))


def test_python_api_user_errors_are_toolchain_errors(tmp_path, small_net):
    from toolchain.errors import ToolchainError
    from toolchain.python_api import build

    model = small_net().eval()
    with pytest.raises(ToolchainError, match="inputs: required"):
        build(model, calibration=np.zeros((4, 1, 8, 8), np.float32), out=tmp_path)
    with pytest.raises(ToolchainError, match="outputs: the model returns 1 output"):
        build(model, inputs=(1, 1, 8, 8), outputs=["a", "b"], calibration=np.zeros((4, 1, 8, 8), np.float32),
              out=tmp_path)
    with pytest.raises(ToolchainError, match="expected a torch.nn.Module"):
        build(object(), out=tmp_path)


def test_generated_spec_outside_its_process_says_how_to_build(tmp_path, small_net):
    """The CLI cannot rebuild an in-memory model: one line saying so, exit 2, no traceback."""
    from toolchain.module_spec import write_sources

    spec = write_sources(small_net().eval(), tmp_path / "src", name="orphan", inputs=(1, 1, 8, 8),
                         calibration=np.zeros((4, 1, 8, 8), np.float32))
    p = subprocess.run([toolchain_exe(), "build", str(spec), "-o", str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "in-memory nn.Module" in p.stderr and "Traceback" not in p.stderr


def test_init_writes_a_spec_that_loads(tmp_path):
    from toolchain.spec import load_spec

    spec = tmp_path / "m" / "build.toml"
    p = subprocess.run([toolchain_exe(), "init", "pkg.models:make", "-i", "image:1x3x32x32", "-i", "mask:1x32:int64",
                        "--output", "logits", "-t", "x86_64", "-o", str(spec)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    for f in ("calibration.npz", "eval.npz"):  # the placeholders the user fills in
        (spec.parent / "data").mkdir(exist_ok=True)
        (spec.parent / "data" / f).write_bytes(b"")
    s = load_spec(spec, need_weights=False)
    assert s.factory == "pkg.models:make" and [t.shape for t in s.inputs] == [(1, 3, 32, 32), (1, 32)]
    assert s.inputs[1].dtype == "int64" and list(s.targets) == ["x86_64"] and s.metric == "top1"
    assert "TODO" in spec.read_text()
    again = subprocess.run([toolchain_exe(), "init", "pkg.models:make", "-i", "x:1x3", "-o", str(spec)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "never overwrites" in again.stderr and len(again.stderr.splitlines()) == 1


def test_targets_lists_builtins_and_a_user_dir_adds(tmp_path):
    user = tmp_path / "my targets"
    user.mkdir()
    (user / "x86_fp32.toml").write_text('description = "x86 fp32 ONNX"\nformat = "onnx"\nprecision = "fp32"\n'
                                        'runtime = "onnxruntime"\n')
    p = subprocess.run([toolchain_exe(), "targets", "--json", "--targets-dir", str(user)], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    names = {t["name"]: t for t in json.loads(p.stdout)["targets"]}
    assert {"x86_64", "arm64", "cuda", "x86_fp32"} <= set(names)
    assert names["x86_fp32"]["precision"] == "fp32" and names["arm64"]["format"] == "tflite"


def test_build_json_is_one_document(tmp_path, write_spec):
    spec = write_spec(tmp_path / "spec")
    p = subprocess.run([toolchain_exe(), "build", str(spec), "-o", str(tmp_path / "out"), "--json", "-q"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["exit_code"] == 0 and doc["report"]["targets"]["x86_64"]["status"] == "passed"


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory):
    """The built wheel installed apart from the repository (built once for the tests below)."""
    import shutil

    tmp_path = tmp_path_factory.mktemp("wheel")
    src, wheels = tmp_path / "src", tmp_path / "wheels"  # a copy: setuptools writes build/ next to the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.lock"):
        shutil.copy(REPO / name, src / name)
    for name in ("toolchain", "targets"):
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(src)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("toolchain-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    return site


def _from_wheel(site, code, *args, env=None, cwd=None):
    """Runs code with the installed wheel first on the path (not the checkout), args in sys.argv[2:]."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import toolchain, toolchain.cli; "
            "assert toolchain.__file__.startswith(sys.argv[1]), toolchain.__file__; " + code)
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TOOLCHAIN_TARGETS_DIR",
                                                              "TOOLCHAIN_ARM_EMULATOR", "XDG_CACHE_HOME")}
    return subprocess.run([sys.executable, "-c", code, str(site), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or site.parent, env={**base, **(env or {})}, timeout=300)


def test_wheel_builds_a_model_outside_the_checkout(wheel_site, tmp_path, write_spec):
    """The built wheel carries the target files; installed apart from the repo, it builds a model."""
    assert (wheel_site / "toolchain" / "builtin_targets" / "x86_64.toml").is_file()
    spec = write_spec(tmp_path / "spec")
    p = _from_wheel(wheel_site, "sys.argv = ['toolchain', 'build', sys.argv[2], '-o', sys.argv[3], '-q']; "
                    "toolchain.cli.main()", spec, tmp_path / "out", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "out" / "tiny_cnn" / "report.json").read_text())
    assert report["targets"]["x86_64"]["status"] == "passed"


def test_wheel_carries_the_arm_emulator_setup(wheel_site, tmp_path):
    """A pip user can prepare the emulator: the script, the plugin's source, the cores' cpuinfo and the lock are in
    the wheel, and an installed toolchain keeps it in a per-user cache directory (an installed package has no
    checkout)."""
    executors = wheel_site / "toolchain" / "executors"
    for name in ("setup_arm_emulator.sh", "insn_marker.c", "apt_sources.py", "guest_cpuinfo.json", "guest_cpuinfo.py"):
        assert (executors / name).read_bytes() == (REPO / "toolchain" / "executors" / name).read_bytes(), name
    lock = executors / "requirements.lock"
    assert not lock.is_symlink() and lock.read_bytes() == (REPO / "requirements.lock").read_bytes()
    where = ("from toolchain.executors.emulated import emulator_dir, setup_hint; "
             "print(emulator_dir()); print(setup_hint())")
    p = _from_wheel(wheel_site, where, env={"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:2] == [str(tmp_path / "xdg" / "toolchain" / "arm-emulator"),
                                        "run `toolchain arm-emulator`"]
    p = _from_wheel(wheel_site, where, env={"HOME": str(tmp_path / "home")})
    assert p.stdout.split("\n")[0] == str(tmp_path / "home" / ".cache" / "toolchain" / "arm-emulator"), p.stderr
    p = _from_wheel(wheel_site, where, env={"TOOLCHAIN_ARM_EMULATOR": str(tmp_path / "mine")})
    assert p.stdout.split("\n")[0] == str(tmp_path / "mine"), p.stderr


def test_installed_arm_emulator_finds_a_prepared_one_done(wheel_site):
    """`toolchain arm-emulator` from the wheel on the emulator make prepared: the same script, lock and stamps, so
    every step is already done (nothing installed or built) and it says where it is."""
    from toolchain.executors.emulated import emulator_dir

    prepared = emulator_dir().absolute()  # the checkout's .arm-emulator (make test prepares it), or the env's
    if not (prepared / "ready.json").is_file():
        pytest.skip(f"no prepared emulator in {prepared}: make arm-emulator failed or was not run")
    p = _from_wheel(wheel_site, "sys.argv = ['toolchain', 'arm-emulator', '--dir', sys.argv[2]]; toolchain.cli.main()",
                    prepared)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"arm-emulator: ready in {prepared}"), p.stdout
    assert not [ln for ln in p.stderr.splitlines() if ln.startswith("arm-emulator:")], p.stderr  # no step ran


def test_arm_emulator_setup_failure_is_one_line(tmp_path):
    """A setup that cannot write its directory: one line naming it, exit 4, no traceback."""
    blocker = tmp_path / "a file"
    blocker.write_text("")
    p = subprocess.run([toolchain_exe(), "arm-emulator", "--dir", str(blocker / "emulator")], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 4, p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("error: stage arm-emulator: setup in ") and "a file" in line and "Traceback" not in line


def test_int8_onnx_records_what_onnx_runtime_runs_in_int8(x86_build):
    """The NOT FASTER note's promise: the op counts of ORT's optimized graph are measured and reported."""
    from toolchain.gates import judge

    t = x86_build.report["targets"]["x86_64"]
    ops = t["optimized_op_counts"]
    assert ops and sum(ops.values()) > 0
    if (t.get("runtime_options") or {}).get("chosen") == "basic":  # a timing pick on the tiny model: QDQ unfused
        assert ops.get("DequantizeLinear", 0) > 0, ops
    else:
        assert any(k.startswith("QLinear") for k in ops), ops  # uint8 activations: the convs run int8
    validation = {"non_finite_outputs": 0, "metric_drop": 0.0, "latency_ratio": 1.2, "optimized_op_counts": ops}
    note = judge("x86_64", validation, [], {})["notes"][0]  # no output gates: only the speed note
    assert "NOT FASTER" in note and "compute ops run in int8" in note


def test_index_across_models_says_what_to_ship(x86_build):
    index = json.loads((x86_build.out / "index.json").read_text())
    (row,) = [r for r in index["rows"] if r["model"] == "tiny_cnn" and r["target"] == "x86_64"]
    t = x86_build.report["targets"]["x86_64"]
    assert row["status"] == "passed" and row["ship"] == f"tiny_cnn/{t['artifact']}"
    assert row["why"].startswith("passed its budget")
    page = (x86_build.out / "index.html").read_text()
    assert "tiny_cnn" in page and row["ship"] in page


def test_a_budget_in_db_is_shown_where_there_is_no_top1_drop(x86_build):
    """An sqnr-judged target has no top-1 drop budget: the index and report.html show each output's floor."""
    from toolchain.report import target_budget
    from toolchain.report_html import render

    report = json.loads(json.dumps(x86_build.report))
    t = report["targets"]["x86_64"]
    assert target_budget(t) == "25"  # a top-1 drop budget, as the spec gave it
    t["max_metric_drop"] = None
    t["outputs"] = {"logits": {**next(iter(t["outputs"].values())), "budget_key": "min_sqnr_db", "budget": 15.0,
                               "unit": "dB"}}
    assert target_budget(t) == ">= 15 dB"
    assert "<td>&gt;= 15 dB</td>" in render(report)


def test_report_html_shows_every_note_as_a_badge(x86_build):
    from toolchain.index_report import advice
    from toolchain.report_html import render

    report = json.loads(json.dumps(x86_build.report))
    t = report["targets"]["x86_64"]
    t["notes"] = ["NOT FASTER: p50 is 1.30x the fp32 baseline on test-cpu"]
    t["latency_ratio"] = 1.3
    page = render(report)
    assert "<span class='badge warn'>NOT FASTER</span>" in page and "1.30x the fp32 baseline" in page
    assert "MEASURED ON" in page
    assert "NOT FASTER" in advice(x86_build.model_dir, t)["why"]
    failed = {**t, "status": "failed", "reason": "metric drop 3 exceeds the budget"}
    assert advice(x86_build.model_dir, failed) == {"ship": None, "why": "do not ship: failed (metric drop 3 exceeds "
                                                                        "the budget)"}


def test_layout_note_names_the_transpose():
    from toolchain.runtimes.litert import layout_note

    assert layout_note((1, 3, 8, 8), (1, 8, 8, 3)) == "transposed from (N,C,H,W) to (N,H,W,C): feed x.transpose(0, 2, 3, 1)"
    assert layout_note((1, 4, 16), (1, 16, 4)) == "transposed from (N,C,T) to (N,T,C): feed x.transpose(0, 2, 1)"
    assert layout_note((1, 5), (1, 5)) is None


def test_arm64_report_io_says_how_the_input_was_transposed(arm64_build):
    (inp,) = arm64_build.report["targets"]["arm64"]["io"]["inputs"]
    assert inp["layout"].startswith("transposed from (N,C,H,W) to (N,H,W,C)")


def test_readme_python_example_runs_as_written(tmp_path):
    """The README's "From Python" example, verbatim, in a fresh process and directory."""
    text = (REPO / "README.md").read_text()
    start = text.index("```python\n", text.index("### From Python")) + len("```python\n")
    code = text[start:text.index("```", start)]
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.startswith("True ")
    report = json.loads((tmp_path / "build" / "mynet" / "report.json").read_text())
    assert {t["status"] for t in report["targets"].values()} == {"passed"}
    assert (tmp_path / "dist" / "mynet-1.0.0.tar.gz").is_file()
    assert p.stdout.splitlines()[-1] == "['arm64', 'x86_64']"  # both artifacts in the verified bundle
    # The README's metadata one-liners, run as written, on the artifacts the example made: labels in both.
    names = [f"class {i}" for i in range(10)]
    for line in _readme_one_liners():
        q = subprocess.run(line, shell=True, capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert q.returncode == 0, q.stderr[-2000:]
        out = q.stdout.strip()
        if "onnxruntime" in line:  # a dict of strings; inputs/outputs are JSON
            import ast

            props = ast.literal_eval(out)
            assert props["model_name"] == "mynet" and props["model_version"] == "1.0.0"
            assert json.loads(props["outputs"])[0]["labels"] == names
        else:
            doc = json.loads(out)
            assert doc["model_name"] == "mynet" and doc["outputs"][0]["labels"] == names
            (inp,) = doc["inputs"]
            assert inp["layout"].startswith("transposed from (N,C,H,W) to (N,H,W,C)")
            assert inp["normalization"]["std"] == [0.229, 0.224, 0.225]


def _readme_one_liners() -> list:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### What an artifact tells an app"):text.index("### Exit codes")]
    lines = [ln for ln in section.splitlines() if ln.startswith('python -c "')]
    assert len(lines) == 2, lines
    return [ln.replace("python -c", f"{sys.executable} -c", 1) for ln in lines]


def test_package_namespace_exports_the_python_api():
    import toolchain
    import toolchain.bundle  # noqa: F401  (the modules behind them do not shadow the functions)
    import toolchain.validation.metrics  # noqa: F401

    assert callable(toolchain.build) and callable(toolchain.validate)
    assert toolchain.package.__module__ == "toolchain.python_api" and callable(toolchain.verify)


def test_ship_advice_on_arm_follows_the_arm_cost_model(x86_build):
    from toolchain.index_report import advice

    t = {"status": "passed", "artifact": "arm64/m.int8.tflite", "baseline": "fp32/m.arm64.fp32.tflite",
         "latency_ratio": 2.9, "size_ratio": 0.4, "device": "x86 host",
         "arm_cost": {"cores": {"cortex-a76": {"ratio": 0.58}, "cortex-a53": {"ratio": 1.02}}}}
    why = advice(x86_build.model_dir, t)["why"]
    assert "NOT FASTER" in why and "1.02x" in why and "cortex-a53 1.02x" in why and "2.9" not in why
    t["arm_cost"]["cores"]["cortex-a53"]["ratio"] = 0.9
    assert advice(x86_build.model_dir, t)["why"].startswith("passed its budget, instructions 0.90x")
