"""Running the whole graph in this process: the shared prefix first, then each target's chain, with the targets
whose converter runs in child processes in a second thread (a lane) so the two cores both work. A target's
failure stops only that target. Apart from the graph because a cluster runner (toolchain/cluster) replaces this
scheduling and keeps the rest.
"""

import os
import threading

from .errors import StageError

SERIAL_ENV = "TOOLCHAIN_SERIAL"  # set: every node in one thread, in order (debugging, timing studies)


class Lanes:
    """Mixed into Pipeline (pipeline.py): uses its runner, targets, entries, lane_of and progress."""

    def run(self):
        """Run every node; returns (trace entry, reference entry, per-target results). A target's failure stops
        only that target."""
        failed = self.runner(self) if self.runner is not None else self._run_nodes()
        return self._results(failed)

    def background_targets(self) -> set:
        """Targets whose artifact is made in child processes (a stage declaring CHILD_PROCESS: onnx2tf, the
        litert-torch side venv): their chain runs in a second lane while this process works on the others."""
        if os.environ.get(SERIAL_ENV) or len(self.targets) < 2:
            return set()
        return {n for n in self.targets if getattr(self.transform_module(n), "CHILD_PROCESS", False)}

    def _run_chain(self, nodes, failed, stop=None):
        """Run nodes in order; a StageError of a target's node stops that target only (recorded in `failed`).
        `stop`: an event that, once set, ends the chain before its next node (the other lane ended the build)."""
        for node in nodes:
            if stop is not None and stop.is_set():
                return
            if node.target in failed:
                continue
            self.lane_of[node.label] = threading.current_thread().name
            try:
                self.entries[node.label] = node.pipe.run_node(node)
            except StageError as e:
                if node.target is None:
                    raise
                if e.target is None:
                    e.target = node.target
                self.progress.line(e.stage, node.target, f"FAILED: {e.cause}")
                failed[node.target] = e

    def _run_nodes(self) -> dict:
        """Every node in this process; returns target -> the StageError that stopped it. The shared prefix runs
        first; then the targets whose converter runs in child processes (background_targets) run their chain in a
        second thread, concurrently with the other targets here: on a 2-core machine onnx2tf converts while the x86
        plan measures (timings stay interleaved A/B comparisons)."""
        failed = {}
        nodes = self.nodes()
        lane = self.background_targets()
        prefix = [n for n in nodes if n.target is None]
        self._run_chain(prefix, failed)
        rest = [n for n in nodes if n.target is not None]
        side = [n for n in rest if n.target in lane]
        thread, crashed, stop = None, [], threading.Event()
        if side:
            def work():
                try:
                    self._run_chain(side, failed, stop)
                except BaseException as e:  # noqa: BLE001 - re-raised in the main thread, traceback kept
                    crashed.append(e)
                    stop.set()
            # A daemon thread: a build that ends otherwise than by success does not wait for it; its converter
            # children die with the process (executors/process.py), its cache tmp/ is debris the next build reclaims.
            thread = threading.Thread(target=work, name="toolchain-lane", daemon=True)
            thread.start()
        try:
            self._run_chain([n for n in rest if n.target not in lane], failed, stop)
            while thread is not None and thread.is_alive():
                thread.join(0.2)  # short waits: Ctrl-C still reaches the main thread
        except BaseException:
            stop.set()  # the lane ends after its current node; nothing waits for it
            raise
        if crashed:
            raise crashed[0]
        return failed

    def _results(self, failed):
        results = {}
        for name, target in self.targets.items():
            if name in failed:
                results[name] = {"target": target, "error": failed[name]}
                continue
            module = self.transform_module(name)
            entry = self.entries[self.upstream_label("converted", name)]
            results[name] = {"target": target, "entry": entry, "artifact": self.artifact(name),
                             "baseline": self.baseline(name), "validation": self.entries[f"validate[{name}]"].meta,
                             "transform": entry.meta if module else {}}
        return self.entries["trace"], self.entries["reference"], results
