"""BuildSpec: the model's build file (TOML), loaded and validated.

Every problem is reported as one SpecError naming the file and the dotted key, so a user can fix it
without reading a traceback. Nothing here imports torch or numpy.
"""

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SpecError

DTYPES = ("float32", "float16", "int64", "int32", "uint8", "int8", "bool")
METRICS = ("top1", "cosine", "sqnr", "retrieval_agreement", "recall_at_1")  # or a user's 'module:function'
BUDGET_KEYS = ("max_metric_drop", "min_sqnr_db", "min_metric", "max_metric")
PRUNE_METHODS = ("channel", "unstructured")


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


def is_callable_ref(ref: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", ref)) and not ref.endswith(".npz")


class _Table:
    """A TOML table being read: tracks which keys were used so unknown ones can be named."""

    def __init__(self, path, prefix, data):
        self.path, self.prefix = path, prefix
        if not isinstance(data, dict):
            raise SpecError(path, prefix, f"must be a table, got {_typename(data)}")
        self.data = data

    def key(self, k):
        return f"{self.prefix}.{k}" if self.prefix else k

    def get(self, k, types, default=..., check=None, what=None):
        if k not in self.data:
            if default is ...:
                raise SpecError(self.path, self.key(k), "is required")
            return default
        v = self.data[k]
        # TOML integers are fine where floats are wanted; bools are not numbers here.
        if float in types and isinstance(v, int) and not isinstance(v, bool):
            try:
                v = float(v)
            except OverflowError:
                raise SpecError(self.path, self.key(k), f"number out of range: {v}") from None
        if isinstance(v, str) and "\0" in v:
            raise SpecError(self.path, self.key(k), "must not contain a NUL character")
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            want = what or " or ".join(_typename_t(t) for t in types)
            raise SpecError(self.path, self.key(k), f"must be {want}, got {_typename(v)} {v!r}")
        if check is not None:
            problem = check(v)
            if problem:
                raise SpecError(self.path, self.key(k), problem)
        return v

    def table(self, k, required=False):
        if k not in self.data:
            if required:
                raise SpecError(self.path, self.key(k), "is required")
            return _Table(self.path, self.key(k), {})
        return _Table(self.path, self.key(k), self.data[k])

    def reject_unknown(self, known):
        for k in self.data:
            if k not in known:
                close = difflib.get_close_matches(str(k), list(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(known))})"
                raise SpecError(self.path, self.key(k), f"unknown key{hint}")


def _typename_t(t):
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false", list: "a list",
            dict: "a table"}.get(t, t.__name__)


def _typename(v):
    return {str: "string", int: "integer", float: "number", bool: "boolean", list: "list",
            dict: "table"}.get(type(v), type(v).__name__)


def _one_of(choices):
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"


def _in_range(lo, hi, hi_open=False):
    def check(v):
        ok = lo <= v < hi if hi_open else lo <= v <= hi
        return None if ok and v == v else f"must be in [{lo}, {hi}{')' if hi_open else ']'}, got {v!r}"
    return check


def _nonempty(v):
    return None if v.strip() else "must not be empty"


def _factory_ref(v):
    return None if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v) else \
        f"must be 'package.module:function', got {v!r}"


def _data_ref(v):
    return None if v.strip() else "must be a .npz path or 'module:function'"


def _package_file(spec_path, key, ref: str) -> str:
    """'package:NAME/relative/path' names a file shipped inside an installed package (weights from a registry
    package); found without importing it. Anything else is a path relative to the spec."""
    if not ref.startswith("package:"):
        return ref
    import importlib.util

    name, _, rel = ref[len("package:"):].partition("/")
    try:
        found = importlib.util.find_spec(name) if name.isidentifier() else None
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations or not rel:
        raise SpecError(spec_path, key, f"{ref!r}: no installed package {name!r} with a file {rel!r} "
                                        "(form: 'package:NAME/relative/path')")
    return str(Path(list(found.submodule_search_locations)[0]) / rel)


def _existing_file(spec_path, key, rel) -> Path:
    """A file named by the spec, relative to it; every way it can be wrong is this key's error."""
    try:
        p = (spec_path.parent / rel).resolve()
        if p.is_file():
            return p
        problem = "is not a file" if p.exists() else "file not found"
    except (OSError, ValueError, RuntimeError) as e:  # over-long names, NUL bytes, loops (3.11: RuntimeError)
        problem, p = f"unusable path ({_path_problem(e)})", rel
    raise SpecError(spec_path, key, f"{problem}: {p}")


def _path_problem(e: BaseException) -> str:
    if isinstance(e, RuntimeError) or getattr(e, "errno", None) == 40:  # ELOOP
        return "a symlink loop"
    return str(e)


