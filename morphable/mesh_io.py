"""Mesh export: OBJ and PLY with per-vertex colours through trimesh; textured OBJ (+ MTL) and
binary glTF; all written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import trimesh

from .atomic import atomic_path

MESH_FORMATS = (".ply", ".obj")
TEXTURED_FORMATS = (".obj", ".glb")


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


def _write(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


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
    _write(path, to_trimesh(vertices, triangles, colours).export(file_type=suffix[1:]))


def split_seams(triangles, uv_triangles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One vertex per distinct (vertex, UV) pair, as formats with per-vertex UVs need (glTF, WebGL).

    Args:
        triangles: ``[F,3]`` vertex indices.
        uv_triangles: ``[F,3]`` UV indices per corner (the schema's ``uv_triangles``).

    Returns:
        ``(vertex [M], uv [M], triangles [F,3])``: the source vertex and UV of each new vertex,
        and the triangles over the new vertices. Vertices off any seam appear once.
    """
    triangles, uv_triangles = _as_numpy(triangles).astype(np.int64), _as_numpy(uv_triangles).astype(np.int64)
    stride = int(uv_triangles.max()) + 1 if uv_triangles.size else 1
    keys, inverse = np.unique(triangles.reshape(-1) * stride + uv_triangles.reshape(-1), return_inverse=True)
    return keys // stride, keys % stride, inverse.reshape(-1, 3)


def _obj_text(vertices: np.ndarray, triangles: np.ndarray, uv: np.ndarray, uv_triangles: np.ndarray,
              material_file: str, material: str) -> str:
    corners = np.stack([triangles + 1, uv_triangles + 1], -1).reshape(-1)
    # One format string per block: formatting runs in C, not a Python loop over lines.
    return (f"# morph: vertices in the model's units; vt per triangle corner (v up)\nmtllib {material_file}\n"
            + ("v %.6f %.6f %.6f\n" * len(vertices)) % tuple(vertices.reshape(-1).tolist())
            + ("vt %.6f %.6f\n" * len(uv)) % tuple(uv.reshape(-1).tolist())
            + f"usemtl {material}\n"
            + ("f %d/%d %d/%d %d/%d\n" * len(triangles)) % tuple(corners.tolist()))


def save_textured_mesh(path: str | os.PathLike, vertices, triangles, uv, uv_triangles=None, texture=None,
                       texture_file: str = "texture.png", normals=None, scale: float = 1.0) -> None:
    """Write a textured mesh, atomically.

    ``.obj``: the OBJ (``v``, ``vt`` per triangle corner, ``f v/vt``; vertex order and count
    kept, so landmark indices stay valid; written here because trimesh's OBJ writer takes one
    UV per vertex) and an ``.mtl`` beside it whose ``map_Kd`` names ``texture_file`` (written
    by the caller, beside it). ``.glb``: binary glTF with the
    ``texture`` embedded (an image object trimesh accepts, e.g. a ``PIL.Image``); glTF stores
    one UV per vertex, so vertices on UV seams are split (:func:`split_seams`).

    Args:
        vertices: ``[N,3]``; ``triangles``: ``[F,3]``, counter-clockwise seen from outside.
        uv: ``[U,2]`` texture coordinates (v up); ``uv_triangles``: ``[F,3]`` per-corner rows of
            ``uv`` (None: ``uv`` is per vertex).
        normals: optional ``[N,3]`` vertex normals for the GLB (else trimesh computes them on the
            split mesh, which shows the seams in the shading).
        scale: multiplies the positions (e.g. 0.001 for millimetres -> glTF's metres).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TEXTURED_FORMATS:
        raise ValueError(f"{path}: unsupported textured mesh format '{suffix}' (use {' or '.join(TEXTURED_FORMATS)})")
    vertices = _as_numpy(vertices).astype(np.float64) * scale
    triangles = _as_numpy(triangles).astype(np.int64)
    uv = _as_numpy(uv).astype(np.float64)
    uv_triangles = triangles if uv_triangles is None else _as_numpy(uv_triangles).astype(np.int64)
    if suffix == ".obj":
        mtl = path.with_suffix(".mtl")
        _write(mtl, "# morph\nnewmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\n"
                    f"map_Kd {texture_file}\n")
        _write(path, _obj_text(vertices, triangles, uv, uv_triangles, mtl.name, "face"))
        return
    if texture is None:
        raise ValueError(f"{path}: a .glb needs the texture image")
    vertex, uv_index, split = split_seams(triangles, uv_triangles)
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=texture, metallicFactor=0.0,
                                                   roughnessFactor=1.0)
    visual = trimesh.visual.TextureVisuals(uv=uv[uv_index], material=material)
    mesh = trimesh.Trimesh(vertices[vertex], split, visual=visual, process=False)
    if normals is not None:
        mesh.vertex_normals = _as_numpy(normals).astype(np.float64)[vertex]
    _write(path, mesh.export(file_type="glb", include_normals=normals is not None))
