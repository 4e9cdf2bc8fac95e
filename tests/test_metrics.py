"""Accuracy gates that cannot be fooled: every output judged by its own metric and budget, a default agreement
metric (sqnr) that sees the input-dependent signal where plain cosine sees only the constant part, budgets checked
in their metric's unit, and user metrics end to end. Every build below runs the real exporter, ONNX Runtime and
(for arm64) onnx2tf and LiteRT."""

import json
import sys

import numpy as np
import pytest

from toolchain.errors import EXIT_GATE_FAILED, SpecError
from toolchain.spec import load_spec
from toolchain.validation import metrics

from conftest import run_build, write_module


# ---- the metric itself ------------------------------------------------------------------------------------
def test_sqnr_sees_the_signal_that_cosine_misses():
    rng = np.random.default_rng(0)
    const = np.linspace(-8, 8, 10)
    signal = 0.01 * rng.standard_normal((64, 10))
    ref = const + signal
    lost = np.repeat(const[None], 64, 0) + 0.001 * rng.standard_normal((64, 10))  # the signal rounded away
    assert metrics.cosine_per_sample(lost, ref).mean() > 0.9999  # plain cosine: "perfect"
    assert metrics.sqnr_db(lost, ref) < 1.0  # the error is as large as what the output says about its input
    kept = ref + 0.001 * rng.standard_normal((64, 10))
    assert 18 < metrics.sqnr_db(kept, ref) < 22  # noise at 1/10 of the signal's spread: ~20 dB
    assert metrics.sqnr_db(ref, ref) == metrics.SQNR_CAP_DB  # exact: a finite figure JSON can hold
    assert np.isnan(metrics.sqnr_db(np.zeros((4, 3)), np.ones((4, 3))))  # nothing varies: nothing to measure


def test_every_metric_declares_unit_direction_and_budget_range():
    for name, m in metrics.BUILTIN.items():
        assert m.unit in metrics.UNITS and isinstance(m.higher_is_better, bool), name
        assert m.budget in ("drop", "floor") and len(m.budget_range) == 3, name
    assert metrics.BUILTIN["sqnr"].budget_key == "min_sqnr_db"
    assert metrics.BUILTIN["cosine"].budget_problem(1.0)  # gates nothing
    assert metrics.BUILTIN["cosine"].budget_problem(0.01) is None
    assert metrics.BUILTIN["top1"].budget_problem(100.0) is None


