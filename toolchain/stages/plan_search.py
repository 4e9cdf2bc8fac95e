"""The accuracy half of a precision plan, for any backend that can make a variant with some nodes kept float,
judge it against the budget and score a variant's outputs. Shared by the x86 plan (ONNX Runtime variants) and the
arm64 plan (TFLite variants), so both decide the same way:

  1. start from everything int8 (minus what the spec forces to stay float);
  2. while the metric drop exceeds the budget, keep in float the next most sensitive nodes (sensitivity = output
     cosine to fp32 when only that node is int8), 1, 2, 4, ... per step;
  3. the doubling overshoots: give back to int8, least sensitive first, every node the budget did not need.
"""

import time


class Backend:
    """A target's variants. Subclasses say how to `make(exclude, only)` a variant (its path) and how to run one
    (`outputs(path, data)`); judging against the budget and scoring sensitivity are the same for every target."""

    SAMPLES = 64  # evaluation samples behind each sensitivity figure

    def __init__(self, spec, evaluation, reference, budget):
        from ..validate import metrics

        self.spec, self.evaluation, self.reference, self.budget = spec, evaluation, reference, budget
        self.ref_value = metrics.compute(spec.metric, reference, evaluation, reference, spec)
        self.sub = {k: v[:self.SAMPLES] for k, v in evaluation.items()}
        self.ref_sub = [r[:self.SAMPLES] for r in reference]

    def make(self, exclude=(), only=None):
        raise NotImplementedError

    def outputs(self, path, data) -> list:
        raise NotImplementedError

    def judge(self, path):
        """(metric drop, non-finite count, budget holds) on the whole evaluation set."""
        from ..validate import metrics

        outs = self.outputs(path, self.evaluation)
        bad = metrics.non_finite(outs)
        drop = self.ref_value - metrics.compute(self.spec.metric, outs, self.evaluation, self.reference, self.spec)
        return drop, bad, (bad == 0 and drop <= self.budget)

    def cosine(self, path) -> float:
        """Mean output cosine to the fp32 reference on the first SAMPLES evaluation samples."""
        import numpy as np

        from ..validate import metrics

        outs = self.outputs(path, self.sub)
        return float(np.mean([metrics.cosine_per_sample(o, r).mean() for o, r in zip(outs, self.ref_sub)]))


def sensitivity(backend, nodes, deadline) -> list:
    """One row per node: the output cosine when only that node is int8, worst first."""
    rows = []
    for name, kind in nodes:
        if time.monotonic() > deadline:
            rows.append({"node": name, "kind": kind, "cosine": None, "note": "not measured (time budget)"})
            continue
        rows.append({"node": name, "kind": kind, "cosine": backend.cosine(backend.make(only=[name]))})
    return sorted(rows, key=lambda r: (r["cosine"] is None, r["cosine"] if r["cosine"] is not None else 0))


def meet_budget(backend, label, nodes, forced_float, forced_int8, deadline, steps, first=None) -> dict:
    """Run steps 1-3 for one scheme. `first` is the all-int8 variant's (path, judgement) when the caller has
    already made it. Returns {ok, exclude, path, drop, table}; the story goes into `steps`."""
    exclude = set(forced_float)
    if first is None:
        path = backend.make(exclude)
        drop, bad, ok = backend.judge(path)
    else:
        path, (drop, bad, ok) = first
    forced = f" but the {len(forced_float)} forced float" if forced_float else ""
    steps.append(f"{label}: all compute nodes int8{forced} -> metric drop {drop:.3f}"
                 + (f", {bad} NaN/Inf" if bad else ""))
    table = []
    if not ok:
        table = sensitivity(backend, nodes, deadline)
        order = [r["node"] for r in table if r["node"] not in exclude | set(forced_int8)]
        k = 1
        while not ok and order and time.monotonic() < deadline:
            take, order = order[:k], order[k:]
            exclude |= set(take)
            path = backend.make(exclude)
            drop, bad, ok = backend.judge(path)
            steps.append(f"{label}: keep {len(take)} more most-sensitive node(s) float ({', '.join(take[:4])}"
                         f"{', ...' if len(take) > 4 else ''}) -> drop {drop:.3f}")
            k *= 2
    if not ok:
        steps.append(f"{label}: cannot meet the budget; dropped")
        return {"ok": False, "exclude": exclude, "path": path, "drop": drop, "table": table}
    rank = {r["node"]: i for i, r in enumerate(table)}
    for name in sorted(exclude - set(forced_float), key=lambda n: -rank.get(n, 0)):
        if time.monotonic() > deadline:
            break
        trial = backend.make(exclude - {name})
        tdrop, _, tok = backend.judge(trial)
        if tok:
            exclude, path, drop = exclude - {name}, trial, tdrop
            steps.append(f"{label}: {name} back to int8 -> drop {tdrop:.3f} (budget still holds)")
    return {"ok": True, "exclude": exclude, "path": path, "drop": drop, "table": table}


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
