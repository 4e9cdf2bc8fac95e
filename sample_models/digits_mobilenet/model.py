"""MobileNetV3-style CNN for 1x32x32 handwritten digits (upscaled from 8x8).

Inverted residual blocks: 1x1 expansion conv, depthwise kxk conv, optional squeeze-excite (hardsigmoid gate),
1x1 linear projection; a residual add when stride is 1 and the widths match. Activations are ReLU in the early
blocks and hardswish later, as in MobileNetV3. Every conv is followed by BatchNorm (no conv bias).
"""

from __future__ import annotations

import torch
from torch import nn

# (kernel, expanded width, out width, squeeze-excite, activation, stride) per block; input 16 x 32x32 after the stem
BLOCKS = (
    (3, 16, 16, True, "relu", 2),    # -> 16x16
    (3, 64, 24, False, "relu", 1),
    (3, 72, 24, False, "relu", 1),
    (5, 96, 40, True, "hswish", 2),  # -> 8x8
    (5, 120, 40, True, "hswish", 1),
    (5, 144, 48, True, "hswish", 1),
    (5, 192, 96, True, "hswish", 2),  # -> 4x4
    (5, 288, 96, True, "hswish", 1),
)
STEM = 16
HEAD = 256


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _act(name: str) -> nn.Module:
    return nn.Hardswish() if name == "hswish" else nn.ReLU()


class ConvBNAct(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: str | None = "relu"):
        layers = [
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act is not None:
            layers.append(_act(act))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        squeezed = _make_divisible(ch / 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(ch, squeezed, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeezed, ch, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))
        return x * s


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, kernel: int, exp_ch: int, out_ch: int, se: bool, act: str, stride: int):
        super().__init__()
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if exp_ch != in_ch:
            layers.append(ConvBNAct(in_ch, exp_ch, 1, act=act))
        layers.append(ConvBNAct(exp_ch, exp_ch, kernel, stride=stride, groups=exp_ch, act=act))
        if se:
            layers.append(SqueezeExcite(exp_ch))
        layers.append(ConvBNAct(exp_ch, out_ch, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class DigitsMobileNet(nn.Module):
    def __init__(self, blocks=BLOCKS, stem: int = STEM, head: int = HEAD, num_classes: int = 10):
        super().__init__()
        self.stem = ConvBNAct(1, stem, 3, act="hswish")
        layers = []
        in_ch = stem
        for kernel, exp_ch, out_ch, se, act, stride in blocks:
            layers.append(InvertedResidual(in_ch, kernel, exp_ch, out_ch, se, act, stride))
            in_ch = out_ch
        self.blocks = nn.Sequential(*layers)
        self.head = ConvBNAct(in_ch, head, 1, act="hswish")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.flatten(self.pool(x)))


def build_model() -> nn.Module:
    return DigitsMobileNet()
