"""Content-addressed stage cache (DVC-style): key -> a directory of output files plus entry.json.

- The key is a full sha256 over everything that can change a stage's output (see pipeline_run_node.key_inputs).
- Writes go to a private temp directory that is renamed into place: a build killed at any moment leaves
  either no entry or a whole one. Two builds racing for the same key both succeed; the first rename wins.
- An entry is trusted only if entry.json parses and every file's digest matches; anything else is a miss
  (and is removed), never a crash. Failures are never cached.
"""

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from .debris import owned_name, reclaim
from .digest import sha256_file, sha256_json

ENTRY = "entry.json"


class CacheEntry:
    def __init__(self, path: Path, record: dict):
        self.path, self.record = path, record

    @property
    def meta(self) -> dict:
        return self.record.get("meta", {})

    def file(self, name) -> Path:
        return self.path / name

    def digest(self, name) -> str:
        return self.record["files"][name]


class StageCache:
    def __init__(self, root):
        self.root = Path(root)

    def reclaim_debris(self) -> list:
        """Temp entries of builds that were killed (their owner process is gone)."""
        return reclaim(self.root / "tmp")

    def _dir(self, stage, key) -> Path:
        return self.root / stage / key

    def get(self, stage: str, key: str, verify: bool = True, _retried: bool = False):
        d = self._dir(stage, key)
        try:
            record = json.loads((d / ENTRY).read_text())
            if record.get("key") != key:
                raise ValueError("key mismatch")
            if record.get("meta_sha256") != sha256_json(record.get("meta")):
                raise ValueError("meta changed")
            if verify:
                for name, digest in record["files"].items():
                    if sha256_file(d / name) != digest:
                        raise ValueError(f"{name} changed")
            return CacheEntry(d, record)
        except FileNotFoundError:
            if not _retried and (d / ENTRY).is_file():  # another build (or thread) published it since we
                return self.get(stage, key, verify, _retried=True)  # looked: a whole entry, not debris
            if d.exists():  # directory without a valid entry: debris, drop it
                self._discard(d)
            return None
        except (ValueError, KeyError, TypeError, OSError, json.JSONDecodeError):
            self._discard(d)
            return None

    def _discard(self, d: Path):
        trash = self.root / "tmp" / owned_name("trash")
        try:
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.rename(d, trash)
            shutil.rmtree(trash, ignore_errors=True)
        except OSError:
            pass

    @contextmanager
    def writer(self, stage: str, key: str):
        """Yield a fresh directory to write outputs into; publish() makes it the entry atomically."""
        tmp = self.root / "tmp" / owned_name(f"{stage}-{key[:16]}")  # a killed build's is reclaimed later
        tmp.mkdir(parents=True)
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def publish(self, tmp: Path, stage: str, key: str, meta: dict, inputs: dict) -> CacheEntry:
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name != ENTRY}
        record = {"key": key, "stage": stage, "inputs": inputs, "files": files, "meta": meta,
                  "meta_sha256": sha256_json(json.loads(json.dumps(meta)))}
        _write_json_atomic(tmp / ENTRY, record)
        final = self._dir(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another build published the same key first; theirs is equivalent (same key), use it if whole.
            existing = self.get(stage, key)
            if existing is None:
                raise
            return existing
        _fsync_dir(final.parent)
        return CacheEntry(final, record)


def atomic_write(path: Path, data: bytes):
    """Write a whole file or nothing: a temp file renamed into place; the temp file never outlives a failure,
    and an error names the file being written."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json_atomic(path: Path, obj):
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _fsync_dir(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


write_json_atomic = _write_json_atomic


def copy_atomic(src: Path, dst: Path):
    """Copy a file so that dst is either absent, the old file, or the whole new file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except OSError as e:  # name the file being written, not the one being read
        raise OSError(e.errno, e.strerror, str(dst)) from None
    finally:
        if tmp.exists():
            tmp.unlink()
