"""Build the user's PyTorch model and load its weights as plain tensors (never by running a pickle)."""

import re
import warnings
from pathlib import Path

from .errors import DataError, SpecError
from .imports import call_user, import_ref


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6
PICKLE_PROTOCOLS = {bytes([0x80, p]) for p in range(2, 6)}  # the legacy torch.save format is a pickle stream
_GLOBAL = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)")


def load_state_dict(path: Path) -> dict:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, MemoryError) as e:
            raise DataError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise DataError(f"{path}: cannot read weights ({e.strerror or e})") from None
    if head != ZIP_MAGIC and head[:2] not in PICKLE_PROTOCOLS:
        # Say what is known: not a pickle that would run code, just not weights (zeros, text, another format).
        raise DataError(f"{path}: not a valid weights file (neither safetensors nor a torch.save file; it starts "
                        f"with bytes {head.hex(' ') or 'nothing: it is empty'})")
    import torch

    try:
        with warnings.catch_warnings():  # torch's own advice and warnings are not for this user
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        code = _GLOBAL.search(str(e))
        if code:
            raise DataError(f"{path}: refused, the file is a pickle that would run code on load ({code.group(1)}); "
                            "only plain tensors are accepted: save a state_dict or safetensors") from None
        raise DataError(f"{path}: not a valid weights file ({_first_line(e)})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{path}: expected a state_dict of tensors, got {type(obj).__name__}")
    return obj


def _first_line(e: BaseException) -> str:
    """The cause without torch's boilerplate (its advice to load with weights_only=False is wrong for a file
    that is not trusted)."""
    for line in str(e).splitlines():
        sentences = [x for x in re.split(r"(?<=[.!?])\s+", line.strip())
                     if x and not re.search(r"weights_only|PyTorch 2\.6|documentation of torch\.load", x)]
        if sentences:
            return " ".join(sentences)[:300]
    return type(e).__name__


def build_model(spec):
    """The spec's model in eval mode with its committed weights loaded strictly."""
    import torch

    factory = import_ref(spec.factory, spec.python_path, spec.path, "model.factory")
    model = call_user(factory, spec.factory_args, spec.path, "model.factory", spec.factory, "model.factory_args")
    if not isinstance(model, torch.nn.Module):
        raise SpecError(spec.path, "model.factory", f"returned {type(model).__name__}, not a torch.nn.Module")
    state = load_state_dict(spec.weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())[:300]
        raise DataError(f"{spec.weights}: weights do not fit the model from {spec.factory}: {msg}") from None
    return model.eval()
