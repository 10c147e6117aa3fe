"""The fitters' two first-order optimisers, written here rather than taken from ``torch.optim``.

Why: the first ``torch.optim`` optimiser a process builds imports ``torch._dynamo`` (its methods
are wrapped to keep the compiler out), about 1.1 s on a 2-core CPU: a sixth of a whole
``morph fit``. The fitter needs only plain Adam and L-BFGS on a few small tensors, so:

- :class:`Adam`: Kingma & Ba's update with bias correction, exactly ``torch.optim.Adam``'s
  defaults (betas 0.9/0.999, eps 1e-8, no weight decay), one learning rate per tensor, and a
  cosine-decayed rate (``torch.optim.lr_scheduler.CosineAnnealingLR`` to 0) when given ``steps``.
- :func:`lbfgs`: limited-memory BFGS (Nocedal & Wright, algorithm 7.4, the two-loop recursion)
  with a backtracking Armijo line search (quadratic interpolation, step kept within [0.1, 0.5]
  of the last) and memory updated only on positive curvature, within a budget of loss
  evaluations.

Training (:mod:`cli.training`) keeps ``torch.optim``: its import is nothing next to a training run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


class Adam:
    """Adam over ``params`` (tensors with ``requires_grad``), ``lrs[i]`` the rate of ``params[i]``.

    ``steps``: the rates decay along a cosine to 0 over that many steps (None: constant);
    ``warmup``: they first rise linearly from 0 over that many steps. Call :meth:`step` after
    each ``backward()``; gradients are read from ``.grad`` and cleared.
    """

    def __init__(self, params: Sequence[torch.Tensor], lrs: Sequence[float], steps: int | None = None,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, warmup: int = 0):
        self.params, self.lrs, self.steps, self.warmup = list(params), list(lrs), steps, warmup
        self.betas, self.eps = betas, eps
        self.mean = [torch.zeros_like(p) for p in self.params]
        self.square = [torch.zeros_like(p) for p in self.params]
        self.count = 0

    def rate(self, lr: float) -> float:
        """The learning rate of this step (warmed up over ``warmup``, cosine-decayed over ``steps``)."""
        if self.warmup and self.count <= self.warmup:
            lr = lr * self.count / (self.warmup + 1)
        if not self.steps:
            return lr
        return lr * (1 + math.cos(math.pi * min(self.count - 1, self.steps) / self.steps)) / 2

    @torch.no_grad()
    def step(self) -> None:
        self.count += 1
        b1, b2 = self.betas
        correction1, correction2 = 1 - b1**self.count, 1 - b2**self.count
        for p, lr, m, v in zip(self.params, self.lrs, self.mean, self.square):
            if p.grad is None:
                continue
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denominator = (v.sqrt() / math.sqrt(correction2)).add_(self.eps)
            p.addcdiv_(m, denominator, value=-self.rate(lr) / correction1)
            p.grad = None


def lbfgs(params: Sequence[torch.Tensor], closure: Callable[[], torch.Tensor], evaluations: int,
          history: int = 20, armijo: float = 1e-4) -> None:
    """Minimise ``closure()`` over ``params`` with L-BFGS, using at most ``evaluations`` calls.

    ``closure()`` computes the loss and its gradients (``backward()``) and returns the loss; the
    gradients are read from ``.grad``. On return the parameters hold the best point accepted.
    The first step is scaled to unit length in the gradient's L1 norm, as ``torch.optim.LBFGS``
    does; later steps start at 1 (the quasi-Newton step).
    """
    params = list(params)

    def flat_gradient() -> torch.Tensor:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])

    def current() -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in params])

    @torch.no_grad()
    def place(x: torch.Tensor) -> None:
        offset = 0
        for p in params:
            p.copy_(x[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    def call() -> tuple[float, torch.Tensor]:
        for p in params:
            p.grad = None
        loss = float(closure().detach())
        return loss, flat_gradient()

    loss, gradient = call()
    used = 1
    steps, changes, inverse_curvatures = [], [], []  # s_k, y_k, 1 / (y_k . s_k)
    first = True
    while used < evaluations and gradient.abs().max() > 0:
        # Two-loop recursion: direction = -H gradient, H the L-BFGS inverse Hessian.
        q = -gradient
        alphas = []
        for s, y, rho in zip(reversed(steps), reversed(changes), reversed(inverse_curvatures)):
            alpha = rho * torch.dot(s, q)
            q = q - alpha * y
            alphas.append(alpha)
        if steps:
            q = q * (torch.dot(steps[-1], changes[-1]) / torch.dot(changes[-1], changes[-1]))
        for s, y, rho, alpha in zip(steps, changes, inverse_curvatures, reversed(alphas)):
            q = q + (alpha - rho * torch.dot(y, q)) * s
        direction = q
        slope = float(torch.dot(gradient, direction))
        if not slope < 0:  # not a descent direction (memory gone stale): start again from the gradient
            steps, changes, inverse_curvatures = [], [], []
            direction, slope = -gradient, -float(torch.dot(gradient, gradient))
        t = min(1.0, 1.0 / float(gradient.abs().sum())) if first else 1.0
        start = current()
        while True:
            place(start + t * direction)
            new_loss, new_gradient = call()
            used += 1
            if new_loss <= loss + armijo * t * slope or used >= evaluations:
                break
            # The minimum of the parabola through loss, slope and new_loss, kept within [0.1 t, 0.5 t].
            curvature = new_loss - loss - slope * t
            guess = -slope * t * t / (2 * curvature) if curvature > 0 else 0.5 * t
            t = min(max(guess, 0.1 * t), 0.5 * t)
        if not new_loss <= loss:  # the budget ran out on a worse point: keep the last good one
            place(start)
            return
        s, y = t * direction, new_gradient - gradient
        curvature = float(torch.dot(s, y))
        if curvature > 1e-10:
            steps.append(s)
            changes.append(y)
            inverse_curvatures.append(1.0 / curvature)
            if len(steps) > history:
                steps.pop(0), changes.pop(0), inverse_curvatures.pop(0)
        loss, gradient, first = new_loss, new_gradient, False
