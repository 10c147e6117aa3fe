"""What the fitter's landmark term compares: the detector's (or an annotation's) points against the model's.

Three kinds of correspondence, chosen by what the input and the model offer:

- **dense**: a detector's dense points (MediaPipe's 468) against the model's dense embedding
  (``dense_triangles`` / ``dense_barycentrics``), when the model has one for that detector.
  Each point is weighted by the embedding's weight (0 for points the detector does not place
  consistently on the model's surface), the detector's own confidence where it gives one, and
  its visibility under the current pose (its triangle turned away from the camera counts less:
  a detector guesses hidden points, and on a turned head it tends to pull them towards the
  visible outline).
- **68 points, outline convention** (2-D annotations, dlib): the 51 inner points against the
  model's landmark vertices, the 17 jaw points against the model's outline under the current
  pose (:meth:`cli.fitting.scene.FaceScene.contour`, as eos and 3DDFA do).
- **68 points, 3-D convention** (points that stay on the surface as the head turns, e.g.
  AFLW2000-3D's or MediaPipe's mesh-derived 68): all against the fixed landmark vertices.

The pose-dependent parts (contour samples, visibility) are refreshed by :meth:`LandmarkTerm.refresh`
between optimisation rounds, so that each round minimises a fixed, smooth objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from morphable import Parameters

from .contour import JAW
from .scene import FaceScene

CONVENTIONS = ("outline", "3d")
FACING_FULL = 0.25  # visibility weight: 1 from this cosine up, linearly down to 0 at cosine 0


@dataclass
class LandmarkInput:
    """Landmarks of one face in original-image pixels.

    ``points [68,2]`` iBUG order; ``convention``: where their jaw lies (``"outline"`` or ``"3d"``);
    ``weights [68]`` optional per-point confidences in [0, 1]; ``dense [P,2+]`` optional dense
    points of ``dense_name``'s detector with optional ``dense_weights [P]``.
    """

    points: torch.Tensor
    convention: str = "outline"
    weights: torch.Tensor | None = None
    dense: torch.Tensor | None = None
    dense_weights: torch.Tensor | None = None
    dense_name: str | None = None

    def __post_init__(self):
        if self.convention not in CONVENTIONS:
            raise ValueError(f"jaw convention must be one of {CONVENTIONS}, got {self.convention!r}")


def dense_usable(scene: FaceScene, landmarks: LandmarkInput) -> bool:
    """The input has dense points the model embeds (same detector, same count)."""
    model = scene.model
    if landmarks.dense is None or not scene.has_dense:
        return False
    name = model.metadata.get("dense_landmarks", "")
    return len(landmarks.dense) == model.num_dense_landmarks and (landmarks.dense_name is None
                                                                   or landmarks.dense_name == name)


# Detector points that follow the face's visible outline rather than a fixed place on it, per
# dense point set: MediaPipe's face oval from ear to ear under the chin (FACEMESH_FACE_OVAL).
OUTLINE_POINTS = {"mediapipe-face-mesh-468": (356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176,
                                              149, 150, 136, 172, 58, 132, 93, 234, 127)}


class _Part:
    """Some target points and the model points matched to them (see :class:`LandmarkTerm`)."""

    def __init__(self, points: torch.Tensor, weights: torch.Tensor):
        self.points, self.base_weights, self.weights = points, weights, weights

    def refresh(self, scene: FaceScene, params: Parameters) -> None:
        pass

    def predict(self, scene: FaceScene, params: Parameters) -> torch.Tensor:
        raise NotImplementedError


class _Fixed(_Part):
    """Landmarks on fixed model vertices (``index`` into the 68)."""

    def __init__(self, points, weights, index):
        super().__init__(points, weights)
        self.index = list(index)

    def predict(self, scene, params):
        return scene.landmarks(params)[:, self.index]


class _Dense(_Part):
    """A detector's dense points on the model's dense embedding, weighted by visibility."""

    def __init__(self, points, weights, visibility):
        super().__init__(points, weights)
        self.visibility = visibility

    def refresh(self, scene, params):
        if self.visibility:
            _, facing = scene.dense_landmarks(params, with_facing=True)
            self.weights = self.base_weights * (facing[0] / FACING_FULL).clamp(0, 1)

    def predict(self, scene, params):
        return scene.dense_landmarks(params)


class _Contour(_Part):
    """The 17 jaw points on the model's outline, point by point (as eos / 3DDFA)."""

    choice = None

    def refresh(self, scene, params):
        self.choice = scene.contour(params)[1]

    def predict(self, scene, params):
        if self.choice is None:
            self.refresh(scene, params)
        return scene.contour(params, self.choice)[0]


