"""Metrics: one registry, so a spec can name any metric here, and every metric says what its figure means.

A metric declares its scale (unit), its direction (is higher better?), how a budget reads and the budget's valid
range, so a budget is checked in its own unit when the spec is read:

- budget "drop": the figure may fall at most this far below the fp32 PyTorch reference's own figure
  (key `max_metric_drop`); for top1 that is percentage points, for cosine a 0-1 cosine difference.
- budget "floor": the figure itself must stay on the good side of the budget (key `min_sqnr_db` for sqnr,
  `min_metric` / `max_metric` for a user metric), because the reference's own figure says nothing (sqnr of
  fp32 against itself is infinite).

Every output of the model is judged by one metric. Built-in metrics work on one output (`output`, `reference`:
that output's arrays, samples first); a user metric (`metric = "module:function"`) is called as
`function(outputs, references, evaluation) -> float` with dicts keyed by output name (artifact outputs, fp32
PyTorch outputs) and the evaluation arrays (inputs, labels, any other array in the .npz), and declares itself
with `declare(...)` below (or the same attributes set by hand). numpy is imported where used: the spec reads the
declarations without it.
"""

import math
from dataclasses import dataclass

UNITS = ("percentage points", "0-1", "dB")
BUDGET_KEYS_ALL = ("max_metric_drop", "min_sqnr_db", "min_metric", "max_metric")
SQNR_CAP_DB = 300.0  # an artifact that reproduces fp32 exactly: a finite figure JSON can hold


@dataclass(frozen=True)
class Metric:
    name: str
    fn: object
    unit: str  # the figure's (and a drop budget's) scale
    higher_is_better: bool
    budget: str  # "drop" or "floor"
    budget_range: tuple  # (lo, hi, hi_open): the valid budget values
    needs: tuple = ()  # evaluation arrays it reads besides the inputs ("labels" = the spec's labels_key)
    describe: str = ""
    user: bool = False

    @property
    def budget_key(self) -> str:
        if self.budget == "drop":
            return "max_metric_drop"
        if self.name == "sqnr":
            return "min_sqnr_db"
        return "min_metric" if self.higher_is_better else "max_metric"

    def range_text(self) -> str:
        lo, hi, hi_open = self.budget_range
        return f"[{float(lo)}, {float(hi)}{')' if hi_open else ']'}"

    def budget_problem(self, v) -> str | None:
        """Why `v` is not a budget of this metric (None: it is)."""
        lo, hi, hi_open = self.budget_range
        ok = v == v and (lo <= v < hi if hi_open else lo <= v <= hi)
        if ok:
            return None
        what = {"max_metric_drop": "a drop below fp32 PyTorch's figure", "min_sqnr_db": "a floor",
                "min_metric": "a floor", "max_metric": "a ceiling"}[self.budget_key]
        unit = "on the 0-1 scale" if self.unit == "0-1" else f"in {self.unit}"
        hint = ": 0.01 allows a mean cosine >= 0.99" if self.name == "cosine" else ""
        return f"must be in {self.range_text()} for metric {self.name} ({what}, {unit}{hint}), got {v!r}"

    def value(self, outputs: dict, references: dict, evaluation: dict, output: str, labels_key="labels") -> float:
        if self.user:  # the user's code: whatever goes wrong in it is a failed build that names it
            from ..errors import StageError

            try:
                return float(self.fn(outputs, references, evaluation))
            except Exception as e:  # noqa: BLE001
                first = (str(e).strip().splitlines() or [""])[0][:300]
                raise StageError("metric", f"user metric {self.name} failed: {type(e).__name__}: {first} (it must "
                                           "return one number: function(outputs, references, evaluation))") from None
        else:
            v = self.fn(outputs[output], references[output], evaluation, labels_key)
        return float(v)


def declare(unit, higher_is_better=True, budget="drop", budget_range=None):
    """Decorator for a user metric: `@declare(unit="percentage points", higher_is_better=True, budget="drop",
    budget_range=(0, 100))`. Sets the attributes the build reads (metric_unit, metric_higher_is_better,
    metric_budget, metric_budget_range)."""
    def mark(fn):
        fn.metric_unit, fn.metric_higher_is_better, fn.metric_budget = unit, higher_is_better, budget
        fn.metric_budget_range = budget_range
        return fn
    return mark


# ---- the built-in metrics ----------------------------------------------------------------------------------
def _flat(a):
    import numpy as np

    return a.reshape(len(a), -1).astype(np.float64)


