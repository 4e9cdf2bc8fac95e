"""The precision plans (x86 quantize.method = "auto", arm64 convert.precision = "auto") on a model with a planted sensitive layer: one channel of
conv1 runs 1000x hotter than the rest (conv2 scales it back), so fp32 is fine but a per-tensor int8 scale for
that activation wipes out the other channels. The plan must find conv1/conv2, keep them float, meet the budget,
and obey the spec's overrides."""

import json
import textwrap

import numpy as np
import pytest

from conftest import dumps_toml, run_build, write_module

SOURCE = textwrap.dedent('''
    import torch
    from torch import nn


    class Planted(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
            self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.classifier = nn.Linear(64, 10)

        def forward(self, x):
            x = torch.relu(self.conv1(x))
            x = torch.relu(self.conv2(x))
            x = torch.relu(self.conv3(x))
            return self.classifier(torch.flatten(self.pool(x), 1))


    def planted():
        return Planted()
''')


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("planted model")
    factory = write_module(root, "planted_models", SOURCE, "planted")
    torch.manual_seed(0)
    m = factory().eval()
    with torch.no_grad():
        m.conv1.weight[0] *= 1000
        m.conv1.bias[0] = m.conv1.bias[0].abs() * 1000
        m.conv2.weight[:, 0] /= 1000
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(root / "w.safetensors"))
    x = np.random.default_rng(0).random((96, 1, 8, 8), dtype=np.float32)
    np.savez(root / "eval.npz", input=x[:64])
    np.savez(root / "cal.npz", input=x[64:])
    return root


def spec(root, directory, quantize, arm64=None):
    directory.mkdir(parents=True, exist_ok=True)
    doc = {"model": {"name": "planted", "factory": "planted_models:planted", "weights": str(root / "w.safetensors"),
                     "python_path": [str(root)]},
           "inputs": [{"name": "input", "shape": [1, 1, 8, 8]}], "outputs": [{"name": "logits"}],
           "data": {"calibration": str(root / "cal.npz"), "evaluation": str(root / "eval.npz")},
           "metric": {"name": "cosine"},
           "targets": {"x86_64": {"max_metric_drop": 0.002, "quantize": quantize,
                                  "latency": {"warmup": 2, "runs": 20}}}}
    if arm64 is not None:  # the arm64 plan instead of the x86 one
        doc["targets"] = {"arm64": {"max_metric_drop": 0.002, "convert": arm64, "latency": {"warmup": 2, "runs": 20}}}
    path = directory / "build.toml"
    path.write_text(dumps_toml(doc))
    return path


def test_plain_int8_misses_the_budget(planted, tmp_path):
    b = run_build(spec(planted, tmp_path / "s", {"method": "static"}), tmp_path / "out")
    assert b.code == 3
    assert b.report["targets"]["x86_64"]["status"] == "failed"
    assert b.report["targets"]["x86_64"]["metric_drop"] > 0.002


def test_plan_finds_the_planted_layers_and_meets_the_budget(planted, tmp_path):
    b = run_build(spec(planted, tmp_path / "s", {"method": "auto", "schemes": ["static_u8s8"],
                                                 "speed_search": False}), tmp_path / "out")
    t = b.report["targets"]["x86_64"]
    assert b.code == 0 and t["status"] == "passed"
    plan = t["build"]["plan"]
    assert {r["node"] for r in plan["sensitivity_top"][:2]} == {"/conv1/Conv", "/conv2/Conv"}
    assert plan["sensitivity_top"][0]["cosine"] < plan["sensitivity_top"][-1]["cosine"]
    kept = {k["node"]: k["reason"] for k in plan["kept_float"]}
    assert set(kept) <= {"/conv1/Conv", "/conv2/Conv"} and kept
    assert all(r.startswith("accuracy") for r in kept.values())
    assert plan["before"]["metric_drop"] > 0.002 >= plan["after"]["metric_drop"]
    assert plan["int8_compute_nodes"] == plan["compute_nodes"] - len(kept)
    # a plan decided by accuracy alone (speed_search = false) has no timing to put the ORT recipe into
    assert "ort_recipe" not in plan["candidates"]
    assert any(st.startswith("ORT recipe") and "speed_search = false" in st for st in plan["steps"])
    # The artifact really is the plan: the kept nodes have no weight DequantizeLinear feeding them.
    import onnx

    g = onnx.load(str(b.model_dir / t["artifact"])).graph
    producers = {o: n for n in g.node for o in n.output}
    for n in g.node:
        if n.name in kept:
            assert producers.get(n.input[1]) is None or producers[n.input[1]].op_type != "DequantizeLinear"
    assert json.loads((b.model_dir / "report.json").read_text())["targets"]["x86_64"]["build"]["plan"] == plan


