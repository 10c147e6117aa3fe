"""Loss objects that compose: ``1.6e-3 * LandmarkLoss() + 1.92 * PhotometricLoss() + ...``.

Every loss is an ``nn.Module`` with a ``name``, called as ``loss(prediction, target)`` on two
dicts of tensors, so fitting and training share them. Keys (B = batch):

prediction: ``landmarks [B,P,2]`` pixels (P = 68, or a detector's dense points); ``image [B,3,H,W]``
    in [0,1]; ``mask [B,1,H,W]`` (where the photometric loss counts: rendered coverage x the
    model's skin mask);
    coefficient groups ``identity``, ``expression``, ``albedo`` ``[B,K]``, ``lighting [B,27]``.
target: ``landmarks [B,P,2]`` pixels; ``image [B,3,H,W]``; optional ``landmark_weights
    [B,P]`` (e.g. zero for points a detector could not see); for :class:`ParameterLoss`,
    ground-truth groups ``identity``, ``expression``, ``albedo`` ``[B,K]`` with
    ``parameter_weights [B]`` (how far each sample's ground truth is trusted: 0 where it has none).

A single loss returns a scalar tensor; a sum (or a weighted loss) returns
``(total, {name: weighted value})`` so the terms can be logged.

Least-squares losses also give ``residuals(prediction, target, at=None) -> [B,M]`` for
Gauss-Newton solvers: row b's squares sum to the loss of sample b alone. A robust loss gives
iteratively reweighted residuals, its weights taken at the prediction ``at`` (default: this
one), so that at ``at`` their sum of squares has the loss's gradient.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_LANDMARKS = 68


class Loss(nn.Module):
    """Base class: a named scalar loss of (prediction, target); supports ``w * loss`` and ``+``."""

    name = "loss"

    def __mul__(self, weight: float) -> "WeightedSum":
        return WeightedSum([(float(weight), self)])

    __rmul__ = __mul__

    def __add__(self, other) -> "WeightedSum":
        return WeightedSum([(1.0, self)]) + other

    def residuals(self, prediction: dict, target: dict, at: dict | None = None) -> torch.Tensor:
        """``[B,M]`` residuals, row b's squares summing to sample b's loss (least-squares losses only)."""
        raise NotImplementedError(f"{type(self).__name__} is not a least-squares loss")


class WeightedSum(nn.Module):
    """A weighted sum of losses; calling it returns ``(total, {name: weighted term})``."""

    def __init__(self, terms: list[tuple[float, Loss]]):
        super().__init__()
        self.weights = [w for w, _ in terms]
        self.losses = nn.ModuleList([loss for _, loss in terms])
        names = [loss.name for loss in self.losses]
        if len(set(names)) != len(names):
            raise ValueError(f"loss names must be unique in a sum, got {names}")

    def __add__(self, other) -> "WeightedSum":
        if isinstance(other, Loss):
            other = WeightedSum([(1.0, other)])
        if not isinstance(other, WeightedSum):
            return NotImplemented
        return WeightedSum(list(zip(self.weights, self.losses)) + list(zip(other.weights, other.losses)))

    def __mul__(self, weight: float) -> "WeightedSum":
        return WeightedSum([(float(weight) * w, loss) for w, loss in zip(self.weights, self.losses)])

    __rmul__ = __mul__

    def forward(self, prediction: dict, target: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = {loss.name: w * loss(prediction, target) for w, loss in zip(self.weights, self.losses)}
        return sum(terms.values()), terms

    def residuals(self, prediction: dict, target: dict, at: dict | None = None) -> torch.Tensor:
        """``[B,M]``: every term's residuals times the square root of its weight, concatenated."""
        return torch.cat([w**0.5 * loss.residuals(prediction, target, at) for w, loss in zip(self.weights, self.losses)
                          if w], 1)


def deep3d_landmark_weights() -> torch.Tensor:
    """Deep3DFaceRecon's preset ``[68]``: nose ridge 27-30 and inner mouth 60-67 count 20 times."""
    w = torch.ones(NUM_LANDMARKS)
    w[27:31] = 20.0
    w[60:68] = 20.0
    return w


ROBUST = (None, "geman-mcclure")


