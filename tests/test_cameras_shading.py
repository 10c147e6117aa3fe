"""Cameras agree with the rasteriser; SH shading constants; vertex normals; the Renderer."""

import math

import pytest
import torch
from scipy.spatial import ConvexHull

import render
from synthetic import ellipsoid


def _rotation(yaw: float, pitch: float = 0.0) -> torch.Tensor:
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = torch.tensor([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return (rx @ ry)[None].float()


CAMERAS = {
    "orthographic": (render.OrthographicCamera((120, 160)), torch.tensor([[83.3, 57.9, 0.0]]), torch.tensor([0.55])),
    "pinhole": (render.PinholeCamera(300.0, (120, 160), principal_point=(77.0, 63.0)),
                torch.tensor([[4.0, -3.0, -400.0]]), None),
}


@pytest.mark.parametrize("name", CAMERAS)
def test_projected_vertices_land_where_the_rasteriser_draws_them(name):
    camera, translation, scale = CAMERAS[name]
    vertices, tri = ellipsoid(16, 24)
    vertices = vertices[None]
    rotation = _rotation(0.4, -0.2)
    clip = camera.to_clip(vertices, rotation, translation, scale)
    pixels = camera.project(vertices, rotation, translation, scale)
    rast, _ = render.rasterize(clip, tri.int(), camera.image_size)
    # Every drawn pixel: the surface point under its centre (from the triangle id and the
    # barycentrics) must project, through the camera, onto that pixel's centre.
    top_down = rast[0].flip(0)
    i, j = (top_down[..., 3] > 0).nonzero().unbind(1)
    assert len(i) > 1000
    u, v, _, ids = top_down[i, j].unbind(-1)
    corners = vertices[0][tri[ids.long() - 1]]  # [P,3,3]
    point = u[:, None] * corners[:, 0] + v[:, None] * corners[:, 1] + (1 - u - v)[:, None] * corners[:, 2]
    projected = camera.project(point[None], rotation, translation, scale)[0]
    centres = torch.stack([j + 0.5, i + 0.5], 1).float()
    assert (projected - centres).abs().max() < 2e-3
    # And the pixel coordinates equal clip space mapped through the documented convention.
    h, w = camera.image_size
    ndc = clip[..., :2] / clip[..., 3:]
    torch.testing.assert_close(pixels[..., 0], (ndc[..., 0] + 1) * w / 2, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(pixels[..., 1], (1 - ndc[..., 1]) * h / 2, atol=1e-3, rtol=1e-5)


def test_orthographic_axes():
    camera = render.OrthographicCamera((100, 100))
    v = torch.tensor([[[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]]])
    px = camera.project(v, torch.eye(3)[None], torch.tensor([[50.0, 50.0, 0.0]]), torch.tensor([2.0]))
    # +x is image right, +y is image up (smaller row).
    assert px[0].tolist() == [[50.0, 50.0], [70.0, 50.0], [50.0, 30.0]]


def test_pinhole_principal_point_and_depth():
    camera = render.PinholeCamera(500.0, (100, 200), principal_point=(90.0, 40.0), near=10.0, far=1000.0)
    v = torch.tensor([[[0.0, 0.0, 0.0], [20.0, 10.0, 0.0]]])
    t = torch.tensor([[0.0, 0.0, -200.0]])
    px = camera.project(v, torch.eye(3)[None], t)
    assert px[0, 0].tolist() == [90.0, 40.0]
    assert px[0, 1].tolist() == pytest.approx([90 + 500 * 20 / 200, 40 - 500 * 10 / 200])
    clip = camera.to_clip(torch.tensor([[[0.0, 0, -10], [0.0, 0, -1000]]]), torch.eye(3)[None], torch.zeros(1, 3))
    zw = clip[0, :, 2] / clip[0, :, 3]
    assert zw.tolist() == pytest.approx([-1.0, 1.0], abs=1e-5)  # near and far planes
    with pytest.raises(ValueError, match="near < far"):
        render.PinholeCamera(500.0, (10, 10), near=0.0)


def _fibonacci_sphere(n: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    r = torch.sqrt(1 - z * z)
    phi = math.pi * (1 + 5**0.5) * i
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], 1)


def test_sh_irradiance_matches_numerical_integration():
    """For radiance in the span of bands 0-2, irradiance = integral of L(w) max(0, n.w) dw exactly."""
    dirs = _fibonacci_sphere(40000)
    d_omega = 4 * math.pi / len(dirs)
    x, y, z = dirs.unbind(1)
    radiance = torch.stack([1.0 + 0.4 * y + 0.3 * x * z, 0.8 + 0.2 * z * z, 0.5 - 0.3 * x + 0.2 * (x * x - y * y)], 1)
    coeffs = (render.sh_basis(dirs).T @ radiance * d_omega).T  # [3, 9] projection
    normals = _fibonacci_sphere(50)
    expected = (torch.clamp(normals @ dirs.T, min=0) @ radiance) * d_omega  # [50, 3]
    got = render.sh_irradiance(normals[None], coeffs.reshape(1, 27))[0]
    torch.testing.assert_close(got, expected, atol=5e-3, rtol=2e-3)


def test_sh_basis_is_orthonormal():
    dirs = _fibonacci_sphere(40000)
    y = render.sh_basis(dirs)
    gram = y.T @ y * (4 * math.pi / len(dirs))
    torch.testing.assert_close(gram, torch.eye(9, dtype=torch.float64), atol=1e-3, rtol=0)


def test_default_ambient_light_is_0_8_of_albedo():
    normals = torch.nn.functional.normalize(torch.randn(1, 20, 3), dim=-1)
    light = torch.zeros(1, 27)
    light[:, [0, 9, 18]] = 0.8 * 2 / math.sqrt(math.pi)
    albedo = torch.rand(1, 20, 3)
    torch.testing.assert_close(render.shade(albedo, normals, light), 0.8 * albedo)


def test_vertex_normals_of_an_ellipsoid_point_outwards():
    vertices, tri = ellipsoid(20, 30, (1.0, 1.0, 1.0))
    n = render.vertex_normals(vertices[None], tri)[0]
    cosine = (n * torch.nn.functional.normalize(vertices, dim=-1)).sum(-1)
    assert cosine.min() > 0.99
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(len(n)))


def test_renderer_outputs_and_orientation():
    vertices, tri = ellipsoid(20, 30, (30.0, 40.0, 25.0))
    # Move the top half of the ellipsoid to be red, the bottom blue.
    albedo = torch.where(vertices[:, 1:2] > 0, torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))[None]
    light = torch.zeros(1, 27)
    light[:, [0, 9, 18]] = 0.8 * 2 / math.sqrt(math.pi)
    camera = render.OrthographicCamera((64, 48))
    out = render.Renderer(tri)(vertices[None], albedo, light, camera, torch.eye(3)[None],
                               torch.tensor([[24.0, 32.0, 0.0]]), torch.tensor([0.7]), with_depth=True, with_normals=True)
    assert out.image.shape == (1, 3, 64, 48) and out.mask.shape == (1, 1, 64, 48)
    assert out.depth.shape == (1, 1, 64, 48) and out.normals.shape == (1, 3, 64, 48)
    img = out.image[0]
    # Top-down: red (top of the model, +y) is in the upper rows.
    assert img[0, 15, 24] > 0.7 and img[2, 15, 24] < 0.05
    assert img[2, 48, 24] > 0.7 and img[0, 48, 24] < 0.05
    # Ambient only: interior pixels are exactly 0.8 of the albedo.
    assert img[0, 15, 24].item() == pytest.approx(0.8, abs=1e-5)
    # Coverage: 1 inside, 0 outside, fractional on the silhouette; it sums to the area of the
    # projected mesh (the convex hull of its vertices: the tessellation's outline is 0.9 % smaller
    # than the ellipse): -0.38 % here, -0.6 to -0.4 % at scales 0.5-0.71 (geometry, not rounding).
    assert out.mask[0, 0, 32, 24] == 1 and out.mask[0, 0, 0, 0] == 0
    outline = camera.project(vertices[None], torch.eye(3)[None], torch.tensor([[24.0, 32.0, 0.0]]),
                             torch.tensor([0.7]))[0]
    assert out.mask.sum().item() == pytest.approx(ConvexHull(outline.double().numpy()).volume, rel=0.01)
    # Depth: the centre is nearest (largest view depth for the orthographic camera).
    assert out.depth[0, 0, 32, 24].item() == pytest.approx(25.0, abs=0.5)
    assert out.normals[0, 2, 32, 24].item() == pytest.approx(1.0, abs=0.01)
