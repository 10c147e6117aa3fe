"""Where a face detector's points lie on the default model, chosen from the detector's output on
renders of the mean face (used by ``build_default_model.py``).

The detector is MediaPipe's face mesh (468 points; Apache-2.0, run by morph's PyTorch port in
``cli.detect.mediapipe``), so the choice is licence-clean. The mean face is rendered by morph's
own renderer over a grid of poses (:data:`YAWS` x :data:`PITCHES`), and the detector runs on
every render. Then:

- **Dense embedding** (:func:`embed`): for each of the 468 points, the surface point whose
  projections best match the detections, over the views where the detection lands on a part of
  the face turned towards the camera (a ray from the detected pixel hits the mesh with
  cos >= :data:`RELIABLE_FACING`): first the best vertex under a truncated quadratic cost, then
  refined to a point inside a nearby triangle (barycentric coordinates) by a least-squares
  triangulation. A point's residual is its reprojection error (mm) in those views.
  Points the detector does not place consistently on the model's surface - those beyond the
  mesh's cut (in front of the ears) and those that slide with the visible outline as the head
  turns (MediaPipe's face oval on the cheeks) - have a median residual above
  :data:`CONSISTENT_MM`; they are still embedded (at their best surface point) but get
  weight 0, so fitting drops them.
- **68 landmarks** (:func:`choose_landmarks`): the inner 51 are the detector's iBUG mapping
  (:mod:`cli.detect.mediapipe.ibug68`) applied to the embedded points, each snapped to the
  nearest vertex, mirror pairs chosen jointly (a vertex and its mirror image), so the 68 are
  symmetric. The jaw (0-16) follows the 300-W convention instead of the detector's mapping:
  17 points equally spaced along the frontal outline (the detector's face oval) from the height
  of the outer eye corners down to the chin and up again (:func:`jaw_targets`), each placed in
  depth on the frontal occluding contour along its contour line (:mod:`cli.fitting.contour`), so that
  the 3-D jaw vertex and the outline convention's contour point coincide on a frontal face.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

import mesh_queries as mq

YAWS = (-60, -45, -30, -15, 0, 15, 30, 45, 60)  # degrees
PITCHES = (-20, 0, 20)
SIZE = 512
RELIABLE_FACING = 0.3  # a detection counts in a view when the surface it lands on faces the camera this much
TRUNCATE_MM = 8.0  # the vertex search's cost: squared reprojection error, truncated here
CONSISTENT_MM = 5.0  # median residual above this: the point gets weight 0
REFINE_RADIUS_MM = 4.0
CONTOUR_REACH_MM = 6.0  # a jaw point's occluding contour is looked for this far inside its target  # the refinement looks at triangles touching vertices this near the best vertex
# iBUG 68 mirror pairs (subject's right <-> left) and the points on the centre line.
IBUG_PAIRS = ([(k, 16 - k) for k in range(8)] + [(17 + k, 26 - k) for k in range(5)] + [(31, 35), (32, 34)]
              + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
              + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)])
IBUG_CENTRE = (8, 27, 28, 29, 30, 33, 51, 57, 62, 66)


@dataclass
class View:
    """One render and what the detector found in it."""

    yaw: float
    pitch: float
    rotation: np.ndarray  # [3,3]
    translation: np.ndarray  # [2]
    scale: float  # pixels per mm
    visible: np.ndarray  # [N] bool: vertices drawn
    mesh: np.ndarray  # [468,3] MediaPipe's points (x, y pixels)
    image: np.ndarray  # [H,W,3] uint8


def camera(vertices: torch.Tensor, size: int, yaw: float, pitch: float = 0.0):
    """The views' camera: (rotation [3,3], translation [2], scale): the face fills ~75 % of the frame."""
    extent = float((vertices.max(0).values - vertices.min(0).values)[:2].max())
    return mq.view_rotation(yaw, pitch), np.array([size / 2, size / 2]), 0.75 * size / extent


