"""The inputs a stage may declare (stages/__init__.py `needs`), by name: how each one keys a node (INPUTS) and
what build() gets for it (VALUES, through NodeInputs). One table, apart from the graph and the runner, so adding
an input is one entry here and a stage that names it.
"""

from pathlib import Path

from .digest import sha256_file, sha256_json
from .hostinfo import host_id


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
