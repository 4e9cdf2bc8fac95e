"""Multi-input specs with integer inputs, dynamic batch and sequence axes, an embedding output and the
retrieval metrics, on a tiny transformer (token ids + attention mask -> normalised mean-pooled embedding)."""

import textwrap

import numpy as np
import pytest

from conftest import dumps_toml, run_build, write_module

SOURCE = textwrap.dedent('''
    import torch
    from torch import nn


    class TinyEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 32)
            self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.proj = nn.Linear(32, 16)

        def forward(self, input_ids, attention_mask):
            x = self.layer(self.embed(input_ids))
            m = attention_mask.unsqueeze(-1).to(x.dtype)
            pooled = (x * m).sum(1) / m.sum(1).clamp(min=1.0)
            e = self.proj(pooled)
            return e / e.norm(dim=-1, keepdim=True).clamp(min=1e-6)


    def tiny_encoder():
        return TinyEncoder()
''')


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tiny encoder")
    tiny_encoder = write_module(root, "tiny_encoder", SOURCE, "tiny_encoder")
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in tiny_encoder().eval().state_dict().items()}, str(root / "w.safetensors"))
    rng = np.random.default_rng(0)
    n, seq = 40, 12
    ids = rng.integers(1, 50, (n, seq)).astype(np.int64)
    lengths = rng.integers(4, seq + 1, n)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    ids *= mask
    # queries 0..9, their documents 10..19 (a near copy: one token changed), candidates 10..39
    ids[10:20] = ids[:10]
    mask[10:20] = mask[:10]
    ids[10:20, 0] = (ids[10:20, 0] % 49) + 1
    np.savez(root / "eval.npz", input_ids=ids, attention_mask=mask, query_idx=np.arange(10),
             doc_idx=np.arange(10, 20), candidate_idx=np.arange(10, 40))
    np.savez(root / "cal.npz", input_ids=ids[20:], attention_mask=mask[20:])
    return root


def spec(root, directory, metric, targets):
    directory.mkdir(parents=True, exist_ok=True)
    doc = {"model": {"name": "tiny_encoder", "factory": "tiny_encoder:tiny_encoder",
                     "weights": str(root / "w.safetensors"), "python_path": [str(root)]},
           "inputs": [{"name": n, "shape": [1, 12], "dtype": "int64", "dynamic_axes": {"0": "batch", "1": "seq"}}
                      for n in ("input_ids", "attention_mask")],
           "outputs": [{"name": "embedding"}],
           "data": {"calibration": str(root / "cal.npz"), "evaluation": str(root / "eval.npz")},
           "metric": metric, "targets": targets}
    path = directory / "build.toml"
    path.write_text(dumps_toml(doc))
    return path


def test_embedding_model_builds_with_retrieval_metrics(encoder, tmp_path):
    s = spec(encoder, tmp_path / "s", {"name": "retrieval_agreement", "also": ["recall_at_1", "cosine"]},
             {"x86_64": {"max_metric_drop": 20.0, "quantize": {"method": "dynamic"},
                         "latency": {"warmup": 2, "runs": 20}},
              "cuda": {"max_metric_drop": 20.0}})
    b = run_build(s, tmp_path / "out")
    assert b.code == 0, {n: t.get("reason") for n, t in b.report["targets"].items()}
    ref = b.report["reference"]
    assert ref["metric"] == "retrieval_agreement" and ref["value"] == 100.0
    assert set(ref["also"]) == {"recall_at_1", "cosine"} and ref["also"]["cosine"] == pytest.approx(1.0)
    x86 = b.report["targets"]["x86_64"]
    assert x86["status"] == "passed" and 0.0 <= x86["metric"] <= 100.0
    assert set(x86["metrics"]) == {"recall_at_1", "cosine"}
    assert x86["metrics"]["cosine"] == pytest.approx(x86["agreement"]["0"]["cosine_mean"])
    assert x86["metrics"]["cosine"] > 0.95
    assert "top1_agreement" not in x86["agreement"]["0"]  # argmax over embedding dims means nothing
    import onnx

    g = onnx.load(str(b.model_dir / x86["artifact"])).graph
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.input]
    assert dims == [["batch", "seq"], ["batch", "seq"]]  # dynamic batch and sequence survive quantization
    assert {i.type.tensor_type.elem_type for i in g.input} == {onnx.TensorProto.INT64}
    cuda = b.report["targets"]["cuda"]
    assert cuda["cpu_check"]["metrics"]["cosine"] > 0.999 or cuda["status"] == "passed"


def test_retrieval_metric_needs_its_index_arrays(encoder, tmp_path):
    from toolchain.errors import DataError

    with np.load(encoder / "eval.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "candidate_idx"}
    np.savez(tmp_path / "eval.npz", **arrays)
    s = spec(encoder, tmp_path / "s", {"name": "retrieval_agreement"},
             {"x86_64": {"max_metric_drop": 20.0, "quantize": {"method": "dynamic"}}})
    text = s.read_text().replace(str(encoder / "eval.npz"), str(tmp_path / "eval.npz"))
    s.write_text(text)
    with pytest.raises(DataError, match=r"no array 'candidate_idx' \(needed by metric retrieval_agreement\)"):
        run_build(s, tmp_path / "out")
