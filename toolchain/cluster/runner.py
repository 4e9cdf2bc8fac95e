"""The client side of a cluster build: Pipeline.run's node loop, with the nodes submitted to Dask as their inputs
are built. Each node's cache key is computed here exactly as a local build computes it; a key the local or shared
cache already holds runs nothing. A node is submitted as task `<stage>-<key>`, so two models' identical stage is
one task; a node keyed by the machine it runs on (validate, plan) is submitted as `<stage>-<its key with the host
replaced by the resource it needs>` and the worker keys it with its own host.
"""

import threading
import time

from . import ClusterError, node_resource
from .task import NodeRequest, run_node

POLL_S = 1.0  # how often a waiting build re-checks that a worker still offers each resource it waits on


def runner(session):
    """The Pipeline runner (Pipeline(runner=...)) that runs a pipeline's nodes on `session`'s cluster."""
    return lambda pipe: ClusterRun(pipe, session).run()


class ClusterRun:
    def __init__(self, pipe, session):
        self.pipe, self.session = pipe, session
        self.nodes = pipe.nodes()
        self.failed = {}  # target -> StageError
        self.finished_one = threading.Event()

    def run(self) -> dict:
        pipe, session = self.pipe, self.session
        needs = {}
        for node in self.nodes:
            r = node_resource(node)
            if r is not None:
                needs.setdefault(r, []).append(node.label)
        session.wait_for(needs, pipe.spec.name)  # before anything runs: a missing resource fails fast
        pending, running = list(self.nodes), {}
        finished = []  # held until the build ends: another model submitting the same key shares the task
        while True:
            pending = [n for n in pending if n.target not in self.failed]  # a failed target stops there
            ready = [n for n in pending if self._ready(n)]
            for node in ready:
                pending.remove(node)
                future = self._start(node)
                if future is not None:
                    running[future] = node
            if not running:
                if not pending:
                    return self.failed
                if not ready:
                    raise RuntimeError(f"cluster build of {pipe.spec.name}: nodes never ready: "
                                       f"{', '.join(n.label for n in pending)}")
                continue
            done = self._wait_any(running)
            for future in done:
                self._finish(running.pop(future), future)
                finished.append(future)
            if not done:  # still waiting: the worker that offered a resource may have gone
                session.wait_for({r: ls for r, ls in needs.items()
                                  if any(n.label in ls for n in running.values())}, pipe.spec.name)

    def _wait_any(self, running) -> list:
        """The finished futures, waiting up to POLL_S for one (set by each future's done callback)."""
        self.finished_one.clear()
        done = [f for f in running if f.done()]
        if not done:
            self.finished_one.wait(POLL_S)
            done = [f for f in running if f.done()]
        return done

    def _ready(self, node) -> bool:
        return all(u in self.pipe.entries for u in node.upstream())

    def _start(self, node):
        """Take a cached node from the cache here; submit the others. Returns the future (None: done here)."""
        from ..digest import sha256_json
        from ..errors import StageError

        pipe, name = node.pipe, node.pipe.label_prefix + node.name
        try:
            key_inputs = pipe.key_inputs(node)
        except StageError as e:
            self._fail(node, e)
            return None
        resource = node_resource(node)
        if resource is None:
            key = sha256_json(key_inputs)
            pipe.keys[node.label] = key_inputs
            entry = pipe.cache.get(node.name, key)
            if entry is not None:
                pipe.progress.line(name, node.target,
                                   "cached (remote)" if getattr(entry, "remote", False) else "cached")
                self.pipe.entries[node.label] = entry
                return None
            task_key = f"{node.name}-{key}"
        else:  # keyed by the worker's host: the task is named by the resource it needs instead
            key = ""
            placeholder = {**key_inputs, "deps": {**key_inputs["deps"], "host": f"resource:{resource}"}}
            task_key = f"{node.name}-{sha256_json(placeholder)}"
        upstream = {label: (e.record["stage"], e.record["key"]) for label, e in self.pipe.entries.items()}
        req = NodeRequest(str(pipe.spec.path.resolve()), node.label, key, self.session.cache_url,
                          tuple(pipe.targets), _targets_dir(pipe), upstream, key_inputs if key else {})
        pipe.progress.line(name, node.target, "running" + (f" (on a {resource} worker)" if resource else ""))
        node.started = time.monotonic()
        future = self.session.client.submit(run_node, req, key=task_key, pure=False,
                                            resources={resource: 1} if resource else None)
        future.add_done_callback(lambda _: self.finished_one.set())
        return future

    def _finish(self, node, future):
        from distributed.scheduler import KilledWorker

        pipe, name = node.pipe, node.pipe.label_prefix + node.name
        try:
            result = future.result()
        except KilledWorker as e:
            pipe.progress.stop(name, node.target)
            raise ClusterError(node.name, f"every worker that ran it died ({e}); Dask gives a task up after "
                                          "distributed.scheduler.allowed-failures deaths (default 3): out of "
                                          "memory (toolchain worker --memory-limit), or killed", node.target) from None
        except BaseException:
            pipe.progress.stop(name, node.target)
            raise
        where = {k: result.get(k) for k in ("worker", "address", "host", "run")}
        if "error" in result:
            from ..errors import StageError

            err = result["error"]
            self._fail(node, StageError(err["stage"], err["cause"], err["target"] or node.target))
            return
        entry = pipe.cache.get(node.name, result["key"])
        if entry is None:
            raise ClusterError(node.name, f"worker {where['worker']} built it but the shared cache "
                                          f"{self.session.cache_url} does not hold it (is the cache reachable and "
                                          "writable from the workers?)", node.target)
        pipe.keys[node.label] = result["key_inputs"]
        self.pipe.entries[node.label] = entry
        # seconds: the task on the worker (set-up from the spec and inputs pulled included); stage_seconds: the
        # node itself, through the cache (its outputs pushed included)
        self.pipe.placements[node.label] = {**where, "key": result["key"], "ran": result["ran"],
                                            "seconds": result["seconds"], "stage_seconds": result["stage_seconds"]}
        if result["ran"]:
            pipe.ran.append((name, node.target))
        pipe.progress.line(name, node.target, f"done on {where['worker']} ({where['host']})"
                           if result["ran"] else f"cached on {where['worker']}",
                           time.monotonic() - node.started)

    def _fail(self, node, e):
        if node.target is None:
            raise e
        if e.target is None:
            e.target = node.target
        node.pipe.progress.line(e.stage, node.target, f"FAILED: {e.cause}")
        self.failed[node.target] = e


def _targets_dir(pipe):
    """The --targets-dir the client used, as the worker must see it (absolute)."""
    return str(pipe.targets_dir.resolve()) if pipe.targets_dir else None