def test_plan_measures_the_other_weight_granularity_and_records_the_decision(planted, tmp_path):
    """After choosing a scheme, the plan times its choice with per-tensor weights (interleaved, twice) and keeps
    that only if faster both times and within the budget; the decision and its figures are in the report, and
    the shipped scheme says which granularity it has."""
    b = run_build(spec(planted, tmp_path / "s", {"method": "auto", "schemes": ["static_u8s8"]}), tmp_path / "out")
    t = b.report["targets"]["x86_64"]
    assert b.code == 0 and t["status"] == "passed", t.get("reason")
    g = t["build"]["plan"]["weight_granularity"]
    assert g["tried"] == "per-tensor weights" and g["of"] == "per-channel"
    assert len(g["p50_ms"]["current"]) == len(g["p50_ms"]["trial"]) == 2
    assert all(v > 0 for v in g["p50_ms"]["current"] + g["p50_ms"]["trial"])
    kept = bool(g.get("kept"))
    assert g["decision"].startswith("per-tensor weights: faster" if kept else "kept the current granularity")
    assert t["build"]["scheme"]["per_channel"] is (not kept)
    # ONNX Runtime's recipe (every node int8) misses this budget: judged by the same gate, it is not a candidate
    plan = t["build"]["plan"]
    assert "ort_recipe" not in plan["candidates"]
    assert any(st.startswith("ORT recipe") and "misses the budget; not a candidate" in st for st in plan["steps"])


def test_plan_makes_and_judges_each_variant_once(planted, tmp_path):
    """No repeated work: the every-node-int8 variant the search starts from is the plan's `before` too; it is made,
    calibrated and judged once (the budget's record counts every piece of work)."""
    s = spec(planted, tmp_path / "s", {"method": "auto", "schemes": ["static_u8s8"], "speed_search": False})
    text = s.read_text().replace("max_metric_drop = 0.002", "max_metric_drop = 0.9")  # all int8 holds this budget
    s.write_text(text)
    b = run_build(s, tmp_path / "out")
    plan = b.report["targets"]["x86_64"]["build"]["plan"]
    assert b.code == 0 and plan["kept_float"] == [], plan["steps"]
    counts = plan["time_budget"]["count_by_work"]
    assert counts["make"] == 1 and counts["judge"] == 1 and counts["calibrate"] == 1, counts


