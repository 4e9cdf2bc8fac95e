"""The validated build spec as the rest of the tool reads it: BuildSpec and its parts (tensors, prune settings,
target requests). Plain frozen dataclasses, apart from the parsing that fills them (spec.py), so a reader of a
field's meaning need not wade through validation.
"""

from dataclasses import dataclass, field
from pathlib import Path

from .spec_paths import is_callable_ref


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # example shape, batch first; used for export and latency
    dtype: str = "float32"
    dynamic_axes: dict = field(default_factory=dict)  # axis index -> symbolic name
    metric: str | None = None  # outputs: the metric that judges this output
    metric_key: str = ""  # outputs: the spec key that named the metric ("" for the default)
    normalization: dict | None = None  # inputs: {"mean", "std"} the app applies to raw data (artifact metadata)
    class_names: tuple = ()  # outputs: one name per class (artifact metadata "labels")
    class_names_file: str | None = None  # outputs: the file class_names were read from (a build input)


@dataclass(frozen=True)
class PruneSpec:
    method: str
    ratio: float
    layer_ratios: dict
    ignore: tuple
    importance: str
    train: str | None
    epochs: int
    steps: int | None
    lr: float
    seed: int
    temperature: float
    threads: int = 1  # torch threads for pruning and recovery (0: torch's default); stages/prune.py says why 1
    stop_within: float | None = None  # recovery ends early once held-out top-1 agreement is within this of 100 %


@dataclass(frozen=True)
class TargetRequest:
    name: str
    max_metric_drop: float | None  # the first output's budget when its metric is judged by a drop
    overrides: dict  # tables merged over the target file's own tables (e.g. quantize = {method = "dynamic"})
    budgets: dict = field(default_factory=dict)  # budget key -> value, as written in [targets.T]
    output_budgets: dict = field(default_factory=dict)  # output name -> {budget key: value} ([targets.T.outputs])


@dataclass(frozen=True)
class BuildSpec:
    path: Path
    name: str
    version: str
    factory: str
    factory_args: dict
    weights: Path
    python_path: tuple
    inputs: tuple
    outputs: tuple
    calibration: str
    evaluation: str
    labels_key: str
    metric: str
    extra_metrics: tuple
    opset: int
    trace_atol: float
    trace_rtol: float
    prune: PruneSpec | None
    targets: dict  # name -> TargetRequest

    @property
    def dir(self) -> Path:
        return self.path.parent

    def resolve(self, ref: str) -> str:
        """A data reference: a path relative to the spec, or 'module:callable' left as is."""
        if is_callable_ref(ref):
            return ref
        return str((self.dir / ref).resolve())
