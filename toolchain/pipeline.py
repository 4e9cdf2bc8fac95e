"""Plans each target's chain of stages, shares the common prefix (trace, reference), and runs every stage
through the content-addressed cache.

    [prune] -> trace -> reference -> per target: transform (quantize | fp16 | tflite) -> validate

A stage is a pure function of its inputs; its cache key covers the stage name and version, its params, the
digests of its inputs, and the versions of the libraries it uses. Failures are never cached.
"""

import time
from dataclasses import dataclass, field, replace
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


@dataclass
class StageRun:
    """One stage of the plan: what it is, what it depends on, and how to make its outputs."""

    module: object
    params: dict
    deps: dict
    produce: object  # callable(out_dir) -> meta
    target: str | None = None
    name: str = field(init=False)

    def __post_init__(self):
        self.name = self.module.NAME

    @cached_property
    def key_inputs(self) -> dict:
        return {"stage": self.name, "stage_version": self.module.VERSION, "params": self.params,
                "deps": self.deps, "libraries": versions(self.module.LIBRARIES),
                "toolchain": __version__}

    @cached_property
    def key(self) -> str:
        return sha256_json(self.key_inputs)


class _ValidateStage:
    NAME = "validate"
    VERSION = 3  # 2: every output judged (sqnr); 3: int8 ONNX records the optimized graph's op counts
    LIBRARIES = ("onnxruntime", "onnxruntime-gpu", "ai-edge-litert", "numpy")


