"""Non-maximum suppression that exports as ONNX's own `NonMaxSuppression` op (torchvision, whose nms op carries
an export rule, has no CPU build for the pinned torch).

`nms(boxes, scores, ...)` computes in PyTorch exactly what ONNX Runtime's NonMaxSuppression computes (greedy, per
batch and class, highest score first; a box is dropped when its IoU with a kept box is above the IoU threshold;
boxes scoring at or below the score threshold never count), and its `symbolic` emits the ONNX op, so the
traced graph carries the suppression itself.
"""

from __future__ import annotations

import warnings

import torch


def _iou_one_to_many(box, others):
    """IoU of one [4] box with [M, 4] boxes, corners in any order (as ONNX allows)."""
    x1, y1 = torch.minimum(box[0], box[2]), torch.minimum(box[1], box[3])
    x2, y2 = torch.maximum(box[0], box[2]), torch.maximum(box[1], box[3])
    ox1, oy1 = torch.minimum(others[:, 0], others[:, 2]), torch.minimum(others[:, 1], others[:, 3])
    ox2, oy2 = torch.maximum(others[:, 0], others[:, 2]), torch.maximum(others[:, 1], others[:, 3])
    iw = (torch.minimum(x2, ox2) - torch.maximum(x1, ox1)).clamp(min=0)
    ih = (torch.minimum(y2, oy2) - torch.maximum(y1, oy1)).clamp(min=0)
    inter = iw * ih
    union = (x2 - x1) * (y2 - y1) + (ox2 - ox1) * (oy2 - oy1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


class _NonMaxSuppression(torch.autograd.Function):
    @staticmethod
    def forward(ctx, boxes, scores, max_per_class, iou_threshold, score_threshold):
        # While the model is traced for export this Python loop runs once on example data, but the graph gets the
        # ONNX op from `symbolic` below, not this loop: the tracer's warnings about it do not apply.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _NonMaxSuppression._select(boxes, scores, max_per_class, iou_threshold, score_threshold)

    @staticmethod
    def _select(boxes, scores, max_per_class, iou_threshold, score_threshold):
        k, iou_t, score_t = int(max_per_class), float(iou_threshold), float(score_threshold)
        rows = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                s = scores[b, c]
                cand = torch.nonzero(s > score_t).flatten()
                cand = cand[torch.sort(s[cand], descending=True, stable=True).indices]
                kept = []
                while cand.numel() and len(kept) < k:
                    best = cand[0]
                    kept.append(int(best))
                    rest = cand[1:]
                    cand = rest[_iou_one_to_many(boxes[b, best], boxes[b, rest]) <= iou_t]
                rows += [(b, c, i) for i in kept]
        return torch.tensor(rows, dtype=torch.int64).reshape(-1, 3)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_threshold, score_threshold):
        return g.op("NonMaxSuppression", boxes, scores, max_per_class, iou_threshold, score_threshold,
                    center_point_box_i=0)


def nms(boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
    """boxes [B, A, 4], scores [B, C, A] -> selected [N, 3] int64 rows (batch, class, box index)."""
    with warnings.catch_warnings():  # constants of the op (its attributes-as-inputs), not data: see forward
        warnings.simplefilter("ignore")
        limits = (torch.tensor([max_per_class], dtype=torch.int64), torch.tensor([iou_threshold], dtype=torch.float32),
                  torch.tensor([score_threshold], dtype=torch.float32))
    return _NonMaxSuppression.apply(boxes, scores, *limits)
