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
        except Exception as e:  # noqa: BLE001 - the user's module fails as it is imported: theirs to fix
            raise SpecError(spec_path, key, f"importing {module_name!r} raised {_describe(e)}") from None
    obj = getattr(module, attr, None)
    if obj is None or not callable(obj):
        raise SpecError(spec_path, key, f"{module_name!r} has no callable {attr!r}")
    return obj


def call_user(fn, kwargs, spec_path, key, ref, args_key=None):
    """Call the user's factory or data function. Arguments it does not take name args_key; anything it raises
    is the spec's problem (one line naming the key), not a toolchain bug."""
    import inspect

    if args_key is not None:
        try:
            inspect.signature(fn).bind(**kwargs)
        except TypeError as e:
            raise SpecError(spec_path, args_key, f"{ref} does not take these arguments: {e}") from None
        except ValueError:  # no signature to read (a builtin): let the call say
            pass
    try:
        return fn(**kwargs)
    except Exception as e:  # noqa: BLE001 - a bug in the user's code, named with the key that points at it
        raise SpecError(spec_path, key, f"{ref} raised {_describe(e)}") from None


def _describe(e: BaseException) -> str:
    text = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


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