class StepClock:
    """A clock on which each piece of work the plan accounts (a variant made, judged or timed) takes one second and
    looking at the clock takes none: the plan's budget decisions then depend only on how much work it does, never
    on this machine's speed."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        import sys

        if sys._getframe(1).f_code.co_name == "track":  # the end of a piece of work
            self.t += 1.0
        return self.t


@pytest.mark.parametrize("budget_s", [40, 400])
def test_plan_stops_its_search_in_time_for_its_closing_steps(planted, tmp_path, monkeypatch, budget_s):
    """quantize.time_budget_s bounds the whole plan: the search stops early enough for the closing steps (final
    timing, the other weight granularity) to fit, the schemes it had no time for say so, and the report records
    where the budget went. With a generous budget every scheme is tried."""
    from toolchain.stages import plan, plan_budget

    monkeypatch.setattr(plan_budget, "CLOCK", StepClock())
    # This test is about the budget, so the static schemes must be searched: on this tiny model their all-int8
    # variants can time slower than dynamic_s8's plan, which plan_admission.cannot_win (its own test) would drop unsearched.
    monkeypatch.setattr(plan, "cannot_win", lambda *a: False)
    schemes = ["dynamic_s8", "static_u8s8", "static_s8s8"]  # the first meets the budget with every node int8
    b = run_build(spec(planted, tmp_path / "s", {"method": "auto", "schemes": schemes, "time_budget_s": budget_s}),
                  tmp_path / "out")
    t = b.report["targets"]["x86_64"]
    assert b.code == 0 and t["status"] == "passed", t.get("reason")
    plan = t["build"]["plan"]
    tb = plan["time_budget"]
    assert tb["budget_s"] == budget_s and tb["within_budget"] and tb["total_s"] <= budget_s, tb
    skipped = [st for st in plan["steps"] if "time budget" in st]
    searched = set(plan["candidates"]) - {"ort_recipe"}  # the recipe is judged before any scheme (plan_recipe.py)
    if budget_s == 40:
        assert tb["search_stopped_early_at_s"] is not None and skipped, plan["steps"]
        assert searched < set(schemes)
    else:
        assert tb["search_stopped_early_at_s"] is None and not skipped, plan["steps"]
        assert searched <= set(schemes) and len(searched) >= 2


def test_plan_ships_at_worst_the_recipe_when_the_recipe_holds_the_budget(planted, tmp_path):
    """ONNX Runtime's documented recipe (stages/plan_recipe.py), judged by the same gate, holds this loose budget:
    it is a candidate of the closing timing even where the spec's schemes do not include static_u8s8, so the
    shipped plan's p50 in that interleaved timing is at most the recipe's; a shipped recipe says what it is."""
    s = spec(planted, tmp_path / "s", {"method": "auto", "schemes": ["dynamic_s8"]})
    s.write_text(s.read_text().replace("max_metric_drop = 0.002", "max_metric_drop = 0.9"))
    b = run_build(s, tmp_path / "out")
    t = b.report["targets"]["x86_64"]
    assert b.code == 0 and t["status"] == "passed", t.get("reason")
    plan = t["build"]["plan"]
    assert set(plan["candidates"]) == {"ort_recipe", "dynamic_s8"}, plan["steps"]
    assert any(st.startswith("ORT recipe") and "holds the budget" in st for st in plan["steps"]), plan["steps"]
    p50 = {k: c["p50_ms"] for k, c in plan["candidates"].items()}
    assert plan["after"]["p50_ms"] == min(p50.values()) <= p50["ort_recipe"]
    if plan["chosen"] == "ort_recipe":
        assert t["build"]["scheme"]["method"] == "static" and t["build"]["scheme"]["activation_type"] == "uint8"
        assert t["build"]["scheme"]["calibrate_method"] == "minmax"
    else:
        assert t["build"]["scheme"]["method"] == "dynamic"


def test_plan_tries_the_static_quantizers_other_settings_and_ships_what_it_chose(planted, tmp_path):
    """QOperator instead of QDQ, reduce_range and uint8 weights are each timed on the chosen plan (interleaved,
    twice) and kept only if faster both times and within the budget; the scheme says what shipped, and the artifact
    is in that format."""
    import onnx

    b = run_build(spec(planted, tmp_path / "s", {"method": "auto", "schemes": ["static_u8s8"]}), tmp_path / "out")
    t = b.report["targets"]["x86_64"]
    assert b.code == 0 and t["status"] == "passed", t.get("reason")
    alts = t["build"]["plan"]["alternatives"]
    assert [a["tried"] for a in alts] == ["QOperator format", "reduce_range", "uint8 weights"]
    for a in alts:
        assert a["decision"], a
        if "p50_ms" in a:
            assert len(a["p50_ms"]["current"]) == len(a["p50_ms"]["trial"]) == 2
        assert a["decision"].startswith(f"{a['tried']}: faster" if a.get("kept") else ("kept", "ONNX Runtime"))
    scheme = t["build"]["scheme"]
    kept = {a["tried"] for a in alts if a.get("kept")}
    assert scheme["quant_format"] == ("QOperator" if "QOperator format" in kept else "QDQ")
    assert scheme["reduce_range"] is ("reduce_range" in kept)
    assert scheme["weight_type"] == ("uint8" if "uint8 weights" in kept else "int8")
    ops = {n.op_type for n in onnx.load(str(b.model_dir / t["artifact"])).graph.node}
    assert ("QLinearConv" in ops) is (scheme["quant_format"] == "QOperator"), ops


def test_force_float_override_is_obeyed_and_named(planted, tmp_path):
    b = run_build(spec(planted, tmp_path / "s", {"method": "auto", "schemes": ["static_u8s8"], "speed_search": False,
                                                 "force_float": ["Gemm"]}), tmp_path / "out")
    kept = {k["node"]: k["reason"] for k in b.report["targets"]["x86_64"]["build"]["plan"]["kept_float"]}
    assert kept["/classifier/Gemm"] == "forced float by the spec"


def test_force_int8_on_the_sensitive_layers_fails_the_stage(planted, tmp_path):
    s = spec(planted, tmp_path / "s", {"method": "auto", "schemes": ["static_u8s8"], "speed_search": False,
                                       "force_int8": ["/conv1/Conv", "/conv2/Conv"]})
    b = run_build(s, tmp_path / "out")
    t = b.report["targets"]["x86_64"]
    assert b.code == 4 and t["status"] == "failed" and t["failed_stage"] == "plan"
    assert "no int8 plan meets the budget" in t["reason"]


def test_unknown_override_name_is_a_stage_error_naming_it(planted, tmp_path):
    s = spec(planted, tmp_path / "s", {"method": "auto", "force_float": ["/nope/Conv"]})
    b = run_build(s, tmp_path / "out")
    t = b.report["targets"]["x86_64"]
    assert b.code == 4 and "/nope/Conv" in t["reason"] and "force_float" in t["reason"]


def test_arm64_plan_keeps_the_planted_ops_float_and_says_it_is_not_full_integer(planted, tmp_path):
    s = spec(planted, tmp_path / "s", None, arm64={"precision": "auto", "force_float": ["FULLY_CONNECTED"],
                                                  "speed_search": False})
    b = run_build(s, tmp_path / "out")
    t = b.report["targets"]["arm64"]
    assert b.code == 0 and t["status"] == "passed", t.get("reason")
    plan = t["build"]["plan"]
    # onnx2tf's full-integer model misses the budget: the planted activation wrecks its per-tensor int8 scale.
    assert plan["before"]["metric_drop"] > 0.002 >= plan["after"]["metric_drop"] >= t["metric_drop"] - 1e-9
    assert t["build"]["full_integer"] is False and plan["chosen"] == "int8 with float fallback"
    assert "float fallback" in t["build"]["route"]
    kept = {k["node"]: k for k in plan["kept_float"]}
    assert [k for k in kept.values() if k["reason"] == "forced float by the spec"] == \
        [k for k in kept.values() if k["kind"] == "FULLY_CONNECTED"] != []
    by_accuracy = [k for k in kept.values() if k["reason"].startswith("accuracy")]
    assert by_accuracy and all(k["kind"] == "CONV_2D" for k in by_accuracy)
    # The two planted convs are the most sensitive ops, and the search measured every op.
    top = plan["sensitivity_top"]
    assert {r["kind"] for r in top[:2]} == {"CONV_2D"} and top[0]["cosine"] < top[-1]["cosine"]
    assert plan["speed"] == "not searched: convert.speed_search = false"
    # The artifact is the plan: the kept ops run on float tensors, the rest on int8, and its I/O is still int8.
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(b.model_dir / t["artifact"]))
    tensors = interp.get_tensor_details()
    kinds = {}
    for op in interp._get_ops_details():
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED"):
            kinds.setdefault(tensors[op["outputs"][0]]["dtype"].__name__, []).append(op["op_name"])
    assert sorted(kinds["float32"]) == sorted(k["kind"] for k in kept.values())
    assert "int8" in kinds
    assert interp.get_input_details()[0]["dtype"].__name__ == "int8"


def test_arm64_plan_that_cannot_meet_the_budget_fails_the_stage(planted, tmp_path):
    s = spec(planted, tmp_path / "s", None, arm64={"precision": "auto", "force_int8": ["CONV_2D"],
                                                  "plan_time_budget_s": 60})
    b = run_build(s, tmp_path / "out")
    t = b.report["targets"]["arm64"]
    assert b.code == 4 and t["status"] == "failed" and t["failed_stage"] == "tflite"
    assert "no int8 plan meets the budget" in t["reason"]


@pytest.mark.slow
def test_arm64_plan_searches_speed_on_the_arm_cost_model_and_rebuilds_byte_identically(planted, tmp_path):
    """With the emulator set up (make arm-emulator), the arm64 plan counts ARM instructions of the accuracy plan,
    of onnx2tf's full-integer model and of the plan with each int8 op kind kept float, on cortex-a76; it keeps
    only what is cheaper and holds the budget, records every count, and (counts being deterministic) a rebuild
    from a cold cache ships the same bytes."""
    from toolchain.stages import arm_cost

    s = spec(planted, tmp_path / "s", None, arm64={"precision": "auto"})
    builds = []
    for i in range(2):
        arm_cost._COUNTED.clear()  # the rebuild counts on the emulator again, as a new process would
        builds.append(run_build(s, tmp_path / f"out{i}", cache_dir=tmp_path / f"cache{i}"))
    t = builds[0].report["targets"]["arm64"]
    assert builds[0].code == 0 and t["status"] == "passed", t.get("reason")
    speed = t["build"]["plan"]["speed"]
    assert isinstance(speed, dict) and speed["core"] == "cortex-a76", speed
    counts = speed["counts"]
    assert counts["accuracy plan"] > 0 and speed["chosen"] in counts
    assert speed["onnx2tf_full_integer_instructions"] == \
        counts["onnx2tf full integer (misses the budget; counted for comparison)"] > 0
    assert any(k.endswith(" kept float") for k in counts)  # every int8 kind was tried
    assert speed["chosen_instructions"] == min(counts[k] for k in counts if k == speed["chosen"])
    assert speed["chosen_instructions"] <= counts["accuracy plan"]
    for k in t["build"]["plan"]["kept_float"]:
        assert k["reason"].startswith(("accuracy", "speed: ")), k
    assert builds[1].report["targets"]["arm64"]["sha256"] == t["sha256"]


GLUE_TRAP = textwrap.dedent('''
    import torch
    from torch import nn


    class GlueTrap(nn.Module):
        """A residual-style Add whose output carries one channel 1000x larger than the rest (subtracted again
        after): a per-tensor int8 scale at that Add wipes out the other channels, whatever the convs do."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.classifier = nn.Linear(8 * 4, 10)
            offset = torch.zeros(1, 8, 1, 1)
            offset[0, 0] = 1000.0
            self.register_buffer("offset", offset)

        def forward(self, x):
            a = torch.relu(self.conv1(x))
            b = a + self.offset
            c = torch.relu(self.conv2(b - self.offset))
            return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(c, 2), 1))


    def glue_trap():
        return GlueTrap()
