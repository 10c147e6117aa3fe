"""Mesh export (written with numpy): PLY and OBJ open in trimesh, an independent reader, with the
right vertices, faces and colours."""

import numpy as np
import pytest
import torch
import trimesh

from morphable import save_mesh


@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_mesh_round_trip(tmp_path, model, suffix):
    v, a = model(albedo=torch.randn(1, model.n_albedo))
    path = tmp_path / f"face{suffix}"
    save_mesh(path, v[0], model.triangles, a[0])
    mesh = trimesh.load(path, process=False)
    assert len(mesh.vertices) == model.num_vertices
    assert len(mesh.faces) == model.num_triangles
    np.testing.assert_allclose(mesh.vertices, v[0].numpy(), atol=1e-4)
    np.testing.assert_array_equal(mesh.faces, model.triangles.numpy())
    expected = np.round(a[0].clamp(0, 1).numpy() * 255)
    np.testing.assert_allclose(mesh.visual.vertex_colors[:, :3], expected, atol=1)
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_mesh_without_colours(tmp_path, model, suffix):
    path = tmp_path / f"face{suffix}"
    save_mesh(path, model.shape_mean, model.triangles)
    mesh = trimesh.load(path, process=False)
    np.testing.assert_allclose(mesh.vertices, model.shape_mean.numpy(), atol=1e-4)
    np.testing.assert_array_equal(mesh.faces, model.triangles.numpy())


def test_unknown_format(tmp_path, model):
    with pytest.raises(ValueError, match="unsupported mesh format '.stl'"):
        save_mesh(tmp_path / "x.stl", model.shape_mean, model.triangles)
    assert not list(tmp_path.iterdir())
