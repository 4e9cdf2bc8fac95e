"""Recovery after pruning: deterministic fine-tuning of the pruned student with knowledge distillation from the
unpruned teacher (prune.epochs / prune.steps)."""

import math
import time

from ..errors import StageError

NAME = "prune"  # the stage this runs in (stages/prune.py)
BATCH = 64
LR_SCHEDULE = "cosine"  # Adam at prune.lr, annealed to 0 over the recovery steps ("constant": no annealing)
KD_WEIGHT = 0.5  # loss = KD_WEIGHT * KL(T) * T^2 + (1 - KD_WEIGHT) * CE(labels); KL only when there are no labels
# prune.stop_within: every HOLDOUT_EVERY-th training sample is held out of training; after each epoch the student's
# top-1 agreement with the teacher on them decides whether recovery has done its job. Never the evaluation data:
# stopping on the set the gate judges would tune the model to the gate.
HOLDOUT_EVERY = 10


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
    stop_within = getattr(prune, "stop_within", None)
    held, teacher_top1 = None, None
    if stop_within is not None:
        if soft.dim() != 2:
            raise StageError(NAME, f"prune.stop_within judges top-1 agreement with the unpruned model, which needs "
                                   f"[N, classes] logits; the first output has shape {list(soft.shape)}")
        keep = torch.arange(n) % HOLDOUT_EVERY != HOLDOUT_EVERY - 1
        held = [x[~keep] for x in xs]
        teacher_top1 = soft[~keep].argmax(1)
        xs, soft = [x[keep] for x in xs], soft[keep]
        labels = labels[keep] if labels is not None else None
        n = len(xs[0])
    steps_per_epoch = math.ceil(n / BATCH)
    total = int(prune.steps) if prune.steps else int(prune.epochs) * steps_per_epoch
    agreement = []  # held-out top-1 agreement (%) after each epoch, with stop_within

    was_det = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    t0 = time.perf_counter()
    losses = []
    with torch.random.fork_rng(devices=[]):  # seed locally: the caller's RNG state is left as it was
        torch.manual_seed(prune.seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            gen = torch.Generator().manual_seed(prune.seed)
            # A convolutional student trains channels-last: oneDNN's CPU convolutions run their backward passes
            # ~20-30 % faster in that layout (digits_resnet_pruned, one thread); the weights go back to the usual
            # layout before they are saved.
            layout = torch.channels_last if _has_conv2d(student) else None
            if layout is not None:
                student.to(memory_format=layout)
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
                    batch = [x[idx].contiguous(memory_format=layout) if layout is not None and x.dim() == 4
                             else x[idx] for x in xs]
                    out = tensors(student(*batch))[0]
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
                if held is not None and step < total:  # an epoch done, more planned: has the student caught up?
                    agreement.append(_agreement(student, held, teacher_top1))
                    student.train()
                    if agreement[-1] >= 100.0 - stop_within:
                        break
        finally:
            torch.use_deterministic_algorithms(was_det, warn_only=was_warn)
            student.to(memory_format=torch.contiguous_format)
            student.eval()
    info = {}
    if held is not None:
        if step >= total:  # the last epoch's agreement, for the record
            agreement.append(_agreement(student, held, teacher_top1))
        info["held_out"] = {"samples": len(teacher_top1), "every": HOLDOUT_EVERY, "stop_within": stop_within,
                            "top1_agreement_by_epoch": [round(a, 3) for a in agreement],
                            "stopped_early": step < total, "planned_steps": total}
    return {"optimizer_steps": step, **info, "batch": BATCH, "samples": n, "optimizer": "Adam",
            "lr_schedule": LR_SCHEDULE,
            "loss": "KL(T)*T^2" + (f" * {KD_WEIGHT} + CE(labels) * {1 - KD_WEIGHT}" if use_ce else ""),
            "loss_first": round(losses[0], 5) if losses else None,
            "loss_last": round(losses[-1], 5) if losses else None,
            "train_seconds": round(time.perf_counter() - t0, 2)}


def _has_conv2d(model) -> bool:
    import torch

    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def _agreement(student, held, teacher_top1) -> float:
    """% of held-out samples on which the student's top-1 class is the teacher's."""
    import torch

    student.eval()
    with torch.no_grad():
        out = torch.cat([tensors(student(*[x[i:i + BATCH] for x in held]))[0] for i in range(0, len(held[0]), BATCH)])
    return float((out.argmax(1) == teacher_top1).float().mean() * 100.0)


def tensors(result):
    import torch

    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        result = list(result.values())
    return [r for r in result if isinstance(r, torch.Tensor)]

