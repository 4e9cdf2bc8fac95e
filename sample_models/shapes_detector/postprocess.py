"""The app-side post-processing of the arm64 artifact, in numpy: what a phone app runs on the LiteRT
interpreter's two outputs to get the same fixed-size detections the ONNX artifacts compute in their graph.

Why the split: the arm64 artifact is a full-integer int8 TFLite model. ONNX NonMaxSuppression has no
full-integer TFLite form (TFLite's NMS kernels are float only, and its own detection post-processing op,
TFLite_Detection_PostProcess, is a custom op onnx2tf does not emit), and box decoding in int8 would round every
box to the output's quantization step. So the artifact ends at the raw heads (heatmap logits and box sides, both
dequantized by the app with the tensors' scale and zero point), and this code, float, does the rest: the same
decode, the same NMS rule as ONNX Runtime's NonMaxSuppression, the same top-K and padding as
model.decode_and_select. The build judges the arm64 artifact through this function, so its mAP is the mAP the
app gets.
"""

from __future__ import annotations

import numpy as np

from sample_models.shapes_detector.config import (GRID, IOU_THRESHOLD, NUM_CLASSES, SCORE_THRESHOLD, STRIDE,
                                                  TOP_K)


def _nchw(a, channels):
    """LiteRT hands back NHWC; accept either layout."""
    a = np.asarray(a, np.float32)
    return a if a.shape[1] == channels else a.transpose(0, 3, 1, 2)


def _iou(box, others):
    iw = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = union - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _nms(boxes, scores):
    """Greedy NMS of one class: the kept box indices, highest score first (ONNX NonMaxSuppression's rule)."""
    cand = np.nonzero(scores > SCORE_THRESHOLD)[0]
    cand = cand[np.argsort(-scores[cand], kind="stable")]
    kept = []
    while len(cand) and len(kept) < TOP_K:
        kept.append(int(cand[0]))
        rest = cand[1:]
        cand = rest[_iou(boxes[cand[0]], boxes[rest]) <= IOU_THRESHOLD]
    return kept


def decode_and_select(heatmap, box):
    """heatmap logits [N, C, G, G] and box sides [N, 4, G, G] (NCHW or NHWC) -> boxes [N, K, 4], scores [N, K],
    classes [N, K] (int64, -1 in padding rows), rows in (class, cell) order like the ONNX artifacts."""
    heatmap, box = _nchw(heatmap, NUM_CLASSES), _nchw(box, 4)
    n, cells = len(heatmap), GRID * GRID
    scores = 1.0 / (1.0 + np.exp(-heatmap.reshape(n, NUM_CLASSES, cells).astype(np.float64)))
    centres = (np.arange(GRID) + 0.5) * STRIDE
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    c = np.stack([cx, cy, cx, cy]).reshape(4, cells)
    signs = np.array([-1.0, -1.0, 1.0, 1.0])[:, None]
    out_boxes = np.zeros((n, TOP_K, 4), np.float32)
    out_scores = np.zeros((n, TOP_K), np.float32)
    out_classes = np.full((n, TOP_K), -1, np.int64)
    for i in range(n):
        boxes = (c + signs * np.maximum(box[i].reshape(4, cells), 0) * STRIDE).T  # [cells, 4]
        found = [(k * cells + j, scores[i, k, j]) for k in range(NUM_CLASSES) for j in _nms(boxes, scores[i, k])]
        found = sorted(found, key=lambda t: -t[1])[:TOP_K]  # the best K over all classes
        for row, (flat, s) in enumerate(sorted(found)):  # then (class, cell) order
            out_boxes[i, row] = boxes[flat % cells]
            out_scores[i, row] = s
            out_classes[i, row] = flat // cells
    return out_boxes, out_scores, out_classes


def app_postprocess(raw_outputs: list) -> list:
    """The build's hook (`convert.app_postprocess`): the artifact's outputs as the app reads them, in any order
    (told apart by their channel count) -> the outputs the spec names (boxes, scores, classes)."""
    heat = next(a for a in raw_outputs if NUM_CLASSES in (a.shape[1], a.shape[-1]))
    box = next(a for a in raw_outputs if 4 in (a.shape[1], a.shape[-1]) and a is not heat)
    return list(decode_and_select(heat, box))
