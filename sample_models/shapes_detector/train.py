"""Deterministic training script for the shapes detector (64x64 RGB in, boxes out).

Run from the repository root:

    python -m sample_models.shapes_detector.train

Each epoch draws a fresh synthetic set (data.py, seeded by the epoch), so the detector never sees an image
twice and the evaluation set (its own seed) is never trained on. CenterNet's losses: a focal loss on per-class
centre heatmaps (Gaussian targets) and an L1 loss on the box sides around each centre. Same seed, same
machine: bit-identical weights. Writes ``weights.safetensors`` (the post-processing has no weights)
and ``data/{calibration,eval}.npz`` next to this file, and prints fp32 mAP on the evaluation set.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from sample_models.shapes_detector import data as shapes
from sample_models.shapes_detector.metric import IOU_THRESHOLDS, mean_average_precision
from sample_models.shapes_detector.model import GRID, NUM_CLASSES, STRIDE, build_model

SEED = 0
EPOCHS = 14
IMAGES_PER_EPOCH = 2000
BATCH = 32
LR = 2e-3
WEIGHT_DECAY = 1e-4
N_EVAL, EVAL_SEED = 200, 1
N_CALIB, CALIB_SEED = 64, 2
OUT = Path(__file__).resolve().parent


def targets(gt_boxes, gt_classes):
    """Per image: heatmap [C, G, G] (Gaussian peaks, 1 at each centre cell), box sides [4, G, G] in cells
    (left, top, right, bottom from the cell centre) and their weight [G, G] (the Gaussian near each centre)."""
    n = len(gt_boxes)
    heat = np.zeros((n, NUM_CLASSES, GRID, GRID), np.float32)
    sides = np.zeros((n, 4, GRID, GRID), np.float32)
    weight = np.zeros((n, GRID, GRID), np.float32)
    g = (np.arange(GRID, dtype=np.float32) + 0.5) * STRIDE  # cell centres in pixels
    cy, cx = np.meshgrid(g, g, indexing="ij")
    for i in range(n):
        for box, c in zip(gt_boxes[i], gt_classes[i]):
            if c < 0:
                continue
            x1, y1, x2, y2 = box
            mx, my = (x1 + x2) / 2, (y1 + y2) / 2
            sigma = max(0.6, 0.15 * min(x2 - x1, y2 - y1) / STRIDE) * STRIDE
            gauss = np.exp(-((cx - mx) ** 2 + (cy - my) ** 2) / (2 * sigma ** 2))
            pi, pj = min(int(my // STRIDE), GRID - 1), min(int(mx // STRIDE), GRID - 1)
            gauss[pi, pj] = 1.0
            heat[i, c] = np.maximum(heat[i, c], gauss)
            near = (gauss > 0.5) & (gauss >= weight[i])
            sides[i, :, near] = np.stack([cx - x1, cy - y1, x2 - cx, y2 - cy])[:, near].T / STRIDE
            weight[i][near] = gauss[near]
    return heat, sides, weight


def focal_loss(logits, heat):
    """CenterNet's penalty-reduced focal loss, from logits (log-sigmoid: stable at any score)."""
    p = torch.sigmoid(logits)
    pos = heat.eq(1).float()
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    pos_loss = (log_p * (1 - p) ** 2 * pos).sum()
    neg_loss = (log_not_p * p ** 2 * (1 - heat) ** 4 * (1 - pos)).sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp(min=1)


@torch.no_grad()
def evaluate(model, ev) -> tuple[float, float]:
    model.eval()
    outs = [model(torch.from_numpy(ev["input"][i:i + 50])) for i in range(0, len(ev["input"]), 50)]
    boxes, scores, classes = (torch.cat(o).numpy() for o in zip(*outs))
    args = (boxes, scores, classes, ev["gt_boxes"], ev["gt_classes"])
    return mean_average_precision(*args, (0.5,)), mean_average_precision(*args, IOU_THRESHOLDS)


def main() -> None:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    ev = shapes.generate(N_EVAL, EVAL_SEED)
    model = build_model()
    heads = model.heads
    opt = torch.optim.AdamW(heads.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = EPOCHS * (IMAGES_PER_EPOCH // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.15)
    t0 = time.perf_counter()
    for epoch in range(EPOCHS):
        tr = shapes.generate(IMAGES_PER_EPOCH, 100 + epoch)
        heat, sides, weight = (torch.from_numpy(a) for a in targets(tr["gt_boxes"], tr["gt_classes"]))
        x = torch.from_numpy(tr["input"])
        heads.train()
        total = 0.0
        for i in range(0, IMAGES_PER_EPOCH - BATCH + 1, BATCH):
            sl = slice(i, i + BATCH)
            xb = x[sl]
            if epoch % 2:  # horizontal flip on every other epoch (every shape class is left-right symmetric)
                xb = xb.flip(3)
                hb, sb, wb = heat[sl].flip(3), sides[sl].flip(3)[:, [2, 1, 0, 3]], weight[sl].flip(2)
            else:
                hb, sb, wb = heat[sl], sides[sl], weight[sl]
            logits, box = heads(xb)
            l1 = ((box - sb).abs().sum(1) * wb).sum() / wb.sum().clamp(min=1)
            loss = focal_loss(logits, hb) + 0.5 * l1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        msg = f"epoch {epoch + 1:2d} loss {total / (IMAGES_PER_EPOCH // BATCH):.4f} t {time.perf_counter() - t0:.0f}s"
        if (epoch + 1) % 7 == 0 or epoch == EPOCHS - 1:
            m50, m5095 = evaluate(model, ev)
            msg += f" mAP@0.5 {m50:.2f} mAP@0.5:0.95 {m5095:.2f}"
        print(msg, flush=True)
    train_s = time.perf_counter() - t0
    model.eval()
    m50, m5095 = evaluate(model, ev)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(OUT / "weights.safetensors"))
    (OUT / "data").mkdir(exist_ok=True)
    np.savez_compressed(OUT / "data" / "eval.npz", **ev)
    np.savez_compressed(OUT / "data" / "calibration.npz", input=shapes.generate(N_CALIB, CALIB_SEED)["input"])
    print(f"fp32 mAP@0.5 {m50:.2f}  mAP@0.5:0.95 {m5095:.2f} on {N_EVAL} evaluation images")
    print(f"training time: {train_s:.1f} s")


if __name__ == "__main__":
    main()
