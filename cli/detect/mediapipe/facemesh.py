"""MediaPipe's face mesh network: 468 points in a rotated square ROI derived from a detection.

From MediaPipe's ``face_detection_front_detection_to_roi.pbtxt`` and ``face_landmark_cpu.pbtxt``:
the ROI is the detection box's centre, rotated so that the line from keypoint 0 to keypoint 1
(the eyes) is horizontal (DetectionsToRectsCalculator: ``angle = 0 - atan2(-(y1 - y0), x1 - x0)``),
its longer side in pixels times 1.5, square (RectTransformationCalculator, ``square_long``).
The crop is 192x192, values in [0, 1], replicated border. The network gives 468 (x, y, z) in
crop pixels and a face-presence logit (sigmoid; MediaPipe drops the face below 0.5). Points
map back with LandmarkProjectionCalculator's rule (:func:`.warp.crop_to_image`); z is scaled
like x: ``z / 192 * side``, in image pixels (negative towards the camera).
"""

from __future__ import annotations

import math

import torch

from . import warp
from .weights import load_network

SIZE = 192
ROI_SCALE = 1.5
POINTS = 468


def roi_from_detection(boxes: torch.Tensor, keypoints: torch.Tensor):
    """(center [N,2], side [N], angle [N]) from boxes ``[N,4]`` and keypoints ``[N,6,2]`` (OpenCV pixels)."""
    center = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = (boxes[:, 2:] - boxes[:, :2]).amax(-1) * ROI_SCALE
    delta = keypoints[:, 1] - keypoints[:, 0]
    angle = -torch.atan2(-delta[:, 1], delta[:, 0])
    angle = angle - 2 * math.pi * torch.floor((angle + math.pi) / (2 * math.pi))  # to [-pi, pi)
    return center, side, angle


class FaceMesh:
    """The 468-point face landmark model on a device."""

    def __init__(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.net = load_network("face_landmark", self.device, dtype)

    @torch.no_grad()
    def raw(self, crops: torch.Tensor):
        """Crops ``[N,3,192,192]`` in [0, 1] -> (points [N,468,3] in crop pixels, presence [N] in [0, 1])."""
        mesh, flag = self.net(crops)
        return mesh.reshape(-1, POINTS, 3), torch.sigmoid(flag.reshape(-1))

    @torch.no_grad()
    def landmarks(self, images: torch.Tensor, index: torch.Tensor, center: torch.Tensor, side: torch.Tensor,
                  angle: torch.Tensor, batch: int = 64):
        """Mesh points ``[N,468,3]`` (x, y in OpenCV pixels of the image, z scaled like x) and presence ``[N]``."""
        points, presence = [], []
        for start in range(0, len(index), batch):
            part = slice(start, start + batch)
            c, s, a = center[part], side[part], angle[part]
            crops = warp.crop(images, index[part], c, s, a, SIZE, "replicate")
            raw, p = self.raw(crops.to(self.device))
            c, s, a = c.to(self.device), s.to(self.device), a.to(self.device)
            xy = warp.crop_to_image(raw[..., :2] / SIZE, c, s, a)
            points.append(torch.cat([xy, raw[..., 2:] / SIZE * s[:, None, None]], dim=-1))
            presence.append(p)
        if not points:
            return images.new_zeros(0, POINTS, 3, device=self.device), images.new_zeros(0, device=self.device)
        return torch.cat(points), torch.cat(presence)
