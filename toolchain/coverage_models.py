"""The coverage suite's models: small, plain PyTorch, one per pattern that edge models are built from.

Each factory seeds torch itself, so a model's random initialisation is the same on every machine and run; no
training is needed (the suite measures how faithfully each target reproduces the fp32 model, not how good the
model is). Two things keep that measurement honest:

- inputs with structure (`example_inputs`): images are smooth random fields with per-sample contrast and
  brightness, sequences drift; on white noise a pooled feature is the same for every sample;
- output layers standardized (`_standardize`) over a fixed batch of such inputs, as a trained head's outputs
  are: zero mean, unit spread per output unit. A random-init model's output is otherwise one constant vector
  plus a small input-dependent part, and an artifact that returned the constant would score a cosine near 1.

This file imports nothing but torch: the coverage runner copies it next to the generated build specs, as a
user's model module would be.
"""

import torch
from torch import nn
import torch.nn.functional as F

# pattern -> (factory, [(input name, shape)], [output names], what it exercises)
PATTERNS = {
    "residual": ("residual", [("image", (1, 3, 32, 32))], ["logits"],
                 "residual blocks: conv + batch norm + ReLU, identity and 1x1-projection skips"),
    "mobilenet": ("mobilenet", [("image", (1, 3, 32, 32))], ["logits"],
                  "depthwise-separable convs, hardswish, squeeze-excite (hardsigmoid gate)"),
    "unet": ("unet", [("image", (1, 3, 32, 32))], ["mask"],
             "encoder-decoder: strided convs, nearest and bilinear upsampling, transposed conv, concat skips"),
    "gru": ("gru", [("sequence", (1, 16, 8))], ["logits"], "one-layer GRU over a sequence, head on the last step"),
    "lstm": ("lstm", [("sequence", (1, 16, 8))], ["logits"], "two-layer LSTM over a sequence, head on the final hidden state"),
    "transformer": ("transformer", [("tokens", (1, 16, 32))], ["embedding"],
                    "transformer encoder: multi-head attention, LayerNorm, GELU, mean pooling"),
    "two_io": ("two_io", [("image", (1, 1, 16, 16)), ("features", (1, 12))], ["logits", "box"],
               "two inputs (image + tabular) fused, two outputs (class logits + a tanh box regression)"),
    "pool_shuffle": ("pool_shuffle", [("image", (1, 3, 32, 32))], ["probs"],
                     "max / avg / global pooling, pixel shuffle, softmax head"),
    "mlp": ("mlp", [("features", (1, 24))], ["logits"], "MLP on tabular data (Linear + BatchNorm1d + ReLU)"),
}


def _seed(seed):
    torch.manual_seed(seed)


def _head(cin, n):
    return nn.Linear(cin, n)


