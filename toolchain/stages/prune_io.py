"""The pruned model on disk: plain tensors and plain Python values (`torch.load(weights_only=True)` reads it; no
pickled code): the pruned state_dict plus, per module, the attributes pruning changed (in/out channels, ...).
`load()` rebuilds the pruned model from a freshly built unpruned one. torch-pruning's own `tp.state_dict` is not
used: it pickles whole module objects (`module.__dict__`) and cannot be read with weights_only=True."""

import copy
from pathlib import Path

from ..errors import StageError, reraise_write_error

NAME = "prune"  # the stage whose output this is (stages/prune.py)
OUTPUT = "pruned.pt"
FORMAT = "toolchain.prune/1"


def save(pruned, unpruned, path, config: dict | None = None) -> Path:
    """Write `pruned` as {state_dict, per-module changed attributes}: plain tensors and values only."""
    import torch

    path = Path(path)
    structure = _structure_diff(unpruned, pruned)
    state = {k: v.detach().clone().contiguous() for k, v in pruned.state_dict().items()}
    torch.save({"format": FORMAT, "config": config or {}, "structure": structure, "state_dict": state}, path)
    return path


def load(unpruned_model, out_dir_or_file):
    """The pruned model in eval mode, rebuilt from a fresh unpruned model (not modified) and the saved file.

    The file is read with torch.load(weights_only=True): it can hold tensors and plain values, never code.
    """
    import torch

    path = Path(out_dir_or_file)
    if path.is_dir():
        path = path / OUTPUT
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, OSError, ...
        reraise_write_error(e)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StageError(NAME, f"{path}: cannot read the pruned model ({first})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise StageError(NAME, f"{path}: not a {FORMAT} file")
    model = copy.deepcopy(unpruned_model)
    modules = dict(model.named_modules())
    for name, attrs in obj["structure"].items():
        if name not in modules:
            raise StageError(NAME, f"{path}: the saved pruned model has a module {name!r} the model lacks "
                                   "(was it pruned from a different model?)")
        for attr, value in attrs.items():
            setattr(modules[name], attr, value)
    state = obj["state_dict"]
    replaced = {}  # id(old tensor) -> new, so tied parameters stay tied
    for key, tensor in state.items():
        owner, _, attr = key.rpartition(".")
        module = modules.get(owner)
        if module is None:
            continue  # load_state_dict below names the mismatch
        if module._parameters.get(attr) is not None:
            old = module._parameters[attr]
            if old.shape != tensor.shape:
                if id(old) not in replaced:
                    replaced[id(old)] = torch.nn.Parameter(torch.empty(tensor.shape, dtype=tensor.dtype),
                                                           requires_grad=old.requires_grad)
                module._parameters[attr] = replaced[id(old)]
        elif module._buffers.get(attr) is not None:
            old = module._buffers[attr]
            if old.shape != tensor.shape:
                if id(old) not in replaced:
                    replaced[id(old)] = torch.empty(tensor.shape, dtype=tensor.dtype)
                module._buffers[attr] = replaced[id(old)]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())[:300]
        raise StageError(NAME, f"{path}: the saved pruned weights do not fit the model: {msg}") from None
    return model.eval()


def _structure_diff(before, after) -> dict:
    """{module name: {attribute: value}} for the plain (JSON-like) public attributes that differ."""
    old = dict(before.named_modules())
    out = {}
    for name, m in after.named_modules():
        prev = vars(old[name]) if name in old else {}
        changed = {}
        for k, v in vars(m).items():
            if k.startswith("_") or k == "training" or not _plain(v):
                continue
            v = _plainify(v)
            if k not in prev or _plainify(prev[k]) != v:
                changed[k] = v
        if changed:
            out[name] = changed
    return out


def _plain(v) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (tuple, list)):
        return all(_plain(x) for x in v)
    return False


def _plainify(v):
    if isinstance(v, (tuple, list)):
        return type(v)(_plainify(x) for x in v) if type(v) in (tuple, list) else tuple(_plainify(x) for x in v)
    return v

