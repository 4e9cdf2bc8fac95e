"""The coverage suite: the graph rewrites proven on graphs PyTorch really exports, the arm64 route plan and its
failure message, the table on a small subset (x86_64 and cuda: no onnx2tf), the README block and the CLI.

The whole suite (every pattern through every target, onnx2tf included) is marked slow."""

import subprocess
import sys

import numpy as np
import pytest

from toolchain import coverage, coverage_models, rewrites
from toolchain.errors import ToolchainError
from toolchain.stages import tflite

from conftest import REPO, toolchain_exe


def _export(model, pattern, path):
    """The pattern's model exported as the trace stage does (legacy exporter, opset 17, dynamic batch)."""
    import onnx
    import torch

    _, inputs, outputs, _ = coverage_models.PATTERNS[pattern]
    args = tuple(coverage_models.example_inputs(pattern, 1, 0))
    names = [n for n, _ in inputs]
    axes = {n: {0: "batch"} for n in names + outputs}
    # not under no_grad: there nn.TransformerEncoderLayer takes its fused fast path, which has no ONNX export
    torch.onnx.export(model, args, str(path), input_names=names, output_names=outputs, dynamic_axes=axes,
                      opset_version=17, dynamo=False)
    feeds = {n: t.numpy() for n, t in zip(names, coverage_models.example_inputs(pattern, 8, 1))}
    return onnx.load(str(path)), feeds


def _ops(model):
    return {n.op_type for n in model.graph.node}


@pytest.fixture(scope="module")
def transformer_onnx(tmp_path_factory):
    return _export(coverage_models.transformer(), "transformer", tmp_path_factory.mktemp("tr") / "t.onnx")


# ---- rewrites, each checked against the original ------------------------------------------------------------
def test_gelu_rewrite_removes_erf_within_its_bound(transformer_onnx):
    model, feeds = transformer_onnx
    assert "Erf" in _ops(model)
    out, records = rewrites.apply(model, ["gelu-tanh"])
    assert "Erf" not in _ops(out) and "Tanh" in _ops(out) and "Div" in _ops(model)
    assert [r["op"] for r in records[0]["nodes"]] == ["Erf (GELU)", "Erf (GELU)"]  # one per encoder layer
    assert records[0]["exact"] is False
    check = rewrites.verify(model, out, feeds, ["gelu-tanh"])
    (fig,) = check["outputs"]
    assert 0 < fig["max_abs_error"] <= fig["bound"]  # an approximation: not zero, but inside its bound
    assert fig["cosine_min"] > 0.9999
    assert "Erf" in _ops(model)  # the original is untouched


def test_check_refuses_a_rewrite_outside_the_bound(transformer_onnx):
    """The sigmoid form of GELU is off by ~1e-2: claimed as an exact rewrite (bound 1e-4), it is refused."""
    model, feeds = transformer_onnx
    out, _ = rewrites.apply(model, ["gelu-sigmoid"])
    with pytest.raises(rewrites.RewriteError, match="not trusted"):
        rewrites.verify(model, out, feeds, ["matmul-transpose"])
    rewrites.verify(model, out, feeds, ["gelu-sigmoid"])  # within its own, looser, bound


@pytest.mark.parametrize("pattern,op", [("gru", "GRU"), ("lstm", "LSTM")])
def test_rnn_unroll_is_exact(tmp_path, pattern, op):
    model, feeds = _export(getattr(coverage_models, pattern)(), pattern, tmp_path / "m.onnx")
    assert op in _ops(model)
    out, records = rewrites.apply(model, ["rnn-unroll"])
    assert not _ops(out) & {"GRU", "LSTM"}
    assert [n["steps"] for n in records[0]["nodes"]] == [16] * (2 if op == "LSTM" else 1)
    check = rewrites.verify(model, out, feeds, ["rnn-unroll"])
    assert check["max_abs_error"] < 1e-5


def test_rnn_unroll_refuses_what_it_cannot_unroll(tmp_path):
    import torch

    class BiLSTM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(8, 4, batch_first=True, bidirectional=True)

        def forward(self, x):
            return self.rnn(x)[0]

    path = tmp_path / "bi.onnx"
    torch.onnx.export(BiLSTM().eval(), (torch.randn(1, 16, 8),), str(path), input_names=["x"], dynamo=False,
                      opset_version=17)
    import onnx

    with pytest.raises(rewrites.RewriteError, match=r"LSTM node .*only forward direction"):
        rewrites.apply(onnx.load(str(path)), ["rnn-unroll"])


