"""The suite's CNNs (make bench): MobileNetV3-Small-, ResNet-18- and UNet-like nets with seeded random weights
and BatchNorm statistics warmed on smooth random images. A package of their own: a factory's cache key covers
every .py of its package (imports.module_sources), so here it covers these nets only, and editing the toolchain
does not retrace the bench's models."""

SEED = 21


def _nn():
    import torch
    from torch import nn

    return torch, nn


def _divisible(v, d=8):
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


def mobilenet_v3_small():
    torch, nn = _nn()

    def cba(cin, cout, k, s, act, groups=1):
        return [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                *([act()] if act else [])]

    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            sq = _divisible(c // 4)
            self.fc1, self.fc2 = nn.Conv2d(c, sq, 1), nn.Conv2d(sq, c, 1)

        def forward(self, x):
            s = torch.nn.functional.adaptive_avg_pool2d(x, 1)
            return x * torch.nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))

    class Block(nn.Module):
        def __init__(self, cin, k, exp, cout, se, act, s):
            super().__init__()
            layers = [] if exp == cin else cba(cin, exp, 1, 1, act)
            layers += cba(exp, exp, k, s, act, groups=exp)
            if se:
                layers.append(SE(exp))
            layers += cba(exp, cout, 1, 1, None)
            self.body, self.res = nn.Sequential(*layers), s == 1 and cin == cout

        def forward(self, x):
            y = self.body(x)
            return x + y if self.res else y

    RE, HS = nn.ReLU, nn.Hardswish
    table = [(3, 16, 16, True, RE, 2), (3, 72, 24, False, RE, 2), (3, 88, 24, False, RE, 1),
             (5, 96, 40, True, HS, 2), (5, 240, 40, True, HS, 1), (5, 240, 40, True, HS, 1),
             (5, 120, 48, True, HS, 1), (5, 144, 48, True, HS, 1), (5, 288, 96, True, HS, 2),
             (5, 576, 96, True, HS, 1), (5, 576, 96, True, HS, 1)]
    layers, cin = cba(3, 16, 3, 2, HS), 16
    for k, exp, cout, se, act, s in table:
        layers.append(Block(cin, k, exp, cout, se, act, s))
        cin = cout
    layers += cba(cin, 576, 1, 1, HS)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(576, 1024), HS(),
                         nn.Linear(1024, 1000))


def resnet18():
    torch, nn = _nn()

    class Basic(nn.Module):
        def __init__(self, cin, cout, s):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, s, 1, bias=False), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, s, bias=False), nn.BatchNorm2d(cout))
                         if s != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(y)) + self.down(x))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, s in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Basic(cin, cout, s), Basic(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000))


def unet_small():
    torch, nn = _nn()

    def double(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self, widths=(16, 32, 64, 128), classes=2):
            super().__init__()
            self.down = nn.ModuleList()
            cin = 3
            for w in widths:
                self.down.append(double(cin, w))
                cin = w
            self.mid = double(widths[-1], widths[-1] * 2)
            self.up = nn.ModuleList()
            cin = widths[-1] * 2
            for w in reversed(widths):
                self.up.append(double(cin + w, w))
                cin = w
            self.head = nn.Conv2d(widths[0], classes, 1)

        def forward(self, x):
            skips = []
            for d in self.down:
                x = d(x)
                skips.append(x)
                x = torch.nn.functional.max_pool2d(x, 2)
            x = self.mid(x)
            for u, s in zip(self.up, reversed(skips)):
                x = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
                x = u(torch.cat([x, s], 1))
            return self.head(x)

    return UNet()


SIZES = {"mobilenet_v3_small": 224, "resnet18": 224, "unet_small": 128}
FACTORIES = {"mobilenet_v3_small": mobilenet_v3_small, "resnet18": resnet18, "unet_small": unet_small}


def images(n, size, seed):
    """Smooth random images (low-frequency structure plus a little pixel noise), normalised like ImageNet inputs:
    closer to what a camera feeds a CNN than white noise, and deterministic."""
    import numpy as np

    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, 3, size // 16, size // 16)).astype(np.float32)
    up = np.repeat(np.repeat(coarse, 16, 2), 16, 3)
    k = np.ones(9, np.float32) / 9  # box blur of the blocks
    for ax in (2, 3):
        up = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), ax, up)
    return (up + 0.1 * rng.standard_normal(up.shape)).astype(np.float32)


def warm_batchnorm(model, data, batch=8):
    """Running BatchNorm statistics from forward passes in train mode (cumulative average), then eval mode:
    random init with mean 0 / var 1 statistics would make every BatchNorm a near-identity on real activations."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(data), batch):
            model(torch.from_numpy(data[i:i + batch]))
    model.eval()
    return model


def build_cnn(name):
    """The CNN with its seeded weights and warmed BatchNorm: what the generated spec's factory returns."""
    import torch

    torch.manual_seed(SEED)
    model = FACTORIES[name]()
    return warm_batchnorm(model, images(32, SIZES[name], SEED + 1))


def build_mobilenet_v3_small():
    return build_cnn("mobilenet_v3_small")


def build_resnet18():
    return build_cnn("resnet18")


def build_unet_small():
    return build_cnn("unet_small")
