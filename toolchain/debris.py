"""Scratch space that a killed build cannot leave behind for good.

A build killed with SIGKILL (the OOM killer, `kill -9`) runs no cleanup, so its scratch directories stay: the
converter's folder in the system temp directory, an entry being written under the cache's tmp/. Each such name
carries its owner (host and PID: `<prefix>.<host>.<pid>.<random>`); the next build removes every one whose owner
process is gone. A directory of a live build, or of a build on another machine sharing the cache, is left alone.
"""

import hashlib
import os
import platform
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

SYSTEM_PREFIXES = ("toolchain-onnx2tf", "toolchain-litert-torch")  # scratch folders in the system temp dir


def _host() -> str:
    return hashlib.sha256(platform.node().encode()).hexdigest()[:8]


def owned_name(prefix: str) -> str:
    """A unique name that says which process owns it."""
    return f"{prefix}.{_host()}.{os.getpid()}.{uuid.uuid4().hex[:12]}"


def owner(name: str):
    """(host, pid) of an owned name, or None for a name this module did not make."""
    parts = name.rsplit(".", 3)
    if len(parts) != 4 or not parts[2].isdigit() or len(parts[1]) != 8:
        return None
    return parts[1], int(parts[2])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except (OverflowError, ValueError):
        return False
    return True


def orphaned(name: str) -> bool:
    """Made on this host by a process that is gone."""
    who = owner(name)
    return who is not None and who[0] == _host() and who[1] != os.getpid() and not _alive(who[1])


@contextmanager
def scratch_dir(prefix: str):
    """Like tempfile.TemporaryDirectory, with an owned name (mode 0700: it may hold the user's model)."""
    path = Path(tempfile.gettempdir()) / owned_name(prefix)
    path.mkdir(mode=0o700)
    try:
        yield str(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def reclaim(directory: Path, prefixes=None) -> list:
    """Remove the orphaned owned entries of one directory (optionally only those starting with a prefix)."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if prefixes and not name.startswith(prefixes):
            continue
        if orphaned(name):
            p = Path(directory) / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    p.unlink()
                except OSError:
                    pass
            removed.append(str(p))
    return removed


def reclaim_system_temp() -> list:
    return reclaim(Path(tempfile.gettempdir()), SYSTEM_PREFIXES)


def remove_temp_files(model_dir: Path):
    """Half-written `.NAME.UUID.tmp` files (atomic writes) in a model's output directory. Only call this while
    holding the directory's lock: no live build can be writing them then."""
    if not model_dir.is_dir():
        return
    for p in model_dir.rglob(".*.tmp"):
        try:
            if p.is_file():
                p.unlink()
        except OSError:
            pass