def test_matmul_transpose_is_exact(transformer_onnx):
    model, feeds = transformer_onnx
    out, records = rewrites.apply(model, ["matmul-transpose"])
    assert len(records[0]["nodes"]) == 2  # the attention input projection of each layer
    assert rewrites.verify(model, out, feeds, ["matmul-transpose"])["max_abs_error"] < 1e-5


# ---- arm64 routes and the failure message -------------------------------------------------------------------
def test_routes_follow_the_graph():
    assert [r["label"] for r in tflite.plan_routes(["Conv", "Relu"])] == ["onnx2tf int8"]
    assert [r["label"] for r in tflite.plan_routes(["MatMul", "Erf"])] == [
        "onnx2tf int8 + rewrite gelu-tanh", "onnx2tf int8 + rewrite gelu-sigmoid"]
    gru = tflite.plan_routes(["GRU", "MatMul"])
    assert [r["label"] for r in gru] == ["onnx2tf int8 -eru", "onnx2tf int8 + rewrite rnn-unroll"]
    assert gru[0]["flags"] == {"enable_rnn_unroll": True} and gru[1]["flags"] == {}
    assert tflite.params_for({}, "arm64.toml")["routes"] == "auto"
    with pytest.raises(ToolchainError, match=r"convert.routes: must be one of auto, plain"):
        tflite.params_for({"routes": "fast"}, "arm64.toml")


def test_failure_names_op_node_routes_and_advice(transformer_onnx):
    model, _ = transformer_onnx
    tried = [{"route": "onnx2tf int8 + rewrite gelu-tanh", "status": "failed", "op": "FlexErf", "node": None,
              "cause": "the converted model does not run on LiteRT: it holds TensorFlow Flex op(s) FlexErf"},
             {"route": "onnx2tf int8 + rewrite gelu-sigmoid", "status": "failed", "cause": "onnx2tf failed: x"}]
    text = tflite._failure(tried, 2, model)
    assert "Routes tried: [1] onnx2tf int8 + rewrite gelu-tanh: " in text and "[2] onnx2tf int8 + rewrite gelu" in text
    assert "ONNX op Erf (node /encoder/layers.0/Erf, /encoder/layers.1/Erf)" in text
    assert "What you can do: use the tanh form of GELU" in text and "the other targets still build" in text
    one = tflite._failure([{"route": "onnx2tf int8", "cause": "onnx2tf failed: ONNX op CastLike (node c) could not "
                            "be converted; boom", "op": "CastLike", "node": "c"}], 1, model)
    assert one.startswith("onnx2tf failed: ONNX op CastLike (node c)") and "replace the CastLike op" in one


# ---- the table ----------------------------------------------------------------------------------------------
def test_models_and_inputs_are_deterministic():
    a, b = coverage_models.mlp(), coverage_models.mlp()
    assert all((a.state_dict()[k] == b.state_dict()[k]).all() for k in a.state_dict())
    x, y = coverage_models.example_inputs("two_io", 4, 3), coverage_models.example_inputs("two_io", 4, 3)
    assert [t.shape[1:] for t in x] == [(1, 16, 16), (12,)] and all((p == q).all() for p, q in zip(x, y))


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    out = tmp_path_factory.mktemp("coverage out")
    lines = []
    rows = coverage.run(out, only=["two_io", "transformer"], targets=("x86_64", "cuda"), echo=lines.append)
    return out, rows, lines


def test_subset_rows(subset):
    _, rows, lines = subset
    assert [(r["pattern"], r["target"]) for r in rows] == [("two_io", "x86_64"), ("two_io", "cuda"),
                                                           ("transformer", "x86_64"), ("transformer", "cuda")]
    assert len(lines) == 2 and lines[0].startswith("coverage two_io: x86_64 ")
    for r in rows:
        assert r["status"].startswith("pass"), r
        assert r["sqnr_db"] >= coverage.MIN_SQNR_DB[r["target"]] and r["cosine"] > 0.9, r
    x86, cuda = rows[2], rows[3]
    assert x86["route"].startswith("ORT static QDQ")
    # the transformer's fp16 route: attention's float32 Casts kept, the Transpose moved past its MatMul
    assert "Cast node(s) kept float32" in cuda["route"] and "rewrite matmul-transpose" in cuda["route"]
    if cuda["status"] == "pass (CPU provider)":
        assert cuda["measured_on"] == "fp16 on CPU provider"
    assert rows[0]["top1_agreement"] >= 80 and rows[2]["top1_agreement"] is None  # logits / an embedding


