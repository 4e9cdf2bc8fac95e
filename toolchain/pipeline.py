"""Builds the graph of nodes from the stages' declarations (stages/__init__.py), shares the common prefix
(trace, reference), and runs every node through the content-addressed cache; `--explain` walks the same nodes.

    [prune] -> trace -> reference -> per target: the stage that makes its artifact (formats.FORMATS)
                                                 -> metadata (stamps the app metadata into a copy) -> validate

The conversion is keyed on the graph and its options only; the cheap metadata node (stages/metadata.py) keys on
the conversion's output and the spec's app metadata, so a version bump or a rename reruns only the stamp (and
the validation of the stamped file, which is what ships).

A node is a pure function of its inputs; its cache key covers the stage name and version, its params, the
digests of its declared inputs, and the versions of the libraries it declares. Failures are never cached.

This module makes a Pipeline for one spec (its targets, gates, cache and bookkeeping); each job lives in its own
module, mixed into the class, and every name is importable from here as before:
    pipeline_graph.py     the nodes, their order, which node feeds which input, where a target's files are
    pipeline_inputs.py    the spec's data and model, and their digests, loaded lazily
    stage_inputs.py       the inputs a stage may declare: how each keys a node, what build() gets
    pipeline_run_node.py  one node through the cache: its key, a hit or a run, the bookkeeping
    pipeline_lanes.py     running the whole graph here, in two lanes; per-target failures
    pipeline_unpruned.py  a pruned build's unpruned twin
"""

from pathlib import Path

from .errors import ToolchainError
from .pipeline_graph import BuildGraph, Node  # noqa: F401 - re-exported
from .pipeline_inputs import BuildInputs
from .pipeline_lanes import SERIAL_ENV, Lanes  # noqa: F401 - re-exported
from .pipeline_run_node import NodeRunner
from .pipeline_unpruned import unpruned_twin
from .progress import Progress
from .remote_cache import open_cache
from .stage_inputs import (  # noqa: F401 - re-exported
    INPUTS, VALUES, NodeInputs, _app_metadata, _arm_cost, _conversion, _entry, _files_digest, _io, _reference,
    _unpruned)
from .targets import load_target


class Pipeline(BuildInputs, BuildGraph, NodeRunner, Lanes):
    def __init__(self, spec, out_root, cache_dir=None, only_targets=None, targets_dir=None, progress=None,
                 label_prefix="", remote_cache=None, runner=None):
        self.spec = spec
        self.label_prefix = label_prefix
        self.out_root = Path(out_root)
        self.targets_dir = Path(targets_dir) if targets_dir else None
        self.model_dir = self.out_root / spec.name
        self.progress = progress or Progress(spec.name)
        # The one place the cache is chosen: local, or local in front of a shared one (remote_cache.py).
        self.cache = open_cache(cache_dir or self.out_root / ".cache", remote_cache,
                                lambda message: print(message, file=self.progress.stream, flush=True))
        names = list(spec.targets)
        if only_targets:
            unknown = [t for t in only_targets if t not in spec.targets]
            if unknown:
                raise ToolchainError(f"{spec.path}: --target {unknown[0]!r} is not in the spec's targets "
                                     f"({', '.join(names)})")
            names = [t for t in names if t in only_targets]
        self.targets = {n: load_target(n, targets_dir, spec.targets[n].overrides, spec.path) for n in names}
        self.transform_params = {n: self._transform_params(n, t) for n, t in self.targets.items()}
        # What judges each output on each target (metric, budget in its unit); imports user metrics now, so a
        # wrong declaration is a spec error before any stage runs.
        from .validation.metrics import output_gates

        self.gates = {n: output_gates(spec, n, t.precision) for n, t in self.targets.items()}
        self.ran = []  # (stage, target) of stages that executed (not cached) in this build
        self.keys = {}  # "stage[target]" -> key inputs, recorded in the stamp so --explain can diff them
        self.entries = {}  # node label -> its cache entry, once run (or found up to date)
        # Who runs the nodes: None, this process (_run_nodes, in two lanes); or a cluster runner (toolchain/cluster),
        # which records where each node ran (label -> worker, host) in placements.
        self.runner, self.placements = runner, {}
        self.lane_of = {}  # node label -> the thread that ran it (the main one, or the converters' lane)
        self.timings = {}  # node label -> {"seconds", "lane"} for a node that ran, {"cached": True} for one found
        # A pruned build also builds each target unpruned (cached like any stage) to measure the speedup.
        self.unpruned = unpruned_twin(self, out_root, cache_dir, only_targets, targets_dir)

    def explain(self, previous: dict) -> list:
        """Without building: each stage that would run and why, as (label, verdict) pairs."""
        from .explain import explain

        return explain(self, previous)