class _OutlineCurve(_Part):
    """Outline points free to slide along the model's outline: each is matched to its nearest
    point on the polyline through the 17 outline points (the match is refreshed with the pose);
    only the distance across the polyline counts."""

    segment = None

    def refresh(self, scene, params):
        curve = scene.contour(params)[0]  # [1,17,2]
        self.choice = scene.contour(params)[1]
        a, b = curve[0, :-1], curve[0, 1:]  # segments [16,2]
        ab = b - a
        t = (((self.points[0, :, None] - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)).clamp(0, 1)
        d = (self.points[0, :, None] - (a + t[..., None] * ab)).norm(dim=-1)  # [Q,16]
        self.segment = d.argmin(1)
        self.t = t[torch.arange(len(t)), self.segment]

    def predict(self, scene, params):
        if self.segment is None:
            self.refresh(scene, params)
        curve = scene.contour(params, self.choice)[0]  # [1,17,2]
        a, b = curve[:, self.segment], curve[:, self.segment + 1]
        foot = a + self.t[None, :, None] * (b - a)
        tangent = torch.nn.functional.normalize(b - a, dim=-1)
        # The prediction slides with the target along the segment: the residual is across it only.
        return foot + ((self.points - foot) * tangent).sum(-1, keepdim=True).detach() * tangent


class LandmarkTerm:
    """Prediction and target of the landmark loss for one face (batch 1), in crop pixels.

    ``to_crop``: original pixels -> crop pixels; ``jaw_weight``: the jaw's weight relative to
    the other 68 points (68-point modes); ``visibility``: weigh dense points by their facing;
    ``outline_weight``: in dense mode, the weight of each of the detector's outline points
    (:data:`OUTLINE_POINTS`), matched to the model's outline curve (0: not used).
    """

    def __init__(self, scene: FaceScene, landmarks: LandmarkInput, to_crop, jaw_weight: float = 1.0,
                 visibility: bool = True, outline_weight: float = 0.0):
        self.scene = scene
        device = scene.landmark_rows.mean.device
        self.mode = "dense" if dense_usable(scene, landmarks) else landmarks.convention
        weights = torch.ones(68) if landmarks.weights is None else landmarks.weights.float().clone()
        weights[list(JAW)] *= jaw_weight
        weights = weights.to(device)
        points = to_crop(landmarks.points.to(device))[None]
        if self.mode == "dense":
            base = scene.model.dense_weights
            w = torch.ones(len(landmarks.dense)) if base is None else base.float().cpu().clone()
            if landmarks.dense_weights is not None:
                w = w * landmarks.dense_weights.float().cpu()
            dense = to_crop(landmarks.dense[:, :2].to(device))[None]
            self.parts = [_Dense(dense, w.to(device), visibility)]
            outline = OUTLINE_POINTS.get(scene.model.metadata.get("dense_landmarks", ""), ())
            if outline and outline_weight > 0:
                ow = torch.full((len(outline),), float(outline_weight), device=device)
                if landmarks.dense_weights is not None:
                    ow = ow * landmarks.dense_weights.float().to(device)[list(outline)]
                self.parts.append(_OutlineCurve(dense[:, list(outline)], ow))
        elif self.mode == "3d":
            self.parts = [_Fixed(points, weights, range(68))]
        else:
            self.parts = [_Contour(points[:, :17], weights[:17]), _Fixed(points[:, 17:], weights[17:], range(17, 68))]

    def refresh(self, params: Parameters) -> None:
        """Re-choose the pose-dependent correspondences (contour samples, visibility weights)."""
        with torch.no_grad():
            for part in self.parts:
                part.refresh(self.scene, params)

    def predict(self, params: Parameters) -> torch.Tensor:
        """The model's points matching :meth:`target`'s: ``[1,Q,2]`` crop pixels (differentiable)."""
        return torch.cat([part.predict(self.scene, params) for part in self.parts], 1)

    def target(self) -> dict[str, torch.Tensor]:
        return {"landmarks": torch.cat([p.points for p in self.parts], 1),
                "landmark_weights": torch.cat([p.weights for p in self.parts])[None]}
