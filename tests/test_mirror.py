"""morphable.mirror: the mirrored face of a set of parameters."""

import math

import torch

from cli.defaults import load_model
from cli.fitting.scene import FaceScene
from cli.training.augment import MIRROR_68, AugmentConfig, augment
from cli.training.loader import Batch
from morphable import ModelMirror, MorphableModel, Parameters
from synthetic import make_model_tensors


def _mirrored_fields(model_tensors, fields: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """``F f[m(v)]`` for fields ``[N,3,K]`` on the (symmetric) synthetic ellipsoid."""
    mean = model_tensors["shape_mean"]
    vertex_map = torch.cdist(mean * torch.tensor([-1.0, 1.0, 1.0]), mean).argmin(1)
    return fields[vertex_map] * sign[None, :, None]


def test_maps_are_the_exact_permutation_on_a_basis_closed_under_mirroring():
    tensors, metadata = make_model_tensors(seed=3)
    metadata.pop("expression_names")  # the test builds its own 4 units
    flip, same = torch.tensor([-1.0, 1.0, 1.0]), torch.ones(3)
    # Units 0 and 1 span a field b and its mirror image m(b) (like browDownLeft / browDownRight, but
    # unit 1 = m(b) + b / 2, so that the map is not symmetric); unit 2 is symmetric (like jawOpen),
    # unit 3 antisymmetric (like jawLeft - jawRight). mirror(u0) = m(b) = u1 - u0 / 2 and
    # mirror(u1) = b + m(b) / 2 = 3/4 u0 + u1 / 2: the map's columns.
    for name, sign in (("identity_basis", flip), ("expression_basis", flip), ("albedo_basis", same)):
        b = tensors[name][..., :2]
        m = _mirrored_fields(tensors, b, sign)
        tensors[name] = torch.stack([b[..., 0], m[..., 0] + b[..., 0] / 2, b[..., 1] + m[..., 1],
                                     b[..., 1] - m[..., 1]], -1)
    mirror = ModelMirror(MorphableModel(tensors, metadata))
    assert mirror.mean_asymmetry < 1e-5 and mirror.symmetric
    expected = torch.tensor([[-0.5, 0.75, 0, 0], [1, 0.5, 0, 0], [0, 0, 1, 0], [0, 0, 0, -1]])
    for name in ("identity", "expression", "albedo"):
        torch.testing.assert_close(mirror.maps[name], expected, atol=1e-4, rtol=0)
        assert mirror.residual[name] < 1e-5
    # Coefficients c of the face -> M c of its mirror image: u0 alone mirrors to -u0/2 + u1.
    mirrored = mirror.group("identity", torch.tensor([[1.0, 0, 0, 0]]), 100.0)
    torch.testing.assert_close(mirrored, torch.tensor([[-0.5, 1.0, 0, 0]]), atol=1e-4, rtol=0)


def test_an_asymmetric_model_is_not_called_symmetric():
    tensors, metadata = make_model_tensors(seed=3)  # random smooth bases: not closed under mirroring
    assert not ModelMirror(MorphableModel(tensors, metadata)).symmetric
    tensors["shape_mean"][:, 0] += 0.2 * tensors["shape_mean"][:, 1].clamp_min(0)  # the top leans to one side
    assert ModelMirror(MorphableModel(tensors, metadata)).mean_asymmetry > 0.01


def test_mirrored_parameters_render_the_flipped_image_and_landmarks():
    model = load_model()
    mirror = ModelMirror(model)
    # The default model is symmetric: its bases close under mirroring to within a few per cent.
    assert mirror.residual["identity"] < 0.02 and mirror.residual["expression"] < 0.03
    assert mirror.residual["albedo"] < 0.06 and mirror.symmetric
    size = 96
    g = torch.Generator().manual_seed(0)
    sizes = model.parameter_sizes
    params = Parameters.neutral(sizes, scale=size / 260)
    params.identity = torch.randn(1, sizes.identity, generator=g)
    params.expression = torch.rand(1, sizes.expression, generator=g) * 0.6
    params.albedo = torch.randn(1, sizes.albedo, generator=g)
    params.lighting = params.lighting + 0.3 * torch.randn(1, 27, generator=g)  # odd-in-x terms included
    params.pose = torch.tensor([[0.15, 0.45, -0.1, 41.0, 50.0, 0.0, size / 260]])  # yaw ~26 degrees, off centre
    scene = FaceScene(model, size)
    with torch.no_grad():
        out, flipped = scene(params), scene(mirror.parameters(params, size))
    # Landmarks: x -> size - x, in mirror order.
    points = out["landmarks"][0]
    expected = torch.stack([size - points[:, 0], points[:, 1]], -1)[list(MIRROR_68)]
    assert (flipped["landmarks"][0] - expected).norm(dim=-1).max() < 0.1
    # The image: the flipped render, where both renders cover the face.
    both = (out["mask"].flip(-1) > 0.99) & (flipped["mask"] > 0.99)
    assert both.sum() > 0.2 * size * size
    difference = (out["image"].flip(-1) - flipped["image"]).abs().mean(1, keepdim=True)[both]
    assert difference.mean() < 0.01 and difference.max() < 0.15
    # Mirroring twice gives the face back.
    back = mirror.parameters(mirror.parameters(params, size), size)
    # Up to the bases' residuals: shape closely, albedo (painted texture, less symmetric) roughly.
    for group, tolerance in (("identity", 0.03), ("expression", 0.03), ("albedo", 0.15)):
        assert (getattr(back, group) - getattr(params, group)).norm() < tolerance * getattr(params, group).norm()
    for group in ("pose", "lighting"):  # exact
        torch.testing.assert_close(getattr(back, group), getattr(params, group))
    assert math.isclose(float(mirror.parameters(params, size).pose[0, 3]), size - 41.0, abs_tol=1e-4)


def test_flip_augmentation_keeps_mirrored_ground_truth_only_with_the_maps():
    n, size = 6, 64
    # Ground truth as shards hold it, of the first 4 identity components only.
    params = {"identity": torch.randn(n, 4), "expression": torch.randn(n, 6), "albedo": torch.randn(n, 5),
              "lighting": torch.randn(n, 27), "pose": torch.randn(n, 7)}
    mirror = ModelMirror(MorphableModel(*make_model_tensors(seed=1)))
    batch = Batch(torch.rand(n, 3, size, size), torch.rand(n, 68, 2) * size, torch.ones(n, 68), params,
                  torch.tensor([True, True, True, True, False, True]))
    config = AugmentConfig(flip=0.5, shift=0, scale=0, rotation=0, brightness=0, contrast=0, saturation=0, hue=0,
                           grayscale=0)
    plain = augment(batch, config, seed=2, step=3)
    flipped = (plain.landmarks - batch.landmarks).abs().amax((1, 2)) > 1e-3  # no other geometry
    assert 0 < flipped.sum() < n
    assert torch.equal(plain.has_params, batch.has_params & ~flipped)
    kept = augment(batch, config, seed=2, step=3, mirror=mirror)
    assert torch.equal(kept.has_params, batch.has_params)
    for group, truth in params.items():
        expected = torch.where(flipped[:, None], mirror.group(group, truth, size), truth)
        torch.testing.assert_close(kept.params[group], expected)
    # A truncated ground truth uses the map's top-left block, and mirroring changes it.
    expected = params["identity"][flipped] @ mirror.maps["identity"][:4, :4].T
    torch.testing.assert_close(kept.params["identity"][flipped], expected)
    assert not torch.allclose(expected, params["identity"][flipped])
