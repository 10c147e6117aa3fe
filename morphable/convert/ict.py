"""ICT-FaceKit (ICT Face Model Light, MIT licence): a folder of OBJ files.

Files (the ``FaceXModel`` folder as distributed): ``generic_neutral_mesh.obj`` (26,719
vertices in centimetres, quads, per-corner UVs), ``identity000.obj`` ... (100 identity morph
targets: full meshes; identity = target - neutral, weights ~N(0, 1) as ICT's sampler draws
them), one OBJ per expression named in ``vertex_indices.json`` (``expressions``: 53
ARKit-style blendshapes, weights in [0, 1]) and the 68 landmark vertices
(``idx_to_landmark_verts``, 0-based, iBUG order).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .common import BLENDSHAPE_SCALE, ConvertError, Parts, finish
from .readers import read_landmark_mapping, read_obj, read_obj_vertices

LICENCE = "MIT (ICT-FaceKit, USC Institute for Creative Technologies)"
# Vertex ranges of the geometries (README "Face Model Topology"): the face, then head and neck.
REGIONS = {"face": 9409, "head": 11248, "full": None}


def convert_ict(source, *, region: str = "head", landmarks=None, expression_scale: float = BLENDSHAPE_SCALE,
                **options):
    """Convert an ICT-FaceKit ``FaceXModel`` folder; returns a :class:`MorphableModel`.

    Args:
        source: the folder (or its ``generic_neutral_mesh.obj``).
        region: ``"face"`` (geometry #0, 9,409 vertices), ``"head"`` (face + head and neck,
            11,248) or ``"full"`` (all 26,719: sockets, teeth, eyeballs, lashes).
        landmarks: a 68-point mapping file; default ``vertex_indices.json``.
        expression_scale: blendshapes are multiplied by this (0.25: a coefficient of 4 is one
            full blendshape, like the default model's ARKit units).
        options: passed to :func:`finish`.
    """
    path = Path(source)
    folder = path if path.is_dir() else path.parent
    if region not in REGIONS:
        raise ConvertError(path, f"region {region!r}: use one of {', '.join(REGIONS)}")
    neutral_path = folder / "generic_neutral_mesh.obj"
    config_path = folder / "vertex_indices.json"
    for p in (neutral_path, config_path):
        if not p.is_file():
            raise ConvertError(folder, f"has no {p.name} (not an ICT-FaceKit FaceXModel folder?)")
    try:
        config = json.loads(config_path.read_text())
        names = [str(x) for x in config["expressions"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConvertError(config_path, f"has no list of expressions ({type(exc).__name__})") from None
    vertices, uv, triangles, uv_triangles = read_obj(neutral_path)
    n_all = len(vertices)
    n = REGIONS[region] or n_all
    if n > n_all:
        raise ConvertError(neutral_path, f"{n_all} vertices, fewer than the {region} region's {n}")
    keep_tris = (triangles < n).all(1)
    triangles = triangles[keep_tris]
    if uv_triangles is None:
        uv = None
    else:
        uv_triangles = uv_triangles[keep_tris]

    def deltas(files: list[Path], scale: float) -> np.ndarray:
        out = np.empty((n, 3, len(files)), dtype=np.float32)
        for k, f in enumerate(files):
            target = read_obj_vertices(f)
            if len(target) != n_all:
                raise ConvertError(f, f"{len(target)} vertices, the neutral mesh has {n_all}")
            out[:, :, k] = (target[:n] - vertices[:n]) * scale
        return out

    identity_files = []
    while (folder / f"identity{len(identity_files):03d}.obj").is_file():
        identity_files.append(folder / f"identity{len(identity_files):03d}.obj")
    if not identity_files:
        raise ConvertError(folder, "has no identity000.obj")
    missing = [name for name in names if not (folder / f"{name}.obj").is_file()]
    if missing:
        raise ConvertError(folder, f"has no {missing[0]}.obj (named in vertex_indices.json)")
    identity = deltas(identity_files, 1.0)
    expression = deltas([folder / f"{name}.obj" for name in names], expression_scale)

    if landmarks is not None:
        partial, origin = read_landmark_mapping(landmarks, n_all), Path(landmarks).name
    else:
        partial, origin = read_landmark_mapping(config_path, n_all), "vertex_indices.json idx_to_landmark_verts"
    partial = np.where(partial < n, partial, -1)
    notes = [f"identity: {len(identity_files)} morph targets minus the neutral (weights ~N(0, 1))",
             f"expressions: {len(names)} blendshapes x {expression_scale:g} (a coefficient of "
             f"{1 / expression_scale:g} is one full blendshape), names kept",
             f"region: {region} ({n} of {n_all} vertices)" + ("; dropped: eyeballs, teeth, sockets, lashes"
                                                             if region != "full" else ""),
             "uv: per-corner texture coordinates of generic_neutral_mesh.obj"]
    parts = Parts(vertices=vertices[:n], triangles=triangles, identity=identity, units_to_mm=10.0,
                  name=f"ict-facekit-{region}", source=f"ICT-FaceKit FaceXModel ({folder.name})", licence=LICENCE,
                  landmarks=partial, landmark_source=origin, expression=expression, expression_names=names,
                  uv=uv, uv_triangles=uv_triangles, notes=notes)
    return finish(parts, neutral_path, **options)
