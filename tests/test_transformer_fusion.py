"""The x86 plan's fused-transformer scheme (stages/transformer_fusion.py) on a tiny BERT-like encoder (2 layers,
hidden 32, 4 heads, exact Erf GELU, additive mask bias, masked mean pooling: MiniLM's structure at toy size), with
the real ONNX Runtime optimizer, quantizer and CPU sessions; and on a CNN, where the scheme must not be tried."""

import textwrap

import numpy as np
import pytest

from conftest import dumps_toml, run_build, write_module

SOURCE = textwrap.dedent('''
    import math

    import torch
    from torch import nn

    H, HEADS, FF, VOCAB = 32, 4, 64, 50


    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(H, H) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(H), nn.LayerNorm(H)
            self.up, self.down = nn.Linear(H, FF), nn.Linear(FF, H)

        def heads(self, x):
            return x.reshape(x.shape[0], -1, HEADS, H // HEADS).transpose(1, 2)

        def forward(self, x, bias):
            q, k, v = self.heads(self.q(x)), self.heads(self.k(x)), self.heads(self.v(x))
            p = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * (1 / math.sqrt(H // HEADS)) + bias, -1)
            a = torch.matmul(p, v).transpose(1, 2).reshape(x.shape[0], -1, H)
            x = self.ln1(x + self.o(a))
            return self.ln2(x + self.down(nn.functional.gelu(self.up(x))))


    class TinyBert(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.pos = nn.Embedding(VOCAB, H), nn.Embedding(64, H)
            self.ln = nn.LayerNorm(H)
            self.layers = nn.ModuleList([Layer(), Layer()])

        def forward(self, input_ids, attention_mask):
            mask = attention_mask.to(torch.float32)
            bias = ((1.0 - mask) * -10000.0)[:, None, None, :]
            x = self.ln(self.emb(input_ids) + self.pos.weight[: input_ids.shape[1]])
            for layer in self.layers:
                x = layer(x, bias)
            m = mask.unsqueeze(-1)
            return (x * m).sum(1) / m.sum(1).clamp(min=1e-9)


    def tiny_bert():
        return TinyBert()
''')

CNN = textwrap.dedent('''
    import torch
    from torch import nn


    def tiny_cnn():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
''')
SEQ = 16


def tokens(n, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 50, (n, SEQ)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[::3, SEQ - 4:] = 0  # some padding, so the mask bias matters
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """(root with module, weights and data; the exported fp32 ONNX)."""
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tiny bert")
    factory = write_module(root, "tiny_bert_models", SOURCE, "tiny_bert")
    torch.manual_seed(0)
    m = factory().eval()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(root / "w.safetensors"))
    np.savez(root / "eval.npz", **tokens(32, 1))
    np.savez(root / "cal.npz", **tokens(16, 2))
    onnx_path = root / "fp32.onnx"
    feed = tokens(1, 3)
    torch.onnx.export(m, (torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])),
                      str(onnx_path), input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                      dynamic_axes={"input_ids": {0: "b"}, "attention_mask": {0: "b"}}, opset_version=17,
                      dynamo=False)
    return root, onnx_path


def _outputs(path, data):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, data)[0]


def test_transformer_detection_takes_the_encoder_and_not_a_cnn(tiny_bert, tmp_path):
    import onnx
    import torch

    from toolchain.stages.transformer_fusion import transformer_reason

    assert transformer_reason(onnx.load(str(tiny_bert[1]))) is None
    cnn = write_module(tmp_path, "tiny_cnn_models", CNN, "tiny_cnn")().eval()
    torch.onnx.export(cnn, torch.zeros(1, 1, 8, 8), str(tmp_path / "cnn.onnx"), opset_version=17, dynamo=False)
    assert "no LayerNormalization" in transformer_reason(onnx.load(str(tmp_path / "cnn.onnx")))


