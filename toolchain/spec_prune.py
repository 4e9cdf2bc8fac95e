"""The spec's optional [prune] table: method, ratios, recovery training. Separate because only a pruned build
reads it and its keys are many.
"""

from .errors import SpecError
from .spec_paths import _existing_file, is_callable_ref
from .spec_table import _data_ref, _in_range, _one_of
from .spec_types import PruneSpec

PRUNE_METHODS = ("channel", "unstructured")


def _prune(path, top) -> PruneSpec:
    p = top.table("prune")
    p.reject_unknown({"method", "ratio", "layer_ratios", "ignore", "importance", "train", "epochs", "steps",
                      "lr", "seed", "temperature", "threads", "stop_within"})
    method = p.get("method", (str,), "channel", check=_one_of(PRUNE_METHODS))
    ratio = p.get("ratio", (float,), check=_in_range(0.0, 1.0, hi_open=True))
    layer_ratios = p.get("layer_ratios", (dict,), {})
    for k, v in layer_ratios.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise SpecError(path, f"prune.layer_ratios.{k}", f"must be a number in [0, 1), got {v!r}")
    ignore = p.get("ignore", (list,), ["classifier"])
    for i, v in enumerate(ignore):
        if not isinstance(v, str):
            raise SpecError(path, f"prune.ignore[{i}]", "must be a layer name (string)")
    importance = p.get("importance", (str,), "magnitude", check=_one_of(("magnitude",)))
    train = p.get("train", (str,), None, check=_data_ref)
    if train is not None and not is_callable_ref(train):
        _existing_file(path, "prune.train", train)
    epochs = p.get("epochs", (int,), 0, check=_in_range(0, 1000))
    steps = p.get("steps", (int,), None, check=_in_range(1, 10_000_000))
    if (epochs or steps) and train is None:
        raise SpecError(path, "prune.train", "is required when recovery (epochs or steps) is asked for")
    lr = p.get("lr", (float,), 1e-3, check=_in_range(0.0, 10.0))
    seed = p.get("seed", (int,), 0)
    temperature = p.get("temperature", (float,), 4.0, check=_in_range(0.01, 100.0))
    threads = p.get("threads", (int,), 1, check=_in_range(0, 1024))
    stop_within = p.get("stop_within", (float,), None, check=_in_range(0.0, 100.0))
    return PruneSpec(method, ratio, {str(k): float(v) for k, v in layer_ratios.items()}, tuple(ignore),
                     importance, train, epochs, steps, lr, seed, temperature, threads, stop_within)