def example_inputs(pattern, n, seed):
    """n structured samples of each input of a pattern, deterministic: a list of float32 tensors."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _, shape in PATTERNS[pattern][1]:
        dims = (n, *shape[1:])
        if len(dims) == 4:  # images: a smooth field + fine noise, per-sample contrast and per-channel brightness
            c, h, w = dims[1:]
            coarse = torch.randn(n, c, max(h // 8, 2), max(w // 8, 2), generator=g)
            x = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
            x = x + 0.3 * torch.randn(dims, generator=g)
            x = x * torch.exp(0.4 * torch.randn(n, 1, 1, 1, generator=g)) + 0.5 * torch.randn(n, c, 1, 1, generator=g)
        elif len(dims) == 3:  # sequences / token embeddings: a slow drift + noise + a per-sample offset
            t, f = dims[1:]
            coarse = torch.randn(n, f, max(t // 4, 2), generator=g)
            drift = F.interpolate(coarse, size=t, mode="linear", align_corners=False).transpose(1, 2)
            x = drift + 0.5 * torch.randn(dims, generator=g) + 0.5 * torch.randn(n, 1, f, generator=g)
        else:  # tabular: features on different scales
            scale = torch.exp(0.5 * torch.randn(dims[1:], generator=torch.Generator().manual_seed(99)))
            x = torch.randn(dims, generator=g) * scale
        out.append(x.float().contiguous())
    return out


def _standardize(model, pattern, layers, seed=12345, n=128):
    """Rescale and shift each output layer so that, over a fixed batch of the pattern's inputs, every output
    unit has zero mean and unit standard deviation (channels of a conv, features of a linear layer)."""
    for layer in layers:
        seen = {}
        hook = layer.register_forward_hook(lambda m, i, o: seen.__setitem__("y", o.detach()))
        with torch.no_grad():
            model(*example_inputs(pattern, n, seed))
        hook.remove()
        y = seen["y"]
        dims = [d for d in range(y.dim()) if d != (1 if isinstance(layer, nn.Conv2d) else y.dim() - 1)]
        mean, std = y.mean(dims), y.std(dims).clamp_min(1e-6)
        with torch.no_grad():
            shape = (-1,) + (1,) * (layer.weight.dim() - 1)
            layer.weight.div_(std.reshape(shape))
            layer.bias.sub_(mean).div_(std)
    return model


class _ConvBN(nn.Sequential):
    def __init__(self, cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


def _calibrate_bn(model, pattern, seed):
    """Batch-norm statistics measured on the pattern's inputs, as after training (random running statistics
    leave activations unnormalized: deep random nets then map every input to almost the same features), with
    a deterministic random affine part."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for m in bns:
        m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
        m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(4):
            model(*example_inputs(pattern, 64, 5000 + seed * 10 + i))
    return model.eval()


