"""prune stage: channel pruning through torch-pruning's dependency graph, unstructured pruning, KD recovery,
and the weights_only save format. A tiny residual CNN defined here keeps every test to a second or two."""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
from torch import nn  # noqa: E402

from toolchain.errors import StageError  # noqa: E402
from toolchain.spec import PruneSpec  # noqa: E402
from toolchain.stages import prune as P  # noqa: E402


@pytest.fixture(autouse=True)
def _quiet_single_thread():
    # One intra-op thread: these models are tiny, and on a shared machine two OpenMP threads per process can be
    # 10-30x slower than one (spinning workers fighting other processes for the cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch-pruning warns about unwrapped parameters, deprecations, ...
            yield
    finally:
        torch.set_num_threads(threads)


class Block(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(Block(16, 16), Block(16, 32, stride=2), Block(32, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(32, 5)

    def forward(self, x):
        return self.classifier(self.pool(self.blocks(self.stem(x))).flatten(1))


def tiny_model():
    torch.manual_seed(0)
    m = TinyResNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so pruning visibly changes the outputs
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
    return m.eval()


def make_data(model, n, seed):
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        labels = model(torch.from_numpy(x)).argmax(1).numpy().astype(np.int64)
    return {"input": x, "labels": labels}


def top1(evaluation):
    def metric(model):
        with torch.no_grad():
            out = model.eval()(torch.from_numpy(evaluation["input"]))
        return float((out.argmax(1).numpy() == evaluation["labels"]).mean() * 100.0)
    return metric


def spec(**kw):
    base = dict(method="channel", ratio=0.5, layer_ratios={}, ignore=("classifier",), importance="magnitude",
                train=None, epochs=0, steps=None, lr=1e-3, seed=0, temperature=4.0)
    base.update(kw)
    return PruneSpec(**base)


EXAMPLE = (torch.zeros(1, 3, 16, 16).normal_(generator=torch.Generator().manual_seed(1)),)


def run(model, prune, out_dir, train=None, evaluation=None, metric=None):
    out_dir.mkdir(parents=True, exist_ok=True)  # the engine hands the stage an existing directory
    evaluation = evaluation if evaluation is not None else make_data(model, 32, 1)
    return P.run(model, prune, out_dir, EXAMPLE, train, evaluation, ["input"], metric or top1(evaluation))


def state_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_channel_pruning_removes_channels_and_keeps_residuals_consistent(tmp_path):
    model = tiny_model()
    before = state_of(model)
    meta = run(model, spec(), tmp_path)

    assert meta["method"] == "channel" and meta["ignored"] == ["classifier"]
    assert meta["params_after"] < 0.5 * meta["params_before"]
    assert meta["macs_after"] < 0.5 * meta["macs_before"]
    assert meta["metric_after_recovery"] is None and meta["recovery"]["optimizer_steps"] == 0
    assert meta["metric_before"] == 100.0
    # the caller's model is untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.stem[0].out_channels == 16

    pruned = P.load(tiny_model(), tmp_path)
    assert not pruned.training
    assert pruned.stem[0].out_channels == 8 and pruned.classifier.out_features == 5
    for b in pruned.blocks:  # every residual add sees the same channels on both sides
        skip = b.conv1.in_channels if isinstance(b.shortcut, nn.Identity) else b.shortcut[0].out_channels
        assert b.conv2.out_channels == b.bn2.num_features == skip
        assert b.conv1.out_channels == b.bn1.num_features == b.conv2.in_channels
    assert pruned.classifier.in_features == pruned.blocks[-1].conv2.out_channels
    with torch.no_grad():
        assert pruned(torch.randn(3, 3, 16, 16)).shape == (3, 5)
    assert sum(p.numel() for p in pruned.parameters()) == meta["params_after"]
    assert meta["channels"]["blocks.1.conv2"] == [32, 16]


def test_layer_ratios_most_specific_wins(tmp_path):
    meta = run(tiny_model(), spec(layer_ratios={"blocks.2": 0.0, "blocks.1.conv1": 0.75}), tmp_path)
    pruned = P.load(tiny_model(), tmp_path)
    assert pruned.blocks[2].conv1.out_channels == 32  # blocks.2 untouched (its conv1 is not coupled)
    assert pruned.blocks[1].conv1.out_channels == 8  # 32 * (1 - 0.75)
    assert meta["layer_ratios"] == {"blocks.2": 0.0, "blocks.1.conv1": 0.75}


def test_save_load_round_trip_is_exact_and_weights_only(tmp_path):
    model = tiny_model()
    evaluation = make_data(model, 32, 1)
    probe = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    seen = []

    def metric(m):  # the last model the stage evaluates is the one it saves
        with torch.no_grad():
            seen.append(m(probe).clone())
        return top1(evaluation)(m)

    run(model, spec(), tmp_path, evaluation=evaluation, metric=metric)
    obj = torch.load(tmp_path / P.OUTPUT, weights_only=True)  # plain tensors and values: no code on load
    assert obj["format"] == P.FORMAT and obj["config"]["ratio"] == 0.5
    loaded = P.load(tiny_model(), tmp_path / P.OUTPUT)
    with torch.no_grad():
        assert torch.equal(loaded(probe), seen[-1])
    assert not torch.allclose(seen[-1], seen[0])  # seen[0] is the unpruned model: pruning changed outputs


def test_load_refuses_pickled_code(tmp_path):
    path = tmp_path / P.OUTPUT
    torch.save({"format": P.FORMAT, "structure": {}, "state_dict": {}, "module": nn.Linear(2, 2)}, path)
    with pytest.raises(StageError, match="cannot read the pruned model"):
        P.load(tiny_model(), path)


def test_recovery_is_deterministic_and_recovers(tmp_path):
    model = tiny_model()
    train = make_data(model, 128, 2)
    # noise inputs: nothing generalises to unseen noise, so judge recovery on samples it trained on
    evaluation = {k: v[:64] for k, v in train.items()}
    rng = torch.get_rng_state()
    metas = []
    for d in ("a", "b"):
        metas.append(run(model, spec(steps=20, lr=1e-2), tmp_path / d, train=train, evaluation=evaluation))
    assert torch.equal(rng, torch.get_rng_state())  # seeded locally, the caller's RNG stream is untouched
    a, b = (state_of(P.load(tiny_model(), tmp_path / d)) for d in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metas[0]["recovery"]["loss_last"] == metas[1]["recovery"]["loss_last"]
    meta = metas[0]
    assert meta["recovery"]["optimizer_steps"] == 20 and meta["recovery"]["seed"] == 0
    assert meta["metric_after_recovery"] is not None
    assert meta["metric_after_recovery"] > meta["metric_after_prune"]
    assert meta["recovery"]["loss_last"] < meta["recovery"]["loss_first"]

    other = run(model, spec(steps=20, lr=1e-2, seed=1), tmp_path / "c", train=train, evaluation=evaluation)
    c = state_of(P.load(tiny_model(), tmp_path / "c"))
    assert other["recovery"]["seed"] == 1
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed drives the shuffle


def test_recovery_stops_once_held_out_agreement_is_reached(tmp_path):
    """prune.stop_within: every 10th training sample is held out; after each epoch the student's top-1 agreement
    with the teacher on them is measured and recovery ends once it is within stop_within of 100 %. Deterministic
    like the full run; without stop_within nothing is held out and every planned step runs."""
    model = tiny_model()
    train = make_data(model, 160, 2)
    evaluation = {k: v[:64] for k, v in train.items()}
    metas = [run(model, spec(epochs=8, lr=1e-2, stop_within=40.0), tmp_path / d, train=train,
                 evaluation=evaluation) for d in ("a", "b")]
    rec = metas[0]["recovery"]
    held = rec["held_out"]
    assert held["samples"] == 16 and rec["samples"] == 144 and held["planned_steps"] == 8 * 3
    assert held["stopped_early"] and rec["optimizer_steps"] < held["planned_steps"]
    assert rec["optimizer_steps"] == 3 * len(held["top1_agreement_by_epoch"])  # checked after each whole epoch
    assert held["top1_agreement_by_epoch"][-1] >= 60.0
    assert all(a < 60.0 for a in held["top1_agreement_by_epoch"][:-1])
    a, b = (state_of(P.load(tiny_model(), tmp_path / d)) for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metas[1]["recovery"]["held_out"] == held

    full = run(model, spec(epochs=2, lr=1e-2, stop_within=0.0), tmp_path / "c", train=train, evaluation=evaluation)
    assert full["recovery"]["optimizer_steps"] == 6 and not full["recovery"]["held_out"]["stopped_early"]
    assert len(full["recovery"]["held_out"]["top1_agreement_by_epoch"]) == 2  # after epoch 1, and the last
    plain = run(model, spec(epochs=1, lr=1e-2), tmp_path / "d", train=train, evaluation=evaluation)
    assert "held_out" not in plain["recovery"] and plain["recovery"]["samples"] == 160


def test_prune_runs_with_its_own_torch_threads(tmp_path):
    """prune.threads (default 1) holds for the stage and torch's setting is restored afterwards; 0 leaves torch's."""
    torch.set_num_threads(2)  # the autouse fixture's 1 would hide whether the stage set anything
    before = torch.get_num_threads()
    seen = []

    def metric(model):
        seen.append(torch.get_num_threads())
        return 0.0
    meta = run(tiny_model(), spec(threads=1), tmp_path / "a", metric=metric)
    assert set(seen) == {1} and torch.get_num_threads() == before
    assert meta["recovery"]["torch_threads"] == 1
    seen.clear()
    meta = run(tiny_model(), spec(threads=0), tmp_path / "b", metric=metric)
    assert set(seen) == {before} and meta["recovery"]["torch_threads"] == "torch default"


def test_spec_reads_threads_and_stop_within(tmp_path, write_spec):
    """The keys are read (defaults: one thread, no early stop); a wrong value names its key."""
    from pathlib import Path

    from toolchain.errors import SpecError
    from toolchain.spec import load_spec

    sample = Path(__file__).resolve().parents[1] / "sample_models" / "digits_resnet_pruned" / "build.toml"
    p = load_spec(sample).prune
    assert p.stop_within is None and p.threads == 1
    assert load_spec(write_spec(tmp_path / "stop", prune={"ratio": 0.5, "stop_within": 0.5})).prune.stop_within == 0.5
    assert load_spec(write_spec(tmp_path / "ok", prune={"ratio": 0.5, "threads": 0})).prune.threads == 0
    for i, (table, key) in enumerate((({"threads": -1}, "prune.threads"), ({"stop_within": "all"}, "prune.stop_within"),
                                      ({"stop_within": 101}, "prune.stop_within"))):
        with pytest.raises(SpecError, match=key.replace(".", r"\.")):
            load_spec(write_spec(tmp_path / str(i), prune={"ratio": 0.5, **table}))


def test_recovery_needs_training_data(tmp_path):
    with pytest.raises(StageError, match="needs training data"):
        run(tiny_model(), spec(epochs=1), tmp_path)


@pytest.mark.parametrize("field,value,name,close", [
    ("ignore", ("classifer",), "classifer", "classifier"),
    ("layer_ratios", {"blocks.1.conv3": 0.3}, "blocks.1.conv3", "blocks.1.conv1"),
])
def test_unknown_layer_names_are_named(tmp_path, field, value, name, close):
    with pytest.raises(StageError) as e:
        run(tiny_model(), spec(**{field: value}), tmp_path)
    msg = str(e.value)
    assert e.value.stage == "prune" and f"prune.{field}" in msg and repr(name) in msg and close in msg
    assert not any(tmp_path.iterdir())


def test_pruning_the_output_layer_is_refused(tmp_path):
    with pytest.raises(StageError, match=r"output shapes.*prune.ignore.*'classifier'"):
        run(tiny_model(), spec(ignore=()), tmp_path)


def test_unstructured_keeps_shapes_and_says_so(tmp_path):
    model = tiny_model()
    train = make_data(model, 128, 2)
    meta = run(model, spec(method="unstructured", steps=3), tmp_path, train=train)
    assert meta["params_after"] == meta["params_before"] and meta["macs_after"] == meta["macs_before"]
    assert "no faster" in meta["note"] and "same size" in meta["note"]
    pruned = P.load(tiny_model(), tmp_path)
    keys = pruned.state_dict().keys()
    assert not any(k.endswith(("weight_orig", "weight_mask")) for k in keys)
    assert all(not m._forward_pre_hooks for m in pruned.modules())
    for name, m in pruned.named_modules():  # fine-tuning kept the zeros: masks were live during recovery
        if isinstance(m, nn.Conv2d):
            assert abs(float((m.weight == 0).float().mean()) - 0.5) < 0.02, name
    assert float((pruned.classifier.weight == 0).float().mean()) == 0.0  # ignored
    assert 0.4 < meta["sparsity"] < 0.5


class HardCodedView(nn.Module):
    """A channel count baked into forward: pruning the conv breaks the view."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.classifier = nn.Linear(16 * 16 * 16, 5)

    def forward(self, x):
        return self.classifier(self.conv(x).view(-1, 16 * 16 * 16))


class NoGradBody(nn.Module):
    """The body runs without autograd, so torch-pruning's graph tracer sees no coupled layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3)
        self.conv2 = nn.Conv2d(16, 16, 3)
        self.classifier = nn.Linear(16, 5)

    def forward(self, x):
        with torch.no_grad():
            x = self.conv2(self.conv1(x))
        return self.classifier(x.mean((2, 3)))


@pytest.mark.parametrize("cls,match", [(HardCodedView, "pruned model's forward fails"),
                                       (NoGradBody, "found no channel it could remove")])
def test_models_torch_pruning_cannot_handle(tmp_path, cls, match):
    with pytest.raises(StageError, match=match):
        run(cls().eval(), spec(), tmp_path)


def test_runs_under_no_grad(tmp_path):
    with torch.no_grad():
        meta = run(tiny_model(), spec(), tmp_path)
    assert meta["params_after"] < 0.5 * meta["params_before"]


def test_rounding_of_kept_channels():
    assert P._rounded_pruned(10, 40, 8) == 8  # 30 kept -> 32
    assert P._rounded_pruned(20, 40, 8) == 16  # 20 kept -> 24 (ties round up)
    assert P._rounded_pruned(1, 32, 8) == 0  # 31 kept -> 32: nothing worth removing
    assert P._rounded_pruned(3, 6, 8) == 3  # narrower than 8: the ratio's own count
    assert P._rounded_pruned(2, 12, 8) == 4  # 10 kept -> 8
