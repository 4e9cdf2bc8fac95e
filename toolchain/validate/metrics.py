"""Task metrics and agreement figures. One registry, so a spec can name any metric here."""

import numpy as np


def _flat(a):
    return a.reshape(len(a), -1).astype(np.float64)


def cosine_per_sample(a, b):
    a, b = _flat(a), _flat(b)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def top1(outputs, evaluation, reference, spec):
    labels = evaluation[spec.labels_key]
    return float((outputs[0].argmax(-1) == labels).mean() * 100.0)


def cosine(outputs, evaluation, reference, spec):
    return float(cosine_per_sample(outputs[0], reference[0]).mean())


def _nearest(emb, evaluation):
    """For each query row, the candidate row with the highest cosine (embeddings are compared normalised)."""
    e = emb.reshape(len(emb), -1).astype(np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    q, c = evaluation["query_idx"], evaluation["candidate_idx"]
    return c[(e[q] @ e[c].T).argmax(1)]


def retrieval_agreement(outputs, evaluation, reference, spec):
    """% of queries whose nearest candidate is the same as with the fp32 PyTorch embeddings."""
    return float((_nearest(outputs[0], evaluation) == _nearest(reference[0], evaluation)).mean() * 100.0)


def recall_at_1(outputs, evaluation, reference, spec):
    """% of queries whose nearest candidate is their relevant document (the task itself)."""
    return float((_nearest(outputs[0], evaluation) == evaluation["doc_idx"]).mean() * 100.0)


# name -> (function, unit, the evaluation arrays it needs besides the inputs)
METRICS = {
    "top1": (top1, "% top-1 accuracy", ("labels",)),
    "cosine": (cosine, "mean cosine to fp32 PyTorch", ()),
    "retrieval_agreement": (retrieval_agreement, "% queries with the fp32 nearest neighbour",
                            ("query_idx", "candidate_idx")),
    "recall_at_1": (recall_at_1, "% queries retrieving their document", ("query_idx", "candidate_idx", "doc_idx")),
}


def compute(name, outputs, evaluation, reference, spec) -> float:
    return METRICS[name][0](outputs, evaluation, reference, spec)


def extra(names, outputs, evaluation, reference, spec) -> dict:
    """The spec's reported-but-not-gated metrics (metric.also)."""
    return {n: compute(n, outputs, evaluation, reference, spec) for n in names}


def agreement(outputs, reference, classes=True) -> dict:
    """How closely an artifact follows the fp32 PyTorch reference, output by output."""
    out = {}
    for i, (a, r) in enumerate(zip(outputs, reference)):
        a = a.astype(np.float64)
        r = r.astype(np.float64)
        cos = cosine_per_sample(a, r)
        fig = {"max_abs_error": float(np.abs(a - r).max()), "cosine_mean": float(cos.mean()),
               "cosine_min": float(cos.min())}
        if classes and a.ndim == 2 and a.shape[1] > 1:  # class scores (not embeddings)
            fig["top1_agreement"] = float((a.argmax(1) == r.argmax(1)).mean() * 100.0)
        out[str(i)] = fig
    return out


def non_finite(outputs) -> int:
    return int(sum((~np.isfinite(o)).sum() for o in outputs if np.issubdtype(o.dtype, np.floating)))
