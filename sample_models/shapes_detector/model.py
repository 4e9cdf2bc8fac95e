"""A small single-stage, anchor-free detector (CenterNet-style) for the 64x64 shapes set (data.py), with its
post-processing in the model: box decoding and non-maximum suppression (ONNX NonMaxSuppression) down to
fixed-size outputs an app can read without any code of ours.

- backbone: six 3x3 conv + BatchNorm + ReLU layers, stride 4 (16x16 grid), dilations widen the view to the
  largest shapes (~26 px);
- heads (1x1 convs): `heatmap` (one score map per class: is a shape's centre in this cell?) and `box` (distances
  from the cell centre to the box's left, top, right and bottom sides, in grid cells);
- post-processing: sigmoid scores, boxes decoded to pixels, NMS per class (IoU 0.5, score > 0.05, at most
  TOP_K per class), then the TOP_K best survivors over all classes, in (class, cell) order, padded:
  boxes [B, K, 4] (x1, y1, x2, y2 in pixels), scores [B, K] (0 in padding rows), classes [B, K] int64 (-1 in padding rows).

`build_model()` is the shipped model (heads + post-processing); `build_heads()` stops at the raw heads (what
the arm64 artifact carries: see postprocess.py).
"""

from __future__ import annotations

import torch
from torch import nn

from sample_models.shapes_detector.config import (GRID, IOU_THRESHOLD, NUM_CLASSES, SCORE_THRESHOLD, STRIDE,
                                                  TOP_K)
from sample_models.shapes_detector.nms import nms


def _block(cin, cout, stride=1, dilation=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Heads(nn.Module):
    def __init__(self, width: int = 48):
        super().__init__()
        self.backbone = nn.Sequential(_block(3, 16, 2), _block(16, 32, 2), _block(32, width),
                                      _block(width, width, dilation=2), _block(width, width, dilation=4),
                                      _block(width, width))
        self.heatmap = nn.Conv2d(width, NUM_CLASSES, 1)
        self.box = nn.Conv2d(width, 4, 1)
        nn.init.constant_(self.heatmap.bias, -2.19)  # start near p = 0.1 (CenterNet's focal-loss prior)

    def forward(self, x):
        f = self.backbone(x)
        return self.heatmap(f), self.box(f)


class Detector(nn.Module):
    """Heads plus decode + NMS; outputs (boxes, scores, classes)."""

    def __init__(self):
        super().__init__()
        self.heads = Heads()
        centres = (torch.arange(GRID, dtype=torch.float32) + 0.5) * STRIDE
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("centres", torch.stack([cx, cy, cx, cy]).reshape(1, 4, GRID * GRID), persistent=False)
        self.register_buffer("signs", torch.tensor([-1.0, -1.0, 1.0, 1.0]).reshape(1, 4, 1), persistent=False)

    def forward(self, x):
        heatmap, box = self.heads(x)
        return decode_and_select(heatmap, box, self.centres, self.signs)


def decode_and_select(heatmap, box, centres, signs):
    n = heatmap.shape[0]
    cells = GRID * GRID
    scores = torch.sigmoid(heatmap).reshape(n, NUM_CLASSES, cells)
    # x1 = cx - l, y1 = cy - t, x2 = cx + r, y2 = cy + b (distances in cells, never negative)
    boxes = (centres + signs * torch.relu(box).reshape(n, 4, cells) * STRIDE).transpose(1, 2)  # [n, cells, 4]
    selected = nms(boxes, scores, TOP_K, IOU_THRESHOLD, SCORE_THRESHOLD)  # [N, 3]: batch, class, cell
    flat_scores = scores.reshape(-1)
    flat_index = (selected[:, 0] * NUM_CLASSES + selected[:, 1]) * cells + selected[:, 2]
    kept = torch.zeros_like(flat_scores).scatter(0, flat_index, flat_scores.gather(0, flat_index))
    top_scores, top_index = kept.reshape(n, NUM_CLASSES * cells).topk(TOP_K, dim=1)
    # Rows in (class, cell) order, padding last: two runtimes whose scores differ in the 7th digit then still
    # agree row by row (a score order would swap near-equal detections).
    rank = torch.arange(TOP_K, device=top_index.device).unsqueeze(0).expand(n, TOP_K)
    found = top_scores > 0
    order = torch.where(found, top_index, NUM_CLASSES * cells + rank).argsort(dim=1)
    # (an output tensor is not read again inside the graph: fp16 conversion with float32 outputs mistypes that)
    top_index, top_scores, valid = top_index.gather(1, order), top_scores.gather(1, order), found.gather(1, order)
    classes = torch.div(top_index, cells, rounding_mode="floor")
    cell = top_index - classes * cells
    top_boxes = boxes.gather(1, cell.unsqueeze(2).expand(n, TOP_K, 4))
    top_boxes = top_boxes * valid.unsqueeze(2).to(top_boxes.dtype)
    classes = torch.where(valid, classes, torch.full_like(classes, -1))
    return top_boxes, top_scores, classes


def build_model() -> nn.Module:
    return Detector()


def build_heads() -> nn.Module:
    return Heads()