def test_subset_table_and_readme(subset, tmp_path):
    out, rows, _ = subset
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{coverage.START}\nold table\n{coverage.END}\n\nafter\n")
    table = coverage.write_outputs(rows, out, readme, ("x86_64", "cuda"))
    assert (out / "coverage.md").read_text() == table
    assert "| pattern | `x86_64` | `cuda` |" in table
    assert "| `two_io` | `x86_64` | ORT static QDQ" in table
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n\n") and text.endswith(f"{coverage.END}\n\nafter\n")
    assert "old table" not in text and table.strip() in text
    assert coverage.replace_block(text, table) == text  # regenerating the same table changes nothing


def test_failed_rows_are_named_in_the_table():
    entry = {"status": "failed", "failed_stage": "tflite", "format": "tflite", "precision": "int8",
             "reason": "stage tflite failed: no conversion route | x. Routes tried: [1] onnx2tf int8: boom"}
    row = coverage.row_for("gru", "arm64", entry)
    assert row["status"] == "FAIL" and row["cosine"] is None
    table = coverage.markdown([row], ["arm64"])
    assert "**FAIL** -" in table and row["sqnr_db"] is None and "- `gru` on `arm64`: stage tflite failed: no conversion route / x." in table


def test_readme_has_one_coverage_block():
    text = (REPO / "README.md").read_text()
    assert text.count(coverage.START) == 1 and text.count(coverage.END) == 1
    with pytest.raises(ToolchainError, match="coverage"):
        coverage.replace_block("no markers here", "table")


def test_cli_coverage(subset, tmp_path):
    """The subset again through the command line: nothing rebuilds (the builds are up to date), the table is
    printed and written into the README's block."""
    out, _, _ = subset
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{coverage.START}\n{coverage.END}\n")
    p = subprocess.run([toolchain_exe(), "coverage", "--only", "two_io", "-t", "x86_64", "-t", "cuda", "-o", str(out),
                        "--readme", str(readme)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| `two_io`" in p.stdout and "coverage two_io: x86_64 pass" in p.stderr
    assert "| `two_io` | `x86_64` | ORT static QDQ" in readme.read_text()
    with pytest.raises(ToolchainError, match="unknown pattern 'nope'"):
        coverage.run(tmp_path / "c", only=["nope"])


# ---- the whole suite ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_pattern_through_every_target(tmp_path):
    """The benchmark: every pattern through every target, every output at SQNR >= 15 dB (int8) / 40 dB (fp16)."""
    rows = coverage.run(tmp_path / "coverage", echo=None)
    table = coverage.markdown(rows)
    failed = [r for r in rows if not r["status"].startswith("pass")]
    assert not failed, table
    assert {r["pattern"] for r in rows} == set(coverage_models.PATTERNS)
    arm = {r["pattern"]: r["route"] for r in rows if r["target"] == "arm64"}
    assert arm["transformer"] == "onnx2tf int8 + rewrite gelu-tanh"
    assert arm["gru"].startswith("onnx2tf int8 -eru") and arm["residual"] == "onnx2tf int8"


@pytest.mark.slow
def test_mistranslated_graph_fails_naming_every_route(tmp_path, write_spec):
    """The tiny GRU's hidden size equals its sequence length: onnx2tf (-eru or the unrolled graph alike) builds a
    float32 model that computes something else. The stage says so for each route, x86_64 still passes."""
    from conftest import run_build

    spec = write_spec(tmp_path / "spec", "gru_seq", targets={"arm64": {"max_metric_drop": 25.0}})
    b = run_build(spec, tmp_path / "out")
    arm = b.report["targets"]["arm64"]
    assert b.code == 4 and arm["failed_stage"] == "tflite" and b.report["targets"]["x86_64"]["status"] == "passed"
    assert "[1] onnx2tf int8 -eru: the converted float32 model does not compute what the ONNX graph" in arm["reason"]
    assert "[2] onnx2tf int8 + rewrite rnn-unroll: " in arm["reason"]
    assert "two dimensions are equal" in arm["reason"] and "the other targets still build" in arm["reason"]


def test_module_has_no_heavy_imports():
    """The coverage module is imported by the CLI: torch and TensorFlow only when the suite runs."""
    code = "import sys, toolchain.coverage, toolchain.rewrites; print('torch' in sys.modules, 'tensorflow' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.split() == ["False", "False"]
