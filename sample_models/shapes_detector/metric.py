"""mAP for the detector, the way detection papers report it: AP per class (COCO's 101-point interpolated
precision-recall), averaged over classes, at IoU 0.5 (mAP@0.5) and averaged over IoU 0.5:0.05:0.95
(mAP@0.5:0.95). In percent.

Matching per image and class, highest score first: a detection is a true positive when its best IoU with a
ground-truth box not yet matched (COCO matches to the unmatched box it overlaps most) is at least the
threshold. Padding rows (score <= 0, or class < 0) are not detections; ground truth rows with class -1 are
padding. pycocotools would pull in what the pins cannot hold; this is short and tested against hand-worked
cases (tests/test_shapes_detector.py).

`map_50` and `map_50_95` are the build's user metrics (`metric = "sample_models.shapes_detector.metric:map_50"`):
they take the artifact's outputs by name (boxes, scores, classes), the fp32 PyTorch outputs (unused: the task
is judged against the ground truth) and the evaluation arrays (gt_boxes, gt_classes).
"""

from __future__ import annotations

import numpy as np

from toolchain.validation.metrics import declare

IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def box_iou(a, b):
    """IoU of [N, 4] against [M, 4] boxes (x1, y1, x2, y2) -> [N, M]."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def average_precision(tp, scores, n_gt) -> float:
    """COCO AP: precision made monotone, sampled at 101 recall points. tp: 1/0 per detection."""
    if n_gt == 0:
        return float("nan")
    if len(tp) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    tp = np.asarray(tp, np.float64)[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = ctp / n_gt
    precision = ctp / (ctp + cfp)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the best precision at this recall or beyond
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    return float(np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0).mean())


def _match(det_boxes, det_scores, gt, iou_threshold):
    """1/0 per detection of one image and class, highest score first (COCO greedy matching)."""
    order = np.argsort(-det_scores, kind="stable")
    iou = box_iou(det_boxes[order], gt)
    taken = np.zeros(len(gt), bool)
    tp = np.zeros(len(order))
    for i in range(len(order)):
        cand = np.where(taken, -1.0, iou[i]) if len(gt) else np.array([])
        if len(cand) and cand.max() >= iou_threshold:
            j = int(cand.argmax())
            taken[j], tp[i] = True, 1.0
    out = np.zeros(len(order))
    out[order] = tp
    return out


def mean_average_precision(boxes, scores, classes, gt_boxes, gt_classes, iou_thresholds=(0.5,)) -> float:
    """mAP in percent over the classes present in the ground truth, averaged over the IoU thresholds.
    boxes [N, K, 4], scores [N, K], classes [N, K] (padded); gt_boxes [N, G, 4], gt_classes [N, G] (-1: none)."""
    boxes, scores = np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
    classes, gt_classes = np.rint(np.asarray(classes)).astype(np.int64), np.asarray(gt_classes).astype(np.int64)
    gt_boxes = np.asarray(gt_boxes, np.float64)
    present = sorted(set(gt_classes[gt_classes >= 0].tolist()))
    aps = []
    for t in iou_thresholds:
        per_class = []
        for c in present:
            tps, ss, n_gt = [], [], 0
            for i in range(len(boxes)):
                det = (classes[i] == c) & (scores[i] > 0)
                gt = gt_boxes[i][gt_classes[i] == c]
                n_gt += len(gt)
                if det.any():
                    tps.append(_match(boxes[i][det], scores[i][det], gt, t))
                    ss.append(scores[i][det])
            tp = np.concatenate(tps) if tps else np.zeros(0)
            s = np.concatenate(ss) if ss else np.zeros(0)
            per_class.append(average_precision(tp, s, n_gt))
        aps.append(np.mean(per_class) if per_class else float("nan"))
    return float(np.mean(aps) * 100.0)


def _detections(outputs):
    return outputs["boxes"], outputs["scores"], outputs["classes"]


@declare(unit="percentage points", higher_is_better=True, budget="drop", budget_range=(0, 100))
def map_50(outputs, references, evaluation) -> float:
    """mAP@0.5 (%) of the artifact's detections against the ground truth."""
    return mean_average_precision(*_detections(outputs), evaluation["gt_boxes"], evaluation["gt_classes"], (0.5,))


@declare(unit="percentage points", higher_is_better=True, budget="drop", budget_range=(0, 100))
def map_50_95(outputs, references, evaluation) -> float:
    """mAP@0.5:0.95 (%): the same, averaged over IoU thresholds 0.5 to 0.95; falls when boxes lose precision."""
    return mean_average_precision(*_detections(outputs), evaluation["gt_boxes"], evaluation["gt_classes"],
                                  IOU_THRESHOLDS)
