"""Builds the graph of nodes from the stages' declarations (stages/__init__.py), shares the common prefix
(trace, reference), and runs every node through the content-addressed cache; `--explain` walks the same nodes.

    [prune] -> trace -> reference -> per target: the stage that makes its artifact (formats.FORMATS)
                                                 -> metadata (stamps the app metadata into a copy) -> validate

The conversion is keyed on the graph and its options only; the cheap metadata node (stages/metadata.py) keys on
the conversion's output and the spec's app metadata, so a version bump or a rename reruns only the stamp (and
the validation of the stamped file, which is what ships).

A node is a pure function of its inputs; its cache key covers the stage name and version, its params, the
digests of its declared inputs, and the versions of the libraries it declares. Failures are never cached.
"""

import os
import threading
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from . import __version__
from .digest import sha256_arrays, sha256_file, sha256_json, sha256_sources
from .errors import StageError, ToolchainError
from .faults import checkpoint
from .hostinfo import host_id
from .imports import module_sources
from .progress import Progress
from .remote_cache import open_cache
from .spec import is_callable_ref
from .targets import load_target
from .versions import versions

SERIAL_ENV = "TOOLCHAIN_SERIAL"  # set: every node in one thread, in order (debugging, timing studies)


@dataclass
class Node:
    """One node of the build graph: a stage module (its declaration, stages/__init__.py) for one target (None: once
    per build) of one pipeline, with its params. Its key inputs come from its declared inputs when it is reached."""

    pipe: "Pipeline"
    module: object
    params: dict
    target: str | None = None

    @property
    def name(self) -> str:
        return self.module.NAME

    @property
    def label(self) -> str:
        return self.pipe.label_prefix + self.name + (f"[{self.target}]" if self.target else "")

    @cached_property
    def needs(self) -> tuple:
        return tuple(self.module.needs(self.params))

    @cached_property
    def libraries(self) -> tuple:
        if hasattr(self.module, "libraries"):  # validate: the libraries of the target's own runtime
            return tuple(self.module.libraries(self.pipe.targets[self.target]))
        return tuple(self.module.LIBRARIES)

    def upstream(self) -> list:
        """Labels of the nodes whose outputs this node reads, in the order of its declared inputs."""
        return [u for u in (self.pipe.upstream_label(n, self.target) for n in self.needs) if u]


