"""MediaPipe's BlazeFace face detectors: SSD anchors, box decoding and weighted NMS, as MediaPipe does them.

Two models from the mediapipe wheel: ``short`` (128 px input, faces within ~2 m, 896 anchors)
and ``full`` (192 px, sparse "full range" model for faces up to ~5 m, 2304 anchors). Options
are those of MediaPipe's ``face_detection_short_range.pbtxt`` / ``face_detection_full_range.pbtxt``
and ``face_detection.pbtxt``: SsdAnchorsCalculator (min_scale 0.1484375, max_scale 0.75,
offsets 0.5, fixed anchor size), TensorsToDetectionsCalculator (16 coordinates: box x, y, w, h,
then 6 keypoints x, y; scale = input size; sigmoid scores clipped at ±100), and
NonMaxSuppressionCalculator (WEIGHTED, IoU > 0.3). The image goes in letterboxed (kept aspect,
zero border) with values in [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import warp
from .weights import load_network


@dataclass(frozen=True)
class Spec:
    model: str  # key of weights.MODELS
    size: int  # input side in pixels
    strides: tuple[int, ...]
    interpolated_anchor: bool  # one extra anchor per aspect ratio set (interpolated_scale_aspect_ratio > 0)
    min_score: float  # MediaPipe's default min_score_thresh


SPECS = {
    "short": Spec("face_detection_short_range", 128, (8, 16, 16, 16), True, 0.5),
    "full": Spec("face_detection_full_range", 192, (4,), False, 0.6),
}
NMS_IOU = 0.3
KEYPOINTS = 6  # right eye, left eye, nose tip, mouth centre, right ear tragion, left ear tragion (subject's sides)


def ssd_anchor_centers(spec: Spec) -> torch.Tensor:
    """Anchor centres ``[A,2]`` (x, y in [0, 1]) in SsdAnchorsCalculator's order (aspect ratio 1, fixed size)."""
    centers, layer = [], 0
    while layer < len(spec.strides):
        same = layer
        per_cell = 0
        while same < len(spec.strides) and spec.strides[same] == spec.strides[layer]:
            per_cell += 1 + int(spec.interpolated_anchor)  # one aspect ratio (1.0) + the interpolated scale
            same += 1
        cells = math.ceil(spec.size / spec.strides[layer])
        grid = (torch.arange(cells, dtype=torch.float32) + 0.5) / cells
        y, x = torch.meshgrid(grid, grid, indexing="ij")
        xy = torch.stack([x, y], -1).reshape(-1, 1, 2).expand(-1, per_cell, 2).reshape(-1, 2)
        centers.append(xy)
        layer = same
    return torch.cat(centers)


def decode(raw_boxes: torch.Tensor, raw_scores: torch.Tensor, anchors: torch.Tensor, size: int):
    """Boxes ``[N,A,4]`` (xmin, ymin, xmax, ymax), keypoints ``[N,A,6,2]``, scores ``[N,A]``, all in [0, 1] of the input."""
    raw = raw_boxes / size
    center = raw[..., 0:2] + anchors
    half = raw[..., 2:4] / 2
    boxes = torch.cat([center - half, center + half], dim=-1)
    keypoints = raw[..., 4:4 + 2 * KEYPOINTS].unflatten(-1, (KEYPOINTS, 2)) + anchors[:, None]
    scores = torch.sigmoid(raw_scores[..., 0].clamp(-100, 100))
    return boxes, keypoints, scores


def iou(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Intersection over union of ``box [4]`` with ``boxes [M,4]`` (xmin, ymin, xmax, ymax)."""
    lo = torch.maximum(box[:2], boxes[:, :2])
    hi = torch.minimum(box[2:], boxes[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    area = (box[2:] - box[:2]).prod() + (boxes[:, 2:] - boxes[:, :2]).prod(-1)
    union = area - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(union))


def weighted_nms(boxes: torch.Tensor, keypoints: torch.Tensor, scores: torch.Tensor, threshold: float = NMS_IOU):
    """MediaPipe's WEIGHTED non-maximum suppression of ``M`` detections -> (boxes [K,4], keypoints [K,6,2], scores [K]).

    In order of score, the best remaining detection and every remaining one overlapping it by
    IoU > ``threshold`` (itself included) merge into their score-weighted mean box and
    keypoints; the merged detection keeps the best score.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    out_boxes, out_points, out_scores = [], [], []
    while order.numel():
        best = order[0]
        overlap = iou(boxes[best], boxes[order]) > threshold
        members = order[overlap]
        if members.numel() == 0:  # a degenerate box: MediaPipe stops here
            out_boxes.append(boxes[best]), out_points.append(keypoints[best]), out_scores.append(scores[best])
            break
        weight = scores[members] / scores[members].sum()
        out_boxes.append((boxes[members] * weight[:, None]).sum(0))
        out_points.append((keypoints[members] * weight[:, None, None]).sum(0))
        out_scores.append(scores[best])
        order = order[~overlap]
    if not out_scores:
        return boxes.new_zeros(0, 4), keypoints.new_zeros(0, KEYPOINTS, 2), scores.new_zeros(0)
    return torch.stack(out_boxes), torch.stack(out_points), torch.stack(out_scores)


class BlazeFace:
    """One BlazeFace model on a device: ``detect(images, index, center, side, threshold)``."""

    def __init__(self, kind: str = "short", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        if kind not in SPECS:
            raise ValueError(f"unknown BlazeFace model {kind!r} (use {', '.join(SPECS)})")
        self.spec = SPECS[kind]
        self.device = torch.device(device)
        self.net = load_network(self.spec.model, self.device, dtype)
        self.anchors = ssd_anchor_centers(self.spec).to(self.device, dtype)

    @torch.no_grad()
    def raw(self, tensors: torch.Tensor):
        """Network + decoding for input crops ``[N,3,S,S]`` in [0, 1] -> decode()'s boxes, keypoints, scores."""
        raw_boxes, raw_scores = self.net(tensors * 2 - 1)
        return decode(raw_boxes, raw_scores, self.anchors, self.spec.size)

    @torch.no_grad()
    def detect(self, images: torch.Tensor, index: torch.Tensor, center: torch.Tensor, side: torch.Tensor,
               threshold: float, batch: int = 64) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Faces in square windows of ``images [B,3,H,W]``, one result per window.

        A window is ``(index, center [2], side)`` in OpenCV pixels (upright; the whole image
        letterboxed is ``center = (W/2, H/2), side = max(W, H)``). Each result is (boxes [K,4]
        as xmin, ymin, xmax, ymax; keypoints [K,6,2]; scores [K]) in OpenCV pixels of the image,
        after weighted NMS within the window, best first.
        """
        results = []
        zero = images.new_zeros(len(index))
        for start in range(0, len(index), batch):
            part = slice(start, start + batch)
            tensors = warp.crop(images, index[part], center[part], side[part], zero[part], self.spec.size, "zero")
            boxes, keypoints, scores = self.raw(tensors.to(self.device))
            for k in range(tensors.shape[0]):
                keep = scores[k] >= threshold
                b, p, s = weighted_nms(boxes[k][keep], keypoints[k][keep], scores[k][keep])
                c, w = center[part][k].to(self.device), side[part][k].to(self.device)
                results.append((c.repeat(2) + (b - 0.5) * w, c + (p - 0.5) * w, s))
        return results
