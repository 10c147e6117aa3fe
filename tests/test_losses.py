"""Loss composition, values and metrics."""

import math

import pytest
import torch

import losses


def _pred_target():
    pred = {"landmarks": torch.zeros(2, 68, 2), "image": torch.zeros(2, 3, 4, 4), "mask": torch.ones(2, 1, 4, 4),
            "identity": torch.ones(2, 5), "expression": torch.full((2, 3), 2.0), "albedo": torch.zeros(2, 4),
            "lighting": torch.zeros(2, 27)}
    target = {"landmarks": torch.full((2, 68, 2), 3.0), "image": torch.full((2, 3, 4, 4), 0.5)}
    return pred, target


def test_weighted_sum_returns_total_and_named_terms():
    pred, target = _pred_target()
    total_loss = 2.0 * losses.LandmarkLoss() + 0.5 * losses.PhotometricLoss() + losses.CoefficientPrior(1.0, 0.5, 0.0)
    total, terms = total_loss(pred, target)
    assert set(terms) == {"landmark", "photometric", "prior"}
    assert terms["landmark"].item() == pytest.approx(2.0 * 18.0)  # 3² + 3² per point
    assert terms["photometric"].item() == pytest.approx(0.5 * math.sqrt(3 * 0.25), rel=1e-5)
    assert terms["prior"].item() == pytest.approx(5.0 + 0.5 * 12.0)
    assert total.item() == pytest.approx(sum(t.item() for t in terms.values()))
    with pytest.raises(ValueError, match="unique"):
        losses.LandmarkLoss() + losses.LandmarkLoss()


def test_landmark_weights_and_scale():
    pred, target = _pred_target()
    w = torch.zeros(68)
    w[30] = 1.0
    pred["landmarks"][:, 30] = 3.0  # the only weighted point is exact
    assert losses.LandmarkLoss(w)(pred, target).item() == 0.0
    assert losses.LandmarkLoss(scale=3.0)(*_pred_target()).item() == pytest.approx(2.0)
    preset = losses.deep3d_landmark_weights()
    assert preset[28] == 20 and preset[61] == 20 and preset[0] == 1


def test_photometric_only_counts_the_mask():
    pred, target = _pred_target()
    pred["mask"] = torch.zeros(2, 1, 4, 4)
    pred["mask"][:, :, 0, 0] = 1
    pred["image"][:, :, 1:, :] = 100.0  # outside the mask: ignored
    assert losses.PhotometricLoss()(pred, target).item() == pytest.approx(math.sqrt(0.75), rel=1e-5)
    assert losses.PhotometricLoss(robust=False)(pred, target).item() == pytest.approx(0.75, rel=1e-5)


def test_lighting_prior_is_zero_for_white_light():
    pred, _ = _pred_target()
    pred["lighting"] = torch.arange(9.0).repeat(3)[None].expand(2, -1)
    assert losses.LightingPrior()(pred, {}).item() == 0.0
    pred["lighting"] = pred["lighting"].clone()
    pred["lighting"][:, 0] += 3.0  # red DC differs by 3: variance terms (2² + 1² + 1²)
    assert losses.LightingPrior()(pred, {}).item() == pytest.approx(6.0)


def test_nme_normalisations():
    gt = torch.zeros(68, 2)
    gt[:, 0] = torch.linspace(0, 40, 68)
    gt[:, 1] = torch.linspace(0, 10, 68)
    pred = gt + torch.tensor([3.0, 4.0])  # every point off by 5 px
    assert losses.landmark_nme(pred, gt, "bbox").item() == pytest.approx(5.0 / math.sqrt(400.0))
    eye = (gt[36] - gt[45]).norm().item()
    assert losses.landmark_nme(pred, gt, "outer_eye").item() == pytest.approx(5.0 / eye)
    batched = losses.landmark_nme(pred[None].repeat(3, 1, 1), gt[None].repeat(3, 1, 1))
    assert batched.shape == (3,)
    with pytest.raises(ValueError):
        losses.landmark_nme(pred, gt, "iod")


