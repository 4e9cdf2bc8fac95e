"""Calibration / evaluation data: .npz files (untrusted: no pickles) or importable callables (trusted)."""

from pathlib import Path

from .errors import DataError, SpecError
from .imports import call_user, import_ref
from .spec import is_callable_ref


def load_arrays(ref: str, spec, key: str) -> dict:
    import numpy as np

    if is_callable_ref(ref):
        fn = import_ref(ref, spec.python_path, spec.path, key)
        data = call_user(fn, {}, spec.path, key if "." in key else f"data.{key}", ref)
        if not isinstance(data, dict):
            raise SpecError(spec.path, key, f"{ref} must return a dict of arrays, got {type(data).__name__}")
        return {str(k): np.ascontiguousarray(np.asarray(v)) for k, v in data.items()}
    return read_npz(Path(spec.resolve(ref)), key)


NPY_MAGIC = b"\x93NUMPY"


def read_npz(path: Path, key: str) -> dict:
    """A .npz read as untrusted data: no pickles, and every member's header checked against the bytes it holds
    before anything is allocated (a header may declare any shape)."""
    import zipfile
    import zlib

    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
    except OSError as e:
        raise DataError(f"{path} ({key}): cannot be read ({e.strerror or e})") from None
    if head == NPY_MAGIC:
        raise DataError(f"{path} ({key}): is a .npy file (one unnamed array); {key} data must be a .npz holding one "
                        "array per input, named like the spec's inputs (numpy.savez(path, input=array))")
    try:
        with zipfile.ZipFile(path) as z:
            return {name: array for name, array in (_member(z, info, path, key) for info in z.infolist())}
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as e:
        raise DataError(f"{path} ({key}): not a readable .npz file ({type(e).__name__}: {e})") from None
    except MemoryError:
        raise DataError(f"{path} ({key}): too large to load into this machine's memory") from None


def _member(z, info, path, key):
    import numpy as np
    from numpy.lib import format as npformat

    name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
    where = f"{path} ({key}): array {name!r}"
    with z.open(info) as m:
        version = npformat.read_magic(m)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(m)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(m)
        else:
            shape, fortran, dtype = npformat._read_array_header(m, version)  # noqa: SLF001 - 3.0 has no public reader
        if dtype.hasobject:
            raise DataError(f"{where} cannot be read without unpickling (dtype {dtype}); store plain arrays")
        count = 1
        for d in shape:
            count *= d
        need, holds = count * dtype.itemsize, info.file_size - m.tell()
        if need != holds:
            raise DataError(f"{where}: its header declares shape {list(shape)} of {dtype} ({need} bytes) but the file "
                            f"holds {holds} bytes")
        data = bytearray(need)  # writable, read once: the arrays go to torch and ONNX Runtime as they are
        view, got = memoryview(data), 0
        while got < need:
            n = m.readinto(view[got:])
            if not n:
                raise DataError(f"{where}: the file ends after {got} of {need} bytes")
            got += n
    array = np.frombuffer(data, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")
    return name, np.ascontiguousarray(array)


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
        from .validation.metrics import METRICS

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
