"""Faces, 468-point meshes and 68 iBUG points in photos of any size, batched, with MediaPipe's networks.

Pipeline per image: BlazeFace on the whole image (letterboxed, as MediaPipe), plus, for large
images, on an image pyramid of overlapping square tiles (side L/2, L/4, ... of the long side L,
50 % overlap, down to ``MIN_TILE`` pixels) so that small faces in large photos are found;
detections from all windows merge by weighted NMS. Each face then gets MediaPipe's ROI, the
468-point mesh and its face-presence score; faces whose presence is below ``presence`` are
dropped (MediaPipe's rule). ``refine`` re-crops from the mesh (MediaPipe's tracking ROI: the
mesh's box, rotated by vertices 33 -> 133) and runs the mesh again.
"""

from __future__ import annotations

import math

import torch

from ..base import Face
from . import blazeface, facemesh
from .ibug68 import mesh_to_ibug68

MIN_TILE = 384  # smallest pyramid tile (pixels): a 128-px detector input finds faces down to ~40 px in it
MAX_LEVELS = 3  # tiles of L/2, L/4, L/8 at most
TILE_EDGE = 0.02  # a tile detection touching the tile's inner edge (within this fraction) is cut: dropped
TILE_MAX_FACE = 0.6  # faces larger than this fraction of a tile are left to the coarser levels


