"""The x86 plan on a MobileNetV3-style model (HardSwish, squeeze-excite with HardSigmoid): its static variants run
those activations in int8 (stages/qdq_activations.py), the float-activation twin is timed with the candidates at the
closing, and the decision, its timings and what shipped are recorded (stages/plan_hard_activations.py)."""

import textwrap

import numpy as np

from conftest import dumps_toml, run_build, write_module

SOURCE = textwrap.dedent('''
    import torch
    from torch import nn


    class HardBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.expand = nn.Conv2d(3, 16, 3, padding=1)
            self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.fc1, self.fc2 = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 16, 1)
            self.project = nn.Conv2d(16, 24, 1)
            self.classifier = nn.Linear(24, 10)

        def forward(self, x):
            x = nn.functional.hardswish(self.expand(x))
            x = nn.functional.hardswish(self.dw(x))
            s = nn.functional.adaptive_avg_pool2d(x, 1)
            x = x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))
            x = nn.functional.adaptive_avg_pool2d(self.project(x), 1)
            return self.classifier(torch.flatten(x, 1))


    def hard_block():
        return HardBlock()
''')


def test_plan_times_int8_against_float_hard_activations_and_ships_what_it_chose(tmp_path, monkeypatch):
    import onnx
    import torch
    from safetensors.torch import save_file

    from toolchain.stages import plan_recipe

    # Not the ORT recipe: at this lenient budget it holds and can win the closing timing by noise, and it has no
    # float-activation twin (it is made as the docs make it; tests/test_plan_recipe.py covers it). CI caught that.
    monkeypatch.setattr(plan_recipe, "candidate", lambda *a, **k: None)

    factory = write_module(tmp_path, "hard_block_models", SOURCE, "hard_block")
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in factory().eval().state_dict().items()}, str(tmp_path / "w.safetensors"))
    x = np.random.default_rng(0).random((64, 3, 16, 16), dtype=np.float32)
    np.savez(tmp_path / "eval.npz", input=x[:32])
    np.savez(tmp_path / "cal.npz", input=x[32:])
    doc = {"model": {"name": "hard_block", "factory": "hard_block_models:hard_block",
                     "weights": str(tmp_path / "w.safetensors"), "python_path": [str(tmp_path)]},
           "inputs": [{"name": "input", "shape": [1, 3, 16, 16]}], "outputs": [{"name": "logits"}],
           "data": {"calibration": str(tmp_path / "cal.npz"), "evaluation": str(tmp_path / "eval.npz")},
           "metric": {"name": "cosine"},
           "targets": {"x86_64": {"max_metric_drop": 0.5, "latency": {"warmup": 2, "runs": 20},
                                  "quantize": {"method": "auto", "schemes": ["static_u8s8"]}}}}
    (tmp_path / "build.toml").write_text(dumps_toml(doc))
    b = run_build(tmp_path / "build.toml", tmp_path / "out")
    t = b.report["targets"]["x86_64"]
    assert b.code == 0 and t["status"] == "passed", t.get("reason")
    plan = t["build"]["plan"]
    hard = plan["hard_activations"]
    assert set(hard["p50_ms"]) == {"int8", "float"} and all(v > 0 for v in hard["p50_ms"].values()), hard
    assert any(s.startswith("hard activations: ") for s in plan["steps"]), plan["steps"]
    shipped = "float" if hard.get("twin") else "int8"
    assert hard["decision"].startswith(shipped) and t["build"]["scheme"]["hard_activations"] == shipped
    assert (plan["chosen"].endswith("(float hard activations)")) is (shipped == "float")
    ops = {n.op_type for n in onnx.load(str(b.model_dir / t["artifact"])).graph.node}
    assert bool(ops & {"HardSwish", "HardSigmoid"}) is (shipped == "float"), ops  # every node int8 at this budget
