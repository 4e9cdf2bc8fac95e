"""The build graph: which node each stage makes for each target, in which order they run, whose output feeds
which declared input, and where a target's files are once its nodes ran. Apart from the running (lanes, cache)
so the cluster client and `--explain` walk the very same nodes.
"""

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .pipeline_unpruned import twin_nodes


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


class BuildGraph:
    """Mixed into Pipeline (pipeline.py): uses its spec, targets, transform_params, label_prefix, unpruned and
    entries."""

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
        twin_prefix, twins = twin_nodes(self.unpruned)
        out += twin_prefix
        for name in self.targets:
            if name in twins:
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