class Pipeline:
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
        self.unpruned = None
        if spec.prune is not None:
            self.unpruned = Pipeline(replace(spec, prune=None), out_root, cache_dir, only_targets, targets_dir,
                                     self.progress, label_prefix="unpruned ")
            self.unpruned.cache = self.cache
            self.unpruned.entries, self.unpruned.keys = self.entries, self.keys  # labels carry "unpruned "
            self.unpruned.placements = self.placements
            self.unpruned.timings = self.timings

    @cached_property
    def metric_params(self) -> dict:
        """Each output's metric, and the code of any user metric, for the keys of the stages that compute them."""
        s = self.spec
        user = sorted({o.metric for o in s.outputs if is_callable_ref(o.metric)})
        code = sha256_sources([p for ref in user for p in module_sources(ref, s.python_path)]) if user else None
        return {"output_metrics": [[o.name, o.metric] for o in s.outputs], "metric_code": code}

    # ---- inputs, loaded lazily so a fully cached build touches as little as possible ----------------------
    @cached_property
    def calibration(self):
        from .data import check_inputs, load_arrays

        arrays = load_arrays(self.spec.calibration, self.spec, "calibration")
        check_inputs(arrays, self.spec, f"calibration data ({self.spec.calibration})")
        return arrays

    @cached_property
    def evaluation(self):
        from .data import check_inputs, load_arrays

        arrays = load_arrays(self.spec.evaluation, self.spec, "evaluation")
        check_inputs(arrays, self.spec, f"evaluation data ({self.spec.evaluation})",
                     evaluation=True)
        return arrays

    def _data_digest(self, ref, loader):
        return sha256_arrays(loader()) if is_callable_ref(ref) else sha256_file(self.spec.resolve(ref))

    @cached_property
    def calibration_digest(self):
        return self._data_digest(self.spec.calibration, lambda: self.calibration)

    @cached_property
    def evaluation_digest(self):
        return self._data_digest(self.spec.evaluation, lambda: self.evaluation)

    @cached_property
    def weights_digest(self):
        return sha256_file(self.spec.weights)

    @cached_property
    def base_model_digest(self):
        s = self.spec
        code = sha256_sources(module_sources(s.factory, s.python_path))
        return sha256_json({"factory": s.factory, "args": s.factory_args, "code": code,
                            "weights": self.weights_digest})

    @cached_property
    def model_digest(self):
        """The model that is traced: the spec's model, or its pruned form (then the prune output's digest)."""
        if self.spec.prune is None:
            return self.base_model_digest
        from .stages import prune

        return sha256_json({"base": self.base_model_digest, "pruned": self.prune_entry.digest(prune.OUTPUT)})

    @cached_property
    def base_model(self):
        from .modelload import build_model

        return build_model(self.spec)

    @cached_property
    def torch_model(self):
        if self.spec.prune is None:
            return self.base_model
        from .stages import prune

        return prune.load(self.base_model, self.prune_entry.path)

    @property
    def prune_entry(self):
        return self.entries[self.label_prefix + "prune"]

    @cached_property
    def train_data(self):
        from .data import check_inputs, load_arrays

        arrays = load_arrays(self.spec.prune.train, self.spec, "prune.train")
        check_inputs(arrays, self.spec, f"prune.train data ({self.spec.prune.train})")
        return arrays

    # ---- the graph --------------------------------------------------------------------------------------
    def transform_module(self, name):
        """The stage module that makes target `name`'s artifact (None: the traced fp32 ONNX ships as is)."""
        return self.targets[name].transform

    def stamp_module(self, name):
        """The metadata stage where target `name`'s conversion gets the app metadata stamped (None: it ships as
        converted)."""
        from .stages import metadata

        return metadata if metadata.stamps(self.transform_module(name)) else None

    def _transform_params(self, name, target):
        """The transform stage's params from the table it declares: the spec's override is checked on its own
        first, so an error in it names the build spec and its key, not the target file."""
        module = target.transform
        if module is None:
            return {}
        from .options import SCHEMAS

        table = module.TABLE
        override = self.spec.targets[name].overrides.get(table)
        if override:
            module.params_for(override, self.spec.path, f"targets.{name}.{table}")
        merged = target.table(table)
        if module.SCHEMA != table:  # a table shared by routes: keep only what this route takes
            merged = {k: v for k, v in merged.items() if k in SCHEMAS[module.SCHEMA]}
        return module.params_for(merged, target.path, table)

    def node(self, module, target=None) -> Node:
        if target is not None and module is self.transform_module(target):
            params = self.transform_params[target]
        else:
            params = module.spec_params(self.spec)
            if target is not None and hasattr(module, "target_params"):
                params = {**params, **module.target_params(self.targets[target], self.spec)}
        return Node(self, module, params, target)

    def nodes(self) -> list:
        """Every node of the build, in the order they run: the shared prefix, the unpruned twin's nodes (a pruned
        build also builds each target unpruned to measure the speedup), then each target's transform and
        validate."""
        from .stages import prune, reference, trace
        from .validation import stage as validate

        out = [self.node(prune)] if self.spec.prune is not None else []
        out += [self.node(trace), self.node(reference)]
        u = self.unpruned
        if u is not None:
            twins = {n: u.node(m, n) for n in u.targets if (m := u.transform_module(n))}
            out.append(u.node(trace))
            if any("reference" in t.needs for t in twins.values()):
                out.append(u.node(reference))
        for name in self.targets:
            if u is not None and name in twins:
                out.append(twins[name])
            module = self.transform_module(name)
            if module is not None:
                out.append(self.node(module, name))
            if self.stamp_module(name) is not None:
                out.append(self.node(self.stamp_module(name), name))
            out.append(self.node(validate, name))
        return out

    def upstream_label(self, need, target):
        """The label of the node whose output is input `need` (None: not a node's output)."""
        p = self.label_prefix
        if need == "model":
            return p + "prune" if self.spec.prune is not None else None
        if need in ("fp32", "reference"):
            return p + {"fp32": "trace", "reference": "reference"}[need]
        if need == "artifact" and self.stamp_module(target) is not None:  # the stamped file: what ships
            return p + f"{self.stamp_module(target).NAME}[{target}]"
        if need in ("artifact", "baseline", "converted", "conversion"):
            module = self.transform_module(target)
            return p + (f"{module.NAME}[{target}]" if module else "trace")
        if need == "unpruned" and self.unpruned is not None:  # timed only: its conversion, unstamped
            return self.unpruned.upstream_label("converted", target)
        return None

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

    # ---- running the graph ------------------------------------------------------------------------------
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

    def artifact(self, name) -> Path:
        """Target `name`'s artifact (its main file: formats.FORMATS names the others), once its node ran."""
        from .stages import trace

        module = self.transform_module(name)
        entry = self.entries[self.upstream_label("artifact", name)]
        return entry.file(module.OUTPUT if module else trace.OUTPUT)

    def converted(self, name) -> Path:
        """Target `name`'s artifact as its conversion stage wrote it, before the metadata stamp."""
        from .stages import trace

        module = self.transform_module(name)
        return self.entries[self.upstream_label("converted", name)].file(module.OUTPUT if module else trace.OUTPUT)

    def baseline(self, name) -> Path:
        """The fp32 baseline the artifact is timed against on the same runtime: of the artifact's own format
        where its stage writes one, else the traced fp32 ONNX."""
        from .stages import trace

        module = self.transform_module(name)
        if module is not None and getattr(module, "BASELINE", None):
            return self.entries[self.upstream_label("baseline", name)].file(module.BASELINE)
        return self.entries[self.label_prefix + "trace"].file(trace.OUTPUT)

    def explain(self, previous: dict) -> list:
        """Without building: each stage that would run and why, as (label, verdict) pairs."""
        from .explain import explain

        return explain(self, previous)


