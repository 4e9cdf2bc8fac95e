"""The local stage cache in front of a shared one (S3 or a shared directory): one content-addressed cache for a
team, with the local cache as a read-through layer.

- Reads: a local hit is used as is. On a local miss the action record `ac/<stage>/<key>.json` is read; each
  file it names is fetched from `cas/<sha256>` into the local cache's tmp/, checked against its digest, and the
  entry is published into the local cache atomically (StageCache.publish). A record that does not parse, names
  another key, whose meta changed, or whose blob is missing or damaged is a miss (a damaged blob is deleted:
  bytes that do not match their name are never right).
- Writes: after a stage ran and its entry was published locally, its blobs are uploaded first and its record
  LAST, with a conditional put: the first writer wins, and a record never names a blob that is not whole in the
  store. A record found without all its blobs is replaced. Failures are never cached (the pipeline publishes
  only what succeeded); a local hit that the remote lacks is uploaded too, so a warm local cache fills an empty
  shared one.
- Faults: a cache that does not answer (gone, timing out, 5xx) -> one `warning:` line and the rest of the build
  runs local-only: the remote only saves time, its entries are digest-checked, so a build without it gives the
  same artifacts. A write refused (read-only credentials) -> one warning, the build goes on reading only. A cache
  that cannot be used as configured (bad URL, no such bucket or directory, credentials refused) is a user error.
- Only digests and files travel; credentials stay in boto3's own chain and never reach a message.
"""

import json
import re

from .cache import ENTRY, StageCache
from .cache_backends import RemoteRefused, RemoteUnavailable, open_store, public_url
from .digest import sha256_file, sha256_json
from .faults import checkpoint

FORMAT = 1
_DIGEST = re.compile(r"[0-9a-f]{64}")


def open_cache(local_root, remote_url=None, warn=None):
    """The stage cache a build uses: the local one, or the local one in front of `remote_url`."""
    local = StageCache(local_root)
    if not remote_url:
        return local
    return LayeredCache(local, open_store(remote_url), public_url(remote_url), warn or _stderr)


def _stderr(message):
    import sys

    print(message, file=sys.stderr, flush=True)


class LayeredCache:
    def __init__(self, local: StageCache, store, url: str, warn):
        self.local, self.store, self.url, self.warn = local, store, url, warn
        self.root = local.root
        self.readable = self.writable = True

    def reclaim_debris(self) -> list:
        return self.local.reclaim_debris()

    def writer(self, stage: str, key: str):
        return self.local.writer(stage, key)

    # ---- reading -------------------------------------------------------------------------------------------------
    def get(self, stage: str, key: str, verify: bool = True):
        entry = self.local.get(stage, key, verify)
        if entry is not None:
            self._guard(self._backfill, stage, key, entry)
            return entry
        if not self.readable:
            return None
        return self._guard(self._pull, stage, key)

    def _pull(self, stage, key):
        raw = self.store.read_record(stage, key)
        record = _parse_record(raw, stage, key) if raw is not None else None
        if record is None:
            return None
        with self.local.writer(stage, key) as tmp:
            for name, digest in record["files"].items():
                dest = tmp / name
                if not self.store.fetch_blob(digest, dest):
                    return None  # a record without its blobs is a miss (a writer will replace it)
                if sha256_file(dest) != digest:
                    self.store.delete_blob(digest)
                    return None
            # (if a build on this machine published the key meanwhile, its entry is returned: equivalent, whole)
            entry = self.local.publish(tmp, stage, key, record["meta"], record.get("inputs", {}))
        entry.remote = True  # the progress line says "cached (remote)"
        return entry

    # ---- writing -------------------------------------------------------------------------------------------------
    def publish(self, tmp, stage: str, key: str, meta: dict, inputs: dict):
        entry = self.local.publish(tmp, stage, key, meta, inputs)
        self._guard(self._push, stage, key, entry)
        return entry

    def _backfill(self, stage, key, entry):
        if self.writable and not self.store.has_record(stage, key):
            self._push(stage, key, entry)

    def _push(self, stage, key, entry) -> bool:
        """Blobs first, the record last (conditional). True when this build's record is the one published."""
        if not self.writable:
            return False
        files = entry.record["files"]
        sizes = {}
        for name, digest in files.items():
            path = entry.file(name)
            sizes[name] = path.stat().st_size
            self.store.put_blob(digest, path)
        checkpoint(f"{stage}.remote-record")  # test hook: blobs uploaded, the record not yet
        data = _record_bytes(entry.record, sizes)
        if self.store.put_record_if_absent(stage, key, data):
            return True
        if self._whole(stage, key):
            return False  # another build published this key first: theirs stands
        self.store.delete_record(stage, key)  # a record that lost a blob: replace it with this whole one
        return self.store.put_record_if_absent(stage, key, data)

    def _whole(self, stage, key) -> bool:
        raw = self.store.read_record(stage, key)
        record = _parse_record(raw, stage, key) if raw is not None else None
        if record is None:
            return False
        sizes = record.get("sizes") or {}
        return all(isinstance(sizes.get(n), int) and self.store.has_blob(d, sizes[n])
                   for n, d in record["files"].items())

    # ---- faults --------------------------------------------------------------------------------------------------
    def _guard(self, fn, *args):
        """Run one remote step; a cache that went away or refused a write changes the build's mode, once."""
        if not self.readable:  # gone earlier in this build: no more waiting on it
            return None
        try:
            return fn(*args)
        except RemoteUnavailable as e:
            self.readable = self.writable = False
            self.warn(f"warning: remote cache {self.url} is unavailable ({e}); this build goes on with the local "
                      "cache only and publishes nothing more to it")
        except RemoteRefused as e:
            self.writable = False
            self.warn(f"warning: remote cache {self.url} refused a write ({e}); this build reads from it but "
                      "publishes nothing to it")
        return None


def _record_bytes(record: dict, sizes: dict) -> bytes:
    shared = {k: record[k] for k in ("key", "stage", "files", "meta", "meta_sha256", "inputs")}
    shared.update(format=FORMAT, sizes=sizes)
    return (json.dumps(shared, indent=2, sort_keys=True) + "\n").encode()


def _parse_record(raw: bytes, stage: str, key: str):
    """The record as a dict when it is whole and about this key; None (a miss) for anything else."""
    try:
        record = json.loads(raw)
        files, meta = record["files"], record["meta"]
        if record.get("format") != FORMAT or record.get("key") != key or record.get("stage") != stage:
            return None
        if not isinstance(files, dict) or not isinstance(meta, dict):
            return None
        if record.get("meta_sha256") != sha256_json(meta):
            return None
        for name, digest in files.items():
            # A plain file name (a record must not write outside the entry) and a full sha256.
            if (not isinstance(name, str) or not isinstance(digest, str) or name in ("", ".", "..", ENTRY)
                    or "/" in name or "\\" in name or "\0" in name or not _DIGEST.fullmatch(digest)):
                return None
        return record
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
