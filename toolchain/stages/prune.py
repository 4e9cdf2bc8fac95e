"""prune: make the PyTorch model smaller before it is traced, then (optionally) win the accuracy back.

method "channel": structured channel pruning with torch-pruning's DependencyGraph pruner. Coupled layers (a
residual add, a conv and its BatchNorm, the layer that consumes the pruned channels) are pruned together, so
the pruned network is a plain, smaller dense network that every later stage and runtime handles as is.
Channel importance is the L2 magnitude of each coupled group; every layer (or named subtree) loses the same
fraction of its channels (`ratio`, overridden per subtree by `layer_ratios`); kept channel counts are rounded
to the nearest multiple of 8 (see ROUND_TO).

method "unstructured": zero the smallest-magnitude weights of each conv/linear layer (torch.nn.utils.prune,
l1_unstructured). Shapes do not change, so dense ONNX / TFLite artifacts are neither smaller nor faster.

Recovery (`epochs` or `steps`): deterministic fine-tuning with knowledge distillation from the unpruned model
(prune_recover.py). The result is saved as plain tensors and values (prune_io.py).
"""

import copy
import difflib
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import StageError, reraise_write_error
from . import prune_io
from .prune_io import load, save  # noqa: F401 - the saved pruned model (prune_io.py)
from .prune_recover import recover, tensors

NAME = "prune"
VERSION = 1
LIBRARIES = ("torch", "torch-pruning")
OUTPUT = prune_io.OUTPUT
FORMAT = prune_io.FORMAT

# Kept channel counts are rounded to the nearest multiple of 8 (layers narrower than 8 are left unrounded).
# int8 / fp32 conv kernels (ONNX Runtime MLAS on x86, XNNPACK / LiteRT on ARM) work on channel blocks of 8 or
# 16 and pad a partial block, so a 60-channel layer costs about what a 64-channel one does: rounding keeps the
# channels that are free and drops the ones whose removal does not pay.
ROUND_TO = 8

UNSTRUCTURED_NOTE = ("unstructured pruning only zeroes weights; every tensor keeps its shape, so the dense ONNX / "
                     "TFLite artifacts built from it are the same size and no faster (they only compress better); "
                     "use method = \"channel\" for smaller, faster artifacts")


# ---- public entry points --------------------------------------------------------------------------------------
def run(model, prune, out_dir: Path, example_inputs: tuple, train: dict | None, evaluation: dict,
        input_names: list, metric_fn, labels_key: str = "labels") -> dict:
    """Prune `model` (left untouched) per `prune` (a PruneSpec), recover it if asked, save out_dir/OUTPUT.

    train / evaluation: dicts of numpy arrays keyed by input name (+ `labels_key` for the labels).
    metric_fn(torch_model) -> float evaluates a model on the evaluation data. Returns the stage's meta.
    """
    with torch_threads(prune.threads):
        return _run(model, prune, out_dir, example_inputs, train, evaluation, input_names, metric_fn, labels_key)


