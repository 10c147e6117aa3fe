"""Mesh export: OBJ and PLY with per-vertex colours, through trimesh, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import trimesh

from .atomic import atomic_path

MESH_FORMATS = (".ply", ".obj")


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def to_trimesh(vertices, triangles, colours=None) -> trimesh.Trimesh:
    """A ``trimesh.Trimesh`` from vertices ``[N,3]``, triangles ``[F,3]`` and colours ``[N,3]`` in [0, 1]."""
    vertices = _as_numpy(vertices).astype(np.float64)
    triangles = _as_numpy(triangles).astype(np.int64)
    vertex_colors = None
    if colours is not None:
        rgb = np.clip(_as_numpy(colours).astype(np.float64), 0.0, 1.0)
        rgb8 = np.round(rgb * 255.0).astype(np.uint8)
        vertex_colors = np.concatenate([rgb8, np.full((len(rgb8), 1), 255, np.uint8)], axis=1)
    # process=False keeps vertex order and count (landmark indices stay valid).
    return trimesh.Trimesh(vertices, triangles, vertex_colors=vertex_colors, process=False)


def save_mesh(path: str | os.PathLike, vertices, triangles, colours=None) -> None:
    """Write a mesh as ``.ply`` (binary) or ``.obj`` (``v x y z r g b``), atomically.

    Args:
        vertices: ``[N,3]`` positions (tensor or array).
        triangles: ``[F,3]`` vertex indices, counter-clockwise seen from outside.
        colours: optional ``[N,3]`` per-vertex colours in [0, 1], stored as 8-bit.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise ValueError(f"{path}: unsupported mesh format '{suffix}' (use {' or '.join(MESH_FORMATS)})")
    data = to_trimesh(vertices, triangles, colours).export(file_type=suffix[1:])
    if isinstance(data, str):
        data = data.encode()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
