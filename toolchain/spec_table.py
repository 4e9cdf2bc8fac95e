"""Reading one TOML table of a spec (or of a target file or stage option table): typed keys, defaults, checks,
and unknown keys named with a did-you-mean. Shared by spec.py, targets.py, options.py and the stages' option
tables, so every file the tool reads reports a bad key in the same words.
"""

import difflib
import re

from .errors import SpecError


class _Table:
    """A TOML table being read: tracks which keys were used so unknown ones can be named."""

    def __init__(self, path, prefix, data):
        self.path, self.prefix = path, prefix
        if not isinstance(data, dict):
            raise SpecError(path, prefix, f"must be a table, got {_typename(data)}")
        self.data = data

    def key(self, k):
        return f"{self.prefix}.{k}" if self.prefix else k

    def get(self, k, types, default=..., check=None, what=None):
        if k not in self.data:
            if default is ...:
                raise SpecError(self.path, self.key(k), "is required")
            return default
        v = self.data[k]
        # TOML integers are fine where floats are wanted; bools are not numbers here.
        if float in types and isinstance(v, int) and not isinstance(v, bool):
            try:
                v = float(v)
            except OverflowError:
                raise SpecError(self.path, self.key(k), f"number out of range: {v}") from None
        if isinstance(v, str) and "\0" in v:
            raise SpecError(self.path, self.key(k), "must not contain a NUL character")
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            want = what or " or ".join(_typename_t(t) for t in types)
            raise SpecError(self.path, self.key(k), f"must be {want}, got {_typename(v)} {v!r}")
        if check is not None:
            problem = check(v)
            if problem:
                raise SpecError(self.path, self.key(k), problem)
        return v

    def table(self, k, required=False):
        if k not in self.data:
            if required:
                raise SpecError(self.path, self.key(k), "is required")
            return _Table(self.path, self.key(k), {})
        return _Table(self.path, self.key(k), self.data[k])

    def reject_unknown(self, known):
        for k in self.data:
            if k not in known:
                close = difflib.get_close_matches(str(k), list(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(known))})"
                raise SpecError(self.path, self.key(k), f"unknown key{hint}")


def _typename_t(t):
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false", list: "a list",
            dict: "a table"}.get(t, t.__name__)


def _typename(v):
    return {str: "string", int: "integer", float: "number", bool: "boolean", list: "list",
            dict: "table"}.get(type(v), type(v).__name__)


def _one_of(choices):
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"


def _in_range(lo, hi, hi_open=False):
    def check(v):
        ok = lo <= v < hi if hi_open else lo <= v <= hi
        return None if ok and v == v else f"must be in [{lo}, {hi}{')' if hi_open else ']'}, got {v!r}"
    return check


def _nonempty(v):
    return None if v.strip() else "must not be empty"


def _factory_ref(v):
    return None if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v) else \
        f"must be 'package.module:function', got {v!r}"


def _data_ref(v):
    return None if v.strip() else "must be a .npz path or 'module:function'"
