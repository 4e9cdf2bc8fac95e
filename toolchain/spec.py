"""BuildSpec: the model's build file (TOML), loaded and validated.

Every problem is reported as one SpecError naming the file and the dotted key, so a user can fix it
without reading a traceback. Nothing here imports torch or numpy.

This module reads the file and the top-level tables ([model], [data], [trace], [targets]); the rest lives in
one module a job, and every name is importable from here as before:
    spec_types.py    BuildSpec and its parts (the dataclasses)
    spec_table.py    reading one TOML table: typed keys, checks, unknown keys with a did-you-mean
    spec_paths.py    references: files relative to the spec, package files, 'module:callable'
    spec_tensors.py  [[inputs]] and [[outputs]]
    spec_metrics.py  [metric], each output's metric, the targets' budgets
    spec_prune.py    [prune]
"""

import re
import tomllib
from pathlib import Path

from .errors import SpecError
from .spec_metrics import (  # noqa: F401 - re-exported
    BUDGET_KEYS, METRICS, _budgets, _check_budgets, _has_labels, _metric_name, _output_budgets, _output_metrics)
from .spec_paths import _existing_file, _package_file, _path_problem, is_callable_ref  # noqa: F401 - re-exported
from .spec_prune import PRUNE_METHODS, _prune  # noqa: F401 - re-exported
from .spec_table import (  # noqa: F401 - re-exported
    _data_ref, _factory_ref, _in_range, _nonempty, _one_of, _Table, _typename, _typename_t)
from .spec_tensors import DTYPES, ITEMSIZE, _class_names, _memory_bytes, _normalization, _tensors  # noqa: F401
from .spec_types import BuildSpec, PruneSpec, TargetRequest, TensorSpec  # noqa: F401 - re-exported


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
