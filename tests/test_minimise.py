"""The fitter's own optimisers: Adam (cli.fitting.minimise) taking torch.optim's steps, with a
warm-up; L-BFGS converging within its evaluation budget; the Gauss-Newton stage
(cli.fitting.stages) recovering a pose and shape through outliers; a fit that never imports
torch._dynamo."""

import math
import subprocess
import sys

import pytest
import torch

from cli.fitting.minimise import Adam, lbfgs


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(12, 12, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)

    def loss(x, y):
        return ((a @ x - b) ** 2).sum() + (y**4).sum() + (x[:4] * y[:4]).sum()

    return loss, torch.randn(12, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)


def test_adam_takes_torch_optims_steps_with_cosine_decay():
    loss, x0, y0 = _problem()
    ours = [x0.clone().requires_grad_(), y0.clone().requires_grad_()]
    theirs = [x0.clone().requires_grad_(), y0.clone().requires_grad_()]
    adam = Adam(ours, [0.05, 0.02], steps=30)
    reference = torch.optim.Adam([{"params": [theirs[0]], "lr": 0.05}, {"params": [theirs[1]], "lr": 0.02}])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(reference, 30, eta_min=0.0)
    for _ in range(30):
        loss(*ours).backward()
        adam.step()
        reference.zero_grad()
        loss(*theirs).backward()
        reference.step()
        schedule.step()
        assert all(p.grad is None for p in ours)  # step clears the gradients it used
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    assert loss(*ours) < loss(x0, y0)


def test_lbfgs_solves_a_quadratic_and_keeps_to_its_budget():
    g = torch.Generator().manual_seed(1)
    m = torch.randn(20, 20, generator=g, dtype=torch.float64)
    hessian = m @ m.T + 0.5 * torch.eye(20, dtype=torch.float64)  # condition number in the hundreds
    target = torch.randn(20, generator=g, dtype=torch.float64)
    x = torch.zeros(20, dtype=torch.float64, requires_grad=True)
    calls = []

    def closure():
        calls.append(1)
        d = x - target
        value = 0.5 * d @ hessian @ d
        value.backward()
        return value

    lbfgs([x], closure, evaluations=60)
    assert len(calls) <= 60
    torch.testing.assert_close(x.detach(), target, rtol=0, atol=1e-6)

    x.data.zero_()
    calls.clear()
    lbfgs([x], closure, evaluations=3)
    assert len(calls) == 3
    assert (x.detach() - target).norm() < target.norm()  # better than the start, never worse


def test_lbfgs_minimises_rosenbrock():
    z = torch.full((6,), -1.0, dtype=torch.float64, requires_grad=True)

    def closure():
        value = ((1 - z[:-1]) ** 2 + 100 * (z[1:] - z[:-1] ** 2) ** 2).sum()
        value.backward()
        return value

    lbfgs([z], closure, evaluations=200)
    torch.testing.assert_close(z.detach(), torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-4)


@pytest.mark.parametrize("stage", ["landmark", "photometric"])
def test_a_fit_does_not_import_torch_dynamo(stage):
    # torch.optim imports torch._dynamo on first use (about a second): the fitter must not.
    steps = "landmark_steps=5, photometric_steps=0" if stage == "landmark" else "landmark_steps=0, photometric_steps=3"
    code = f"""
import sys
from cli.defaults import load_model
from cli.fitting import FitConfig, fit
from cli.fitting.benchmark import synthetic_face
model = load_model()
image, landmarks = synthetic_face(model, seed=0)
fit(image, landmarks, model, FitConfig({steps}))
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


class _Pose(torch.nn.Module):
    """A rotation (axis-angle), a log scale and shape coefficients: points = s R (mean + basis c)."""

    def __init__(self):
        super().__init__()
        self.rotation = torch.nn.Parameter(torch.zeros(1, 3))
        self.log_scale = torch.nn.Parameter(torch.zeros(1, 1))
        self.shape = torch.nn.Parameter(torch.zeros(1, 5))

    def points(self, mean, basis):
        import kornia

        rotation = kornia.geometry.conversions.axis_angle_to_rotation_matrix(self.rotation)  # [B,3,3]
        local = mean + torch.einsum("bk,pdk->bpd", self.shape, basis)
        return self.log_scale.exp()[:, :, None] * (local @ rotation.transpose(1, 2))[..., :2]


def test_gauss_newton_recovers_a_pose_and_shape_despite_outliers():
    import losses
    from cli.fitting.stages import gauss_newton_stage

    g = torch.Generator().manual_seed(3)
    mean, basis = torch.randn(40, 3, generator=g) * 50, torch.randn(40, 3, 5, generator=g) * 4
    truth = _Pose()
    with torch.no_grad():
        truth.rotation.copy_(torch.tensor([[0.3, -0.5, 0.1]]))
        truth.log_scale.fill_(0.2)
        truth.shape.copy_(torch.randn(1, 5, generator=g))
        target = truth.points(mean, basis)
    target[0, :4] += 40.0  # four points far off: the robust loss must not follow them
    loss = losses.LandmarkLoss(robust="geman-mcclure", robust_scale=3.0)
    fitted = _Pose()

    def loss_fn():
        return loss({"landmarks": fitted.points(mean, basis)}, {"landmarks": target}), {}

    def residual_fn(at):
        prediction = {"landmarks": fitted.points(mean, basis)}
        return loss.residuals(prediction, {"landmarks": target}, at), prediction

    report = gauss_newton_stage("pose", 40, fitted, ["rotation", "log_scale", "shape"], loss_fn, residual_fn,
                                tolerance=1e-9)
    assert report.iterations < 40  # converged before the budget
    for name in ("rotation", "log_scale", "shape"):
        torch.testing.assert_close(getattr(fitted, name).detach(), getattr(truth, name).detach(), rtol=0, atol=2e-3)
    assert report.history == sorted(report.history, reverse=True)  # every kept step lowered the loss


def test_adam_warms_up_then_decays():
    x = torch.zeros(1, requires_grad=True)
    adam = Adam([x], [1.0], steps=20, warmup=4)
    rates = []
    for _ in range(20):
        adam.count += 1
        rates.append(adam.rate(1.0))
    assert rates[:4] == pytest.approx([c / 5 * (1 + math.cos(math.pi * (c - 1) / 20)) / 2 for c in range(1, 5)])
    assert rates[4] == pytest.approx((1 + math.cos(math.pi * 4 / 20)) / 2) and rates[-1] < 0.01


@pytest.mark.parametrize("patience, stops_after", [(1, 40), (2, 80)])
def test_photometric_early_stop_waits_out_a_transient_flat_window(patience, stops_after):
    """Window means 10, 9, 8, 8 (flat: a refresh bump), 7, 6.9, 6.9, 6.9: one flat window ends the
    stage with patience 1; with patience 2 only the two flat windows in a row at the end do."""
    from types import SimpleNamespace

    from cli.fitting.stages import run_stage

    means = [10.0, 9.0, 8.0, 8.0, 7.0, 6.9, 6.9, 6.9, 6.8]
    variables = torch.nn.Module()
    variables.x = torch.nn.Parameter(torch.zeros(1))
    calls = []

    def loss_fn():
        calls.append(1)
        return means[min(len(calls) - 1, 89) // 10] + 0 * variables.x.sum(), {}

    config = SimpleNamespace(lr={"x": 0.1})
    report = run_stage("photometric", 90, variables, ["x"], loss_fn, config, tolerance=5e-3, window=10,
                       patience=patience)
    assert report.iterations == stops_after