def _memory_bytes():
    try:
        import os

        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


ITEMSIZE = {"float32": 4, "float16": 2, "int64": 8, "int32": 4, "uint8": 1, "int8": 1, "bool": 1}


def load_spec(path, need_weights=True) -> BuildSpec:
    """need_weights=False for commands that judge built artifacts (validate, bench) on machines that need not
    hold the model's weights (a GPU host)."""
    path = Path(path)
    try:
        if not path.is_file():
            raise SpecError(path, None, "build spec not found" if not path.exists() else "is not a file")
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SpecError(path, None, "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(path, None, f"invalid TOML: {e}") from None
    except RecursionError:
        raise SpecError(path, None, "invalid TOML: nested too deeply") from None
    except (OSError, ValueError) as e:
        raise SpecError(path, None, f"cannot be read ({e})") from None
    return parse_spec(path.resolve(), raw, need_weights)


def parse_spec(path: Path, raw: dict, need_weights=True) -> BuildSpec:
    top = _Table(path, "", raw)
    top.reject_unknown({"model", "inputs", "outputs", "data", "metric", "trace", "prune", "targets"})

    model = top.table("model", required=True)
    model.reject_unknown({"name", "version", "factory", "factory_args", "weights", "python_path"})
    name = model.get("name", (str,), check=lambda v: None if re.fullmatch(r"[A-Za-z0-9][\w.-]*", v)
                     else f"must be letters, digits, '.', '_' or '-', got {v!r}")
    version = model.get("version", (str,), "0.0.0", check=_nonempty)
    factory = model.get("factory", (str,), check=_factory_ref)
    factory_args = model.get("factory_args", (dict,), {})
    weights_rel = model.get("weights", (str,), check=_nonempty)
    if need_weights:
        weights = _existing_file(path, "model.weights", _package_file(path, "model.weights", weights_rel))
    else:
        weights = Path(weights_rel)
    pp = model.get("python_path", (list,), ["."])
    for i, p in enumerate(pp):
        if not isinstance(p, str) or "\0" in p:
            raise SpecError(path, f"model.python_path[{i}]", f"must be a directory path (string), got {p!r}")
    python_path = []
    for i, p in enumerate(pp):
        try:
            python_path.append(str((path.parent / p).resolve()))
        except (OSError, ValueError, RuntimeError) as e:  # a symlink loop is a RuntimeError on 3.11
            raise SpecError(path, f"model.python_path[{i}]", f"unusable path {p!r} ({_path_problem(e)})") from None
    python_path = tuple(python_path)

    inputs = _tensors(path, top, "inputs", with_shape=True)
    outputs = _tensors(path, top, "outputs", with_shape=False)

    data = top.table("data", required=True)
    data.reject_unknown({"calibration", "evaluation", "labels_key"})
    calibration = data.get("calibration", (str,), check=_data_ref)
    evaluation = data.get("evaluation", (str,), check=_data_ref)
    for key, ref in (("calibration", calibration), ("evaluation", evaluation)):
        if not is_callable_ref(ref):
            _existing_file(path, f"data.{key}", ref)
    labels_key = data.get("labels_key", (str,), "labels", check=_nonempty)

    metric_t = top.table("metric")
    metric_t.reject_unknown({"name", "also"})
    # The first output's metric: the task metric where the evaluation data has labels, else the agreement one.
    default = "top1" if _has_labels(path, evaluation, labels_key) else "sqnr"
    metric = metric_t.get("name", (str,), default, check=_metric_name)
    outputs = _output_metrics(path, top, outputs, metric, "name" in metric_t.data)
    also = metric_t.get("also", (list,), [])
    for i, m in enumerate(also):
        if m not in METRICS:
            raise SpecError(path, f"metric.also[{i}]", f"must be one of {', '.join(METRICS)}, got {m!r}")

    trace = top.table("trace")
    trace.reject_unknown({"opset", "atol", "rtol"})
    opset = trace.get("opset", (int,), 17, check=_in_range(13, 21))
    atol = trace.get("atol", (float,), 1e-4, check=_in_range(0.0, 1.0))
    rtol = trace.get("rtol", (float,), 1e-3, check=_in_range(0.0, 1.0))

    prune = _prune(path, top) if "prune" in raw else None

    targets_t = top.table("targets", required=True)
    if not targets_t.data:
        raise SpecError(path, "targets", "names no target (add e.g. [targets.x86_64])")
    targets = {}
    for tname in targets_t.data:
        t = targets_t.table(tname)
        from .options import STAGE_TABLES  # the stage option tables a target may override (options.SCHEMAS)

        t.reject_unknown({*BUDGET_KEYS, "outputs", *STAGE_TABLES})
        budgets = _budgets(path, t)
        overrides = {k: t.get(k, (dict,)) for k in STAGE_TABLES if k in t.data}
        per_output = _output_budgets(path, t, outputs)
        targets[tname] = TargetRequest(tname, budgets.get("max_metric_drop"), overrides, budgets, per_output)

    spec = BuildSpec(path, name, version, factory, factory_args, weights, python_path, inputs, outputs,
                     calibration, evaluation, labels_key, metric, tuple(also), opset, atol, rtol, prune, targets)
    _check_budgets(spec)
    return spec


# ---- metrics and budgets ([metric], [[outputs]] metric, [targets.T] budget keys) ---------------------------
def _metric_name(v):
    return None if v in METRICS or _factory_ref(v) is None else \
        f"must be one of {', '.join(METRICS)} or a user metric 'package.module:function', got {v!r}"


def _has_labels(path, evaluation, labels_key) -> bool:
    """Does the evaluation .npz hold the labels array? (Read from the zip's index: no numpy here.) Data given by
    a function is assumed labelled, as before metrics had defaults; name the metric to say otherwise."""
    if is_callable_ref(evaluation):
        return True
    import zipfile

    try:
        with zipfile.ZipFile(path.parent / evaluation) as z:
            return f"{labels_key}.npy" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return True  # not a readable .npz: loading it says why, with its own error


def _output_metrics(path, top, outputs, first_metric, first_given) -> tuple:
    """Each output's metric: its own `metric` key, else [metric] name for the first output and sqnr for the
    others (the agreement metric that sees the input-dependent signal)."""
    from dataclasses import replace

    raw = top.data.get("outputs") or []
    out = []
    for i, o in enumerate(outputs):
        t = _Table(path, f"outputs[{i}]", raw[i])
        own = t.get("metric", (str,), None, check=_metric_name)
        metric = own or (first_metric if i == 0 else "sqnr")
        key = f"outputs[{i}].metric" if own else ("metric.name" if i == 0 and first_given else "")
        out.append(replace(o, metric=metric, metric_key=key))
    return tuple(out)


def _budgets(path, t) -> dict:
    wide = {"max_metric_drop": _in_range(0.0, 100.0), "min_sqnr_db": _in_range(0.0, 100.0)}
    return {k: t.get(k, (float,), check=wide.get(k)) for k in BUDGET_KEYS if k in t.data}


def _output_budgets(path, t, outputs) -> dict:
    names = [o.name for o in outputs]
    table = t.table("outputs")
    table.reject_unknown(set(names))
    out = {}
    for name in table.data:
        o = table.table(name)
        o.reject_unknown(set(BUDGET_KEYS))
        out[name] = _budgets(path, o)
    return out


def _check_budgets(spec):
    """Budgets of built-in metrics, in their units (a cosine budget of 1.0 gates nothing: an error). User
    metrics are checked when the build imports them."""
    from .validation import metrics

    for tname in spec.targets:
        metrics.output_gates(spec, tname, "int8", user=False)


def _tensors(path, top, key, with_shape):
    items = top.data.get(key)
    if items is None:
        raise SpecError(path, key, "is required (an array of tables: [[%s]])" % key)
    if not isinstance(items, list) or not items:
        raise SpecError(path, key, "must be a non-empty array of tables")
    seen, out = set(), []
    for i, item in enumerate(items):
        t = _Table(path, f"{key}[{i}]", item)
        t.reject_unknown({"name", "shape", "dtype", "dynamic_axes", "normalization"} if with_shape
                         else {"name", "metric", "class_names"})
        name = t.get("name", (str,), check=lambda v: None if re.fullmatch(r"[A-Za-z_][\w.:/-]*", v)
                     else f"must be an identifier, got {v!r}")
        if name in seen:
            raise SpecError(path, t.key("name"), f"duplicate name {name!r}")
        seen.add(name)
        if not with_shape:
            names, names_file = _class_names(path, t)
            out.append(TensorSpec(name, (), class_names=names, class_names_file=names_file))
            continue
        shape = t.get("shape", (list,))
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise SpecError(path, t.key("shape"), f"must be a non-empty list of positive integers, got {shape!r}")
        dtype = t.get("dtype", (str,), "float32", check=_one_of(DTYPES))
        size, memory = ITEMSIZE[dtype], _memory_bytes()
        for d in shape:
            size *= d
        if memory and size > memory:  # export and latency allocate one example of this shape
            raise SpecError(path, t.key("shape"), f"{shape!r} of {dtype} is {size / 2**30:.3g} GiB per example, more "
                                                  f"than this machine's {memory / 2**30:.3g} GiB of memory")
        dyn_raw = t.get("dynamic_axes", (dict,), {"0": "batch"})
        dyn = {}
        for ax, axname in dyn_raw.items():
            if not (str(ax).isascii() and str(ax).isdigit() and int(ax) < len(shape)):
                raise SpecError(path, t.key(f"dynamic_axes.{ax}"), f"must be an axis index below {len(shape)}")
            if not isinstance(axname, str) or not axname:
                raise SpecError(path, t.key(f"dynamic_axes.{ax}"), "must name the axis (a string)")
            dyn[int(ax)] = axname
        out.append(TensorSpec(name, tuple(shape), dtype, dyn, normalization=_normalization(path, t, shape)))
    return tuple(out)


def _class_names(path, t):
    """outputs[i].class_names: a list of strings, or a text file (relative to the spec) with one name a line.
    Carried into the artifacts' metadata as the output's labels."""
    v = t.get("class_names", (list, str), None)
    if v is None:
        return (), None
    names_file = None
    if isinstance(v, str):
        names_file = _existing_file(path, t.key("class_names"), v)
        try:
            v = names_file.read_text(encoding="utf-8").rstrip("\n").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError(path, t.key("class_names"), f"cannot be read as UTF-8 text ({e})") from None
        v = [s.rstrip("\r") for s in v]
    if not v or not all(isinstance(s, str) and s.strip() and "\0" not in s for s in v):
        raise SpecError(path, t.key("class_names"), "must be a non-empty list of non-empty strings (or a text file "
                                                    "with one name a line)")
    return tuple(v), str(names_file) if names_file else None


def _normalization(path, t, shape):
    """inputs[i].normalization = {mean, std}: what the app does to raw data before feeding it, (x - mean) / std,
    per channel (axis 1) or one number for all. Recorded in the artifacts' metadata; the build's data is already
    normalised."""
    if "normalization" not in t.data:
        return None
    n = t.table("normalization")
    n.reject_unknown({"mean", "std"})
    out = {}
    for k in ("mean", "std"):
        v = n.get(k, (float, list))
        values = v if isinstance(v, list) else [v]
        if not values or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x == x
                                 and abs(x) != float("inf") for x in values):
            raise SpecError(path, n.key(k), f"must be a number or a list of numbers, got {v!r}")
        if k == "std" and not all(x > 0 for x in values):
            raise SpecError(path, n.key(k), f"must be > 0, got {v!r}")
        if len(values) > 1 and (len(shape) < 2 or len(values) != shape[1]):
            raise SpecError(path, n.key(k), f"has {len(values)} values; give one number, or one per channel "
                                            f"(axis 1 of shape {shape}: {shape[1] if len(shape) > 1 else '-'})")
        out[k] = [float(x) for x in values]
    return out


