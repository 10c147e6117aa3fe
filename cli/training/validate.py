"""Validation on the held-out split: landmark error, shape and pose error where the data have
ground truth, and a picture (input | render | landmarks) of the first few samples."""

from __future__ import annotations

import torch

from losses import landmark_nme
from morphable import Parameters

from ..fitting.scene import FaceScene, rotation_matrix
from .loader import Batch, BatchStream

GRID_ROWS = 8
TRUE_COLOUR = (0.1, 0.9, 0.2)
PREDICTED_COLOUR = (1.0, 0.15, 0.1)


def draw_points(image: torch.Tensor, points: torch.Tensor, colour, radius: int = 1) -> torch.Tensor:
    """``image [3,H,W]`` with squares of side ``2 radius + 1`` at ``points [P,2]`` (pixels)."""
    h, w = image.shape[1:]
    offsets = torch.arange(-radius, radius + 1)
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    cols = (points[:, 0].floor().long()[:, None] + dx.reshape(1, -1)).reshape(-1)
    rows = (points[:, 1].floor().long()[:, None] + dy.reshape(1, -1)).reshape(-1)
    keep = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    out = image.clone()
    out[:, rows[keep], cols[keep]] = torch.tensor(colour, dtype=image.dtype)[:, None]
    return out


@torch.no_grad()
def predict_batches(net, stream: BatchStream, ids: torch.Tensor, device, batch_size: int = 32, autocast=None):
    """Yield (batch, predicted Parameters) over the samples ``ids`` in order."""
    for first in range(0, len(ids), batch_size):
        batch = stream.read(ids[first:first + batch_size]).to(device)
        with autocast() if autocast else _nothing():
            params = net(batch.images)
        yield batch, params


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def rotation_error_degrees(a: Parameters, b: Parameters) -> torch.Tensor:
    """``[B]`` angle of the rotation between two poses."""
    relative = rotation_matrix(a) @ rotation_matrix(b).transpose(1, 2)
    cos = ((relative.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))


@torch.no_grad()
def validate(net, scene: FaceScene, stream: BatchStream, ids: torch.Tensor, device, autocast=None
             ) -> tuple[dict[str, float], torch.Tensor]:
    """Metrics over the held-out samples ``ids`` and a grid image ``[3, rows*S, 3*S]``."""
    model = scene.model
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    grid_rows = []

    def add(name, values):
        sums[name] = sums.get(name, 0.0) + float(values.sum())
        counts[name] = counts.get(name, 0) + values.numel()

    for batch, params in predict_batches(net, stream, ids, device, autocast=autocast):
        predicted = scene.landmarks(params)
        valid = batch.landmark_weights > 0
        full = valid.all(1)
        if full.any():
            add("nme_bbox", landmark_nme(predicted[full], batch.landmarks[full], "bbox"))
        add("landmark_px", (predicted - batch.landmarks).norm(dim=-1)[valid])
        # What the untrained network predicts: the mean face in the neutral pose.
        scale0, tx, ty = net.reference.tolist()
        neutral = Parameters.neutral(model.parameter_sizes, len(batch), device, scale=scale0)
        neutral.pose[:, 3], neutral.pose[:, 4] = tx, ty
        add("neutral_px", (scene.landmarks(neutral) - batch.landmarks).norm(dim=-1)[valid])
        has = batch.parameter_loss_weights() > 0  # not the fits that disagree with their labels
        if batch.params is not None and has.any():
            truth = Parameters(**{g: t[has] for g, t in batch.params.items()})
            mine = Parameters(**{g: t[has] for g, t in params.groups().items()})
            difference = model.shape(mine.identity, mine.expression) - model.shape(truth.identity, truth.expression)
            add("vertex_rms_mm", difference.pow(2).sum(-1).mean(-1).sqrt())
            add("rotation_deg", rotation_error_degrees(mine, truth))
            add("identity_rmse", (mine.identity - truth.identity).pow(2).mean(-1).sqrt())
        if sum(len(r) for r in grid_rows) < GRID_ROWS:
            grid_rows.append(_grid_rows(scene, batch, params, predicted, GRID_ROWS - sum(len(r) for r in grid_rows)))
    metrics = {k: sums[k] / max(counts[k], 1) for k in sums}
    grid = torch.cat([row for rows in grid_rows for row in rows], 1) if grid_rows else torch.zeros(3, 1, 1)
    return metrics, grid


def _grid_rows(scene: FaceScene, batch: Batch, params: Parameters, predicted: torch.Tensor, n: int):
    n = min(n, len(batch))
    head = Parameters(**{g: t[:n] for g, t in params.groups().items()})
    out = scene(head)
    rows = []
    for k in range(n):
        image = batch.images[k].float().cpu()
        render = (image * (1 - out["coverage"][k].cpu()) + out["image"][k].clamp(0, 1).cpu())
        marks = draw_points(image, batch.landmarks[k].cpu(), TRUE_COLOUR)
        marks = draw_points(marks, predicted[k].float().cpu(), PREDICTED_COLOUR)
        rows.append(torch.cat([image, render, marks], 2))
    return rows
