"""Gradients: finite differences for barycentrics (interior) and antialias (silhouettes)."""

import math

import pytest
import torch

import render


def _scene64(seed=0):
    """Two overlapping-free perspective triangles and a fixed random pixel weighting, float64."""
    pos = torch.tensor([[[-0.7131, -0.6077, 0.1, 1.0], [0.5093, -0.8211, 0.2, 1.3], [-0.2237, 0.7119, -0.1, 0.9],
                         [0.6143, 0.1057, 0.3, 1.1], [0.9013, 0.9371, 0.2, 1.2], [0.3177, 0.8133, 0.1, 1.0]]],
                       dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(1, 6, 3, generator=g, dtype=torch.float64)
    weights = torch.rand(1, 24, 24, 3, generator=g, dtype=torch.float64)
    return pos, tri, colours, weights


def test_interior_gradients_match_finite_differences():
    pos, tri, colours, weights = _scene64()

    def loss(p, c):
        rast, _ = render.rasterize(p, tri, (24, 24))
        img, _ = render.interpolate(c, rast, tri)
        return (img * weights).sum()

    assert torch.autograd.gradcheck(loss, (pos.requires_grad_(), colours.requires_grad_()), eps=1e-6, atol=1e-5)


def test_rasterize_gradients_reach_x_y_w_but_not_z():
    pos, tri, colours, weights = _scene64()
    pos.requires_grad_()
    rast, _ = render.rasterize(pos, tri, (24, 24))
    (rast[..., :3] * weights).sum().backward()
    assert pos.grad[..., [0, 1, 3]].abs().sum() > 0
    assert pos.grad[..., 2].abs().sum() == 0  # z/w carries no gradient, as in nvdiffrast


def test_antialias_gradients_match_finite_differences():
    pos, tri, colours, weights = _scene64(1)
    topology = render.construct_topology_hash(tri)

    def loss(p, c):
        rast, _ = render.rasterize(p, tri, (24, 24))
        img, _ = render.interpolate(c, rast, tri)
        return (render.antialias(img, rast, p, tri, topology) * weights).sum()

    assert torch.autograd.gradcheck(loss, (pos.requires_grad_(), colours.requires_grad_()), eps=1e-6, atol=1e-5)


def _square(half: float, offset=(0.0, 0.0)):
    x0, y0 = offset
    xy = torch.tensor([[-half, -half], [half, -half], [-half, half], [half, half]], dtype=torch.float64)
    xy = xy + torch.tensor([x0, y0], dtype=torch.float64)
    pos = torch.cat([xy, torch.zeros(4, 1, dtype=torch.float64), torch.ones(4, 1, dtype=torch.float64)], 1)
    return pos[None], torch.tensor([[0, 1, 2], [2, 1, 3]], dtype=torch.int32)


@pytest.mark.parametrize("half", [0.37, 0.5123])
def test_silhouette_gradient_equals_the_area_derivative(half):
    """Antialiased coverage sums to the area in pixels; its gradient w.r.t. a uniform scale
    must equal d(area)/d(scale) = 2 * area (edges move outwards by the scale).

    At one placement the gradient depends on where the edges fall between pixel centres (over
    sub-pixel offsets it is off by -5 % to -0.6 % for these squares): averaged over 8 placements
    spread across a pixel it is off by -1.8 % (half 0.37) and -1.7 % (0.5123), in float64, so
    the same on any CPU; the bound is 3 %. A gradient that missed one of the four edges would be
    25 % off."""
    res = 64
    pixel = 2.0 / res  # clip-space width of a pixel
    gradients = []
    for k in range(8):
        pos, tri = _square(half, offset=(0.013 + pixel * k / 8, -0.021 + pixel * ((3 * k) % 8) / 8))
        scale = torch.ones((), dtype=torch.float64, requires_grad=True)
        p = torch.cat([pos[..., :2] * scale, pos[..., 2:]], -1)
        rast, _ = render.rasterize(p, tri, (res, res))
        ones, _ = render.interpolate(torch.ones(1, 4, 1, dtype=torch.float64), rast, tri)
        coverage = render.antialias(ones, rast, p, tri).sum()
        coverage.backward()
        area_px = (2 * half * res / 2) ** 2
        assert abs(coverage.item() - area_px) < 0.02 * area_px
        gradients.append(scale.grad.item())
    assert sum(gradients) / len(gradients) == pytest.approx(2 * area_px, rel=0.03)


def test_silhouette_gradient_for_translation_cancels_and_needs_antialias():
    res = 48
    pos, tri = _square(0.4, offset=(0.011, 0.017))
    pos.requires_grad_()
    rast, _ = render.rasterize(pos, tri, (res, res))
    ones, _ = render.interpolate(torch.ones(1, 4, 1, dtype=torch.float64), rast, tri)
    # Moving the whole square keeps its area: the x-gradients of all vertices sum to ~0,
    # while moving only the right edge grows the area by its length per unit.
    render.antialias(ones, rast, pos, tri).sum().backward()
    gx = pos.grad[0, :, 0]
    edge_len_px = 0.8 * res / 2
    # (nvdiffrast only tests the nearer triangle's own edges, so near a corner where the
    # diagonal meets the outline a row can go without antialiasing: allow two rows.)
    assert abs(gx.sum().item()) * (2 / res) < 2
    assert (gx[1] + gx[3]).item() * (2 / res) == pytest.approx(edge_len_px, rel=0.05)
    # Without antialias there is no silhouette gradient at all.
    pos.grad = None
    rast, _ = render.rasterize(pos, tri, (res, res))
    ones, _ = render.interpolate(torch.ones(1, 4, 1, dtype=torch.float64), rast, tri)
    ones.sum().backward()
    assert pos.grad is None or pos.grad.abs().sum() == 0


def test_pos_gradient_boost_scales_only_position_gradients():
    pos, tri, colours, weights = _scene64(2)
    grads = []
    for boost in (1.0, 3.0):
        p = pos.clone().requires_grad_()
        c = colours.clone().requires_grad_()
        rast, _ = render.rasterize(p.detach(), tri, (24, 24))
        img, _ = render.interpolate(c, rast, tri)
        (render.antialias(img, rast, p, tri, pos_gradient_boost=boost) * weights).sum().backward()
        grads.append((p.grad, c.grad))
    torch.testing.assert_close(grads[1][0], 3.0 * grads[0][0])
    torch.testing.assert_close(grads[1][1], grads[0][1])


def test_topology_hash_finds_opposite_vertices():
    tri = torch.tensor([[0, 1, 2], [2, 1, 3], [3, 1, 4]], dtype=torch.int32)
    opp = render.construct_topology_hash(tri)
    # Edge 0 of triangle 0 is (1, 2), shared with triangle 1 whose third vertex is 3.
    assert opp[0].tolist() == [3, -1, -1]
    assert opp[1].tolist() == [4, -1, 0]
    assert opp[2].tolist() == [-1, -1, 2]


def test_renderer_image_loss_gradients_match_finite_differences():
    """End to end: camera, normals, SH shading, rasterise, interpolate, antialias, float64."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from synthetic import ellipsoid

    vertices, tri = ellipsoid(6, 8, (0.6, 0.7, 0.5))
    vertices = vertices.double()[None]
    renderer = render.Renderer(tri)
    camera = render.OrthographicCamera((20, 20))
    angle = 0.3
    rotation = torch.tensor([[[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]]],
                            dtype=torch.float64)
    light = torch.zeros(1, 27, dtype=torch.float64)
    light[:, [0, 9, 18]] = 0.9
    light[:, [2, 11, 20]] = 0.3
    g = torch.Generator().manual_seed(0)
    albedo = torch.rand(1, vertices.shape[1], 3, generator=g, dtype=torch.float64)
    target = torch.rand(1, 3, 20, 20, generator=g, dtype=torch.float64)

    def loss(v, a):
        out = renderer(v, a, light, camera, rotation, torch.tensor([[10.0, 10.0, 0.0]], dtype=torch.float64),
                       torch.tensor([12.0], dtype=torch.float64))
        return ((out.image - target) ** 2).sum()

    assert torch.autograd.gradcheck(loss, (vertices.requires_grad_(), albedo.requires_grad_()), eps=1e-6, atol=1e-4)
