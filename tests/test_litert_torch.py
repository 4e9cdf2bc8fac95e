"""The litert_torch stage: PyTorch -> torch.export (.pt2) -> litert-torch in the side venv (.venv-litert) ->
fp32 TFLite -> ai-edge-quantizer dynamic int8, run here on the project's own LiteRT.

The conversion needs the side venv (`make venv-litert`) and is marked slow; without the venv it is skipped with
the reason. Spec checking and the missing-venv error run by default."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from toolchain.errors import SpecError, StageError
from toolchain.spec import TensorSpec
from toolchain.stages import litert_torch

SIDE_VENV = litert_torch.venv_dir(litert_torch.DEFAULTS)
HAVE_SIDE_VENV = (SIDE_VENV / ".installed").is_file()
VOCAB, SEQ, WIDTH, HIDDEN = 1000, 16, 64, 256


def _tiny_encoder():
    """Transformer-ish: token embedding, a linear layer with GELU, masked mean pooling; int64 ids in."""
    import torch
    from torch import nn

    class TinyEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, WIDTH)
            self.up = nn.Linear(WIDTH, HIDDEN)
            self.act = nn.GELU()
            self.down = nn.Linear(HIDDEN, WIDTH)

        def forward(self, input_ids, attention_mask):
            h = self.down(self.act(self.up(self.embed(input_ids))))
            m = attention_mask.to(torch.float32).unsqueeze(-1)
            return (h * m).sum(dim=1) / torch.clamp(m.sum(dim=1), min=1e-9)

    torch.manual_seed(0)
    return TinyEncoder().eval()


def _spec():
    inputs = (TensorSpec("input_ids", (1, SEQ), "int64", {0: "batch", 1: "sequence"}),
              TensorSpec("attention_mask", (1, SEQ), "int64", {0: "batch", 1: "sequence"}))
    return SimpleNamespace(inputs=inputs, outputs=(TensorSpec("embedding", ()),), name="tiny_encoder",
                           version="1.0.0", path=Path("build.toml"))


# ---- the spec's convert table (default run) -------------------------------------------------------------------
def test_params_defaults_and_errors():
    p = litert_torch.params_for({"converter": "litert-torch"}, "arm64.toml")
    assert p == {"converter": "litert-torch", "recipe": "dynamic_wi8_afp32", "timeout_s": 900, "venv": ".venv-litert"}
    bad = [({"converter": "onnx2tf"}, "convert.converter"), ({"recipe": "static_wi8_ai8"}, "convert.recipe"),
           ({"timeout_s": 0}, "convert.timeout_s"), ({"timeout_s": True}, "convert.timeout_s"),
           ({"venv": ""}, "convert.venv"), ({"per_channel": True}, "convert.per_channel")]
    for table, key in bad:
        with pytest.raises(SpecError) as e:
            litert_torch.params_for(table, "arm64.toml")
        assert str(e.value).startswith(f"arm64.toml: {key}: "), str(e.value)
    with pytest.raises(SpecError, match=r"^b.toml: targets.arm64.convert.recipe: "):
        litert_torch.params_for({"recipe": "x"}, "b.toml", "targets.arm64.convert")


def test_missing_side_venv_names_it_and_the_make_target(tmp_path):
    params = litert_torch.params_for({"venv": str(tmp_path / "no-venv")}, "arm64.toml")
    with pytest.raises(StageError) as e:
        litert_torch.run(_tiny_encoder(), params, tmp_path, _spec(), "arm64")
    msg = str(e.value)
    assert "no-venv" in msg and "make venv-litert" in msg and "target arm64" in msg
    assert not list(tmp_path.glob("*.tflite"))
    assert litert_torch.side_versions(params) == {}


# ---- a real conversion (slow, needs .venv-litert) -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SIDE_VENV, reason=f"no litert-torch side venv at {SIDE_VENV}: `make venv-litert` "
                                               "creates it")
def test_tiny_encoder_converts_and_runs_on_project_litert(tmp_path):
    import torch
    from ai_edge_litert.interpreter import Interpreter

    model = _tiny_encoder()
    params = litert_torch.params_for({"converter": "litert-torch"}, "arm64.toml")
    meta = litert_torch.run(model, params, tmp_path, _spec(), "arm64")

    int8, fp32 = tmp_path / litert_torch.OUTPUT, tmp_path / litert_torch.BASELINE
    assert int8.is_file() and fp32.is_file()
    assert int8.stat().st_size < fp32.stat().st_size
    assert meta["converter"] == "litert-torch" and meta["full_integer"] is False
    assert meta["recipe"] == "dynamic_wi8_afp32" and "ai-edge-quantizer dynamic_wi8_afp32" in meta["route"]
    assert meta["note"] == "dynamic-range int8: int8 weights, float activations; inputs int32"
    assert meta["converter_versions"]["litert-torch"] and meta["converter_versions"]["ai-edge-quantizer"]
    assert sorted(d["name"] for d in meta["io"]["inputs"]) == ["attention_mask", "input_ids"]  # spec names kept
    assert [d["name"] for d in meta["io"]["outputs"]] == ["embedding"]
    from toolchain.app_metadata import declared, read, stamp_tflite  # what the metadata stage adds

    stamp_tflite(int8, declared(_spec()), _spec())
    doc = read(int8)  # the runs below use the stamped file
    assert doc["model_name"] == "tiny_encoder" and [d["name"] for d in doc["outputs"]] == ["embedding"]
    assert {d["name"]: d["dtype"] for d in doc["inputs"]} == {"input_ids": "int32", "attention_mask": "int32"}

    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, size=(8, SEQ))
    mask = np.ones((8, SEQ), np.int64)
    for i, n in enumerate(rng.integers(3, SEQ, size=8)):
        mask[i, n:] = 0
    with torch.no_grad():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    for path in (fp32, int8):
        runner = Interpreter(model_path=str(path), num_threads=1).get_signature_runner()
        got = []
        for i in range(len(ids)):
            feeds = {"input_ids": ids[i:i + 1].astype(np.int32), "attention_mask": mask[i:i + 1].astype(np.int32)}
            assert {k: d["dtype"] for k, d in runner.get_input_details().items()} == \
                {"input_ids": np.int32, "attention_mask": np.int32}
            got.append(runner(**feeds)["embedding"].reshape(1, -1))
        got = np.concatenate(got)
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() >= (0.9999 if path == fp32 else 0.99), (path.name, cos)


# ---- the child's failures, with a stand-in side venv whose python misbehaves (default run) -------------------
def _fake_venv(tmp_path, script):
    venv = tmp_path / "fake-venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\n" + script + "\n")
    python.chmod(0o755)
    (venv / ".installed").touch()
    return litert_torch.params_for({"venv": str(venv), "timeout_s": 2}, "arm64.toml")


@pytest.mark.parametrize("script, expect", [
    ("kill -SEGV $$", "the litert-torch converter process died with SIGSEGV"),
    ("exec sleep 30", "litert-torch did not finish within 2 s (convert.timeout_s); killed"),
    ("echo 'LITERT_TORCH_FAILED: convert: RuntimeError: op aten::foo has no lowering' >&2; exit 3",
     "litert-torch could not convert the model: RuntimeError: op aten::foo has no lowering"),
    ("echo 'ValueError: bad thing' >&2; exit 1", "exited with status 1: ValueError: bad thing"),
    ("exit 0", "litert-torch finished without writing model.int8.tflite"),
])
def test_child_failures_become_stage_errors(tmp_path, script, expect):
    params = _fake_venv(tmp_path, script)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StageError) as e:
        litert_torch.run(_tiny_encoder(), params, out, _spec(), "arm64")
    assert e.value.stage == "litert_torch" and e.value.target == "arm64"
    assert expect in str(e.value), str(e.value)
    assert not list(out.iterdir())  # nothing half-written reaches the stage's output folder
