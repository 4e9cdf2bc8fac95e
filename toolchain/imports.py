"""Import the user's code named by a spec ('package.module:function'). A spec is trusted, like a Makefile."""

import importlib
import sys
from contextlib import contextmanager
from pathlib import Path

from .errors import SpecError


@contextmanager
def python_path(paths):
    added = [p for p in paths if p not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)


def import_ref(ref: str, paths, spec_path, key):
    module_name, _, attr = ref.partition(":")
    with python_path(paths):
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise SpecError(spec_path, key, f"cannot import {module_name!r}: {e}") from None
    obj = getattr(module, attr, None)
    if obj is None or not callable(obj):
        raise SpecError(spec_path, key, f"{module_name!r} has no callable {attr!r}")
    return obj


def module_sources(ref: str, paths) -> list:
    """The .py files that make up a referenced module, found without importing it: for a module inside a
    package, every .py under that package's directory (subpackages included); for a top-level module, its
    file. Their digest stands for "the model's code" in cache keys: editing the model rebuilds it.
    """
    module_name = ref.partition(":")[0]
    rel = Path(*module_name.split("."))
    for base in paths:
        for candidate in (Path(base) / rel.with_suffix(".py"), Path(base) / rel / "__init__.py"):
            if candidate.is_file():
                if "." not in module_name and candidate.name != "__init__.py":
                    return [candidate]
                return sorted(p for p in candidate.parent.rglob("*.py") if "__pycache__" not in p.parts)
    return []