''')


def test_static_plan_searches_glue_ops_as_units_when_the_glue_loses_the_signal(tmp_path):
    """Keeping every compute node float cannot save this model (the signal dies in the Add's int8 output);
    the plan's static schemes also rank the glue ops, one unit per op type, and keep the Add float."""
    import torch
    from safetensors.torch import save_file

    factory = write_module(tmp_path, "glue_trap_models", GLUE_TRAP, "glue_trap")
    torch.manual_seed(0)
    m = factory().eval()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "w.safetensors"))
    x = np.random.default_rng(1).random((96, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "eval.npz", input=x[:64])
    np.savez(tmp_path / "cal.npz", input=x[64:])
    doc = {"model": {"name": "glue_trap", "factory": "glue_trap_models:glue_trap",
                     "weights": str(tmp_path / "w.safetensors"), "python_path": [str(tmp_path)]},
           "inputs": [{"name": "input", "shape": [1, 1, 8, 8]}], "outputs": [{"name": "logits"}],
           "data": {"calibration": str(tmp_path / "cal.npz"), "evaluation": str(tmp_path / "eval.npz")},
           "metric": {"name": "cosine"},
           "targets": {"x86_64": {"max_metric_drop": 0.002, "latency": {"warmup": 2, "runs": 20},
                                  "quantize": {"method": "auto", "schemes": ["static_u8s8"], "speed_search": False}}}}
    (tmp_path / "build.toml").write_text(dumps_toml(doc))
    b = run_build(tmp_path / "build.toml", tmp_path / "out")
    t = b.report["targets"]["x86_64"]
    assert b.code == 0 and t["status"] == "passed", t.get("reason")
    plan = t["build"]["plan"]
    assert plan["before"]["metric_drop"] > 0.002 >= plan["after"]["metric_drop"]
    assert any(r["node"] == "Add (every one)" for r in plan["sensitivity_top"])
    kept = {k["node"]: k for k in plan["kept_float"]}
    adds = [k for k in kept.values() if k["kind"] == "Add"]
    assert adds and all("glue ops as a unit" in k["reason"] for k in adds)
