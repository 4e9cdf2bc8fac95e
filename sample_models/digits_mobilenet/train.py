"""Deterministic training script for the MobileNetV3-style digits CNN (1x32x32 input).

Run from the repository root:

    python -m sample_models.digits_mobilenet.train

Writes ``weights.safetensors`` and ``data/{calibration,eval}.npz`` next to this file.
BatchNorm layers are put in eval mode before the weights are saved.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from sample_models.digits_data import images
from sample_models.digits_mobilenet.model import build_model

HERE = Path(__file__).resolve().parent
SIZE = 32
SEED = 0
EPOCHS = 8
BATCH = 64
LR = 1e-3
WEIGHT_DECAY = 1e-4
MAX_SHIFT = 2  # pixels at 32x32 (half an original 8x8 pixel)
N_CALIB = 128


def _setup() -> None:
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to MAX_SHIFT pixels (zero fill), seeded by ``gen``."""
    n, _, h, w = x.shape
    s = MAX_SHIFT
    padded = F.pad(x, (s, s, s, s))
    offs = torch.randint(0, 2 * s + 1, (n, 2), generator=gen).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offs)])


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    model.eval()
    preds = [model(torch.from_numpy(x[i : i + batch])).argmax(1) for i in range(0, len(x), batch)]
    return float((torch.cat(preds).numpy() == y).mean())


def train() -> tuple[nn.Module, float, float]:
    _setup()
    x_tr, y_tr = images("train", SIZE)
    x_te, y_te = images("test", SIZE)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)

    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = (len(xt) + BATCH - 1) // BATCH
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)

    t0 = time.perf_counter()
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), BATCH):
            idx = perm[i : i + BATCH]
            xb = _shift(xt[idx], gen) if MAX_SHIFT else xt[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1:3d} loss {total / len(xt):.4f} "
              f"test_acc {accuracy(model, x_te, y_te):.4f} "
              f"t {time.perf_counter() - t0:.1f}s", flush=True)
    train_s = time.perf_counter() - t0

    model.eval()
    acc = accuracy(model, x_te, y_te)

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(HERE / "weights.safetensors"))
    data = HERE / "data"
    data.mkdir(exist_ok=True)
    np.savez_compressed(data / "calibration.npz", input=np.ascontiguousarray(x_tr[:N_CALIB]))
    np.savez_compressed(data / "eval.npz", input=x_te, labels=y_te)
    return model, acc, train_s


def main() -> None:
    _, acc, train_s = train()
    print(f"final test accuracy: {acc:.4f}")
    print(f"training time: {train_s:.1f} s")


if __name__ == "__main__":
    main()
