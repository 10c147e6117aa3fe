"""How the fitters' optimisation stages run, and the exact solvers for the parts of the problem
that are small or linear.

- :func:`run_stage`: Adam (cosine-decayed, optional early stop) or L-BFGS over chosen groups
  (both from :mod:`.minimise`).
- :func:`newton_stage`: damped Newton (Levenberg-Marquardt on the exact Hessian from
  :mod:`torch.func`) for the landmark problem: a few hundred unknowns, smooth but badly
  conditioned, where L-BFGS needs hundreds of evaluations and Newton a handful.
- :func:`solve_lighting`: each photo's 27 SH coefficients by linear least squares, the shape,
  albedo and pose held (the shaded colour is linear in them).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

import render
from morphable import Parameters

from .minimise import Adam, lbfgs
from .scene import FaceScene, rotation_matrix


class FitDiverged(RuntimeError):
    """The optimisation produced NaN or infinite values."""


@dataclass
class StageReport:
    name: str
    iterations: int
    seconds: float
    final: dict
    history: list
    terms: dict = field(default_factory=dict)  # each weighted loss term at every step, as history


def check_finite(loss: torch.Tensor, variables: torch.nn.Module, stage: str, step: int) -> None:
    if not torch.isfinite(loss) or not all(torch.isfinite(p).all() for p in variables.parameters()):
        raise FitDiverged(f"fitting diverged (NaN/inf) in the {stage} stage at step {step}")


def run_stage(name, steps, variables, groups, loss_fn, config, progress=None, method="adam", rounds=1,
              refresh=None, refresh_every=0, tolerance=0.0, window=10, warmup=0, patience=1):
    """Minimise ``loss_fn`` over ``groups`` of ``variables``.

    ``"lbfgs"`` (strong-Wolfe line search) suits the small, smooth landmark problem and
    converges to sub-pixel accuracy; ``"adam"`` with a cosine-decayed learning rate copes
    with the photometric loss, whose gradients are noisier.
    ``refresh()`` (optional) re-chooses pose-dependent correspondences: before each of
    ``rounds`` L-BFGS runs sharing the ``steps`` (a fresh optimiser each, as the objective
    changed), or every ``refresh_every`` Adam steps.
    ``tolerance`` (Adam): stop once the mean loss of the last ``window`` steps is less than
    this fraction below the mean of the ``window`` steps before, ``patience`` windows in a row
    (not within the ``warmup`` steps, over which Adam's rates rise from 0).
    """
    history, term_history = [], {}
    start = time.perf_counter()
    params = [getattr(variables, g) for g in groups]

    def evaluate():
        total, terms = loss_fn()
        check_finite(total, variables, name, len(history))
        history.append(float(total.detach()))
        for key, value in zip(terms, torch.stack([t.detach() for t in terms.values()]).tolist() if terms else []):
            term_history.setdefault(key, []).append(value)
        if progress:
            progress()
        return total

    if method == "lbfgs":
        rounds = max(1, min(rounds, steps)) if refresh else 1
        for r in range(rounds):
            if refresh:
                refresh()
            budget = steps // rounds + (r < steps % rounds)

            def closure():
                total = evaluate()
                total.backward()
                return total

            lbfgs(params, closure, budget)
    else:
        optimiser = Adam(params, [config.lr[g] for g in groups], steps=max(steps, 1), warmup=warmup)
        flat = 0  # windows in a row that improved by less than the tolerance
        for step in range(steps):
            if refresh and refresh_every and step % refresh_every == 0:
                refresh()
            evaluate().backward()
            optimiser.step()
            if tolerance > 0 and len(history) >= optimiser.warmup + 2 * window and len(history) % window == 0:
                before, last = sum(history[-2 * window:-window]), sum(history[-window:])
                flat = flat + 1 if before - last < tolerance * abs(before) else 0
                if flat >= patience:
                    break
    if refresh:
        refresh()
    with torch.no_grad():
        total, terms = loss_fn()
    check_finite(total, variables, name, steps)
    final = {k: float(t) for k, t in terms.items()} | {"total": float(total)}
    return StageReport(name, len(history), time.perf_counter() - start, final, history, term_history)


class _Call(torch.nn.Module):
    """``fn(*args)`` as a module call, so that :func:`torch.func.functional_call` can put other
    values (e.g. a batch of them) in ``variables``' places (and :mod:`torch.func` can
    differentiate it)."""

    def __init__(self, variables: torch.nn.Module, fn):
        super().__init__()
        self.variables, self.fn = variables, fn

    def forward(self, *args):
        return self.fn(*args)


def gauss_newton_stage(name: str, steps: int, variables: torch.nn.Module, groups, loss_fn, residual_fn,
                       rounds: int = 1, refresh=None, tolerance: float = 1e-6, progress=None,
                       difference: float = 1e-2) -> StageReport:
    """Minimise ``loss_fn`` over ``groups`` by Levenberg-Marquardt on ``residual_fn`` (Gauss-Newton
    steps with a damped diagonal), within ``steps`` Jacobians shared by ``rounds``.

    ``residual_fn(at) -> (residuals [B,M], state)``: the residuals of the variables as they
    stand, which may hold a batch of B values of ``groups`` (row b from value b alone); their
    sum of squares is ``loss_fn``'s total or, for a robust loss, its reweighted (IRLS) version
    with the weights taken at ``at`` (None: here), the ``state`` an earlier call returned.
    Each step re-linearises and reweights; a step is kept only if ``loss_fn``'s total goes down.
    ``refresh()`` re-chooses pose-dependent correspondences before each round; ``progress()``
    is called once per step. The unknowns (``[1,k]`` each) are few: the Jacobian comes from
    forward differences (steps of ``difference`` times max(1, |value|)) in one batched call,
    with no autograd (forward-mode differentiation would import torch._dynamo, a second at
    first use). A handful of steps reach what first-order methods need hundreds of
    evaluations for, and badly scaled unknowns (radians, pixels, coefficients) do not slow it.
    """
    started = time.perf_counter()
    tensors = {g: getattr(variables, g) for g in groups}
    if any(t.dim() != 2 or t.shape[0] != 1 for t in tensors.values()):
        raise ValueError("gauss_newton_stage optimises one sample's variables, each [1,k]")
    sizes = [t.shape[1] for t in tensors.values()]
    loss_call, residual_call = _Call(variables, loss_fn), _Call(variables, residual_fn)

    def at(call, values, *args):  # values [B,N]: the unknowns of B evaluations
        return torch.func.functional_call(call, dict(zip((f"variables.{g}" for g in tensors),
                                                         torch.split(values, sizes, 1))), args)

    history, term_history = [], {}

    def evaluate(values):  # the loss at values [N]: (total, {term: value})
        total, terms = at(loss_call, values[None])
        return float(total), terms

    with torch.no_grad():
        x = torch.cat([t.detach() for t in tensors.values()], 1)[0]
        for r in range(max(1, rounds)):
            for t, chunk in zip(tensors.values(), torch.split(x[None], sizes, 1)):
                t.copy_(chunk)
            if refresh:
                refresh()
            (current, terms), damping = evaluate(x), 1e-4
            budget = steps // max(1, rounds) + (r < steps % max(1, rounds))
            for _ in range(budget):
                base, state = at(residual_call, x[None], None)
                h = difference * x.abs().clamp_min(1.0)
                moved, _ = at(residual_call, x[None] + torch.diag(h), state)
                jacobian = ((moved - base) / h[:, None]).T.double()  # [M,N]
                gradient = jacobian.T @ base[0].double()
                hessian = jacobian.T @ jacobian
                diagonal = hessian.diagonal().clamp_min(1e-12)
                accepted = False
                while damping < 1e8:
                    step = torch.linalg.solve(hessian + damping * torch.diag(diagonal), -gradient).to(x.dtype)
                    trial, trial_terms = evaluate(x + step)
                    if math.isfinite(trial) and trial <= current:
                        x, damping, accepted = x + step, max(damping / 4, 1e-7), True
                        break
                    damping *= 8
                improvement = current - trial if accepted else 0.0
                if accepted:
                    current, terms = trial, trial_terms
                history.append(current)
                for key, value in terms.items():
                    term_history.setdefault(key, []).append(float(value))
                if progress:
                    progress()
                if not accepted or improvement <= tolerance * abs(current):
                    break
        for t, chunk in zip(tensors.values(), torch.split(x[None], sizes, 1)):
            t.copy_(chunk)
        if refresh:
            refresh()
        value, terms = loss_fn()
    if not math.isfinite(float(value)):
        raise FitDiverged(f"fitting diverged (NaN/inf) in the {name} stage")
    final = {k: float(v) for k, v in terms.items()} | {"total": float(value)}
    return StageReport(name, len(history), time.perf_counter() - started, final, history, term_history)


def newton_stage(name: str, steps: int, variables: torch.nn.Module, groups, loss_fn, frames: int | None = None,
                 separable_fn=None, coupling_fn=None) -> StageReport:
    """Minimise ``loss_fn`` over ``groups`` with damped Newton steps (Levenberg-Marquardt on the exact
    Hessian, from :mod:`torch.func`).

    The landmark problem (a few hundred unknowns, coupled in time or by a shared identity) is small
    but badly conditioned: L-BFGS needs hundreds of evaluations where Newton needs a handful.
    When ``loss_fn = separable_fn + coupling_fn`` with ``separable_fn`` a sum of independent
    per-frame terms (every group ``[frames,k]``) and ``coupling_fn`` cheap, the Hessian of the
    first is block-diagonal and comes from one Hessian-vector product per per-frame unknown
    (all frames at once) instead of one per unknown: ``frames`` times fewer.
    """
    started = time.perf_counter()
    tensors = {g: getattr(variables, g) for g in groups}
    shapes = [t.shape for t in tensors.values()]
    sizes = [t.numel() for t in tensors.values()]

    def as_function(fn):
        objective = _Call(variables, lambda: fn()[0])  # the total only

        def f(flat):
            chunks = {f"variables.{g}": c.reshape(shape)
                      for g, c, shape in zip(tensors, torch.split(flat, sizes), shapes)}
            return torch.func.functional_call(objective, chunks, ())
        return f

    total = as_function(loss_fn)
    blocks = frames is not None and separable_fn is not None
    if blocks:
        separable, coupling = as_function(separable_fn), as_function(coupling_fn)
        # index[t, j]: where frame t's j-th unknown sits in the flat vector
        offsets = torch.tensor([0] + sizes).cumsum(0)[:-1].tolist()
        index = torch.cat([o + torch.arange(frames)[:, None] * s[1] + torch.arange(s[1])[None]
                           for o, s in zip(offsets, shapes)], 1)
        probes = torch.zeros(index.shape[1], sum(sizes))
        probes[torch.arange(index.shape[1])[:, None], index.T] = 1.0  # unknown j of every frame at once

    def hessian_at(x):
        if not blocks:
            return torch.func.jacfwd(torch.func.jacrev(total))(x)
        gradient = torch.func.grad(separable)
        columns = torch.func.vmap(lambda v: torch.func.jvp(gradient, (x,), (v,))[1])(probes)  # [J,N]
        hessian = torch.func.jacfwd(torch.func.jacrev(coupling))(x).clone()
        rows = index[:, :, None].expand(-1, -1, index.shape[1])
        hessian[rows, rows.transpose(1, 2)] += columns[:, index].permute(1, 2, 0)
        return hessian

    x = torch.cat([t.detach().flatten() for t in tensors.values()])
    current, damping, history = float(total(x).detach()), 1e-3, []
    for _ in range(steps):
        gradient = torch.func.grad(total)(x)
        hessian = hessian_at(x)
        diagonal = hessian.diagonal().abs().clamp_min(1e-12)
        while damping < 1e8:
            step = torch.linalg.solve(hessian + damping * torch.diag(diagonal), -gradient)
            trial = float(total(x + step).detach())
            if math.isfinite(trial) and trial <= current:
                x, current, damping = x + step, trial, max(damping / 4, 1e-6)
                break
            damping *= 8
        history.append(current)
        if damping >= 1e8 or (len(history) > 1 and history[-2] - current <= 1e-6 * abs(current)):
            break
    with torch.no_grad():
        for (g, t), chunk in zip(tensors.items(), torch.split(x, sizes)):
            t.copy_(chunk.reshape(t.shape))
        value, terms = loss_fn()
    if not math.isfinite(float(value)):
        raise FitDiverged(f"fitting diverged (NaN/inf) in the {name} stage")
    final = {k: float(v) for k, v in terms.items()} | {"total": float(value)}
    return StageReport(name, len(history), time.perf_counter() - started, final, history)




def solve_lighting(scene: FaceScene, params: Parameters, images: torch.Tensor, prior_weight: float,
                   robust_rounds: int = 0):
    """Each frame's SH lighting ``[B,27]`` by linear least squares, the shape and pose held.

    The shaded colour is linear in the 27 coefficients (:mod:`render.shading`: albedo times the
    band-weighted SH basis at the camera-space normal), so one render of those 27 products per
    vertex, interpolated, gives each pixel's row of the system. It minimises the mean squared
    colour error over the fully covered skin pixels plus ``prior_weight`` times
    :class:`losses.LightingPrior`, which pulls towards white light (the fitters use
    ``w_lighting / w_photometric``). ``robust_rounds`` > 0: that many more solves, reweighted
    (IRLS), towards the mean colour distance (not squared) that :class:`losses.PhotometricLoss`
    measures, so that pixels the model cannot explain (hair, glasses, a hand) pull less.
    Returns the lighting, the image it renders ``[B,3,H,W]`` and the pixels used ``[B,1,H,W]``.
    """
    triangles = scene.renderer.triangles
    if scene.rows is None:
        vertices, albedo = scene.model(params.identity, params.expression, params.albedo)
    else:
        vertices, albedo = scene.rows.shape(params.identity, params.expression), scene.rows.albedo(params.albedo)
    rotation = rotation_matrix(params)
    normals = render.vertex_normals(vertices, triangles) @ rotation.transpose(1, 2)
    bands = normals.new_tensor([render.BAND_FACTORS[0]] + [render.BAND_FACTORS[1]] * 3 + [render.BAND_FACTORS[2]] * 5)
    rows = (albedo[..., :, None] * (render.sh_basis(normals) * bands)[..., None, :]).flatten(2)  # [B,N,27]
    count = len(rows)
    out = scene.renderer(vertices, albedo, params.lighting, scene.camera, rotation, params.translation, params.scale,
                         attributes=torch.cat([scene.skin.expand(count, -1, -1), rows], -1))
    mask = ((out.mask > 0.999) & (out.attributes[:, :1] > 0.5)).to(images.dtype)
    design = out.attributes[:, 1:].reshape(count, 3, 9, -1)  # [B,channel,9,pixels]
    m = mask.reshape(count, 1, 1, -1)
    pixels = images.reshape(count, 3, -1)
    total = m.sum((1, 2, 3)).clamp_min(1.0)[:, None, None]
    mono = torch.kron(torch.eye(3) - torch.full((3, 3), 1 / 3), torch.eye(9)).to(images)  # LightingPrior's Hessian / 2
    weights, lighting = m, params.lighting
    for _ in range(1 + robust_rounds):
        normal = torch.einsum("bckp,bclp->bckl", design * weights, design)  # [B,3,9,9]
        right = torch.einsum("bckp,bcp->bck", design * weights, pixels)
        system = torch.zeros(count, 27, 27, dtype=normal.dtype, device=normal.device)
        for c in range(3):
            system[:, 9 * c:9 * c + 9, 9 * c:9 * c + 9] = normal[:, c] / total
        ridge = 1e-6 * system.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)[:, None, None]
        system = system + prior_weight * mono + ridge * torch.eye(27).to(system)
        lighting = torch.linalg.solve(system, (right / total).reshape(count, 27) + ridge[:, 0] * lighting)
        rendered = torch.einsum("bckp,bck->bcp", design, lighting.reshape(count, 3, 9))
        # |r| = |r|^2 / (2 |r_old|) + const at r_old: the next solve's weights
        distance = (rendered - pixels).norm(dim=1, keepdim=True)[:, None]  # [B,1,1,pixels]
        weights = m / (2 * distance.clamp_min(1e-3))
    return lighting, rendered.reshape(images.shape) * mask, mask