def test_fused_graph_is_fused_keeps_its_matmul_names_and_its_dynamic_int8_stays_close(tiny_bert, tmp_path):
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from toolchain.stages import precision, transformer_fusion

    fp32 = tiny_bert[1]
    fused = tmp_path / "fused.onnx"
    ops = transformer_fusion.fuse(fp32, fused)
    assert ops.get("SkipLayerNormalization", 0) >= 3 and ops.get("FastGelu") == 2, ops
    assert "Attention" not in ops  # attention fusion stays off (module doc)
    # The plan's search units come from the pre-processed graph: every one must name a MatMul of the fused graph.
    quant_pre_process(str(fp32), str(tmp_path / "prep.onnx"), skip_symbolic_shape=True)
    units = dict(precision.compute_nodes(onnx.load(str(tmp_path / "prep.onnx"))))
    assert units and units == dict(precision.compute_nodes(onnx.load(str(fused))))

    data = tokens(32, 1)
    ref = _outputs(fp32, data)
    assert np.allclose(_outputs(fused, data), ref, atol=5e-3)  # GELU's tanh approximation, nothing else

    q = transformer_fusion.dynamic(fused, tmp_path / "q.onnx")
    graph_ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger", "FastGelu", "SkipLayerNormalization"} <= graph_ops
    out = _outputs(q, data)
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.mean() > 0.99, cos

    # A node kept float by the plan stays a float MatMul in the fused graph's int8 variant.
    keep = sorted(units)[0]
    g = onnx.load(str(transformer_fusion.dynamic(fused, tmp_path / "q2.onnx", exclude=[keep]))).graph
    assert [n.op_type for n in g.node if n.name == keep] == ["MatMul"]


def _spec(root, directory, schemes, model="tiny_bert_models:tiny_bert", inputs=None, **quantize):
    directory.mkdir(parents=True, exist_ok=True)
    inputs = inputs or [{"name": "input_ids", "shape": [1, SEQ], "dtype": "int64"},
                        {"name": "attention_mask", "shape": [1, SEQ], "dtype": "int64"}]
    doc = {"model": {"name": "tiny", "factory": model, "python_path": [str(root)],
                     "weights": str(root / "w.safetensors")},
           "inputs": inputs, "outputs": [{"name": "embedding"}],
           "data": {"calibration": str(root / "cal.npz"), "evaluation": str(root / "eval.npz")},
           "metric": {"name": "cosine"},
           "targets": {"x86_64": {"max_metric_drop": 0.02, "latency": {"warmup": 2, "runs": 20},
                                  "quantize": {"method": "auto", "schemes": schemes, "time_budget_s": 120,
                                               **quantize}}}}
    path = directory / "build.toml"
    path.write_text(dumps_toml(doc))
    return path