def cosine_per_sample(a, b):
    import numpy as np

    a, b = _flat(a), _flat(b)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def sqnr_db(out, ref) -> float:
    """Signal-to-quantization-noise ratio in dB, where the signal is the reference's variation around its own
    per-element mean over the evaluation set (what the output says about its input) and the noise is the
    artifact's error: 10 log10(sum (ref - mean(ref))^2 / sum (out - ref)^2). A constant part of the output (a
    bias, a softmax dominated by one class) is not signal, so an artifact that keeps the constant and loses the
    input-dependent part scores ~0 dB or less, where plain cosine would still read ~1.0. NaN when the reference
    does not vary over the evaluation set (there is nothing to measure)."""
    import numpy as np

    o, r = _flat(out), _flat(ref)
    signal = float(((r - r.mean(0)) ** 2).sum())
    noise = float(((o - r) ** 2).sum())
    if not math.isfinite(noise):
        return float("nan")
    if signal == 0.0:
        return SQNR_CAP_DB if noise == 0.0 else float("nan")
    if noise <= signal * 10 ** (-SQNR_CAP_DB / 10):
        return SQNR_CAP_DB
    return float(10.0 * np.log10(signal / noise))


def _top1(out, ref, evaluation, labels_key):
    return float((out.argmax(-1) == evaluation[labels_key]).mean() * 100.0)


def _cosine(out, ref, evaluation, labels_key):
    return float(cosine_per_sample(out, ref).mean())


def _sqnr(out, ref, evaluation, labels_key):
    return sqnr_db(out, ref)


def _nearest(emb, evaluation):
    """For each query row, the candidate row with the highest cosine (embeddings are compared normalised)."""
    import numpy as np

    e = emb.reshape(len(emb), -1).astype(np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    q, c = evaluation["query_idx"], evaluation["candidate_idx"]
    return c[(e[q] @ e[c].T).argmax(1)]


def _retrieval_agreement(out, ref, evaluation, labels_key):
    """% of queries whose nearest candidate is the same as with the fp32 PyTorch embeddings."""
    return float((_nearest(out, evaluation) == _nearest(ref, evaluation)).mean() * 100.0)


def _recall_at_1(out, ref, evaluation, labels_key):
    """% of queries whose nearest candidate is their relevant document (the task itself)."""
    return float((_nearest(out, evaluation) == evaluation["doc_idx"]).mean() * 100.0)


PP = (0.0, 100.0, False)
BUILTIN = {
    "top1": Metric("top1", _top1, "percentage points", True, "drop", PP, ("labels",),
                   "% top-1 accuracy against the labels"),
    "cosine": Metric("cosine", _cosine, "0-1", True, "drop", (0.0, 1.0, True), (),
                     "mean cosine to fp32 PyTorch (embeddings; blind to an output's constant part)"),
    "sqnr": Metric("sqnr", _sqnr, "dB", True, "floor", (0.0, 100.0, False), (),
                   "SQNR in dB of the error against fp32 PyTorch's input-dependent variation"),
    "retrieval_agreement": Metric("retrieval_agreement", _retrieval_agreement, "percentage points", True, "drop",
                                  PP, ("query_idx", "candidate_idx"), "% queries with the fp32 nearest neighbour"),
    "recall_at_1": Metric("recall_at_1", _recall_at_1, "percentage points", True, "drop", PP,
                          ("query_idx", "candidate_idx", "doc_idx"), "% queries retrieving their document"),
}
# name -> (function, unit, needs): the older shape of the registry, still read by data.check_inputs
METRICS = {n: (m.fn, m.describe, m.needs) for n, m in BUILTIN.items()}
# The floor an sqnr output must hold where the spec names none, by the target's precision: int8 keeps an error
# under ~1/6 of the output's input-dependent spread (15 dB), fp16 under 1/100 (40 dB).
DEFAULT_MIN_SQNR_DB = {"int8": 15.0, "fp16": 40.0, "fp32": 60.0}


def user_metric(ref, spec, key) -> Metric:
    """A `module:function` metric, imported from the spec's python_path; its declaration is checked here (a
    SpecError naming `key` when it is missing or wrong)."""
    from ..errors import SpecError
    from ..imports import import_ref

    fn = import_ref(ref, spec.python_path, spec.path, key)
    unit = getattr(fn, "metric_unit", None)
    higher = getattr(fn, "metric_higher_is_better", None)
    budget = getattr(fn, "metric_budget", None)
    brange = getattr(fn, "metric_budget_range", None)
    how = ("declare it with toolchain.validation.metrics.declare(unit=..., higher_is_better=..., budget=..., "
           "budget_range=(lo, hi))")
    if not isinstance(unit, str) or not unit:
        raise SpecError(spec.path, key, f"{ref}: declares no unit (metric_unit); {how}")
    if not isinstance(higher, bool):
        raise SpecError(spec.path, key, f"{ref}: declares no direction (metric_higher_is_better); {how}")
    if budget not in ("drop", "floor"):
        raise SpecError(spec.path, key, f"{ref}: metric_budget must be 'drop' or 'floor', got {budget!r}; {how}")
    if brange is None and unit in ("percentage points", "0-1"):
        brange = PP if unit == "percentage points" else (0.0, 1.0, True)
    if (not isinstance(brange, (tuple, list)) or len(brange) not in (2, 3)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in brange[:2])
            or not brange[0] <= brange[1]):
        raise SpecError(spec.path, key, f"{ref}: metric_budget_range must be (lo, hi) with lo <= hi, got {brange!r}")
    brange = (float(brange[0]), float(brange[1]), bool(brange[2]) if len(brange) == 3 else False)
    return Metric(ref, fn, unit, higher, budget, brange, (), f"user metric {ref} ({unit})", user=True)


