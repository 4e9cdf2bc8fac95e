"""The accuracy half of a precision plan, for any backend that can make a variant with some nodes kept float,
judge it against the budget and score a variant's outputs. A variant is judged exactly as the validate stage's
gate judges the artifact: every output by its own metric and budget (validation/metrics.py), so a plan cannot pick
a variant that passes only a weaker measure. Shared by the x86 plan (ONNX Runtime variants) and the
arm64 plan (TFLite variants), so both decide the same way:

  1. start from everything int8 (minus what the spec forces to stay float); if that misses the budget, check that
     keeping every searchable node float meets it (else the scheme cannot, and is dropped at once);
  2. while an output misses its budget, keep in float the next most sensitive nodes (sensitivity = the lowest
     output SQNR against fp32, in dB, when only that node is int8; see metrics.sqnr_db), 1, 2, 4, ... per step;
  3. the doubling overshoots: give back to int8, least sensitive first, every node the budget did not need.
"""

import time
from typing import NamedTuple


class Judgement(NamedTuple):
    """A variant against the target's gates: one verdict row per output (metrics.verdicts)."""

    rows: list
    bad: int  # NaN/Inf values in its outputs
    ok: bool

    @property
    def drop(self):
        """The first output's drop where a drop budget judges it (the report's `metric_drop`), else None."""
        first = self.rows[0] if self.rows else {}
        return first.get("figure") if first.get("kind") == "drop" else None

    @property
    def text(self) -> str:
        parts = []
        for r in self.rows:
            fig = f"drop {r['figure']:.3f}" if r["kind"] == "drop" else f"{r['figure']:.2f}" + \
                (" dB" if r["unit"] == "dB" else "")
            parts.append(f"{r['output']} {r['metric']} {fig}" + ("" if r["passed"] else " (misses)"))
        return ", ".join(parts) + (f", {self.bad} NaN/Inf" if self.bad else "")


class Backend:
    """A target's variants. Subclasses say how to `make(exclude, only)` a variant (its path) and how to run one
    (`outputs(path, data)`); judging against the budget and scoring sensitivity are the same for every target."""

    SAMPLES = 64  # evaluation samples behind each sensitivity figure

    def __init__(self, spec, evaluation, reference, budget):
        from ..validation import metrics

        self.spec, self.evaluation, self.reference, self.budget = spec, evaluation, reference, budget
        self.ref_values = metrics.reference_values(spec, reference, evaluation)
        self.sub = {k: v[:self.SAMPLES] for k, v in evaluation.items()}
        self.ref_sub = [r[:self.SAMPLES] for r in reference]

    def make(self, exclude=(), only=None):
        raise NotImplementedError

    def outputs(self, path, data) -> list:
        raise NotImplementedError

    def judge(self, path) -> Judgement:
        """Every output against its gate, on the whole evaluation set."""
        from ..validation import metrics

        outs = self.outputs(path, self.evaluation)
        bad = metrics.non_finite(outs)
        figures = metrics.per_output(self.spec, outs, self.reference, self.evaluation, self.ref_values)
        rows = metrics.verdicts(figures, self.budget)
        return Judgement(rows, bad, bad == 0 and all(r["passed"] for r in rows))

    def sensitivity(self, path) -> dict:
        """On the first SAMPLES evaluation samples: the lowest output SQNR to fp32 (dB; what ranks nodes: it sees
        the input-dependent signal) and the lowest mean output cosine (reported)."""
        from ..validation import metrics

        outs = self.outputs(path, self.sub)
        sqnr = [metrics.sqnr_db(o, r) for o, r in zip(outs, self.ref_sub)]
        return {"sqnr_db": min(s if s == s else -metrics.SQNR_CAP_DB for s in sqnr),  # NaN: nothing to measure
                "cosine": min(float(metrics.cosine_per_sample(o, r).mean()) for o, r in zip(outs, self.ref_sub))}


def sensitivity(backend, nodes, deadline) -> list:
    """One row per node: the output SQNR (and cosine) when only that node is int8, worst first."""
    rows = []
    for name, kind in nodes:
        if over(deadline):
            rows.append({"node": name, "kind": kind, "sqnr_db": None, "cosine": None,
                         "note": "not measured (time budget)"})
            continue
        rows.append({"node": name, "kind": kind, **backend.sensitivity(backend.make(only=[name]))})

    def worst_first(r):
        s = r["sqnr_db"]
        return (s is None, s if s == s and s is not None else float("-inf"))
    return sorted(rows, key=worst_first)


