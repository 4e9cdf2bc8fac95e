"""Runtime options are part of the artifact: the candidate validation chooses is recorded with the session settings
the figures were taken with (threads), and applied by the validate path to accuracy, latency and the optimized-graph
op counts alike."""

import tomllib
from pathlib import Path

from conftest import dumps_toml

REPO = Path(__file__).resolve().parents[1]


def test_chosen_runtime_options_are_recorded_and_applied(tmp_path, write_spec):
    import io

    from toolchain.api import build
    from toolchain.progress import Progress

    doc = tomllib.loads((REPO / "targets" / "x86_64.toml").read_text())
    # one candidate, so it is the choice: ONNX Runtime without graph optimizations (no QDQ fusion at all)
    doc["runtime_options"] = [{"name": "unfused", "graph_optimization": "disabled"}]
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "x86_64.toml").write_text(dumps_toml(doc))
    spec = write_spec(tmp_path / "spec")
    report, code = build(spec, tmp_path / "out", targets_dir=targets, progress=Progress("t", stream=io.StringIO()))
    t = report["targets"]["x86_64"]
    assert code == 0 and t["status"] == "passed", t.get("reason")
    ro = t["runtime_options"]
    assert ro["chosen"] == "unfused" and ro["options"]["graph_optimization"] == "disabled"
    assert ro["options"]["session"] == {"intra_op_num_threads": 1, "inter_op_num_threads": 1}
    assert ro["accuracy_measured_with"] == "unfused"
    assert t["latency_protocol"]["artifact_runtime_options"] == "unfused"
    # the op counts are those of the graph ONNX Runtime runs with these options: nothing fused into QLinear* ops
    ops = t["optimized_op_counts"]
    assert ops.get("QuantizeLinear", 0) > 0 and not any(k.startswith("QLinear") for k in ops), ops
