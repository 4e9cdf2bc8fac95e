"""The x86 plan's percentile-calibrated twin (stages/plan_calibration.py) on a model whose calibration data holds one
outlier pixel (one value of ~400k, like a hot pixel in a camera frame): MinMax ranges stretch to it, so int8 steps
are too coarse for the ordinary images and the MinMax plan keeps nodes float; percentile ranges clip it, and the twin
gives those nodes back to int8 and joins the closing timing."""

import textwrap

import numpy as np
import pytest

from conftest import dumps_toml, run_build, write_module

SOURCE = textwrap.dedent('''
    import torch
    from torch import nn


    class Pointwise(nn.Module):
        """1x1 convs only: the outlier pixel reaches a handful of values in every tensor, never a patch."""

        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(8, 4)

        def forward(self, x):
            x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            return self.classifier(torch.flatten(self.pool(x), 1))


    def pointwise():
        return Pointwise()
''')


@pytest.fixture(scope="module")
def hot_pixel(tmp_path_factory):
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("hot pixel model")
    factory = write_module(root, "hot_pixel_models", SOURCE, "pointwise")
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in factory().state_dict().items()}, str(root / "w.safetensors"))
    x = np.random.default_rng(0).standard_normal((64, 3, 64, 64)).astype(np.float32)
    cal = x[32:].copy()
    cal[0, 0, 10, 10] = 400.0  # one hot pixel in one calibration image
    np.savez(root / "eval.npz", input=x[:32])
    np.savez(root / "cal.npz", input=cal)
    return root


def test_percentile_twin_gives_accuracy_float_nodes_back_and_joins_the_closing_timing(hot_pixel, tmp_path):
    doc = {"model": {"name": "hot_pixel", "factory": "hot_pixel_models:pointwise",
                     "weights": str(hot_pixel / "w.safetensors"), "python_path": [str(hot_pixel)]},
           "inputs": [{"name": "input", "shape": [1, 3, 64, 64]}], "outputs": [{"name": "logits"}],
           "data": {"calibration": str(hot_pixel / "cal.npz"), "evaluation": str(hot_pixel / "eval.npz")},
           "metric": {"name": "cosine"},
           "targets": {"x86_64": {"max_metric_drop": 0.002, "latency": {"warmup": 2, "runs": 20},
                                  "quantize": {"method": "auto", "schemes": ["static_u8s8"]}}}}
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "build.toml").write_text(dumps_toml(doc))
    b = run_build(tmp_path / "s" / "build.toml", tmp_path / "out")
    t = b.report["targets"]["x86_64"]
    assert b.code == 0 and t["status"] == "passed", t.get("reason")
    plan = t["build"]["plan"]
    steps = plan["steps"]
    # MinMax: every node int8 misses (the hot pixel's range), so the plan keeps nodes float for accuracy
    assert steps[1].startswith("static_u8s8: all compute nodes int8") and "(misses)" in steps[1], steps
    minmax = plan["candidates"]["static_u8s8"]
    assert minmax["kept_float"] >= 1
    # the twin: the same plan with percentile ranges holds, and gives nodes back to int8
    twin = plan["candidates"]["static_u8s8_percentile"]
    assert twin["kept_float"] < minmax["kept_float"], steps
    assert any(s.startswith("static_u8s8_percentile:") and "back to int8" in s and "budget still holds" in s
               for s in steps), steps
    assert twin["p50_ms"] > 0 and minmax["p50_ms"] > 0  # both were in the closing timing
    # what shipped says how it was calibrated
    chosen = plan["chosen"]
    assert t["build"]["scheme"]["calibrate_method"] == ("percentile" if chosen == "static_u8s8_percentile"
                                                        else "minmax")