@pytest.mark.slow
def test_plan_measures_the_fused_scheme_on_a_transformer_and_ships_a_valid_artifact(tiny_bert, tmp_path):
    """Both dynamic schemes are made, judged and timed side by side; the fused one ships only if confirmed >= 5%
    faster than the unfused one, the artifact passes the validate stage's gates either way, and the meta says what
    was fused, how the decision was measured and whether it was chosen."""
    import onnx

    root = tiny_bert[0]
    b = run_build(_spec(root, tmp_path / "s", ["dynamic_s8", "dynamic_s8_fused"]), tmp_path / "out")
    t = b.report["targets"]["x86_64"]
    assert b.code == 0 and t["status"] == "passed", t.get("reason")
    plan = t["build"]["plan"]
    # ONNX Runtime's recipe is a candidate too where it holds the budget (plan_recipe.py)
    assert set(plan["candidates"]) - {"ort_recipe"} == {"dynamic_s8", "dynamic_s8_fused"}, plan["steps"]
    fusion = plan["transformer_fusion"]
    assert fusion["fused_ops"]["FastGelu"] == 2 and fusion["chosen"] is (plan["chosen"] == "dynamic_s8_fused")
    p50 = {s: c["p50_ms"] for s, c in plan["candidates"].items()}
    rival = min((s for s in p50 if s != "dynamic_s8_fused"), key=p50.get)
    if p50[rival] <= p50["dynamic_s8_fused"]:  # not fastest in the closing timing: the fastest other one ships
        assert plan["chosen"] == rival and "confirmation" not in fusion
    else:  # fastest: it ships only if >= 5% faster than the fastest unfused scheme in two more interleaved A/Bs
        c = fusion["confirmation"]
        assert c["against"] == rival and len(c["p50_ms"]["dynamic_s8_fused"]) == 2, c
        faster = all(t < 0.95 * u for t, u in zip(c["p50_ms"]["dynamic_s8_fused"], c["p50_ms"][rival]))
        assert fusion["chosen"] is faster, c
    ops = {n.op_type for n in onnx.load(str(b.model_dir / t["artifact"])).graph.node}
    assert ("FastGelu" in ops) is fusion["chosen"], ops
    if plan["chosen"] == "ort_recipe":  # static QDQ: int8 through Q/DQ pairs, no MatMulInteger
        assert "QuantizeLinear" in ops and "MatMulInteger" not in ops, ops
        return
    # int8 MatMuls unless the speed search kept them float (on a model this small float can be faster)
    assert ("MatMulInteger" in ops) is (plan["int8_compute_nodes"] > 0), (ops, plan["steps"])


@pytest.mark.slow
def test_fused_artifact_passes_the_validate_stage(tiny_bert, tmp_path):
    """The fused scheme alone: the only candidate ships without a confirmation A/B, and the artifact (com.microsoft
    FastGelu / SkipLayerNormalization with dynamic int8 MatMuls) is judged by the normal validate stage's gates."""
    import onnx

    # speed_search off: on a model this small float MatMuls can be faster, and the plan would rightly keep them
    b = run_build(_spec(tiny_bert[0], tmp_path / "s", ["dynamic_s8_fused"], speed_search=False), tmp_path / "out")
    t = b.report["targets"]["x86_64"]
    assert b.code == 0 and t["status"] == "passed", t.get("reason")
    fusion = t["build"]["plan"]["transformer_fusion"]
    assert fusion["chosen"] and fusion["confirmation"]["decision"].endswith("the only scheme that meets the budget")
    ops = {n.op_type for n in onnx.load(str(b.model_dir / t["artifact"])).graph.node}
    assert {"FastGelu", "SkipLayerNormalization", "DynamicQuantizeLinear"} <= ops, ops
    assert t["metric_drop"] <= 0.02


@pytest.mark.slow
def test_plan_does_not_try_the_fused_scheme_on_a_cnn(tmp_path):
    from safetensors.torch import save_file

    root = tmp_path / "cnn"
    root.mkdir()
    cnn = write_module(root, "tiny_cnn_models2", CNN, "tiny_cnn")()
    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, str(root / "w.safetensors"))
    x = np.random.default_rng(0).random((48, 1, 8, 8), dtype=np.float32)
    np.savez(root / "eval.npz", input=x[:32])
    np.savez(root / "cal.npz", input=x[32:])
    b = run_build(_spec(root, tmp_path / "s", ["dynamic_s8_fused", "static_u8s8"], "tiny_cnn_models2:tiny_cnn",
                        [{"name": "input", "shape": [1, 1, 8, 8]}]), tmp_path / "out")
    t = b.report["targets"]["x86_64"]
    assert b.code == 0 and t["status"] == "passed", t.get("reason")
    plan = t["build"]["plan"]
    assert any(st.startswith("dynamic_s8_fused: not tried (no LayerNormalization in the graph")
               for st in plan["steps"]), plan["steps"]
    assert set(plan["candidates"]) - {"ort_recipe"} == {"static_u8s8"} and "transformer_fusion" not in plan
