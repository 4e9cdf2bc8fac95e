"""plan_admission: which schemes the x86 plan searches. cannot_win: a scheme whose every-node-int8 variant misses the
budget is only searched if that variant is faster than a plan already found; too_slow_to_search: a scheme far slower
than a plan found gets no speed search (keeping nodes float moves it toward fp32, not past the other plan). Timed for
real with ONNX Runtime on chains of MatMuls of different lengths."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from toolchain.stages import plan_admission, precision


def chain(path, n):
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float32) / 16, f"w{i}")
               for i in range(n)]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}" if i < n - 1 else "y"])
             for i in range(n)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_a_scheme_slower_than_a_found_plan_even_all_int8_is_dropped_unsearched(tmp_path):
    slow, fast = chain(tmp_path / "slow.onnx", 8), chain(tmp_path / "fast.onnx", 1)
    runner = precision.Runner(1, ["x"])
    feed = {"x": np.ones((1, 256), np.float32)}

    def timed(paths, runs, warmup):
        return runner.latency(paths, feed, runs=runs, warmup=warmup)

    steps = []
    assert plan_admission.cannot_win("static_u8s8", slow, {"dynamic_s8": {"path": fast}}, timed, steps)
    assert len(steps) == 1 and steps[0].startswith("static_u8s8: every node int8 misses the budget")
    assert "not faster than dynamic_s8" in steps[0] and "dropped without an accuracy search" in steps[0]

    # faster than every plan found so far: the search goes on, and nothing is recorded for it here
    steps = []
    assert not plan_admission.cannot_win("static_u8s8", fast, {"dynamic_s8": {"path": slow}}, timed, steps)
    assert steps == []


def test_a_scheme_far_slower_than_a_found_plan_gets_no_speed_search(tmp_path):
    """Dynamic int8 of a CNN runs at about fp32's speed, far behind the static plan already found: keeping kinds
    float moves it toward fp32, so its speed search is skipped and the step says why. Within LOSER_FACTOR of the
    plan found, the search goes on."""
    eight, four, one = (chain(tmp_path / f"c{n}.onnx", n) for n in (8, 4, 1))
    runner = precision.Runner(1, ["x"])
    feed = {"x": np.ones((1, 256), np.float32)}

    def timed(paths, runs, warmup):
        return runner.latency(paths, feed, runs=runs, warmup=warmup)

    steps = []
    assert plan_admission.too_slow_to_search("dynamic_s8", eight, {"static_u8s8": {"path": one}}, eight, timed, steps)
    assert "more than 1.5x slower than static_u8s8" in steps[0] and "dropped without a speed search" in steps[0]
    steps = []
    assert not plan_admission.too_slow_to_search("dynamic_s8", four, {"static_u8s8": {"path": four}}, eight, timed,
                                                 steps)
    assert steps == []