def meet_budget(backend, label, nodes, forced_float, forced_int8, deadline, steps, first=None) -> dict:
    """Run steps 1-3 for one scheme. `first` is the all-int8 variant's (path, judgement) when the caller has
    already made it. Returns {ok, exclude, path, judged, table}; the story goes into `steps`."""
    exclude = set(forced_float)
    if first is None:
        path = backend.make(exclude)
        judged = backend.judge(path)
    else:
        path, judged = first
    ok = judged.ok
    forced = f" but the {len(forced_float)} forced float" if forced_float else ""
    steps.append(f"{label}: all compute nodes int8{forced} -> {judged.text}")
    table = []
    if not ok:
        # Can this scheme meet the budget at all? With every node the search may keep float kept float, what is
        # still int8 is what the search cannot change: if that already misses, ranking and trying the nodes one
        # by one (a variant each) cannot succeed: one variant instead of one per node.
        searchable = {n for n, _ in nodes} - set(forced_int8)
        if searchable - exclude:
            ceiling = backend.make(exclude | searchable)
            cj = backend.judge(ceiling)
            steps.append(f"{label}: every node the search may keep float kept float -> {cj.text}")
            if not cj.ok:
                steps.append(f"{label}: cannot meet the budget even so; dropped without a search")
                return {"ok": False, "exclude": exclude | searchable, "path": ceiling, "judged": cj, "table": []}
        table = sensitivity(backend, nodes, deadline)
        order = [r["node"] for r in table if r["node"] not in exclude | set(forced_int8)]
        k = 1
        while not ok and order and not over(deadline):
            take, order = order[:k], order[k:]
            exclude |= set(take)
            path = backend.make(exclude)
            judged = backend.judge(path)
            ok = judged.ok
            steps.append(f"{label}: keep {len(take)} more most-sensitive node(s) float ({', '.join(take[:4])}"
                         f"{', ...' if len(take) > 4 else ''}) -> {judged.text}")
            k *= 2
    if not ok:  # say which: a scheme that ran out of time is not one that cannot meet the budget
        steps.append(f"{label}: time budget spent before the search met the budget; dropped" if over(deadline)
                     else f"{label}: cannot meet the budget; dropped")
        return {"ok": False, "exclude": exclude, "path": path, "judged": judged, "table": table}
    rank = {r["node"]: i for i, r in enumerate(table)}
    for name in sorted(exclude - set(forced_float), key=lambda n: -rank.get(n, 0)):
        if over(deadline):
            break
        trial = backend.make(exclude - {name})
        tj = backend.judge(trial)
        if tj.ok:
            exclude, path, judged = exclude - {name}, trial, tj
            steps.append(f"{label}: {name} back to int8 -> {tj.text} (budget still holds)")
    return {"ok": True, "exclude": exclude, "path": path, "judged": judged, "table": table}


def over(deadline) -> bool:
    """A deadline is a time.monotonic() reading, or an object that says itself when it has passed (the x86 plan's
    TimeBudget, which keeps back time for its closing steps)."""
    return deadline.passed() if hasattr(deadline, "passed") else time.monotonic() > deadline


def budget_text(gates) -> str:
    """The budgets a plan had to meet, for its error messages."""
    return ", ".join(f"{g['output']} {g['metric']} {g['budget_key']}={g['budget']}" for g in gates)


def side(plan_label, judged, **extra) -> dict:
    """A plan's before/after record: the first output's drop (the report's older key) and every output's figure."""
    out = {"plan": plan_label, "judged": judged.text, "outputs": {r["output"]: r["figure"] for r in judged.rows}}
    if judged.drop is not None:
        out["metric_drop"] = judged.drop
    return {**out, **extra}


def resolve(patterns, nodes, key, fail):
    """Node names from spec entries that name a node or a kind/op type ('Conv(depthwise)', 'MatMul'); an entry
    that names neither calls `fail(message)`."""
    names, kinds = {n for n, _ in nodes}, {k for _, k in nodes} | {k.split("(")[0] for _, k in nodes}
    out = set()
    for p in patterns:
        if p in names:
            out.add(p)
        elif p in kinds:
            out |= {n for n, k in nodes if k == p or k.split("(")[0] == p}
        else:
            fail(f"{key}: {p!r} is neither a compute node nor a node kind of this model "
                 f"(kinds: {', '.join(sorted({k for _, k in nodes}))})")
    return out
