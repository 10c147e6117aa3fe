"""The fitter's own Adam and L-BFGS (cli.fitting.minimise): same steps as torch.optim's Adam,
L-BFGS converging within its evaluation budget, and a fit that never imports torch._dynamo."""

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