def _files_digest(path: Path) -> str:
    """One file: its sha256; an artifact of several files (formats.FORMATS): the digest of theirs."""
    from .formats import FORMATS

    for fmt in FORMATS.values():
        if fmt.companions and path.suffix == fmt.suffix and all(f.is_file() for f in fmt.files(path)):
            return sha256_json([sha256_file(f) for f in fmt.files(path)])
    return sha256_file(path)


class NodeInputs:
    """What a stage's build() reads, by the names it declared (stages/__init__.py); loaded on first use."""

    def __init__(self, pipe, target):
        self._pipe, self.target_name = pipe, target
        self.spec = pipe.spec
        self.target = pipe.targets[target] if target else None
        self.input_names = [t.name for t in pipe.spec.inputs]

    def __getattr__(self, name):
        if name not in VALUES:
            raise AttributeError(name)
        return VALUES[name](self._pipe, self.target_name)


def _entry(pipe, label):
    return pipe.entries[pipe.label_prefix + label]


def _io(pipe):
    return {"inputs": [[t.name, list(t.shape), t.dtype] for t in pipe.spec.inputs],
            "outputs": [o.name for o in pipe.spec.outputs]}  # baked into the artifact


def _unpruned(pipe, target):
    return pipe.unpruned.converted(target) if pipe.unpruned is not None else None


def _reference(pipe, target):
    from .stages import reference

    return reference.load(_entry(pipe, "reference").path)


# input -> (how it keys a node: "dep" its digest, "value" in the params, "params" a table merged into the params;
# the digest/value from a NodeInputs[; the dep's name in the key, where it differs])
INPUTS = {
    "model": ("dep", lambda i: i._pipe.model_digest),
    "base_model": ("dep", lambda i: i._pipe.base_model_digest, "model"),  # prune: the model before pruning
    "train": ("dep", lambda i: i._pipe._data_digest(i.spec.prune.train, lambda: i._pipe.train_data)
              if i.spec.prune is not None and i.spec.prune.train else None),
    "fp32": ("dep", lambda i: _entry(i._pipe, "trace").digest("model.fp32.onnx")),
    "reference": ("dep", lambda i: _entry(i._pipe, "reference").digest("reference.npz")),
    "calibration": ("dep", lambda i: i._pipe.calibration_digest),
    "evaluation": ("dep", lambda i: i._pipe.evaluation_digest),
    "host": ("dep", lambda i: host_id()),  # timing decisions and figures depend on the machine
    "artifact": ("dep", lambda i: _files_digest(i._pipe.artifact(i.target_name))),
    "baseline": ("dep", lambda i: _files_digest(i._pipe.baseline(i.target_name))),
    "unpruned": ("dep", lambda i: _files_digest(u) if (u := _unpruned(i._pipe, i.target_name)) else None),
    "budget": ("value", lambda i: i._pipe.gates[i.target_name]),
    "threads": ("value", lambda i: i.target.threads),
    "io": ("value", lambda i: _io(i._pipe)),
    "app_metadata": ("value", lambda i: _app_metadata(i.spec)),  # what the artifact carries for an app
    # the conversion's file before the metadata stamp, and what the stamp reads from its meta (stages/metadata.py)
    "converted": ("dep", lambda i: _files_digest(i._pipe.converted(i.target_name))),
    "conversion": ("value", lambda i: _conversion(i._pipe, i.target_name)),
    "metric_params": ("params", lambda i: i._pipe.metric_params),
    # the ARM cost model the arm64 plan searches speed on (its emulator's identity): None where none is set up
    "arm_cost": ("value", lambda i: _arm_cost(i.target)),
}
# input -> its value for build()
VALUES = {
    "model": lambda p, t: p.torch_model, "base_model": lambda p, t: p.base_model,
    "train": lambda p, t: p.train_data if p.spec.prune.train else None,
    "fp32": lambda p, t: _entry(p, "trace").file("model.fp32.onnx"),
    "reference": _reference, "reference_entry": lambda p, t: _entry(p, "reference"),
    "calibration": lambda p, t: p.calibration, "evaluation": lambda p, t: p.evaluation,
    "artifact": lambda p, t: p.artifact(t), "baseline": lambda p, t: p.baseline(t), "unpruned": _unpruned,
    "budget": lambda p, t: p.gates[t], "threads": lambda p, t: p.targets[t].threads,
    "arm_cost": lambda p, t: _arm_cost(p.targets[t]),
    "app_metadata": lambda p, t: _app_metadata(p.spec),
    "converted": lambda p, t: p.converted(t), "conversion": lambda p, t: _conversion(p, t),
}


def _app_metadata(spec):
    from .app_metadata import declared

    return declared(spec)


def _conversion(pipe, target):
    from .stages import metadata

    return metadata.facts(pipe.entries[pipe.upstream_label("conversion", target)].meta)


def _arm_cost(target):
    from .stages import arm_cost

    return arm_cost.model_for(target)
