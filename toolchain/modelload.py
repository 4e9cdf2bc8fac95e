"""Build the user's PyTorch model and load its weights as plain tensors (never by running a pickle)."""

from pathlib import Path

from .errors import DataError, SpecError
from .imports import import_ref


def load_state_dict(path: Path) -> dict:
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise DataError(f"{path}: refused, the file is a pickle that would run code on load "
                            f"(only plain tensors are accepted; save a state_dict or safetensors): {first}") from None
        raise DataError(f"{path}: cannot load weights ({first})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{path}: expected a state_dict of tensors, got {type(obj).__name__}")
    return obj


def build_model(spec):
    """The spec's model in eval mode with its committed weights loaded strictly."""
    import torch

    factory = import_ref(spec.factory, spec.python_path, spec.path, "model.factory")
    model = factory(**spec.factory_args)
    if not isinstance(model, torch.nn.Module):
        raise SpecError(spec.path, "model.factory", f"returned {type(model).__name__}, not a torch.nn.Module")
    state = load_state_dict(spec.weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())[:300]
        raise DataError(f"{spec.weights}: weights do not fit the model from {spec.factory}: {msg}") from None
    return model.eval()
