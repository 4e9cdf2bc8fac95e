"""Calibration / evaluation data: .npz files (untrusted: no pickles) or importable callables (trusted)."""

from pathlib import Path

from .errors import DataError, SpecError
from .imports import import_ref
from .spec import is_callable_ref


def load_arrays(ref: str, spec, key: str) -> dict:
    import numpy as np

    if is_callable_ref(ref):
        fn = import_ref(ref, spec.python_path, spec.path, key)
        data = fn()
        if not isinstance(data, dict):
            raise SpecError(spec.path, key, f"{ref} must return a dict of arrays, got {type(data).__name__}")
        return {str(k): np.ascontiguousarray(np.asarray(v)) for k, v in data.items()}
    path = Path(spec.resolve(ref))
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.ascontiguousarray(z[k]) for k in z.files}
    except ValueError as e:  # object arrays need pickle: refused, data files are untrusted
        raise DataError(f"{path} ({key}): cannot be read without unpickling ({e}); store plain arrays") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path} ({key}): not a readable .npz file ({e})") from None


def check_inputs(arrays: dict, spec, key: str, evaluation=False) -> int:
    """Check data against the spec's input signature; returns the number of samples."""
    import numpy as np

    n = None
    for t in spec.inputs:
        if t.name not in arrays:
            raise DataError(f"{key}: no array named {t.name!r} (has {', '.join(sorted(arrays)) or 'none'})")
        a = arrays[t.name]
        if str(a.dtype) != t.dtype:
            raise DataError(f"{key}: input {t.name!r} has dtype {a.dtype}, the spec says {t.dtype}")
        if a.ndim != len(t.shape):
            raise DataError(f"{key}: input {t.name!r} has shape {a.shape}, the spec says rank {len(t.shape)} "
                            f"{list(t.shape)}")
        for ax, (got, want) in enumerate(zip(a.shape, t.shape)):
            if ax not in t.dynamic_axes and got != want:
                raise DataError(f"{key}: input {t.name!r} has shape {list(a.shape)}, axis {ax} must be {want}")
        if a.shape[0] == 0:
            raise DataError(f"{key}: input {t.name!r} holds no samples")
        if n is not None and a.shape[0] != n:
            raise DataError(f"{key}: inputs disagree on the number of samples ({n} vs {a.shape[0]})")
        n = a.shape[0]
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).sum())
            raise DataError(f"{key}: input {t.name!r} contains {bad} NaN/Inf values")
    if evaluation:  # the arrays the spec's metrics read besides the inputs
        from .validate.metrics import METRICS

        used = dict.fromkeys([*(o.metric or spec.metric for o in spec.outputs), *spec.extra_metrics])
        for metric in (m for m in used if m in METRICS):  # a user metric reads what it reads
            for need in METRICS[metric][2]:
                name = spec.labels_key if need == "labels" else need
                if name not in arrays:
                    what = "labels array" if need == "labels" else "array"
                    raise DataError(f"{key}: no {what} {name!r} (needed by metric {metric})")
                a = arrays[name]
                if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
                    raise DataError(f"{key}: {name!r} must be a 1-D integer array, got {a.dtype} {list(a.shape)}")
                if need == "labels" and len(a) != n:
                    raise DataError(f"{key}: {len(a)} labels for {n} samples")
                if need != "labels" and len(a) and (a.min() < 0 or a.max() >= n):
                    raise DataError(f"{key}: {name!r} holds row indices outside 0..{n - 1}")
    return n


def batches(arrays: dict, names, size: int):
    n = len(arrays[names[0]])
    for i in range(0, n, size):
        yield {k: arrays[k][i:i + size] for k in names}
