"""The 68 iBUG / 300-W landmarks from MediaPipe's 468-point face mesh.

The correspondence is Peizhi Yan's published MediaPipe -> dlib 68 mapping (``mediapipe2dlib``,
github.com/PeizhiYan/Mediapipe_2_Dlib_Landmarks, ``mp2dlib.py``, 2024): one mesh vertex per
iBUG point, or the mean of two. It is a fixed vertex choice, so it is approximate where iBUG
annotates a 2-D outline rather than a point of the surface: the jaw (0-16) follows vertices on
the cheek/jaw contour of a frontal face and does not slide to the silhouette when the head
turns; brows (17-26) and nose bridge (27-30) are close; eye corners, nose base and mouth are
the best matches.
"""

from __future__ import annotations

import torch

# iBUG index -> one or two mesh vertices (mean of the two).
MESH_TO_IBUG68 = (
    # jaw 0-16
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,), (400,), (379,), (365,),
    (397, 288), (361,), (323,), (454,), (356,),
    # brows 17-26
    (70,), (63,), (105,), (66,), (107,), (336,), (296,), (334,), (293,), (300,),
    # nose 27-35
    (168, 6), (197, 195), (5,), (4,), (75,), (97,), (2,), (326,), (305,),
    # eyes 36-47
    (33,), (160,), (158,), (133,), (153,), (144,), (362,), (385,), (387,), (263,), (373,), (380,),
    # outer lips 48-59
    (61,), (39,), (37,), (0,), (267,), (269,), (291,), (321,), (314,), (17,), (84,), (91,),
    # inner lips 60-67
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),
)
APPROXIMATE = tuple(range(17))  # the jaw: surface vertices standing in for a silhouette


def _pairs() -> torch.Tensor:
    return torch.tensor([pair if len(pair) == 2 else pair * 2 for pair in MESH_TO_IBUG68])


def mesh_to_ibug68(mesh: torch.Tensor) -> torch.Tensor:
    """``[..., 468, D]`` mesh points -> ``[..., 68, D]`` iBUG-order points."""
    pairs = _pairs().to(mesh.device)
    return mesh[..., pairs, :].mean(dim=-2)