def get(name, spec=None, key="metric.name") -> Metric:
    if name in BUILTIN:
        return BUILTIN[name]
    return user_metric(name, spec, key)


# ---- what the gate judges: one row per output --------------------------------------------------------------
def output_gates(spec, target_name, precision, user=True) -> list:
    """Per output of the spec: which metric judges it and against which budget on this target. Budgets come
    from `targets.T.outputs.NAME.<key>`, then the target's own key (max_metric_drop: the first output only;
    min_sqnr_db and min_/max_metric: every output judged by that key), then, for sqnr, the precision's default.
    A missing budget, or one outside the metric's range (user metrics are checked only here), is a SpecError."""
    from ..errors import SpecError

    req = spec.targets[target_name]
    rows = []
    prefix = f"targets.{target_name}"
    used = set()
    for i, o in enumerate(spec.outputs):
        key_metric = o.metric_key or "metric.name"
        if o.metric not in BUILTIN and not user:  # the spec is being read: user code is imported by the build
            used |= set(BUDGET_KEYS_ALL)
            continue
        m = get(o.metric, spec, key_metric)
        k = m.budget_key
        own = req.output_budgets.get(o.name, {})
        if k in own:
            value, where = own[k], f"{prefix}.outputs.{o.name}.{k}"
        elif k in req.budgets and (i == 0 or k != "max_metric_drop"):
            value, where = req.budgets[k], f"{prefix}.{k}"
            used.add(k)
        elif k == "min_sqnr_db":
            value, where = DEFAULT_MIN_SQNR_DB.get(precision, 15.0), f"default for {precision}"
        else:
            at = f"{prefix}.{k}" if i == 0 else f"{prefix}.outputs.{o.name}.{k}"
            raise SpecError(spec.path, at, f"is required (output {o.name!r} is judged by {m.name}, {m.unit})")
        for other in own:
            if other != k:
                raise SpecError(spec.path, f"{prefix}.outputs.{o.name}.{other}",
                                f"does not apply: output {o.name!r} is judged by {m.name}, whose budget is {k}")
        problem = m.budget_problem(value)
        if problem:
            raise SpecError(spec.path, where if where.startswith(prefix) else f"{prefix}.{k}", problem)
        rows.append({"output": o.name, "index": i, "metric": m.name, "unit": m.unit, "budget_key": k,
                     "budget": float(value), "budget_from": where, "kind": m.budget,
                     "higher_is_better": m.higher_is_better})
    for k in req.budgets:
        if k not in used:
            judged = ", ".join(f"{r['output']!r} by {r['metric']} ({r['budget_key']})" for r in rows)
            raise SpecError(spec.path, f"{prefix}.{k}", f"does not apply: no output is judged by it (outputs are "
                                                        f"judged: {judged})")
    return rows


def reference_values(spec, reference, evaluation) -> dict:
    """output name -> the fp32 PyTorch reference's own figure, for the outputs judged by a drop."""
    outs = _by_name(spec, reference)
    vals = {}
    for o in spec.outputs:
        m = get(o.metric, spec)
        if m.budget == "drop":
            vals[o.name] = m.value(outs, outs, evaluation, o.name, spec.labels_key)
    return vals


def _by_name(spec, arrays) -> dict:
    return {o.name: a for o, a in zip(spec.outputs, arrays)}


