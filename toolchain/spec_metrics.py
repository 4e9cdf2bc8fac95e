"""Metrics and budgets in a spec ([metric], an output's `metric`, [targets.T] budget keys and
[targets.T.outputs]): which metric judges each output and what each target allows. Separate because the
defaults depend on the data (labels or not) and the budgets are checked against the metrics' units.
"""

from .spec_paths import is_callable_ref
from .spec_table import _factory_ref, _in_range, _Table

METRICS = ("top1", "cosine", "sqnr", "retrieval_agreement", "recall_at_1")  # or a user's 'module:function'
BUDGET_KEYS = ("max_metric_drop", "min_sqnr_db", "min_metric", "max_metric")


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