class MediaPipeDetector:
    """``detect(images)`` -> for each image, its faces (:class:`~cli.detect.base.Face`), largest first.

    ``threshold``: minimum detection score (MediaPipe's default 0.5); ``model``: BlazeFace
    ``"short"`` (MediaPipe's face mesh default), ``"full"`` or ``"both"`` (merged);
    ``pyramid``: also search tiles of large images; ``presence``: minimum mesh face presence;
    ``refine``: extra mesh passes from the mesh's own ROI; ``dtype``: the networks' arithmetic.
    float32 convolutions round differently on different CPU instruction sets (the points move by
    up to ~0.02 px between AVX2 and AVX-512 machines); ``torch.float64`` gives the same points on
    any CPU to far below that, at several times the cost (the default model's build uses it).
    """

    name = "mediapipe"

    def __init__(self, device: str | torch.device = "cpu", threshold: float = 0.5, model: str = "short",
                 pyramid: bool = True, presence: float = 0.5, refine: int = 0, dtype: torch.dtype = torch.float32):
        if not 0 <= threshold <= 1:
            raise ValueError(f"detection threshold must be in [0, 1], got {threshold}")
        self.device, self.dtype = torch.device(device), dtype
        kinds = ("short", "full") if model == "both" else (model,)
        self.detectors = [blazeface.BlazeFace(kind, self.device, dtype) for kind in kinds]
        self.mesh = facemesh.FaceMesh(self.device, dtype)
        self.threshold, self.pyramid, self.presence, self.refine = threshold, pyramid, presence, refine

    def windows(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Square windows (center [K,2] in OpenCV pixels, side [K]): the whole image, then the pyramid's tiles."""
        long = max(height, width)
        centers, sides = [(width / 2, height / 2)], [float(long)]
        level = 1
        while self.pyramid and level <= MAX_LEVELS and long / 2 ** level >= MIN_TILE:
            side = long / 2 ** level
            for cy in _tile_centers(height, side):
                for cx in _tile_centers(width, side):
                    centers.append((cx, cy))
                    sides.append(side)
            level += 1
        return torch.tensor(centers, dtype=self.dtype), torch.tensor(sides, dtype=self.dtype)

    @torch.no_grad()
    def detect(self, images: torch.Tensor | list[torch.Tensor]) -> list[list[Face]]:
        """Faces in each image (``[B,3,H,W]`` or a list of ``[3,H,W]`` of any sizes), in [0, 1]."""
        if isinstance(images, torch.Tensor) and images.dim() == 3:
            images = images[None]
        groups = [images] if isinstance(images, torch.Tensor) else [img[None] for img in images]
        results = []
        for group in groups:  # images of one size run as one batch
            results += self._detect_batch(group.to(self.device, self.dtype))
        return results

    def _detect_batch(self, images: torch.Tensor) -> list[list[Face]]:
        b, _, h, w = images.shape
        center, side = self.windows(h, w)
        k = len(side)
        index = torch.arange(b).repeat_interleave(k)
        center, side = center.repeat(b, 1).to(self.device), side.repeat(b).to(self.device)
        found = [[] for _ in range(b)]
        for detector in self.detectors:
            per_window = detector.detect(images, index, center, side, self.threshold)
            for n, (boxes, points, scores) in enumerate(per_window):
                if n % k:  # a tile: keep whole, not-too-large faces only
                    keep = _inside_tile(boxes, center[n], side[n], h, w)
                    boxes, points, scores = boxes[keep], points[keep], scores[keep]
                found[n // k].append((boxes, points, scores))
        merged = []
        for parts in found:
            boxes, points, scores = (torch.cat(x) for x in zip(*parts))
            if len(self.detectors) > 1 or k > 1:
                boxes, points, scores = blazeface.weighted_nms(boxes, points, scores)
            merged.append((boxes, points, scores))
        return self._meshes(images, merged)

    def _meshes(self, images: torch.Tensor, detections) -> list[list[Face]]:
        counts = [len(s) for _, _, s in detections]
        if sum(counts) == 0:
            return [[] for _ in detections]
        boxes = torch.cat([d[0] for d in detections])
        points = torch.cat([d[1] for d in detections])
        scores = torch.cat([d[2] for d in detections])
        index = torch.arange(len(counts), device=self.device).repeat_interleave(torch.tensor(counts, device=self.device))
        center, side, angle = facemesh.roi_from_detection(boxes, points)
        mesh, presence = self.mesh.landmarks(images, index, center, side, angle)
        for _ in range(self.refine):
            center, side, angle = roi_from_mesh(mesh)
            mesh, presence = self.mesh.landmarks(images, index, center, side, angle)
        mesh = mesh.clone()
        mesh[..., :2] += 0.5  # OpenCV pixel coordinates -> morph's
        boxes = boxes + 0.5
        faces = [[] for _ in counts]
        for n in range(len(scores)):
            if presence[n] < self.presence:
                continue
            dense = mesh[n].cpu()
            faces[int(index[n])].append(Face(boxes[n].cpu(), float(scores[n]), mesh_to_ibug68(dense[:, :2]),
                                             dense, self.name))
        return [sorted(f, key=lambda face: face.size, reverse=True) for f in faces]


def roi_from_mesh(mesh: torch.Tensor):
    """MediaPipe's tracking ROI from mesh points ``[N,468,3]``: their box, rotated by vertices 33 -> 133, x1.5, square."""
    xy = mesh[..., :2]
    boxes = torch.cat([xy.amin(1), xy.amax(1)], dim=-1)
    eyes = torch.stack([xy[:, 33], xy[:, 133]], dim=1)
    return facemesh.roi_from_detection(boxes, eyes)


def _tile_centers(extent: int, side: float) -> list[float]:
    """Centres of tiles of ``side`` covering [0, extent] with at least 50 % overlap."""
    if extent <= side:
        return [extent / 2]
    count = math.ceil((extent - side) / (side / 2)) + 1
    step = (extent - side) / (count - 1)
    return [side / 2 + i * step for i in range(count)]


def _inside_tile(boxes: torch.Tensor, center: torch.Tensor, side: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tile detections that are whole (not cut by an inner tile edge) and small enough for this level."""
    margin = TILE_EDGE * side
    lo, hi = center - side / 2, center + side / 2
    at_image_lo = lo <= 0
    at_image_hi = hi >= torch.tensor([width, height], device=boxes.device, dtype=boxes.dtype)
    ok_lo = (boxes[:, :2] >= lo + margin) | at_image_lo
    ok_hi = (boxes[:, 2:] <= hi - margin) | at_image_hi
    small = (boxes[:, 2:] - boxes[:, :2]).amax(-1) <= TILE_MAX_FACE * side
    return ok_lo.all(-1) & ok_hi.all(-1) & small
