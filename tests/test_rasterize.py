"""rasterize / interpolate: agreement with a brute-force reference, exact values, edge cases."""

import numpy as np
import pytest
import torch

import render
from render import torch_raster


def brute_force_ids(pos: np.ndarray, tri: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: for every triangle, every pixel centre; nearest z/w in [-1, 1] wins. Float64."""
    ids = np.zeros((h, w), np.int64)
    best = np.full((h, w), np.inf)
    fy, fx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    for t, (i0, i1, i2) in enumerate(tri):
        p = pos[[i0, i1, i2]]
        if (p[:, 3] <= 0).any():
            continue
        x = (p[:, 0] / p[:, 3] + 1) * w / 2
        y = (p[:, 1] / p[:, 3] + 1) * h / 2
        zw = p[:, 2] / p[:, 3]
        area = (x[1] - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (y[1] - y[0])
        if area == 0:
            continue
        e0 = ((x[1] - fx) * (y[2] - fy) - (x[2] - fx) * (y[1] - fy)) / area
        e1 = ((x[2] - fx) * (y[0] - fy) - (x[0] - fx) * (y[2] - fy)) / area
        e2 = 1 - e0 - e1
        z = e0 * zw[0] + e1 * zw[1] + e2 * zw[2]
        inside = (e0 >= 0) & (e1 >= 0) & (e2 >= 0) & (z >= -1) & (z <= 1) & (z < best)
        best[inside] = z[inside]
        ids[inside] = t + 1
    return ids, best


def random_scene(seed, n_tri=300, behind=False):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n_tri, 1, 3, generator=g) * 2.4 - 1.2
    xyz = (centres + 0.25 * torch.randn(n_tri, 3, 3, generator=g)).reshape(-1, 3)
    w = 1.0 + 0.5 * torch.rand(n_tri * 3, 1, generator=g)
    if behind:
        w[::7] = -0.3
    pos = torch.cat([xyz * w, w], 1)[None]
    tri = torch.arange(n_tri * 3, dtype=torch.int32).reshape(n_tri, 3)
    return pos, tri


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_triangle_ids_match_brute_force(seed, size):
    pos, tri = random_scene(seed, behind=seed == 3)
    rast, _ = render.rasterize(pos, tri, size)
    ids, _ = brute_force_ids(pos[0].double().numpy(), tri.numpy(), *size)
    agree = (rast[0, ..., 3].numpy() == ids).mean()
    assert agree >= 0.999, agree
    assert (ids > 0).mean() > 0.3  # the scene covers a good part of the image


def test_barycentrics_and_depth_are_exact_for_one_triangle():
    # A perspective triangle: clip-space vertices with different w.
    pos = torch.tensor([[[-0.8, -0.9, 0.1, 1.0], [1.6, -1.2, 0.4, 2.0], [0.0, 1.5, -0.6, 1.5]]])
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    h, w = 20, 30
    rast, db = render.rasterize(pos, tri, (h, w))
    assert db.numel() == 0
    i, j = 5, 17  # bottom-up row, column
    fx, fy = (j + 0.5) / w * 2 - 1, (i + 0.5) / h * 2 - 1
    # Solve for perspective-correct barycentrics: [x, y, w] of the pixel ray.
    m = pos[0].double().numpy()
    a = np.stack([m[:, 0] - fx * m[:, 3], m[:, 1] - fy * m[:, 3]])  # 2x3; a @ b = 0, sum(b) = 1
    b = np.linalg.solve(np.vstack([a, np.ones(3)]), [0, 0, 1])
    assert rast[0, i, j, 3] == 1
    np.testing.assert_allclose(rast[0, i, j, :2].numpy(), b[:2], atol=1e-5)
    np.testing.assert_allclose(rast[0, i, j, 2].item(), (b @ m[:, 2]) / (b @ m[:, 3]), atol=1e-5)
    # Vertex conventions: a pixel near vertex 0 has u near 1.
    u = rast[0, ..., 0][rast[0, ..., 3] > 0]
    assert u.max() > 0.85 and u.min() >= 0


def test_interpolate_matches_hand_computation():
    pos = torch.tensor([[[-1.0, -1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0], [-1.0, 1.0, 0.0, 1.0]]])
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    rast, _ = render.rasterize(pos, tri, (4, 4))
    attr = torch.tensor([[[1.0, 10.0], [2.0, 20.0], [4.0, 40.0]]])
    out, _ = render.interpolate(attr, rast, tri)
    # Pixel (row 0, col 0) centre at NDC (-0.75, -0.75): u = 0.75, v = 0.125, w2 = 0.125.
    assert torch.allclose(rast[0, 0, 0, :2], torch.tensor([0.75, 0.125]))
    assert torch.allclose(out[0, 0, 0], torch.tensor([0.75 * 1 + 0.125 * 2 + 0.125 * 4, 15.0]))
    # Centres with x + y <= 0 in NDC are inside (the diagonal ones lie exactly on the edge).
    covered = rast[0, ..., 3] > 0
    assert covered.sum() == 10  # the lower-left half of a 4x4 grid, diagonal included
    assert (out[0][~covered] == 0).all()
    # [V,C] attributes broadcast over the batch.
    out2, _ = render.interpolate(attr[0], rast, tri)
    assert torch.equal(out, out2)


def test_empty_and_degenerate_and_offscreen():
    tri = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]], dtype=torch.int32)
    pos = torch.tensor([[
        [0.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0],   # degenerate (a line)
        [3.0, 3.0, 0.0, 1.0], [4.0, 3.0, 0.0, 1.0], [3.0, 4.0, 0.0, 1.0],   # off-screen
        [-0.5, -0.5, 2.0, 1.0], [0.5, -0.5, 2.0, 1.0], [0.0, 0.5, 2.0, 1.0],  # beyond the far plane
    ]])
    rast, _ = render.rasterize(pos, tri, (16, 16))
    assert rast.abs().sum() == 0
    rast, _ = render.rasterize(pos[:, :0], tri[:0], (8, 8))
    assert rast.shape == (1, 8, 8, 4) and rast.abs().sum() == 0


def test_triangle_behind_camera_is_not_drawn():
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    pos = torch.tensor([[
        [-0.5, -0.5, 0.0, -1.0], [0.5, -0.5, 0.0, -1.0], [0.0, 0.5, 0.0, -1.0],  # all w < 0
        [-0.5, -0.5, 0.0, 1.0], [0.5, -0.5, 0.0, 1.0], [0.0, 0.5, 0.0, -1.0],  # straddles w = 0
    ]])
    rast, _ = render.rasterize(pos, tri, (16, 16))
    assert rast.abs().sum() == 0


def test_near_plane_clips_per_pixel():
    # z/w runs from -1.5 (left, in front of the near plane) to 0.5 (right): only the right part is drawn.
    pos = torch.tensor([[[-1.0, -1.0, -1.5, 1.0], [1.0, -1.0, 0.5, 1.0], [-1.0, 1.0, -1.5, 1.0],
                         [1.0, 1.0, 0.5, 1.0]]])
    tri = torch.tensor([[0, 1, 2], [2, 1, 3]], dtype=torch.int32)
    rast, _ = render.rasterize(pos, tri, (8, 16))
    drawn = rast[0, 4, :, 3] > 0
    # z/w = -1.5 + 2 * (x + 0.5) / 16 >= -1  <=>  x >= 3.5
    assert drawn.tolist() == [False] * 4 + [True] * 12
    assert (rast[0, ..., 2][rast[0, ..., 3] > 0] >= -1).all()


def test_nearest_wins_and_batches_are_independent():
    quad = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    near = torch.cat([quad, torch.full((3, 1), -0.5), torch.ones(3, 1)], 1)
    far = torch.cat([quad, torch.full((3, 1), 0.5), torch.ones(3, 1)], 1)
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    pos = torch.stack([torch.cat([far, near]), torch.cat([near, far])])
    rast, _ = render.rasterize(pos, tri, (8, 8))
    covered = rast[..., 3] > 0
    assert (rast[0, ..., 3][covered[0]] == 2).all()  # the second triangle is nearer in image 0
    assert (rast[1, ..., 3][covered[1]] == 1).all()  # the first in image 1
    single, _ = render.rasterize(pos[1:], tri, (8, 8))
    assert torch.equal(single[0], rast[1])


def test_chunking_and_tiling_do_not_change_the_result(monkeypatch):
    pos, tri = random_scene(7, n_tri=400)
    pos = pos * torch.tensor([0.3, 0.3, 1.0, 1.0])  # many small triangles, a few large ones
    full, _ = render.rasterize(pos, tri, (96, 96))
    monkeypatch.setattr(torch_raster, "MAX_CANDIDATES", 50)
    chunked, _ = render.rasterize(pos, tri, (96, 96))
    assert torch.equal(full, chunked)
    monkeypatch.setattr(torch_raster, "TILE_SIDES", ())  # every triangle through repeat_interleave
    untiled, _ = render.rasterize(pos, tri, (96, 96))
    assert torch.equal(full, untiled)


def test_bad_inputs():
    pos, tri = random_scene(0, n_tri=2)
    with pytest.raises(ValueError, match=r"\[B,V,4\]"):
        render.rasterize(pos[0], tri, (8, 8))
    with pytest.raises(ValueError, match="int32"):
        render.rasterize(pos, tri.float(), (8, 8))
    with pytest.raises(ValueError, match="unknown backend"):
        render.rasterize(pos, tri, (8, 8), backend="opengl")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_nvdiffrast_on_cpu_is_a_clear_error():
    pos, tri = random_scene(0, n_tri=2)
    with pytest.raises(render.BackendUnavailable, match="nvdiffrast"):
        render.rasterize(pos, tri, (8, 8), backend="nvdiffrast")
    assert render.resolve_backend(None, torch.device("cpu")) == "torch"