def _prune(path, top) -> PruneSpec:
    p = top.table("prune")
    p.reject_unknown({"method", "ratio", "layer_ratios", "ignore", "importance", "train", "epochs", "steps",
                      "lr", "seed", "temperature", "threads", "stop_within"})
    method = p.get("method", (str,), "channel", check=_one_of(PRUNE_METHODS))
    ratio = p.get("ratio", (float,), check=_in_range(0.0, 1.0, hi_open=True))
    layer_ratios = p.get("layer_ratios", (dict,), {})
    for k, v in layer_ratios.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise SpecError(path, f"prune.layer_ratios.{k}", f"must be a number in [0, 1), got {v!r}")
    ignore = p.get("ignore", (list,), ["classifier"])
    for i, v in enumerate(ignore):
        if not isinstance(v, str):
            raise SpecError(path, f"prune.ignore[{i}]", "must be a layer name (string)")
    importance = p.get("importance", (str,), "magnitude", check=_one_of(("magnitude",)))
    train = p.get("train", (str,), None, check=_data_ref)
    if train is not None and not is_callable_ref(train):
        _existing_file(path, "prune.train", train)
    epochs = p.get("epochs", (int,), 0, check=_in_range(0, 1000))
    steps = p.get("steps", (int,), None, check=_in_range(1, 10_000_000))
    if (epochs or steps) and train is None:
        raise SpecError(path, "prune.train", "is required when recovery (epochs or steps) is asked for")
    lr = p.get("lr", (float,), 1e-3, check=_in_range(0.0, 10.0))
    seed = p.get("seed", (int,), 0)
    temperature = p.get("temperature", (float,), 4.0, check=_in_range(0.01, 100.0))
    threads = p.get("threads", (int,), 1, check=_in_range(0, 1024))
    stop_within = p.get("stop_within", (float,), None, check=_in_range(0.0, 100.0))
    return PruneSpec(method, ratio, {str(k): float(v) for k, v in layer_ratios.items()}, tuple(ignore),
                     importance, train, epochs, steps, lr, seed, temperature, threads, stop_within)