@contextmanager
def torch_threads(n):
    """torch's intra-op threads for the stage (0: leave torch's default), restored afterwards.

    The default is 1. Recovery's backward passes reduce over the batch, and how a CPU kernel splits that reduction
    can depend on the thread count, so a fixed count keeps the machine's cores (which the stage's key does not
    name) out of the pruned weights. It is also faster where it matters: `make -j2 build` runs two builds on
    two cores, and with torch's default of one thread per core each OpenMP step waits for a descheduled thread
    (distilling digits_resnet_pruned took 6-13 s per step with two threads under that load, 2.4-3.2 s with one)."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(model, prune, out_dir, example_inputs, train, evaluation, input_names, metric_fn, labels_key):
    import torch

    t0 = time.perf_counter()
    example_inputs = tuple(example_inputs)
    _check_names(model, prune.ignore, "ignore")
    _check_names(model, prune.layer_ratios, "layer_ratios")
    if prune.method not in ("channel", "unstructured"):
        raise StageError(NAME, f"unknown pruning method {prune.method!r} (channel or unstructured)")
    recovery_asked = bool(prune.epochs or prune.steps)
    if recovery_asked and not train:
        raise StageError(NAME, "recovery (prune.epochs / prune.steps) needs training data (prune.train)")

    try:
        teacher = copy.deepcopy(model).eval()  # the caller's model is never modified
        student = copy.deepcopy(model).eval()
    except Exception as e:  # noqa: BLE001
        reraise_write_error(e)
        raise StageError(NAME, f"cannot copy the model to prune it (copy.deepcopy failed: {type(e).__name__}: "
                               f"{_short(e)})") from None
    with torch.no_grad():
        try:
            reference = tensors(teacher(*example_inputs))
        except Exception as e:  # noqa: BLE001 - the user's forward
            reraise_write_error(e)
            raise StageError(NAME, f"the model's forward failed on example inputs: {type(e).__name__}: {e}") from None
    macs_before, params_before = _count(teacher, example_inputs)
    metric_before = _metric(metric_fn, teacher)

    round_to = None
    if prune.method == "channel":
        with torch.enable_grad():  # the dependency graph is read from autograd's graph
            round_to = _channel_prune(student, prune, example_inputs)
        _check_forward(student, example_inputs, reference, model)
        if _params_equal(student, teacher) and (prune.ratio > 0 or any(prune.layer_ratios.values())):
            raise StageError(NAME, "torch-pruning found no channel it could remove (no prunable conv/linear group "
                                   "outside prune.ignore; a forward that runs under no_grad or detaches tensors "
                                   "hides the graph from it)")
    else:
        _unstructured_prune(student, prune)  # masks stay attached during recovery so zeros stay zero
    metric_after_prune = _metric(metric_fn, student)

    metric_after_recovery, recovery_info = None, None
    if recovery_asked:
        with torch.enable_grad():
            recovery_info = recover(student, teacher, train, input_names, labels_key, prune)
    if prune.method == "unstructured":
        _unstructured_finish(student)
    student.eval()
    _check_forward(student, example_inputs, reference, model)
    if recovery_asked:  # measured after unstructured masks are folded in
        metric_after_recovery = _metric(metric_fn, student)
    macs_after, params_after = _count(student, example_inputs)

    config = {"method": prune.method, "ratio": float(prune.ratio),
              "layer_ratios": {k: float(v) for k, v in prune.layer_ratios.items()},
              "ignore": list(prune.ignore), "importance": prune.importance, "round_to": round_to}
    save(student, model, Path(out_dir) / OUTPUT, config)

    meta = {
        "method": prune.method,
        "ratio": float(prune.ratio),
        "layer_ratios": {k: float(v) for k, v in prune.layer_ratios.items()},
        "ignored": list(prune.ignore),
        "importance": "L2 magnitude" if prune.method == "channel" else "L1 magnitude (per weight)",
        "round_to": round_to,
        "params_before": int(params_before),
        "params_after": int(params_after),
        "params_ratio": round(params_after / params_before, 4) if params_before else None,
        "macs_before": int(macs_before),
        "macs_after": int(macs_after),
        "macs_ratio": round(macs_after / macs_before, 4) if macs_before else None,
        "metric_before": metric_before,
        "metric_after_prune": metric_after_prune,
        "metric_after_recovery": metric_after_recovery,
        "recovery": {"epochs": int(prune.epochs), "steps": prune.steps, "lr": float(prune.lr),
                     "seed": int(prune.seed), "temperature": float(prune.temperature),
                     "torch_threads": int(prune.threads) or "torch default",
                     **(recovery_info or {"optimizer_steps": 0})},
        "seconds": round(time.perf_counter() - t0, 2),
        "note": UNSTRUCTURED_NOTE if prune.method == "unstructured" else None,
    }
    if prune.method == "channel":
        meta["channels"] = _channel_changes(model, student)
    else:
        meta["sparsity"] = _sparsity(student)
    return meta



def _params_equal(a, b) -> bool:
    return sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())


# ---- channel pruning ------------------------------------------------------------------------------------------
def _channel_prune(student, prune, example_inputs):
    import torch_pruning as tp

    modules = dict(student.named_modules())
    ignored = [modules[n] for n in prune.ignore]
    # More specific names last: torch-pruning lets a later entry override an earlier one for shared submodules.
    ratio_dict = {modules[n]: float(r) for n, r in sorted(prune.layer_ratios.items(), key=lambda kv: kv[0].count("."))}

    class _Pruner(tp.pruner.BasePruner):
        def _round_to(self, n_pruned, current_channels, round_to):
            return _rounded_pruned(n_pruned, current_channels, round_to)

    try:
        pruner = _Pruner(student, example_inputs,
                         importance=tp.importance.MagnitudeImportance(p=2), global_pruning=False,
                         pruning_ratio=float(prune.ratio), pruning_ratio_dict=ratio_dict or None,
                         ignored_layers=ignored, round_to=ROUND_TO)
    except Exception as e:  # noqa: BLE001 - torch-pruning raises anything from its graph tracer
        reraise_write_error(e)
        raise StageError(NAME, f"torch-pruning cannot trace the model's dependency graph: {type(e).__name__}: "
                               f"{_short(e)} (use method = \"unstructured\", or prune.ignore the offending "
                               "layers)") from None
    try:
        pruner.step()
    except Exception as e:  # noqa: BLE001
        reraise_write_error(e)
        raise StageError(NAME, f"torch-pruning failed while removing channels: {type(e).__name__}: {_short(e)}") \
            from None
    return ROUND_TO


def _rounded_pruned(n_pruned, current_channels, round_to):
    """Channels to remove once the kept count is rounded to the nearest multiple of round_to."""
    kept = current_channels - n_pruned
    if not round_to or kept < round_to:
        return n_pruned  # too narrow to round: keep the ratio's count
    rounded = int(kept / round_to + 0.5) * round_to
    if rounded > current_channels:
        rounded -= round_to
    return max(current_channels - rounded, 0)


def _check_forward(student, example_inputs, reference, original):
    import torch

    with torch.no_grad():
        try:
            got = tensors(student.eval()(*example_inputs))
        except Exception as e:  # noqa: BLE001
            reraise_write_error(e)
            raise StageError(NAME, f"the pruned model's forward fails ({type(e).__name__}: {_short(e)}): "
                                   "torch-pruning could not keep it consistent (a channel count hard-coded in "
                                   "forward, e.g. view/reshape with constants?); add the layers involved to "
                                   "prune.ignore or use method = \"unstructured\"") from None
    if [tuple(t.shape) for t in got] != [tuple(t.shape) for t in reference]:
        last = _last_layer(original)
        raise StageError(NAME, f"pruning changed the model's output shapes from {[list(t.shape) for t in reference]}"
                               f" to {[list(t.shape) for t in got]}: the output layer must not be pruned; add it "
                               f"to prune.ignore{f' (e.g. {last!r})' if last else ''}")


def _channel_changes(before, after) -> dict:
    """{layer: [out channels before, after]} for the conv / linear layers that lost channels."""
    import torch

    old = dict(before.named_modules())
    out = {}
    for name, m in after.named_modules():
        for attr in ("out_channels", "out_features"):
            if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)) and hasattr(m, attr):
                a, b = getattr(old[name], attr), getattr(m, attr)
                if a != b:
                    out[name] = [int(a), int(b)]
    return out


# ---- unstructured pruning -------------------------------------------------------------------------------------
def _unstructured_prune(student, prune):
    import torch
    from torch.nn.utils import prune as tprune

    for name, m in student.named_modules():
        if not isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
            continue
        if _under(name, prune.ignore):
            continue
        ratio = _most_specific(name, prune.layer_ratios, prune.ratio)
        if ratio > 0:
            tprune.l1_unstructured(m, "weight", amount=float(ratio))


def _unstructured_finish(student):
    from torch.nn.utils import prune as tprune

    for m in student.modules():
        if tprune.is_pruned(m) and hasattr(m, "weight_mask"):
            tprune.remove(m, "weight")


def _sparsity(model) -> float:
    import torch

    total = zeros = 0
    for m in model.modules():
        if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
            total += m.weight.numel()
            zeros += int((m.weight == 0).sum())
    return round(zeros / total, 4) if total else 0.0



# ---- helpers --------------------------------------------------------------------------------------------------
def _check_names(model, names, key):
    known = [n for n, _ in model.named_modules() if n]
    for name in names:
        if name in known:
            continue
        close = difflib.get_close_matches(str(name), known, n=4, cutoff=0.5)
        if close:
            hint = f"close names: {', '.join(close)}"
        else:
            top = [n for n in known if "." not in n]
            hint = f"top-level modules: {', '.join(top[:10])}{' ...' if len(top) > 10 else ''}"
        default = " (the default; set prune.ignore to the model's output layer)" \
            if key == "ignore" and name == "classifier" else ""
        raise StageError(NAME, f"prune.{key} names layer {name!r}{default}, which is not a module of the model; "
                               f"{hint}")


def _count(model, example_inputs):
    import torch_pruning as tp

    try:
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    except Exception as e:  # noqa: BLE001
        reraise_write_error(e)
        raise StageError(NAME, f"cannot count the model's MACs and parameters: {type(e).__name__}: {_short(e)}") \
            from None
    return int(macs), int(params)


def _metric(metric_fn, model):
    model.eval()
    value = metric_fn(model)
    model.eval()
    return None if value is None else float(value)



def _last_layer(model):
    import torch

    last = None
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
            last = name
    return last


def _under(name, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _most_specific(name, ratios: dict, default):
    best, depth = default, -1
    for k, r in ratios.items():
        if (name == k or name.startswith(k + ".")) and k.count(".") > depth:
            best, depth = r, k.count(".")
    return float(best)



def _short(e) -> str:
    return " ".join(str(e).split())[:300]


# ---- declaration (stages/__init__.py) ------------------------------------------------------------------------
def spec_params(spec) -> dict:
    p = spec.prune
    params = {k: getattr(p, k) for k in ("method", "ratio", "layer_ratios", "ignore", "importance", "epochs",
                                         "steps", "lr", "seed", "temperature", "threads", "stop_within")}
    params["inputs"] = [[t.name, list(t.shape), t.dtype] for t in spec.inputs]
    return params


def needs(params) -> tuple:
    return ("base_model", "evaluation", "train")  # train: the prune.train data, when the spec names it


def build(inp, params, out_dir) -> dict:
    import torch

    from ..validation import metrics
    from . import trace
    from .reference import torch_outputs

    s = inp.spec
    base_ref = torch_outputs(inp.base_model, inp.evaluation, s.inputs)

    def metric_fn(model):
        return metrics.compute(s.metric, torch_outputs(model, inp.evaluation, s.inputs), inp.evaluation, base_ref, s)
    example = trace.example_inputs(s.inputs, torch)
    return run(inp.base_model, s.prune, out_dir, example, inp.train, inp.evaluation, inp.input_names, metric_fn,
               s.labels_key)