def render(vertices: torch.Tensor, triangles: torch.Tensor, albedo: torch.Tensor, size: int = SIZE, yaw: float = 0.0,
           pitch: float = 0.0):
    """Render vertices ``[N,3]`` orthographically, lit from above and the front, on grey.

    Returns (image uint8 [H,W,3], pixels of every vertex [N,2], visible-vertex mask [N]).
    """
    import render as renderer

    r, t, s = camera(vertices, size, yaw, pitch)
    rotation = torch.tensor(r, dtype=torch.float32)[None]
    translation = torch.tensor([[t[0], t[1], 0.0]], dtype=torch.float32)
    scale = torch.tensor([s], dtype=torch.float32)
    cam = renderer.OrthographicCamera((size, size))
    light = torch.zeros(1, 27)
    light[:, [0, 9, 18]] = 0.75
    light[:, [1, 10, 19]] = 0.25  # from above
    light[:, [2, 11, 20]] = 0.35  # from the front
    out = renderer.Renderer(triangles)(vertices[None], albedo[None], light, cam, rotation, translation, scale)
    image = out.image + (1 - out.mask) * 0.35
    pixels = cam.project(vertices[None], rotation, translation, scale)[0]
    drawn = out.rast[0, ..., 3].flatten().long()  # a vertex is visible when a triangle using it is drawn
    visible = torch.zeros(len(vertices), dtype=torch.bool)
    visible[triangles.long()[drawn[drawn > 0] - 1].flatten()] = True
    img = (image[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return img, pixels, visible


@functools.cache
def _detector():
    from cli.detect import REFINE
    from cli.detect.mediapipe import MediaPipeDetector

    # float64: float32 convolutions round differently on AVX2 and AVX-512 CPUs, which moved the
    # points by up to 0.02 px and changed the embedding's bytes from one machine to the next.
    return MediaPipeDetector(refine=REFINE, dtype=torch.float64)


def detect(image: np.ndarray) -> np.ndarray:
    """MediaPipe's 468 points ``[468,3]`` (morph's pixel convention) of the one face in a render."""
    faces = _detector().detect(torch.from_numpy(image).permute(2, 0, 1).double() / 255)[0]
    if len(faces) != 1:
        raise RuntimeError(f"MediaPipe found {len(faces)} faces on a render, expected 1")
    return faces[0].dense.double().numpy()


def ibug68(mesh: np.ndarray) -> np.ndarray:
    from cli.detect.mediapipe.ibug68 import mesh_to_ibug68

    return mesh_to_ibug68(torch.from_numpy(mesh[:, :2])).numpy()


def views(vertices: torch.Tensor, triangles: torch.Tensor, albedo: torch.Tensor, poses=None) -> list[View]:
    """Render ``poses`` ((yaw, pitch) in degrees; default the grid YAWS x PITCHES) and run the detector on each."""
    out = []
    for yaw, pitch in poses or [(y, p) for y in YAWS for p in PITCHES]:
        image, _, visible = render(vertices, triangles, albedo, SIZE, math.radians(yaw), math.radians(pitch))
        r, t, s = camera(vertices, SIZE, math.radians(yaw), math.radians(pitch))
        out.append(View(yaw, pitch, r, t, s, visible.numpy(), detect(image), image))
    return out


# -- choosing surface points -----------------------------------------------------------------
def reliable(views_: list[View], points: list[np.ndarray], vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """``[V,Q]``: the detection ``points[v] [Q,2]`` lands on the mesh where it faces the camera."""
    rows = []
    for view, p in zip(views_, points):
        tri, _, facing = mq.cast_rays(p, vertices, triangles, view.rotation, view.translation, view.scale)
        rows.append((tri >= 0) & (facing >= RELIABLE_FACING))
    return np.stack(rows)


def vertex_costs(views_: list[View], points: list[np.ndarray], use: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """``[Q,N]``: per point, the truncated squared reprojection error (mm²) of every vertex summed over the views
    where ``use [V,Q]``; a vertex hidden in a view costs the truncation there."""
    cost = np.zeros((use.shape[1], len(vertices)))
    for k, (view, p) in enumerate(zip(views_, points)):
        px = mq.project(vertices, view.rotation, view.translation, view.scale)
        d2 = ((p[:, None] - px[None]) ** 2).sum(-1) / view.scale**2
        c = np.minimum(d2, TRUNCATE_MM**2)
        c[:, ~view.visible] = TRUNCATE_MM**2
        cost += use[k][:, None] * c
    return cost


def refine(views_: list[View], points: list[np.ndarray], use: np.ndarray, best: np.ndarray, vertices: np.ndarray,
           triangles: np.ndarray):
    """The best vertices moved inside nearby triangles: (triangle [Q], barycentrics [Q,3]).

    A least-squares triangulation over the views in ``use`` (where the vertex is visible), then
    the nearest point on the triangles touching vertices within REFINE_RADIUS_MM of the best one;
    the vertex itself is kept where that does not lower the cost.
    """
    a = np.stack([np.stack([v.scale * v.rotation[0], -v.scale * v.rotation[1]]) for v in views_])  # [V,2,3]
    t = np.stack([v.translation for v in views_])
    x = np.stack(points)  # [V,Q,2]
    w = use & np.stack([v.visible[best] for v in views_])  # [V,Q]
    lhs = np.einsum("vq,vij,vik->qjk", w, a, a) + 1e-9 * np.eye(3)
    rhs = np.einsum("vq,vij,vqi->qj", w, a, x - t[:, None])
    target = np.linalg.solve(lhs, rhs[..., None])[..., 0]
    corner_of = {}
    for k in range(3):
        for f, vtx in enumerate(triangles[:, k]):
            corner_of.setdefault(int(vtx), []).append(f)
    out_tri = np.zeros(len(best), dtype=np.int64)
    out_bary = np.zeros((len(best), 3))

    def cost(p, q):
        err = [np.linalg.norm(mq.project(p[None], v.rotation, v.translation, v.scale)[0] - points[i][q]) / v.scale
               for i, v in enumerate(views_) if w[i, q]]
        return float(np.sum(np.minimum(np.square(err), TRUNCATE_MM**2)))

    for q, b in enumerate(best):
        near = np.flatnonzero(np.linalg.norm(vertices - vertices[b], axis=1) <= REFINE_RADIUS_MM)
        faces = np.unique(np.concatenate([corner_of.get(int(n), []) for n in near])).astype(np.int64)
        tri, bary, _ = mq.closest_points(target[q:q + 1], vertices, triangles[faces])
        point = (vertices[triangles[faces[tri[0]]]] * bary[0][:, None]).sum(0)
        if w[:, q].any() and cost(point, q) < cost(vertices[b], q):
            out_tri[q], out_bary[q] = faces[tri[0]], bary[0]
        else:  # the vertex itself, as a corner of one of its triangles
            f = corner_of[int(b)][0]
            out_tri[q] = f
            out_bary[q, list(triangles[f]).index(b)] = 1.0
    return out_tri, out_bary


def residuals(views_: list[View], points: list[np.ndarray], use: np.ndarray, embedded: np.ndarray) -> np.ndarray:
    """``[V,Q]`` reprojection error (mm) of ``embedded [Q,3]`` against the detections; NaN where not ``use``."""
    res = np.stack([np.linalg.norm(mq.project(embedded, v.rotation, v.translation, v.scale) - p, axis=1) / v.scale
                    for v, p in zip(views_, points)])
    return np.where(use, res, np.nan)


@dataclass
class Embedding:
    triangles: np.ndarray  # [P] into the mesh's triangles
    barycentrics: np.ndarray  # [P,3]
    weights: np.ndarray  # [P] 1 or 0
    residual: np.ndarray  # [V,P] mm (NaN where the view does not count)

    def report(self, views_: list[View]) -> str:
        good = self.weights > 0
        res = self.residual[:, good]
        lines = [f"{len(self.weights)} points, {int(good.sum())} with weight 1, {int((~good).sum())} with weight 0 "
                 f"(median residual > {CONSISTENT_MM} mm); residuals of the weight-1 points in the views where they "
                 f"count: median {np.nanmedian(res):.2f} mm, mean {np.nanmean(res):.2f} mm, 90th percentile "
                 f"{np.nanpercentile(res, 90):.2f} mm"]
        by_yaw = {}
        for v, row in zip(views_, res):
            by_yaw.setdefault(abs(v.yaw), []).append(row)
        lines.append("by |yaw|: " + ", ".join(f"{y}°: {np.nanmean(np.concatenate(r)):.2f}" for y, r in
                                              sorted(by_yaw.items())) + " mm (mean)")
        return "\n".join(lines)


def embed(views_: list[View], vertices: np.ndarray, triangles: np.ndarray) -> Embedding:
    """The dense embedding of the detector's 468 points (see the module docstring)."""
    points = [v.mesh[:, :2] for v in views_]
    use = reliable(views_, points, vertices, triangles)
    cost = vertex_costs(views_, points, use, vertices)
    best = cost.argmin(1)
    tri, bary = refine(views_, points, use, best, vertices, triangles)
    embedded = (vertices[triangles[tri]] * bary[..., None]).sum(1)
    res = residuals(views_, points, use, embedded)
    median = np.array([np.nanmedian(r) if np.isfinite(r).any() else np.inf for r in res.T])
    return Embedding(tri, bary, (median <= CONSISTENT_MM).astype(np.float64), res)


# -- the 68 landmarks -----------------------------------------------------------------------
def symmetric_choice(cost: np.ndarray, mirror: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """``[68]`` vertices minimising ``cost [68,N]`` with mirror pairs chosen jointly and centre points on the centre line."""
    out = cost.argmin(1)
    for right, left in IBUG_PAIRS:
        v = int(np.argmin(cost[right] + cost[left][mirror]))
        out[right], out[left] = v, mirror[v]
    on_centre = mirror == np.arange(len(mirror))
    if not on_centre.any():
        on_centre = np.abs(vertices[:, 0]) <= np.abs(vertices[:, 0]).min() + 1e-6
    for k in IBUG_CENTRE:
        out[k] = int(np.flatnonzero(on_centre)[np.argmin(cost[k][on_centre])])
    return out


# MediaPipe's face oval from the subject's right ear, under the chin, to the left ear (FACEMESH_FACE_OVAL),
# its eyes' outer corners, and its chin.
OVAL = (127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454,
        356)
OUTER_EYE_CORNERS = (33, 263)


def _resample(polyline: np.ndarray, count: int) -> np.ndarray:
    """``count`` points equally spaced by arc length along ``polyline [M,2]`` (ends included)."""
    seg = np.linalg.norm(np.diff(polyline, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    want = np.linspace(0.0, s[-1], count)
    return np.stack([np.interp(want, s, polyline[:, k]) for k in range(2)], 1)


def jaw_targets(frontal: View) -> np.ndarray:
    """``[17,2]`` model-space (x, y) of the iBUG jaw on the frontal outline: the 300-W convention's
    17 points equally spaced along the face's outline from the height of the outer eye corners down
    to the chin and up again, the outline taken from the detector's face oval (symmetrised)."""
    t, s = frontal.translation, frontal.scale
    xy = (frontal.mesh[:, :2] - t) / s * np.array([1.0, -1.0])
    oval = xy[list(OVAL)]
    oval = 0.5 * (oval + oval[::-1] * np.array([-1.0, 1.0]))  # symmetric
    chin = len(OVAL) // 2
    top = xy[list(OUTER_EYE_CORNERS), 1].mean()
    right = oval[:chin + 1]  # ear -> chin
    # Cut the right half where it crosses the eye-corner height (interpolated), then resample.
    above = np.flatnonzero(right[:, 1] >= top)
    if len(above):
        k = above.max()
        if k + 1 < len(right):
            a, b = right[k], right[k + 1]
            start = a + (top - a[1]) / (b[1] - a[1]) * (b - a)
            right = np.vstack([start, right[k + 1:]])
    half = _resample(right, 9)  # jaw 0..8
    half[8, 0] = 0.0
    return np.vstack([half, half[7::-1] * np.array([-1.0, 1.0])])


def jaw_on_outline(frontal: View, targets: np.ndarray, vertices: np.ndarray, normals: np.ndarray,
                   centre: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """``[17]`` jaw vertices on the frontal outline at ``targets [17,2]`` (model-space x, y, symmetric).

    Along each target's contour line (:mod:`cli.fitting.contour`, running on past the outline), the
    occluding contour of a frontal view nearest the target (the last sample whose normal faces
    the camera before one that does not), within CONTOUR_REACH_MM inside it; where the line has
    none (the chin: the neck continues below it), the line's sample nearest the target.
    The subject's left half mirrors the right.
    """
    from cli.fitting.contour import contour_lines

    jaw = torch.tensor(np.concatenate([targets, np.zeros((17, 1))], 1))
    lines, directions = contour_lines(torch.tensor(vertices), torch.tensor(normals), jaw, torch.tensor(centre))
    out = np.zeros(17, dtype=np.int64)
    for k in range(9):
        line = lines[k].numpy()
        outward = directions[k, 0, :2].double().numpy()
        along = (vertices[line, :2] - targets[k]) @ outward  # < 0: inside the target
        facing = normals[line, 2] > 0
        edge = np.flatnonzero(facing[:-1] & ~facing[1:])  # the last sample facing the camera before it turns
        edge = edge[(along[edge] <= 0.5) & (along[edge] >= -CONTOUR_REACH_MM)]
        if len(edge):
            out[k] = line[edge[np.argmax(along[edge])]]
        else:
            out[k] = line[np.argmin(np.linalg.norm(vertices[line, :2] - targets[k], axis=1))]
    on_centre = np.flatnonzero(mirror == np.arange(len(mirror)))
    out[8] = on_centre[np.argmin(np.linalg.norm(vertices[on_centre] - vertices[out[8]], axis=1))]
    out[9:] = mirror[out[7::-1]]
    return out


def choose_landmarks(views_: list[View], embedding: Embedding, vertices: np.ndarray, normals: np.ndarray,
                     triangles: np.ndarray, mirror: np.ndarray):
    """``[68]`` landmark vertices: the inner 51 from the dense embedding, the jaw on the frontal outline.

    Inner points: the detector's iBUG mapping (:mod:`cli.detect.mediapipe.ibug68`: one mesh point
    or the mean of two) applied to the embedded points, each snapped to the nearest vertex, mirror
    pairs chosen jointly (:func:`symmetric_choice`). Jaw: :func:`jaw_targets` and
    :func:`jaw_on_outline` on the frontal view. Also returns the frontal distances (mm) of the 68
    vertices to the detector's own 68 points.
    """
    from cli.detect.mediapipe.ibug68 import MESH_TO_IBUG68

    embedded = (vertices[triangles[embedding.triangles]] * embedding.barycentrics[..., None]).sum(1)
    points = np.stack([embedded[list(pair)].mean(0) for pair in MESH_TO_IBUG68])
    cost = ((points[:, None] - vertices[None]) ** 2).sum(-1)
    chosen = symmetric_choice(cost, mirror, vertices)
    frontal = next(v for v in views_ if v.yaw == 0 and v.pitch == 0)
    centre = vertices[chosen[27:31]].mean(0)
    chosen[:17] = jaw_on_outline(frontal, jaw_targets(frontal), vertices, normals, centre, mirror)
    px = mq.project(vertices[chosen], frontal.rotation, frontal.translation, frontal.scale)
    error = np.linalg.norm(px - ibug68(frontal.mesh), axis=1) / frontal.scale
    return chosen, error