class Pipeline:
    def __init__(self, spec, out_root, cache_dir=None, only_targets=None, targets_dir=None, progress=None,
                 label_prefix="", remote_cache=None):
        self.spec = spec
        self.label_prefix = label_prefix
        self.out_root = Path(out_root)
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
        from .validate.metrics import output_gates

        self.gates = {n: output_gates(spec, n, t.precision) for n, t in self.targets.items()}
        self.ran = []  # (stage, target) of stages that executed (not cached) in this build
        self.keys = {}  # "stage[target]" -> key inputs, recorded in the stamp so --explain can diff them
        # A pruned build also builds each target unpruned (cached like any stage) to measure the speedup.
        self.unpruned = None
        if spec.prune is not None:
            self.unpruned = Pipeline(replace(spec, prune=None), out_root, cache_dir, only_targets, targets_dir,
                                     self.progress, label_prefix="unpruned ")
            self.unpruned.cache = self.cache

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

    @cached_property
    def prune_entry(self):
        return self.run_stage(self.prune_stage())

    # ---- stage plumbing ---------------------------------------------------------------------------------
    def run_stage(self, st: StageRun):
        label = self.label_prefix + _label(st)
        self.keys[label] = st.key_inputs
        name = self.label_prefix + st.name
        checkpoint(st.name)
        entry = self.cache.get(st.name, st.key)
        if entry is not None:
            self.progress.line(name, st.target, "cached (remote)" if getattr(entry, "remote", False) else "cached")
            checkpoint(f"{st.name}.done")
            return entry
        self.progress.line(name, st.target, "running")
        t0 = time.monotonic()
        try:
            with self.cache.writer(st.name, st.key) as tmp:
                meta = st.produce(tmp)
                checkpoint(f"{st.name}.written")  # outputs in the cache's tmp/, not yet published
                entry = self.cache.publish(tmp, st.name, st.key, meta, st.key_inputs)
        except BaseException:
            self.progress.stop(name, st.target)  # no heartbeat outlives its stage
            raise
        self.ran.append((self.label_prefix + st.name, st.target))
        self.progress.line(name, st.target, "done", time.monotonic() - t0)
        checkpoint(f"{st.name}.done")
        return entry

    def _transform_params(self, name, target):
        """The transform stage's params: the spec's override is checked on its own first, so an error in it
        names the build spec and its key, not the target file."""
        if target.transform is None:
            return {}
        import importlib

        table = {"quantize": "quantize", "fp16": "fp16", "tflite": "convert"}[target.transform]
        stage = target.transform
        if stage == "tflite" and target.table("convert").get("converter") == "litert-torch":
            stage = "litert_torch"  # the second route: PyTorch -> TFLite without ONNX (its own venv)
        module = importlib.import_module(f".stages.{stage}", __package__)
        override = self.spec.targets[name].overrides.get(table)
        if override:
            module.params_for(override, self.spec.path, f"targets.{name}.{table}")
        merged = target.table(table)
        if stage == "litert_torch":  # the target file's options are onnx2tf's: keep only what this route takes
            merged = {k: v for k, v in merged.items() if k in module.DEFAULTS}
        return module.params_for(merged, target.path, table)

    # ---- the plan -----------------------------------------------------------------------------------------
    def prune_stage(self) -> StageRun:
        from .stages import prune, trace

        s, p = self.spec, self.spec.prune
        params = {k: getattr(p, k) for k in ("method", "ratio", "layer_ratios", "ignore", "importance", "epochs",
                                             "steps", "lr", "seed", "temperature")}
        params["inputs"] = [[t.name, list(t.shape), t.dtype] for t in s.inputs]
        deps = {"model": self.base_model_digest, "evaluation": self.evaluation_digest}
        if p.train:
            deps["train"] = self._data_digest(p.train, lambda: self.train_data)

        def produce(out):
            import torch

            from .stages.reference import torch_outputs
            from .validate import metrics

            base_ref = torch_outputs(self.base_model, self.evaluation, s.inputs)

            def metric_fn(model):
                return metrics.compute(s.metric, torch_outputs(model, self.evaluation, s.inputs), self.evaluation,
                                       base_ref, s)
            example = trace.example_inputs(s.inputs, torch)
            return prune.run(self.base_model, p, out, example, self.train_data if p.train else None,
                             self.evaluation, [t.name for t in s.inputs], metric_fn, s.labels_key)
        return StageRun(prune, params, deps, produce)

    @cached_property
    def train_data(self):
        from .data import check_inputs, load_arrays

        arrays = load_arrays(self.spec.prune.train, self.spec, "prune.train")
        check_inputs(arrays, self.spec, f"prune.train data ({self.spec.prune.train})")
        return arrays

    def trace_stage(self) -> StageRun:
        from .stages import trace

        s = self.spec
        params = {"opset": s.opset, "inputs": [[t.name, list(t.shape), t.dtype, t.dynamic_axes] for t in s.inputs],
                  "outputs": [o.name for o in s.outputs]}
        return StageRun(trace, params, {"model": self.model_digest},
                        lambda out: trace.run(self.torch_model, params, out, s.inputs, s.outputs))

    def reference_stage(self, fp32) -> StageRun:
        from .stages import reference

        s = self.spec
        params = {"atol": s.trace_atol, "rtol": s.trace_rtol, "metric": s.metric, "labels_key": s.labels_key,
                  "also": list(s.extra_metrics), **self.metric_params}
        deps = {"model": self.model_digest, "fp32": fp32.digest("model.fp32.onnx"),
                "evaluation": self.evaluation_digest}
        return StageRun(reference, params, deps,
                        lambda out: reference.run(self.torch_model, fp32.file("model.fp32.onnx"), params, out,
                                                  self.evaluation, s))

    def transform_stage(self, name, target, fp32) -> StageRun | None:
        params = self.transform_params[name]
        fp32_path, fp32_digest = fp32.file("model.fp32.onnx"), fp32.digest("model.fp32.onnx")
        names = [t.name for t in self.spec.inputs]
        if target.transform == "quantize" and params["method"] == "auto":
            from .stages import plan, reference

            budget = self.gates[name]
            ref = self.ref_entry
            deps = {"fp32": fp32_digest, "calibration": self.calibration_digest, "evaluation": self.evaluation_digest,
                    "reference": ref.digest(reference.OUTPUT), "host": host_id()}
            return StageRun(plan, {**params, "budget": budget, "threads": target.threads}, deps,
                            lambda out: plan.run(fp32_path, params, out, self.calibration, self.evaluation,
                                                 reference.load(ref.path), self.spec, budget, target.threads), name)
        if target.transform == "quantize":
            from .stages import quantize
            deps = {"fp32": fp32_digest}
            if params["method"] == "static":
                deps["calibration"] = self.calibration_digest
            return StageRun(quantize, params, deps, lambda out: quantize.run(
                fp32_path, params, out, self.calibration if params["method"] == "static" else None, names), name)
        if target.transform == "fp16":
            from .stages import fp16
            deps = {"fp32": fp32_digest}
            if params["range_guard"]:
                deps["calibration"] = self.calibration_digest
            return StageRun(fp16, params, deps, lambda out: fp16.run(
                fp32_path, params, out, self.calibration if params["range_guard"] else None, names), name)
        if target.transform == "tflite" and params.get("converter") == "litert-torch":
            from .stages import litert_torch
            deps = {"model": self.model_digest, "converter_lock": litert_torch.lock_digest(params)}
            io = {"inputs": [[t.name, list(t.shape), t.dtype] for t in self.spec.inputs],
                  "outputs": [o.name for o in self.spec.outputs]}  # baked into the artifact
            return StageRun(litert_torch, {**params, "io": io}, deps, lambda out: litert_torch.run(
                self.torch_model, params, out, self.spec, name), name)
        if target.transform == "tflite":
            from .stages import reference, tflite
            deps = {"fp32": fp32_digest, "calibration": self.calibration_digest}
            if params["precision"] != "auto":
                return StageRun(tflite, params, deps, lambda out: tflite.run(
                    fp32_path, params, out, self.calibration, self.spec, name), name)
            budget, ref = self.gates[name], self.ref_entry
            deps.update(evaluation=self.evaluation_digest, reference=ref.digest(reference.OUTPUT))
            if params["speed_search"]:  # the ARM cost model decides speed: its identity is part of the key
                from .stages import arm_cost
                params = {**params, "arm_cost": arm_cost.model_for(target)}
            return StageRun(tflite, {**params, "budget": budget}, deps, lambda out: tflite.run(
                fp32_path, params, out, self.calibration, self.spec, name,
                judge=(self.evaluation, reference.load(ref.path), budget)), name)
        return None

    def validate_stage(self, name, target, artifact, baseline, ref_entry, unpruned=None) -> StageRun:
        from .stages import reference
        from .validate import target as validate_target

        s = self.spec
        params = {"runtime": target.runtime, "providers": list(target.providers), "threads": target.threads,
                  "latency": target.latency, "metric": s.metric, "also": list(s.extra_metrics), **self.metric_params,
                  "runtime_options": target.tables.get("runtime_options", [])}
        if target.runtime == "litert":  # where it is judged: the executor's identity and runtime versions
            from .executors import identity

            params["executor"] = identity(target, (target.tables.get("executor") or {}).get("device"))
        deps = {"artifact": sha256_file(artifact), "baseline": sha256_file(baseline),
                "reference": ref_entry.digest(reference.OUTPUT), "evaluation": self.evaluation_digest,
                "host": host_id()}
        if unpruned is not None:
            deps["unpruned"] = sha256_file(unpruned)
        ref_value = ref_entry.meta["outputs"]
        return StageRun(_ValidateStage, params, deps, lambda out: validate_target.run(
            target, artifact, baseline, self.evaluation, reference.load(ref_entry.path), s, ref_value,
            unpruned), name)

    def run(self):
        """Run every stage; returns (shared results, per-target results). Target failures do not stop others."""
        fp32 = self.run_stage(self.trace_stage())
        ref = self.ref_entry = self.run_stage(self.reference_stage(fp32))
        ufp32 = self.unpruned.run_stage(self.unpruned.trace_stage()) if self.unpruned else None
        results = {}
        for name, target in self.targets.items():
            try:
                st = self.transform_stage(name, target, fp32)
                entry = self.run_stage(st) if st else fp32
                artifact, baseline = _artifact_files(target, entry, fp32)
                unpruned = self.unpruned.built_artifact(name, target, ufp32) if self.unpruned else None
                val = self.run_stage(self.validate_stage(name, target, artifact, baseline, ref, unpruned))
                results[name] = {"target": target, "entry": entry, "artifact": artifact, "baseline": baseline,
                                 "validation": val.meta, "transform": entry.meta if st else {}}
            except StageError as e:
                if e.target is None:
                    e.target = name
                self.progress.line(e.stage, name, f"FAILED: {e.cause}")
                results[name] = {"target": target, "error": e}
        return fp32, ref, results


    def built_artifact(self, name, target, fp32):
        if _needs_ref(self, name) and getattr(self, "ref_entry", None) is None:
            self.ref_entry = self.run_stage(self.reference_stage(fp32))
        st = self.transform_stage(name, target, fp32)
        entry = self.run_stage(st) if st else fp32
        return _artifact_files(target, entry, fp32)[0]

    def explain(self, previous: dict) -> list:
        """Without building: each stage that would run and why, as (label, verdict) pairs."""
        from .explain import explain

        return explain(self, previous)


def _needs_ref(pipe, name):
    """Precision plans judge their variants against the reference outputs."""
    params = pipe.transform_params[name]
    return params.get("method") == "auto" or params.get("precision") == "auto"


def _label(st):
    return st.name + (f"[{st.target}]" if st.target else "")


def _artifact_files(target, entry, fp32):
    """The artifact file and its fp32 baseline on the same runtime."""
    if target.transform == "tflite":  # both TFLite routes name their files alike
        from .stages import tflite
        return entry.file(tflite.OUTPUT), entry.file(tflite.BASELINE)
    if target.transform is None:
        return fp32.file("model.fp32.onnx"), fp32.file("model.fp32.onnx")
    (name,) = [n for n in entry.record["files"] if n.endswith(".onnx")]
    return entry.file(name), fp32.file("model.fp32.onnx")
