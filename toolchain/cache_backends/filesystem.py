"""The shared cache in a directory every builder mounts (NFS, a shared disk): `file:///shared/dir`.

Same layout and rules as S3. Blobs are written to tmp/ and renamed into place (a reader never sees half a
file); records are published with a hard link, which fails when the name exists: the first writer wins, as
with S3's conditional put. The directory must exist (an unmounted share must not silently become a local
folder) and its file system must support hard links (local disks and NFS do).
"""

import errno
import os
import shutil
from pathlib import Path

from ..debris import owned_name, reclaim
from . import LOCAL_WRITE_ERRNOS, RemoteCacheError, RemoteRefused, RemoteUnavailable, blob_path, public_url, record_path

_REFUSED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})


class FileStore:
    def __init__(self, root: str, url: str):
        self.root = Path(root)
        self.url = public_url(url)
        self._checked = False

    def _check(self):
        if self._checked:
            return
        if not self.root.is_dir():
            raise RemoteCacheError(f"remote cache {self.url}: no such directory (create it, or mount the share)")
        reclaim(self.root / "tmp")  # temp files of builds on this host that were killed while publishing
        self._checked = True

    def _path(self, rel: str) -> Path:
        self._check()
        return self.root / rel

    def _fail(self, e: OSError, writing: bool):
        if writing and e.errno in _REFUSED:
            return RemoteRefused(f"cannot write ({e.strerror})")
        return RemoteUnavailable(f"{e.strerror or type(e).__name__} ({e.filename or self.root})")

    def _tmp(self) -> Path:
        tmp = self.root / "tmp"
        tmp.mkdir(exist_ok=True)
        return tmp / owned_name("put")

    def read_record(self, stage: str, key: str):
        try:
            return self._path(record_path(stage, key)).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._fail(e, False) from None

    def has_record(self, stage: str, key: str) -> bool:
        try:
            return self._path(record_path(stage, key)).is_file()
        except OSError as e:
            raise self._fail(e, False) from None

    def fetch_blob(self, digest: str, dest: Path) -> bool:
        src = self._path(blob_path(digest))
        try:
            with open(src, "rb") as f, open(dest, "wb") as out:
                shutil.copyfileobj(f, out, 1 << 20)
            return True
        except FileNotFoundError as e:
            if e.filename == str(src):
                return False
            raise
        except OSError as e:
            if e.filename == str(dest) or e.errno in LOCAL_WRITE_ERRNOS:
                raise  # our own disk refused the write: not the cache's fault
            raise self._fail(e, False) from None

    def has_blob(self, digest: str, size: int) -> bool:
        try:
            return self._path(blob_path(digest)).stat().st_size == size
        except FileNotFoundError:
            return False
        except OSError as e:
            raise self._fail(e, False) from None

    def put_blob(self, digest: str, src: Path):
        if self.has_blob(digest, src.stat().st_size):
            return
        final = self._path(blob_path(digest))
        tmp = None
        try:
            final.parent.mkdir(exist_ok=True)
            tmp = self._tmp()
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)  # same name, same content: a racing writer's copy is as good as ours
        except OSError as e:
            if e.filename == str(src):
                raise
            raise self._fail(e, True) from None
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def put_record_if_absent(self, stage: str, key: str, data: bytes) -> bool:
        final = self._path(record_path(stage, key))
        tmp = None
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._tmp()
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, final)  # fails if the name exists: first writer wins, and never half a record
            return True
        except FileExistsError:
            return False
        except OSError as e:
            raise self._fail(e, True) from None
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def _delete(self, rel: str):
        try:
            self._path(rel).unlink(missing_ok=True)
        except OSError:
            pass

    def delete_record(self, stage: str, key: str):
        self._delete(record_path(stage, key))

    def delete_blob(self, digest: str):
        self._delete(blob_path(digest))
