"""The deterministic training loop shared by the digits samples (each sample's train.py sets its model and
hyper-parameters). Same seed, same data, same machine: bit-identical weights.

Writes ``weights.safetensors`` and ``data/{calibration,eval}.npz`` into the sample's directory. BatchNorm layers
are put in eval mode before the weights are saved.
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

SEED = 0
BATCH = 64
LR = 1e-3
N_CALIB = 128


def _setup() -> None:
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)


def _shift(x: torch.Tensor, gen: torch.Generator, s: int) -> torch.Tensor:
    """Random translation by up to ``s`` pixels (zero fill), seeded by ``gen``."""
    n, _, h, w = x.shape
    padded = F.pad(x, (s, s, s, s))
    offs = torch.randint(0, 2 * s + 1, (n, 2), generator=gen).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offs)])


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    model.eval()
    preds = [model(torch.from_numpy(x[i : i + batch])).argmax(1) for i in range(0, len(x), batch)]
    return float((torch.cat(preds).numpy() == y).mean())


def train(build_model, out_dir: Path, size: int, epochs: int, weight_decay: float, max_shift: int,
          report_every: int = 1) -> tuple[nn.Module, float, float]:
    _setup()
    x_tr, y_tr = images("train", size)
    x_te, y_te = images("test", size)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)

    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=weight_decay)
    steps_per_epoch = (len(xt) + BATCH - 1) // BATCH
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)

    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), BATCH):
            idx = perm[i : i + BATCH]
            xb = _shift(xt[idx], gen, max_shift) if max_shift else xt[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % report_every == 0 or epoch == epochs - 1:
            print(f"epoch {epoch + 1:3d} loss {total / len(xt):.4f} "
                  f"test_acc {accuracy(model, x_te, y_te):.4f} "
                  f"t {time.perf_counter() - t0:.1f}s", flush=True)
    train_s = time.perf_counter() - t0

    model.eval()
    acc = accuracy(model, x_te, y_te)

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "weights.safetensors"))
    data = out_dir / "data"
    data.mkdir(exist_ok=True)
    np.savez_compressed(data / "calibration.npz", input=np.ascontiguousarray(x_tr[:N_CALIB]))
    np.savez_compressed(data / "eval.npz", input=x_te, labels=y_te)
    return model, acc, train_s


def main(build_model, out_dir: Path, **hyper) -> None:
    _, acc, train_s = train(build_model, out_dir, **hyper)
    print(f"final test accuracy: {acc:.4f}")
    print(f"training time: {train_s:.1f} s")