# ---- spec: budgets in their unit, per output ---------------------------------------------------------------
BAD = {
    "cosine-budget-of-one": ({"metric": {"name": "cosine"}, "targets": {"x86_64": {"max_metric_drop": 1.0}}},
                             "targets.x86_64.max_metric_drop",
                             ["must be in [0.0, 1.0) for metric cosine", "on the 0-1 scale", "1.0"]),
    "cosine-budget-per-output": ({"metric": {"name": "cosine"}, "targets": {"x86_64": {
        "max_metric_drop": None, "outputs": {"logits": {"max_metric_drop": 1.0}}}}},
        "targets.x86_64.outputs.logits.max_metric_drop", ["[0.0, 1.0)", "cosine"]),
    "sqnr-with-a-drop-budget": ({"metric": {"name": "sqnr"}}, "targets.x86_64.max_metric_drop",
                                ["does not apply", "'logits' by sqnr (min_sqnr_db)"]),
    "sqnr-floor-out-of-range": ({"metric": {"name": "sqnr"}, "targets": {"x86_64": {
        "max_metric_drop": None, "min_sqnr_db": 150.0}}}, "targets.x86_64.min_sqnr_db", ["[0.0, 100.0]"]),
    "wrong-key-for-the-output": ({"targets": {"x86_64": {"outputs": {"logits": {"min_sqnr_db": 20.0}}}}},
                                 "targets.x86_64.outputs.logits.min_sqnr_db",
                                 ["does not apply", "judged by top1", "max_metric_drop"]),
    "unknown-output": ({"targets": {"x86_64": {"outputs": {"logit": {"max_metric_drop": 1.0}}}}},
                       "targets.x86_64.outputs.logit", ["unknown key", "did you mean 'logits'"]),
    "bad-output-metric": ({"outputs": [{"name": "logits", "metric": "f1"}]}, "outputs[0].metric",
                          ["must be one of top1, cosine, sqnr", "module:function"]),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_budget_outside_its_unit_is_a_spec_error(case, tmp_path, write_spec):
    overrides, key, fragments = BAD[case]
    spec = write_spec(tmp_path, **overrides)
    with pytest.raises(SpecError) as ei:
        load_spec(spec)
    assert ei.value.key == key, str(ei.value)
    for f in fragments:
        assert f in str(ei.value), (f, str(ei.value))


def test_default_metrics_per_output(tmp_path, write_spec):
    """Labels in the evaluation data: the first output is judged by top1; every other output by sqnr, with the
    precision's default floor unless the spec names one."""
    spec = load_spec(write_spec(tmp_path, "two_heads"))
    assert [(o.name, o.metric) for o in spec.outputs] == [("logits", "top1"), ("probs", "sqnr")]
    gates = metrics.output_gates(spec, "x86_64", "int8")
    assert [(g["output"], g["budget_key"], g["budget"]) for g in gates] == [
        ("logits", "max_metric_drop", 25.0), ("probs", "min_sqnr_db", metrics.DEFAULT_MIN_SQNR_DB["int8"])]
    spec = load_spec(write_spec(tmp_path, "two_heads", targets={"x86_64": {"outputs": {"probs": {"min_sqnr_db": 30}}}}))
    assert metrics.output_gates(spec, "x86_64", "fp16")[1]["budget"] == 30.0
    spec = load_spec(write_spec(tmp_path, "const_plus_small", metric=None, targets={"x86_64": {"max_metric_drop": None}}))
    assert spec.metric == "sqnr"  # no labels in its evaluation data


# ---- the gate on real artifacts ----------------------------------------------------------------------------
def _sqnr_spec(write_spec, directory, targets, **table):
    """The constant-plus-small model as a new user would write it: no metric named (no labels: sqnr)."""
    tables = {"x86_64": None}  # None removes the writer's default x86_64 table (and its top1 budget)
    tables.update({t: {"latency": {"warmup": 2, "runs": 10}, **table} for t in targets})
    if "x86_64" in targets:
        tables["x86_64"]["max_metric_drop"] = None  # deep-merged into the default table: removes its budget
    return write_spec(directory, "const_plus_small", metric=None, targets=tables)


def test_constant_dominated_output_fails_on_x86(tmp_path, write_spec):
    """int8 rounds the input-dependent term away: plain cosine still reads ~1.0, the gate fails on sqnr."""
    b = run_build(_sqnr_spec(write_spec, tmp_path / "spec", ["x86_64"]), tmp_path / "out")
    t = b.report["targets"]["x86_64"]
    assert b.code == EXIT_GATE_FAILED and t["status"] == "failed", t.get("reason")
    assert t["agreement"]["0"]["cosine_mean"] > 0.9999  # the weak measure would have passed it
    row = t["outputs"]["probs"]
    assert row["metric"] == "sqnr" and row["unit"] == "dB" and not row["passed"] and row["value"] < 5.0
    assert "output probs: sqnr" in t["reason"] and "under the budget min_sqnr_db=15.0" in t["reason"]
    assert "artifact" in t  # a failed gate keeps the artifact to inspect; the build fails


@pytest.mark.slow
def test_constant_dominated_output_fails_on_arm64(tmp_path, write_spec):
    b = run_build(_sqnr_spec(write_spec, tmp_path / "spec", ["arm64"]), tmp_path / "out")
    t = b.report["targets"]["arm64"]
    assert b.code == EXIT_GATE_FAILED and t["status"] == "failed", t.get("reason")
    assert t["agreement"]["0"]["cosine_mean"] > 0.9999
    assert t["outputs"]["probs"]["value"] < 5.0 and "output probs: sqnr" in t["reason"]


def test_plan_cannot_pick_a_variant_that_passes_only_plain_cosine(tmp_path, write_spec):
    """The x86 precision plan judges its variants by the gate's own metric: static int8 keeps cosine ~1.0 on the
    constant-dominated output but loses its signal, so the plan never ships all-int8 static: it keeps the
    sensitive nodes float or ships dynamic int8, whichever holds the sqnr budget (and is faster)."""
    quantize = {"method": "auto", "schemes": ["static_u8s8", "dynamic_s8"], "speed_search": False}
    spec = _sqnr_spec(write_spec, tmp_path / "spec", ["x86_64"], quantize=quantize)
    b = run_build(spec, tmp_path / "out")
    t = b.report["targets"]["x86_64"]
    plan = t["build"]["plan"]
    assert b.code == 0 and t["status"] == "passed", (t.get("reason"), plan["steps"])
    all_int8 = [st for st in plan["steps"] if st.startswith("static_u8s8: all compute nodes int8")]
    assert all_int8 and all_int8[0].endswith("(misses)"), plan["steps"]  # what plain cosine (~1.0) would pass
    assert plan["before"]["outputs"]["probs"] < 5.0 <= 15.0 <= plan["after"]["outputs"]["probs"]
    assert t["outputs"]["probs"]["value"] >= 15.0
    # speed_search = false: accuracy alone decides, so the first scheme in order that meets the budget ships
    assert list(plan["candidates"]) == [plan["chosen"]], plan["steps"]


def test_broken_second_output_fails_the_gate(tmp_path, write_spec):
    """The first output (class logits) passes top1; the second is broken by int8 and fails the target. Every
    report shows both outputs with metric, figure, budget and verdict."""
    spec = write_spec(tmp_path / "spec", "two_heads")
    b = run_build(spec, tmp_path / "out")
    t = b.report["targets"]["x86_64"]
    assert b.code == EXIT_GATE_FAILED and t["status"] == "failed"
    logits, probs = t["outputs"]["logits"], t["outputs"]["probs"]
    assert logits["passed"] and logits["metric"] == "top1" and logits["budget"] == 25.0
    assert logits["figure"] == pytest.approx(t["metric_drop"]) and "top1_agreement" in logits
    assert not probs["passed"] and probs["budget_key"] == "min_sqnr_db"
    assert "output probs" in t["reason"] and "output logits" not in t["reason"]
    assert t["max_metric_drop"] == 25.0 and t["metric"] == logits["value"]  # the older top-level keys hold
    assert b.report["reference"]["outputs"]["logits"]["value"] == 100.0
    md = (b.model_dir / "report.md").read_text()
    assert "| x86_64 | probs | sqnr |" in md and "**FAIL**" in md and "| x86_64 | logits | top1 |" in md
    html = (b.model_dir / "report.html").read_text()
    assert "Every output, judged" in html and "<td>probs</td>" in html
    assert json.loads((b.model_dir / "report.json").read_text())["targets"]["x86_64"]["outputs"] == t["outputs"]
    # `toolchain validate` (re-validation without a rebuild, e.g. on a GPU host) judges every output the same way
    from toolchain.api import validate

    report, code = validate(spec, b.out)
    again = report["targets"]["x86_64"]
    assert code == EXIT_GATE_FAILED and again["status"] == "failed"
    assert {o: r["passed"] for o, r in again["outputs"].items()} == {"logits": True, "probs": False}


# ---- user metrics ------------------------------------------------------------------------------------------
USER_METRICS = '''
import numpy as np
from toolchain.validation.metrics import declare


@declare(unit="percentage points", higher_is_better=True, budget="drop", budget_range=(0, 100))
def top2(outputs, references, evaluation):
    """% of samples whose label is among the two highest logits."""
    top = np.argsort(outputs["logits"], axis=1)[:, -2:]
    return 100.0 * (top == evaluation["labels"][:, None]).any(1).mean()


def worst_error(outputs, references, evaluation):
    return float(np.abs(outputs["logits"] - references["logits"]).max())


worst_error.metric_unit = "logit units"
worst_error.metric_higher_is_better = False
worst_error.metric_budget = "floor"
worst_error.metric_budget_range = (0.0, 10.0)


def undeclared(outputs, references, evaluation):
    return 1.0


@declare(unit="percentage points")
def broken(outputs, references, evaluation):
    return outputs["no such output"]
'''


@pytest.fixture
def user_metrics(tmp_path):
    code = tmp_path / "metric code"
    code.mkdir()
    sys.modules.pop("tc_user_metrics", None)  # each test imports its own copy
    write_module(code, "tc_user_metrics", USER_METRICS, "top2")
    yield code
    sys.modules.pop("tc_user_metrics", None)


def test_user_metrics_end_to_end(tmp_path, write_spec, user_metrics, python_path):
    spec = write_spec(tmp_path / "spec", model={"python_path": [str(python_path), str(user_metrics)]},
                      metric={"name": "tc_user_metrics:top2"},
                      targets={"x86_64": {"max_metric_drop": 5.0, "latency": {"warmup": 2, "runs": 10}}})
    b = run_build(spec, tmp_path / "out")
    t = b.report["targets"]["x86_64"]
    assert b.code == 0, t.get("reason")
    row = t["outputs"]["logits"]
    assert row["metric"] == "tc_user_metrics:top2" and row["unit"] == "percentage points" and row["passed"]
    assert b.report["reference"]["outputs"]["logits"]["value"] == 100.0  # labels are fp32's argmax
    # editing the metric's code re-judges the build (no stale "up to date")
    module = user_metrics / "tc_user_metrics.py"
    module.write_text(module.read_text().replace("100.0 * (top", "50.0 * (top"))
    sys.modules.pop("tc_user_metrics", None)  # a new build is a new process; this test shares one
    again = run_build(spec, tmp_path / "out")
    assert ("reference", None) in again.ran and ("validate", "x86_64") in again.ran
    assert again.report["reference"]["outputs"]["logits"]["value"] == 50.0
    # a lower-is-better floor: the worst logit error must stay under the budget
    spec = write_spec(tmp_path / "spec2", model={"python_path": [str(python_path), str(user_metrics)]},
                      metric={"name": "tc_user_metrics:worst_error"},
                      targets={"x86_64": {"max_metric_drop": None, "max_metric": 1e-6,
                                          "latency": {"warmup": 2, "runs": 10}}})
    b = run_build(spec, tmp_path / "out2")
    t = b.report["targets"]["x86_64"]
    assert b.code == EXIT_GATE_FAILED and "worst_error" in t["reason"] and "is over the budget max_metric=1e-06" in t["reason"]
    assert t["outputs"]["logits"]["value"] > 1e-6


@pytest.mark.parametrize("ref, targets, key, fragment", [
    ("tc_user_metrics:undeclared", {"max_metric_drop": 1.0}, "metric.name", "declares no unit"),
    ("tc_user_metrics:top2", {"max_metric_drop": 150.0}, "targets.x86_64.max_metric_drop", "must be in [0.0, 100.0]"),
    ("tc_user_metrics:worst_error", {"max_metric_drop": 1.0}, "targets.x86_64.max_metric", "is required"),
    ("tc_user_metrics:nope", {"max_metric_drop": 1.0}, "metric.name", "no callable 'nope'"),
])
def test_user_metric_declaration_is_checked(ref, targets, key, fragment, tmp_path, write_spec, user_metrics,
                                            python_path):
    from toolchain.api import build

    spec = write_spec(tmp_path / "spec", model={"python_path": [str(python_path), str(user_metrics)]},
                      metric={"name": ref}, targets={"x86_64": targets})
    with pytest.raises(SpecError) as ei:
        build(spec, tmp_path / "out")
    assert ei.value.key == key and fragment in str(ei.value), str(ei.value)


def test_user_metric_that_raises_fails_the_build_naming_it(tmp_path, write_spec, user_metrics, python_path):
    from toolchain.api import build
    from toolchain.errors import StageError

    spec = write_spec(tmp_path / "spec", model={"python_path": [str(python_path), str(user_metrics)]},
                      metric={"name": "tc_user_metrics:broken"})
    with pytest.raises(StageError) as ei:
        build(spec, tmp_path / "out")
    assert "user metric tc_user_metrics:broken failed: KeyError" in str(ei.value)