# ---- residual ---------------------------------------------------------------------------------------------
class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = _ConvBN(cin, cout, 3, stride)
        self.b = _ConvBN(cout, cout, 3, 1, act=None)
        self.skip = None if stride == 1 and cin == cout else _ConvBN(cin, cout, 1, stride, act=None)

    def forward(self, x):
        s = x if self.skip is None else self.skip(x)
        return F.relu(self.b(self.a(x)) + s)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _ConvBN(3, 16, 3, 2)
        self.blocks = nn.Sequential(_Block(16, 16, 1), _Block(16, 32, 2), _Block(32, 32, 1))
        self.head = _head(32, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(x.mean((2, 3)))


# ---- mobilenet --------------------------------------------------------------------------------------------
class _SE(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class _InvertedResidual(nn.Module):
    def __init__(self, cin, cout, expand, stride, se):
        super().__init__()
        mid = cin * expand
        self.expand = _ConvBN(cin, mid, 1, act=nn.Hardswish)
        self.dw = _ConvBN(mid, mid, 3, stride, groups=mid, act=nn.Hardswish)
        self.se = _SE(mid) if se else nn.Identity()
        self.project = _ConvBN(mid, cout, 1, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class MobileNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _ConvBN(3, 16, 3, 2, act=nn.Hardswish)
        self.blocks = nn.Sequential(_InvertedResidual(16, 16, 2, 1, True), _InvertedResidual(16, 24, 3, 2, False),
                                    _InvertedResidual(24, 24, 3, 1, True))
        self.last = _ConvBN(24, 48, 1, act=nn.Hardswish)
        self.head = _head(48, 10)

    def forward(self, x):
        x = self.last(self.blocks(self.stem(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


# ---- unet -------------------------------------------------------------------------------------------------
class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1 = _ConvBN(3, 8)
        self.enc2 = _ConvBN(8, 16, stride=2)
        self.enc3 = _ConvBN(16, 32, stride=2)
        self.up3 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec2 = _ConvBN(32, 16)
        self.dec1 = _ConvBN(16 + 8, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([self.up3(e3), e2], 1))
        d2 = d2 + F.interpolate(e3, scale_factor=2, mode="nearest")[:, :16]
        d1 = F.interpolate(d2, scale_factor=2, mode="bilinear", align_corners=False)
        d1 = self.dec1(torch.cat([d1, e1], 1))
        return self.out(d1)


# ---- recurrent --------------------------------------------------------------------------------------------
class GRUModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(8, 24, batch_first=True)
        self.head = _head(24, 10)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class LSTMModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(8, 24, num_layers=2, batch_first=True)
        self.head = _head(24, 10)

    def forward(self, x):
        _, (h, _) = self.rnn(x)  # the last layer's final hidden state
        return self.head(h[-1])


# ---- transformer ------------------------------------------------------------------------------------------
class Transformer(nn.Module):
    def __init__(self, dim=32, heads=4, layers=2, seq=16):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, seq, dim) * 0.1)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim * 2, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        for p in self.encoder.parameters():  # the encoder deep-copies one layer: give each its own weights
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.norm = nn.LayerNorm(dim)
        self.proj = _head(dim, 16)

    def forward(self, x):
        x = self.encoder(x + self.pos)
        return self.proj(self.norm(x).mean(1))


# ---- two inputs, two outputs ------------------------------------------------------------------------------
class TwoIO(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(_ConvBN(1, 8, 3, 2), _ConvBN(8, 16, 3, 2))
        self.tab = nn.Sequential(nn.Linear(12, 16), nn.ReLU())
        self.fuse = nn.Sequential(nn.Linear(32, 32), nn.ReLU())
        self.cls = _head(32, 6)
        self.box = nn.Linear(32, 4)

    def forward(self, image, features):
        a = self.conv(image).mean((2, 3))
        h = self.fuse(torch.cat([a, self.tab(features)], 1))
        return self.cls(h), torch.tanh(self.box(h))


# ---- pooling, pixel shuffle, softmax ----------------------------------------------------------------------
class PoolShuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = _ConvBN(3, 16)
        self.b = _ConvBN(16, 32)
        self.shuffle = nn.PixelShuffle(2)  # 32 channels at 8x8 -> 8 channels at 16x16
        self.c = _ConvBN(8, 16)
        self.head = _head(32, 10)

    def forward(self, x):
        x = F.max_pool2d(self.a(x), 2)          # 16x16
        x = F.avg_pool2d(self.b(x), 2)          # 8x8
        x = self.c(self.shuffle(x))             # 16 ch, 16x16
        pooled = torch.cat([F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)], 1).flatten(1)
        return F.softmax(self.head(pooled) * 2.0, dim=-1)  # standardized logits: a peaked softmax


# ---- tabular MLP ------------------------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(24, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                                 _head(32, 5))

    def forward(self, x):
        return self.net(x)


def residual():
    _seed(1)
    m = _calibrate_bn(Residual(), "residual", 1).eval()
    return _standardize(m, "residual", [m.head])


def mobilenet():
    _seed(2)
    m = _calibrate_bn(MobileNet(), "mobilenet", 2).eval()
    return _standardize(m, "mobilenet", [m.head])


def unet():
    _seed(3)
    m = _calibrate_bn(UNet(), "unet", 3).eval()
    return _standardize(m, "unet", [m.out])


def gru():
    _seed(4)
    m = GRUModel().eval()
    return _standardize(m, "gru", [m.head])


def lstm():
    _seed(5)
    m = LSTMModel().eval()
    return _standardize(m, "lstm", [m.head])


def transformer():
    _seed(6)
    m = Transformer().eval()
    return _standardize(m, "transformer", [m.proj])


def two_io():
    _seed(7)
    m = _calibrate_bn(TwoIO(), "two_io", 7).eval()
    return _standardize(m, "two_io", [m.cls, m.box])


def pool_shuffle():
    _seed(8)
    m = _calibrate_bn(PoolShuffle(), "pool_shuffle", 8).eval()
    return _standardize(m, "pool_shuffle", [m.head])


def mlp():
    _seed(9)
    m = _calibrate_bn(MLP(), "mlp", 9).eval()
    return _standardize(m, "mlp", [m.net[-1]])
