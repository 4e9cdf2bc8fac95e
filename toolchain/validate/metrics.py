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


# name -> (function, unit, needs labels)
METRICS = {
    "top1": (top1, "% top-1 accuracy", True),
    "cosine": (cosine, "mean cosine to fp32 PyTorch", False),
}


def compute(name, outputs, evaluation, reference, spec) -> float:
    return METRICS[name][0](outputs, evaluation, reference, spec)


def agreement(outputs, reference) -> dict:
    """How closely an artifact follows the fp32 PyTorch reference, output by output."""
    out = {}
    for i, (a, r) in enumerate(zip(outputs, reference)):
        a = a.astype(np.float64)
        r = r.astype(np.float64)
        cos = cosine_per_sample(a, r)
        fig = {"max_abs_error": float(np.abs(a - r).max()), "cosine_mean": float(cos.mean()),
               "cosine_min": float(cos.min())}
        if a.ndim == 2 and a.shape[1] > 1:
            fig["top1_agreement"] = float((a.argmax(1) == r.argmax(1)).mean() * 100.0)
        out[str(i)] = fig
    return out


def non_finite(outputs) -> int:
    return int(sum((~np.isfinite(o)).sum() for o in outputs if np.issubdtype(o.dtype, np.floating)))
