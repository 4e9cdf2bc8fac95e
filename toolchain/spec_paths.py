"""The references a build spec makes: a data reference ('module:callable' or a path), a file relative to the spec,
a file shipped inside an installed package. Separate from the table parsing so every key that names a file
resolves it, and fails, the same way (one SpecError naming the file and key).
"""

import re
from pathlib import Path

from .errors import SpecError


def is_callable_ref(ref: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", ref)) and not ref.endswith(".npz")


def _package_file(spec_path, key, ref: str) -> str:
    """'package:NAME/relative/path' names a file shipped inside an installed package (weights from a registry
    package); found without importing it. Anything else is a path relative to the spec."""
    if not ref.startswith("package:"):
        return ref
    import importlib.util

    name, _, rel = ref[len("package:"):].partition("/")
    try:
        found = importlib.util.find_spec(name) if name.isidentifier() else None
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations or not rel:
        raise SpecError(spec_path, key, f"{ref!r}: no installed package {name!r} with a file {rel!r} "
                                        "(form: 'package:NAME/relative/path')")
    return str(Path(list(found.submodule_search_locations)[0]) / rel)


def _existing_file(spec_path, key, rel) -> Path:
    """A file named by the spec, relative to it; every way it can be wrong is this key's error."""
    try:
        p = (spec_path.parent / rel).resolve()
        if p.is_file():
            return p
        problem = "is not a file" if p.exists() else "file not found"
    except (OSError, ValueError, RuntimeError) as e:  # over-long names, NUL bytes, loops (3.11: RuntimeError)
        problem, p = f"unusable path ({_path_problem(e)})", rel
    raise SpecError(spec_path, key, f"{problem}: {p}")


def _path_problem(e: BaseException) -> str:
    if isinstance(e, RuntimeError) or getattr(e, "errno", None) == 40:  # ELOOP
        return "a symlink loop"
    return str(e)
