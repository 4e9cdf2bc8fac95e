"""Deterministic data helpers for the scikit-learn handwritten digits set.

The 1797 8x8 digit images ship inside scikit-learn, so no download is needed.
The split is fixed: stratified, ``random_state=0``, 80% train / 20% test.
Pixels are scaled to [0, 1] (divided by 16), float32, NCHW with one channel.
"""

from __future__ import annotations

SEED = 0
TEST_FRACTION = 0.2


def _split():
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SEED, stratify=y
    )
    return {
        "train": (np.ascontiguousarray(x_tr), np.ascontiguousarray(y_tr)),
        "test": (np.ascontiguousarray(x_te), np.ascontiguousarray(y_te)),
    }


def _resize(x, size: int):
    """Bilinear resize of NCHW float32 images (align_corners=False)."""
    import numpy as np

    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        out = F.interpolate(
            torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False
        )
    return np.ascontiguousarray(out.numpy().astype(np.float32))


def images(split: str, size: int = 8):
    """Return ``(x [N,1,size,size] float32, y [N] int64)`` for ``"train"`` or ``"test"``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    x, y = _split()[split]
    return _resize(x, int(size)), y


def train_set(size: int = 8) -> dict:
    """Training split as ``{"input": x_train, "labels": y_train}``."""
    x, y = images("train", size)
    return {"input": x, "labels": y}


def train_set_32() -> dict:
    """The training split upscaled to 32x32 (prune recovery data for digits_resnet; specs name callables
    without arguments)."""
    return train_set(32)
