"""Recovery after pruning: deterministic fine-tuning of the pruned student with knowledge distillation from the
unpruned teacher (prune.epochs / prune.steps)."""

import math
import time

from ..errors import StageError

NAME = "prune"  # the stage this runs in (stages/prune.py)
BATCH = 64
LR_SCHEDULE = "cosine"  # Adam at prune.lr, annealed to 0 over the recovery steps ("constant": no annealing)
KD_WEIGHT = 0.5  # loss = KD_WEIGHT * KL(T) * T^2 + (1 - KD_WEIGHT) * CE(labels); KL only when there are no labels


def recover(student, teacher, train, input_names, labels_key, prune) -> dict:
    """Knowledge-distillation fine-tuning, deterministic for a given seed. Leaves `student` in eval mode."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    for n in input_names:
        if n not in train:
            raise StageError(NAME, f"training data has no array named {n!r} (has {', '.join(sorted(train))})")
    xs = [torch.from_numpy(np.ascontiguousarray(train[n])) for n in input_names]
    n = len(xs[0])
    labels = None
    if labels_key in train:
        labels = torch.from_numpy(np.ascontiguousarray(train[labels_key])).long()
        if len(labels) != n:
            raise StageError(NAME, f"training data: {len(labels)} labels for {n} samples")
    temp = float(prune.temperature)
    with torch.no_grad():
        teacher.eval()
        soft = torch.cat([tensors(teacher(*[x[i:i + BATCH] for x in xs]))[0] for i in range(0, n, BATCH)])
    if soft.dim() < 2 or not soft.is_floating_point():
        raise StageError(NAME, f"recovery distils the model's first output over axis 1, which needs [N, classes, "
                               f"...] float logits; it has shape {list(soft.shape)} ({soft.dtype})")
    use_ce = labels is not None and soft.dim() == 2
    steps_per_epoch = math.ceil(n / BATCH)
    total = int(prune.steps) if prune.steps else int(prune.epochs) * steps_per_epoch

    was_det = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    t0 = time.perf_counter()
    losses = []
    with torch.random.fork_rng(devices=[]):  # seed locally: the caller's RNG state is left as it was
        torch.manual_seed(prune.seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            gen = torch.Generator().manual_seed(prune.seed)
            params = [p for p in student.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=float(prune.lr))
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1)) \
                if LR_SCHEDULE == "cosine" else None
            student.train()
            step = 0
            while step < total:
                perm = torch.randperm(n, generator=gen)
                for i in range(0, n, BATCH):
                    if step >= total:
                        break
                    idx = perm[i:i + BATCH]
                    if len(idx) < 2 and n > 1:
                        continue  # a batch of one breaks BatchNorm statistics
                    out = tensors(student(*[x[idx] for x in xs]))[0]
                    t = soft[idx]
                    kd = F.kl_div(F.log_softmax(out / temp, dim=1), F.log_softmax(t / temp, dim=1),
                                  reduction="batchmean", log_target=True) * temp * temp
                    loss = KD_WEIGHT * kd + (1 - KD_WEIGHT) * F.cross_entropy(out, labels[idx]) if use_ce else kd
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                    losses.append(float(loss.detach()))
                    step += 1
        finally:
            torch.use_deterministic_algorithms(was_det, warn_only=was_warn)
            student.eval()
    return {"optimizer_steps": total, "batch": BATCH, "samples": n, "optimizer": "Adam", "lr_schedule": LR_SCHEDULE,
            "loss": "KL(T)*T^2" + (f" * {KD_WEIGHT} + CE(labels) * {1 - KD_WEIGHT}" if use_ce else ""),
            "loss_first": round(losses[0], 5) if losses else None,
            "loss_last": round(losses[-1], 5) if losses else None,
            "train_seconds": round(time.perf_counter() - t0, 2)}


def tensors(result):
    import torch

    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        result = list(result.values())
    return [r for r in result if isinstance(r, torch.Tensor)]