def test_masked_psnr():
    a = torch.zeros(1, 3, 8, 8)
    b = torch.full((1, 3, 8, 8), 0.1)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    b[..., 4:, :] = 1.0  # outside the mask
    assert losses.masked_psnr(a, b, mask).item() == pytest.approx(20.0, abs=1e-4)


def test_parameter_loss_counts_only_samples_with_ground_truth_and_splits_exactly():
    pred = {"identity": torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 0.0], [0.0, 1.0]]),
            "expression": torch.zeros(4, 1), "albedo": torch.zeros(4, 1)}
    target = {"identity": torch.zeros(4, 2), "expression": torch.ones(4, 1), "albedo": torch.zeros(4, 1),
              "parameter_weights": torch.tensor([1.0, 1.0, 0.0, 1.0])}
    loss = losses.ParameterLoss()
    # Per sample: 5 + 1, 0 + 1, (ignored), 1 + 1 -> 9 over a batch of 4.
    assert float(loss(pred, target)) == pytest.approx(9 / 4)
    halves = [loss({k: v[s] for k, v in pred.items()}, {k: v[s] for k, v in target.items()})
              for s in (slice(0, 2), slice(2, 4))]
    assert float(sum(halves) / 2) == pytest.approx(9 / 4)


def test_residuals_square_to_the_loss_of_each_sample():
    g = torch.Generator().manual_seed(0)
    pred = {"landmarks": torch.randn(3, 68, 2, generator=g) * 5, "identity": torch.randn(3, 5, generator=g),
            "expression": torch.randn(3, 4, generator=g)}
    target = {"landmarks": torch.zeros(3, 68, 2), "landmark_weights": torch.rand(3, 68, generator=g)}
    total = 0.7 * losses.LandmarkLoss(scale=10.0) + losses.CoefficientPrior(0.3, 0.2, 0.0)
    residuals = total.residuals(pred, target)
    assert residuals.shape == (3, 136 + 9)
    for b in range(3):
        one = {k: v[b:b + 1] for k, v in pred.items()}
        value, _ = total(one, {k: v[b:b + 1] for k, v in target.items()})
        assert (residuals[b] ** 2).sum().item() == pytest.approx(value.item(), rel=1e-5)


def test_robust_residuals_have_the_losss_gradient_where_they_are_weighted():
    # IRLS: with the Geman-McClure weights taken at the current points, the gradient of the summed
    # squared residuals is the loss's gradient there; given ``at``, the weights stay where they were taken.
    g = torch.Generator().manual_seed(1)
    points = (torch.randn(1, 68, 2, generator=g, dtype=torch.float64) * 8).requires_grad_()
    target = {"landmarks": torch.zeros(1, 68, 2, dtype=torch.float64)}
    loss = losses.LandmarkLoss(scale=5.0, robust="geman-mcclure", robust_scale=4.0)
    (grad_loss,) = torch.autograd.grad(loss({"landmarks": points}, target), points)
    squares = (loss.residuals({"landmarks": points}, target) ** 2).sum()
    (grad_squares,) = torch.autograd.grad(squares, points)
    torch.testing.assert_close(grad_squares, grad_loss, rtol=1e-10, atol=1e-14)
    moved = {"landmarks": points.detach() + 1.0}
    here = loss.residuals(moved, target, at={"landmarks": points.detach()})
    weights = (here / (moved["landmarks"] / 5.0).flatten(1)) ** 2  # the same weights as at the points
    torch.testing.assert_close(weights, (loss.residuals({"landmarks": points.detach()}, target)
                                         / (points.detach() / 5.0).flatten(1)) ** 2)
    with pytest.raises(NotImplementedError, match="least-squares"):
        losses.PhotometricLoss().residuals({}, {})