class LandmarkLoss(Loss):
    """Weighted mean of per-point squared distances (or their robust version), in pixels², divided by ``scale²``.

    Args:
        weights: ``[P]`` per-point weights (default all ones; see :func:`deep3d_landmark_weights`).
        scale: pixels per unit of the loss (e.g. the image size, to make it resolution-free).
        robust: None (squared distance) or ``"geman-mcclure"``: ``c² d² / (d² + c²)``, which is
            d² for distances well below ``c`` and levels off at c² beyond it, so one wrong point
            pulls with a bounded force (Geman & McClure 1987).
        robust_scale: ``c`` in pixels.

    Predicted and target points are ``[B,P,2]`` (P = 68 for the iBUG points, or a detector's
    dense points); ``target["landmark_weights"] [B,P]`` multiplies the weights.
    """

    name = "landmark"

    def __init__(self, weights: torch.Tensor | None = None, scale: float = 1.0, robust: str | None = None,
                 robust_scale: float = 4.0):
        super().__init__()
        if robust not in ROBUST:
            raise ValueError(f"robust must be one of {ROBUST}, got {robust!r}")
        if not robust_scale > 0:
            raise ValueError(f"robust_scale must be > 0, got {robust_scale}")
        self.register_buffer("weights", None if weights is None else weights.float())
        self.scale = float(scale)
        self.robust, self.robust_scale = robust, float(robust_scale)

    def _point_weights(self, pred: torch.Tensor, target: dict) -> torch.Tensor:
        if self.weights is None:
            w = torch.ones_like(pred[..., 0])
        elif self.weights.shape[0] != pred.shape[1]:
            raise ValueError(f"{self.weights.shape[0]} landmark weights for {pred.shape[1]} points")
        else:
            w = self.weights.to(pred.dtype).expand(pred.shape[0], -1)
        if "landmark_weights" in target:
            w = w * target["landmark_weights"]
        return w

    def forward(self, prediction: dict, target: dict) -> torch.Tensor:
        pred, gt = prediction["landmarks"], target["landmarks"]
        w = self._point_weights(pred, target)
        sq = ((pred - gt) ** 2).sum(-1)
        if self.robust == "geman-mcclure":
            c2 = self.robust_scale**2
            sq = c2 * sq / (sq + c2)
        return (w * sq / self.scale**2).sum() / w.sum().clamp_min(1e-12)

    def residuals(self, prediction: dict, target: dict, at: dict | None = None) -> torch.Tensor:
        """``[B,2P]``: the weighted x and y offsets; robust: reweighted by the Geman-McClure
        derivative ``c⁴ / (d² + c²)²`` at the offsets of ``at`` (held constant: IRLS)."""
        pred, gt = prediction["landmarks"], target["landmarks"]
        w = self._point_weights(pred, target)
        total = w.sum(-1, keepdim=True).clamp_min(1e-12)
        offsets = pred - gt
        if self.robust == "geman-mcclure":
            c2 = self.robust_scale**2
            there = (at or prediction)["landmarks"].detach() - gt
            w = w * (c2 / ((there**2).sum(-1) + c2)) ** 2
        scale = (w / total).sqrt() / self.scale
        return (scale[..., None] * offsets).flatten(1)


class PhotometricLoss(Loss):
    """Colour distance inside the prediction's mask.

    ``robust=True`` (default) is the L2,1 norm of Deep3DFaceRecon: the per-pixel Euclidean
    colour distance, averaged over the mask; ``robust=False`` averages squared distances.
    """

    name = "photometric"

    def __init__(self, robust: bool = True, eps: float = 1e-8):
        super().__init__()
        self.robust = robust
        self.eps = eps

    def forward(self, prediction: dict, target: dict) -> torch.Tensor:
        mask = prediction["mask"]
        sq = ((prediction["image"] - target["image"]) ** 2).sum(1, keepdim=True)
        dist = torch.sqrt(sq + self.eps) if self.robust else sq
        return (mask * dist).sum() / mask.sum().clamp_min(1.0)


class CoefficientPrior(Loss):
    """Weighted mean of squared coefficients per group (coefficients are ~N(0, 1) a priori).

    Args:
        identity, expression, albedo: weights of the three groups (Deep3DFaceRecon:
            1.0, 0.8, 1.7e-3 relative to each other).
    """

    name = "prior"

    def __init__(self, identity: float = 1.0, expression: float = 0.8, albedo: float = 1.7e-3):
        super().__init__()
        self.group_weights = {"identity": identity, "expression": expression, "albedo": albedo}

    def forward(self, prediction: dict, target: dict) -> torch.Tensor:
        total = 0.0
        for group, w in self.group_weights.items():
            c = prediction.get(group)
            if w and c is not None and c.numel():
                total = total + w * (c**2).sum(-1).mean()
        return torch.as_tensor(total)

    def residuals(self, prediction: dict, target: dict, at: dict | None = None) -> torch.Tensor:
        """``[B,K]``: the coefficients of the groups present, times the square roots of their weights."""
        parts = []
        for group, w in self.group_weights.items():
            c = prediction.get(group)
            if w and c is not None and c.numel():
                parts.append(w**0.5 * c)
        return torch.cat(parts, 1)


class LightingPrior(Loss):
    """Pulls SH lighting ``[B,27]`` towards monochrome light: the variance across R, G, B of
    each of the 9 coefficients (Deep3DFaceRecon's gamma loss)."""

    name = "lighting"

    def forward(self, prediction: dict, target: dict) -> torch.Tensor:
        light = prediction["lighting"].reshape(-1, 3, 9)
        return ((light - light.mean(1, keepdim=True)) ** 2).sum((1, 2)).mean()


class ParameterLoss(Loss):
    """Squared error of coefficient groups against ground truth (synthetic data), summed over
    the coefficients, averaged over the batch (samples without ground truth count zero: a
    batch's term scales with its share of such samples, and equal slices of a batch average
    to the whole batch's value, as data-parallel training needs).

    Args:
        groups: the groups compared (coefficients ~N(0, 1), so they are comparable).
    """

    name = "parameters"

    def __init__(self, groups: tuple[str, ...] = ("identity", "expression", "albedo")):
        super().__init__()
        self.groups = tuple(groups)

    def forward(self, prediction: dict, target: dict) -> torch.Tensor:
        w = target["parameter_weights"].to(prediction[self.groups[0]].dtype)
        total = 0.0
        for group in self.groups:
            if group in target:
                total = total + (w * ((prediction[group] - target[group]) ** 2).sum(-1)).sum()
        return torch.as_tensor(total) / max(len(w), 1)
