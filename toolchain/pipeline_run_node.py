"""One node through the content-addressed cache: its key (stage, version, params, the digests of its declared
inputs, library versions), a hit, or a run whose outputs are published under that key; and the bookkeeping a
report and `--explain` read (ran, keys, timings). Apart from the lanes because a cluster worker (cluster/task.py)
runs single nodes with it and schedules them its own way.
"""

import threading
import time

from . import __version__
from .digest import sha256_json
from .faults import checkpoint
from .pipeline_graph import Node
from .stage_inputs import INPUTS, NodeInputs
from .versions import versions


class NodeRunner:
    """Mixed into Pipeline (pipeline.py): uses its cache, progress, label_prefix, ran, keys and timings."""

    def inputs(self, node) -> "NodeInputs":
        return NodeInputs(self, node.target)

    def key_inputs(self, node) -> dict:
        """The node's cache key inputs: data inputs as digests (deps), value inputs as params."""
        inp, deps, params = self.inputs(node), {}, dict(node.params)
        for need in node.needs:
            kind, digest, *as_key = INPUTS[need]
            value = digest(inp)
            if value is None:  # not present in this build (no prune.train data, no unpruned twin)
                continue
            if kind == "value":
                params[need] = value
            elif kind == "params":  # a table of params of its own (the outputs' metrics)
                params.update(value)
            else:
                deps[as_key[0] if as_key else need] = value
        if hasattr(node.module, "extra_deps"):
            deps.update(node.module.extra_deps(node.params))
        return {"stage": node.name, "stage_version": node.module.VERSION, "params": params, "deps": deps,
                "libraries": versions(node.libraries), "toolchain": __version__}

    def run_node(self, node: Node):
        key_inputs = self.key_inputs(node)
        key = sha256_json(key_inputs)
        label, name = node.label, self.label_prefix + node.name
        self.keys[label] = key_inputs
        checkpoint(node.name)
        entry = self.cache.get(node.name, key)
        if entry is not None:
            self.timings[label] = {"cached": True}
            self.progress.line(name, node.target, "cached (remote)" if getattr(entry, "remote", False) else "cached")
            checkpoint(f"{node.name}.done")
            return entry
        self.progress.line(name, node.target, "running")
        t0 = time.monotonic()
        try:
            with self.cache.writer(node.name, key) as tmp:
                meta = node.module.build(self.inputs(node), node.params, tmp)
                checkpoint(f"{node.name}.written")  # outputs in the cache's tmp/, not yet published
                entry = self.cache.publish(tmp, node.name, key, meta, key_inputs)
        except BaseException:
            self.progress.stop(name, node.target)  # no heartbeat outlives its stage
            raise
        self.ran.append((name, node.target))
        took = time.monotonic() - t0
        self.timings[label] = {"seconds": round(took, 2), "lane": threading.current_thread().name}
        self.progress.line(name, node.target, "done", took)
        checkpoint(f"{node.name}.done")
        return entry
