"""The torch backend against nvdiffrast on CUDA: ids, barycentrics, images, gradients.

Runs only where CUDA and nvdiffrast are present (skipped otherwise).
"""

import pytest
import torch

import render
from render import nvdiffrast_backend
from render.meshes import grid_face

pytestmark = pytest.mark.skipif(not nvdiffrast_backend.available(), reason="needs CUDA and nvdiffrast")


def _scene(batch=2, res=(192, 160)):
    vertices, tri = grid_face(64)
    g = torch.Generator().manual_seed(0)
    angles = torch.tensor([0.3, -0.5])[:batch]
    c, s = angles.cos(), angles.sin()
    rot = torch.zeros(batch, 3, 3)
    rot[:, 0, 0], rot[:, 0, 2], rot[:, 1, 1], rot[:, 2, 0], rot[:, 2, 2] = c, s, 1, -s, c
    camera = render.PinholeCamera(400.0, res)
    pos = camera.to_clip(vertices[None].expand(batch, -1, -1), rot, torch.tensor([[3.0, -2.0, -420.0]]).expand(batch, -1))
    colours = torch.rand(batch, vertices.shape[0], 3, generator=g)
    return pos.cuda().contiguous(), tri.cuda(), colours.cuda(), res


def test_ids_and_barycentrics_agree():
    pos, tri, _, res = _scene()
    a, _ = render.rasterize(pos, tri, res, backend="torch")
    b, _ = render.rasterize(pos, tri, res, backend="nvdiffrast")
    same = a[..., 3] == b[..., 3]
    assert same.float().mean() > 0.995
    both = same & (a[..., 3] > 0)
    torch.testing.assert_close(a[..., :3][both], b[..., :3][both], atol=2e-4, rtol=1e-3)


def test_interpolate_and_antialias_images_and_gradients_agree():
    pos, tri, colours, res = _scene()
    weights = torch.rand(pos.shape[0], *res, 3, device=pos.device)
    results = {}
    for backend in ("torch", "nvdiffrast"):
        p = pos.clone().requires_grad_()
        c = colours.clone().requires_grad_()
        rast, _ = render.rasterize(p, tri, res, backend=backend)
        img, _ = render.interpolate(c, rast, tri, backend=backend)
        topo = render.construct_topology_hash(tri, backend=backend)
        aa = render.antialias(img, rast, p, tri, topo, backend=backend)
        (aa * weights).sum().backward()
        results[backend] = (img.detach(), aa.detach(), p.grad, c.grad)
    (img_t, aa_t, gp_t, gc_t), (img_n, aa_n, gp_n, gc_n) = results["torch"], results["nvdiffrast"]
    assert (img_t - img_n).abs().mean() < 1e-3
    assert (aa_t - aa_n).abs().mean() < 2e-3
    cos = torch.nn.functional.cosine_similarity
    assert cos(gp_t.flatten(), gp_n.flatten(), dim=0) > 0.98
    assert cos(gc_t.flatten(), gc_n.flatten(), dim=0) > 0.99
