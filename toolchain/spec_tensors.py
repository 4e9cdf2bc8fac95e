"""The spec's [[inputs]] and [[outputs]]: names, shapes, dtypes, dynamic axes, an input's normalization and an
output's class names. Separate because tensors have the most rules of any table (and a memory check) and are
read on their own by nothing else.
"""

import re

from .errors import SpecError
from .spec_paths import _existing_file
from .spec_table import _one_of, _Table
from .spec_types import TensorSpec

DTYPES = ("float32", "float16", "int64", "int32", "uint8", "int8", "bool")
ITEMSIZE = {"float32": 4, "float16": 2, "int64": 8, "int32": 4, "uint8": 1, "int8": 1, "bool": 1}


def _memory_bytes():
    try:
        import os

        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _tensors(path, top, key, with_shape):
    items = top.data.get(key)
    if items is None:
        raise SpecError(path, key, "is required (an array of tables: [[%s]])" % key)
    if not isinstance(items, list) or not items:
        raise SpecError(path, key, "must be a non-empty array of tables")
    seen, out = set(), []
    for i, item in enumerate(items):
        t = _Table(path, f"{key}[{i}]", item)
        t.reject_unknown({"name", "shape", "dtype", "dynamic_axes", "normalization"} if with_shape
                         else {"name", "metric", "class_names"})
        name = t.get("name", (str,), check=lambda v: None if re.fullmatch(r"[A-Za-z_][\w.:/-]*", v)
                     else f"must be an identifier, got {v!r}")
        if name in seen:
            raise SpecError(path, t.key("name"), f"duplicate name {name!r}")
        seen.add(name)
        if not with_shape:
            names, names_file = _class_names(path, t)
            out.append(TensorSpec(name, (), class_names=names, class_names_file=names_file))
            continue
        shape = t.get("shape", (list,))
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise SpecError(path, t.key("shape"), f"must be a non-empty list of positive integers, got {shape!r}")
        dtype = t.get("dtype", (str,), "float32", check=_one_of(DTYPES))
        size, memory = ITEMSIZE[dtype], _memory_bytes()
        for d in shape:
            size *= d
        if memory and size > memory:  # export and latency allocate one example of this shape
            raise SpecError(path, t.key("shape"), f"{shape!r} of {dtype} is {size / 2**30:.3g} GiB per example, more "
                                                  f"than this machine's {memory / 2**30:.3g} GiB of memory")
        dyn_raw = t.get("dynamic_axes", (dict,), {"0": "batch"})
        dyn = {}
        for ax, axname in dyn_raw.items():
            if not (str(ax).isascii() and str(ax).isdigit() and int(ax) < len(shape)):
                raise SpecError(path, t.key(f"dynamic_axes.{ax}"), f"must be an axis index below {len(shape)}")
            if not isinstance(axname, str) or not axname:
                raise SpecError(path, t.key(f"dynamic_axes.{ax}"), "must name the axis (a string)")
            dyn[int(ax)] = axname
        out.append(TensorSpec(name, tuple(shape), dtype, dyn, normalization=_normalization(path, t, shape)))
    return tuple(out)


def _class_names(path, t):
    """outputs[i].class_names: a list of strings, or a text file (relative to the spec) with one name a line.
    Carried into the artifacts' metadata as the output's labels."""
    v = t.get("class_names", (list, str), None)
    if v is None:
        return (), None
    names_file = None
    if isinstance(v, str):
        names_file = _existing_file(path, t.key("class_names"), v)
        try:
            v = names_file.read_text(encoding="utf-8").rstrip("\n").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError(path, t.key("class_names"), f"cannot be read as UTF-8 text ({e})") from None
        v = [s.rstrip("\r") for s in v]
    if not v or not all(isinstance(s, str) and s.strip() and "\0" not in s for s in v):
        raise SpecError(path, t.key("class_names"), "must be a non-empty list of non-empty strings (or a text file "
                                                    "with one name a line)")
    return tuple(v), str(names_file) if names_file else None


def _normalization(path, t, shape):
    """inputs[i].normalization = {mean, std}: what the app does to raw data before feeding it, (x - mean) / std,
    per channel (axis 1) or one number for all. Recorded in the artifacts' metadata; the build's data is already
    normalised."""
    if "normalization" not in t.data:
        return None
    n = t.table("normalization")
    n.reject_unknown({"mean", "std"})
    out = {}
    for k in ("mean", "std"):
        v = n.get(k, (float, list))
        values = v if isinstance(v, list) else [v]
        if not values or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x == x
                                 and abs(x) != float("inf") for x in values):
            raise SpecError(path, n.key(k), f"must be a number or a list of numbers, got {v!r}")
        if k == "std" and not all(x > 0 for x in values):
            raise SpecError(path, n.key(k), f"must be > 0, got {v!r}")
        if len(values) > 1 and (len(shape) < 2 or len(values) != shape[1]):
            raise SpecError(path, n.key(k), f"has {len(values)} values; give one number, or one per channel "
                                            f"(axis 1 of shape {shape}: {shape[1] if len(shape) > 1 else '-'})")
        out[k] = [float(x) for x in values]
    return out