def per_output(spec, outputs, reference, evaluation, ref_values) -> dict:
    """output name -> {metric, unit, value, reference_value and drop (drop metrics), sqnr_db, plus top1_agreement
    for outputs judged by top1}: the figures the gate judges, computed on the artifact's outputs."""
    outs, refs = _by_name(spec, outputs), _by_name(spec, reference)
    figures = {}
    for o in spec.outputs:
        m = get(o.metric, spec)
        fig = {"metric": m.name, "unit": m.unit, "value": m.value(outs, refs, evaluation, o.name, spec.labels_key)}
        if o.name in ref_values and m.budget == "drop":
            fig["reference_value"] = ref_values[o.name]
            fig["drop"] = (ref_values[o.name] - fig["value"]) if m.higher_is_better else \
                (fig["value"] - ref_values[o.name])
        fig["sqnr_db"] = fig["value"] if m.name == "sqnr" else sqnr_db(outs[o.name], refs[o.name])
        a, r = outs[o.name], refs[o.name]
        if m.name == "top1":  # class scores: agreement with fp32's class next to accuracy against the labels
            fig["top1_agreement"] = float((a.argmax(-1) == r.argmax(-1)).mean() * 100.0)
        figures[o.name] = fig
    return figures


def verdicts(figures: dict, gates: list) -> list:
    """One row per judged output: metric, figure (the drop, or the value for a floor), budget, verdict."""
    rows = []
    for g in gates:
        f = figures.get(g["output"], {})
        value = f.get("value", float("nan"))
        if g["kind"] == "drop":
            figure = f.get("drop", float("nan"))
            ok = bool(figure <= g["budget"])  # NaN-safe: a NaN never holds
        else:
            figure = value
            ok = bool(value >= g["budget"] if g["higher_is_better"] else value <= g["budget"])
        row = {**g, "value": value, "figure": figure, "passed": ok}
        for k in ("reference_value", "sqnr_db", "top1_agreement"):
            if k in f:
                row[k] = f[k]
        rows.append(row)
    return rows


def beside(value, budget) -> str:
    """value with enough significant digits to see on which side of the budget it lies (1.8e-05 vs 1e-05, not
    0.000; 12.35 vs 12.34, not 12.3)."""
    try:
        value, budget = float(value), float(budget)
    except (TypeError, ValueError):
        return str(value)
    for digits in range(3, 18):
        text = f"{value:.{digits}g}"
        shown = float(text)
        if value != value or (shown != budget and (shown > budget) == (value > budget)):
            return text
    return repr(value)


def verdict_text(row) -> str:
    """Why one output misses its budget, in the budget's unit."""
    unit = "dB" if row["unit"] == "dB" else row["unit"]
    if row["kind"] == "drop":
        return (f"output {row['output']}: {row['metric']} drop {beside(row['figure'], row['budget'])} ({unit}) exceeds the budget "
                f"{row['budget_key']}={row['budget']}")
    if row["figure"] != row["figure"]:
        return (f"output {row['output']}: {row['metric']} cannot be measured (NaN: a non-finite output, or the fp32 "
                f"output does not vary over the evaluation data); budget {row['budget_key']}={row['budget']}")
    side = "under" if row["higher_is_better"] else "over"
    text = (f"output {row['output']}: {row['metric']} {beside(row['figure'], row['budget'])} {unit} is {side} the budget "
            f"{row['budget_key']}={row['budget']}")
    if row["metric"] == "sqnr":
        text += " (the artifact's error is large against what the output says about its input)"
    return text


# ---- the older interface (the first output's metric), kept for prune and the report's top-level keys --------
def compute(name, outputs, evaluation, reference, spec) -> float:
    m = get(name, spec)
    return m.value(_by_name(spec, outputs), _by_name(spec, reference), evaluation, spec.outputs[0].name,
                   spec.labels_key)


def extra(names, outputs, evaluation, reference, spec) -> dict:
    """The spec's reported-but-not-gated metrics (metric.also), on the first output."""
    return {n: compute(n, outputs, evaluation, reference, spec) for n in names}


def agreement(outputs, reference, classes=True) -> dict:
    """How closely an artifact follows the fp32 PyTorch reference, output by output."""
    import numpy as np

    out = {}
    for i, (a, r) in enumerate(zip(outputs, reference)):
        a = a.astype(np.float64)
        r = r.astype(np.float64)
        cos = cosine_per_sample(a, r)
        fig = {"max_abs_error": float(np.abs(a - r).max()), "cosine_mean": float(cos.mean()),
               "cosine_min": float(cos.min()), "sqnr_db": sqnr_db(a, r)}
        if classes and a.ndim == 2 and a.shape[1] > 1:  # class scores (not embeddings)
            fig["top1_agreement"] = float((a.argmax(1) == r.argmax(1)).mean() * 100.0)
        out[str(i)] = fig
    return out


def non_finite(outputs) -> int:
    import numpy as np

    return int(sum((~np.isfinite(o)).sum() for o in outputs if np.issubdtype(o.dtype, np.floating)))
