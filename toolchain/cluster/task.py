"""What a Dask worker runs for one node: rebuild the model's pipeline from the spec (same paths as the client), take
the node's inputs from the shared cache, run the node through the cache exactly as a local build does
(Pipeline.run_node: a hit runs nothing), and return only digests and where it ran.

A user error (a StageError) comes back as data, not as an exception, so it crosses any pickling boundary whole
and is never retried; a bug raises and keeps its traceback.
"""

import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

CACHE_ENV = "TOOLCHAIN_WORKER_CACHE_DIR"  # a worker's local cache layer (default: in the worker's scratch space)


@dataclass(frozen=True)
class NodeRequest:
    spec: str  # absolute path: workers see the spec, its weights, data and model code at the same paths
    label: str  # the node's label in the pipeline ("quantize[x86_64]", "unpruned trace", ...)
    key: str  # the cache key the client computed; "" for a node keyed by the host it runs on
    cache: str  # the shared cache URL (s3:// or file://)
    targets: tuple = ()
    targets_dir: str | None = None
    upstream: dict = field(default_factory=dict)  # label -> (stage, key) of every node built so far
    key_inputs: dict = field(default_factory=dict)  # the client's, to name what differs when the keys do


def run_node(req: NodeRequest) -> dict:
    from ..digest import sha256_json
    from ..errors import StageError
    from ..pipeline import Pipeline
    from ..progress import Progress
    from ..spec import load_spec

    worker = _worker()
    scratch = Path(worker.local_directory if worker else os.environ.get("TMPDIR", "/tmp")) / "toolchain"
    local = Path(os.environ.get(CACHE_ENV) or scratch / "cache")
    t0 = time.monotonic()
    spec = load_spec(req.spec)
    pipe = Pipeline(spec, scratch / "out", local, list(req.targets) or None, req.targets_dir,
                    Progress(spec.name, stream=sys.stderr, heartbeat_s=0), remote_cache=req.cache)
    entries = _SharedEntries(pipe.cache, req.upstream)
    pipe.entries = entries
    if pipe.unpruned is not None:
        pipe.unpruned.entries = entries
    node = next((n for n in pipe.nodes() if n.label == req.label), None)
    if node is None:
        raise RuntimeError(f"{req.spec}: no node {req.label!r} in this worker's graph")
    where = {"worker": worker.name if worker else None, "address": worker.address if worker else None,
             "host": platform.node(), "run": uuid.uuid4().hex}
    try:
        key_inputs = node.pipe.key_inputs(node)
        key = sha256_json(key_inputs)
        if req.key and key != req.key:
            raise StageError(node.name, f"worker {where['worker']} on {where['host']} computes another cache key "
                             f"than the client ({_first_difference(req.key_inputs, key_inputs)}): run workers from "
                             "the same checkout and environment", node.target)
        t1 = time.monotonic()
        entry = node.pipe.run_node(node)
    except StageError as e:
        return {"error": {"stage": e.stage, "cause": e.cause, "target": e.target}, **where}
    ran = (node.pipe.label_prefix + node.name, node.target) in node.pipe.ran
    return {"stage": node.name, "key": entry.record["key"], "key_inputs": key_inputs, "ran": ran,
            "seconds": round(time.monotonic() - t0, 3), "stage_seconds": round(time.monotonic() - t1, 3), **where}


def _first_difference(client: dict, worker: dict, prefix="") -> str:
    """The first dotted key whose value differs, with both values (digests shortened)."""
    for k in sorted(set(client) | set(worker)):
        a, b = client.get(k), worker.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            return _first_difference(a, b, f"{prefix}{k}.")
        short = [str(v)[:24] for v in (a, b)]
        return f"{prefix}{k}: client {short[0]}, worker {short[1]}"
    return "the same key inputs"


class _SharedEntries(dict):
    """The client's entries by label, each pulled from the shared cache the first time the node reads it."""

    def __init__(self, cache, upstream: dict):
        super().__init__()
        self._cache, self._upstream = cache, upstream

    def __missing__(self, label):
        if label not in self._upstream:
            raise KeyError(label)
        stage, key = self._upstream[label]
        entry = self._cache.get(stage, key)
        if entry is None:
            from ..errors import StageError

            raise StageError(stage, f"input {label} ({key[:16]}...) is not in the shared cache this worker reads "
                             "(does the worker reach the same --cache as the client?)")
        self[label] = entry
        return entry


def _worker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None
