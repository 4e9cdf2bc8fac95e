"""Source of the tiny model package that conftest.py writes into a temporary directory (never imported from
here: the build imports it by the spec's python_path, as it would a user's code)."""

import torch
from torch import nn


class TinyCNN(nn.Module):
    """Two convolutions on a 1x8x8 input and a `classifier` Linear: ~5k parameters."""

    def __init__(self, channels: int = 1, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(width * 8 * 8, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


class Branchy(TinyCNN):
    """Data-dependent control flow: tracing keeps only the branch the example input takes."""

    def forward(self, x):
        h = self.features(x)
        if x.sum() > 0:
            h = h * 2.0
        return self.classifier(h)


class DictOut(TinyCNN):
    """Returns a dict, which the ONNX export cannot name as outputs."""

    def forward(self, x):
        return {"logits": self.classifier(self.features(x))}


class FrozenScale(TinyCNN):
    """`.item()` turns a tensor into a Python number while tracing: the exported graph keeps the example
    input's value as a constant, so ONNX and PyTorch disagree on every other input."""

    def forward(self, x):
        return self.classifier(self.features(x)) * x.abs().mean().item()


class _CastLike(torch.autograd.Function):
    """Identity in PyTorch; exported as ONNX CastLike, which ONNX Runtime runs and onnx2tf has no converter for."""

    @staticmethod
    def forward(ctx, x, like):
        return x.to(like.dtype)

    @staticmethod
    def symbolic(g, x, like):
        return g.op("CastLike", x, like)


class WithCastLike(TinyCNN):
    def forward(self, x):
        return self.classifier(_CastLike.apply(self.features(x), x))


class TwoInputs(nn.Module):
    """Two inputs of different shapes, declared in non-alphabetical order (zimg, then aux)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.aux = nn.Linear(5, 10)
        self.classifier = nn.Linear(4 * 8 * 8, 10)

    def forward(self, zimg, aux):
        return self.classifier(torch.relu(self.conv(zimg)).flatten(1)) + self.aux(aux)


def tiny_cnn():
    return TinyCNN()


def tiny_rgb():
    return TinyCNN(channels=3)


def branchy():
    return Branchy()


def dict_out():
    return DictOut()


def frozen_scale():
    return FrozenScale()


def with_castlike():
    return WithCastLike()


def two_inputs():
    return TwoInputs()


class FP16Overflow(TinyCNN):
    """Finite in fp32, overflows in fp16: the features are scaled up by 1e6 (two Muls by 1e3; fp16 holds at most
    65504, and onnxconverter-common clamps larger constants to 1e4) and back down by 1e-6 before the classifier.
    The factors are parameters (initializers), so the exporter cannot fold the Muls into one."""

    def __init__(self):
        super().__init__()
        self.up = nn.Parameter(torch.tensor(1.0e3), requires_grad=False)
        self.down = nn.Parameter(torch.tensor(1.0e-6), requires_grad=False)

    def forward(self, x):
        return self.classifier(self.features(x) * self.up * self.up * self.down)


class GRUSeq(nn.Module):
    """A one-layer GRU over a [batch, 8, 4] sequence and a classifier on the last step."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 8, batch_first=True)
        self.classifier = nn.Linear(8, 10)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.classifier(out[:, -1])


def fp16_overflow():
    return FP16Overflow()


def gru_seq():
    return GRUSeq()


class ConstPlusSmall(nn.Module):
    """Softmax over a large per-class constant plus a small input-dependent term (std ~0.01 of a logit range of
    ~16): int8 activations quantize the logits with a step of ~0.06 over that range, which rounds the input-
    dependent term away. Plain cosine to fp32 stays ~1.0 (the constant dominates); the signal is gone."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 10)
        self.offset = nn.Parameter(torch.linspace(-8.0, 8.0, 10), requires_grad=False)
        self.small = nn.Parameter(torch.tensor(0.01), requires_grad=False)

    def forward(self, x):
        return torch.softmax(self.offset + self.small * self.fc(x), dim=-1)


class TwoHeads(TinyCNN):
    """Two outputs: class logits (fine in int8) and a second head built like ConstPlusSmall, whose
    input-dependent part int8 rounds away. Only judging every output catches it."""

    def __init__(self):
        super().__init__()
        self.head = ConstPlusSmall()

    def forward(self, x):
        return self.classifier(self.features(x)), self.head(x.flatten(1)[:, :16])


def const_plus_small():
    return ConstPlusSmall()


def two_heads():
    return TwoHeads()
