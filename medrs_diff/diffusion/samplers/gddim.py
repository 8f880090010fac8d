"""gDDIM (Zhang, Tao & Chen, ICLR 2023): DDIM as an exponential integrator, with multistep extrapolation.

For a linear diffusion ``x_t = alpha_t x_0 + sigma_t eps`` (:func:`gddim`: the engine's VP
:class:`Schedule`; :func:`gddim_diagonal`: per-coordinate ``alpha_t``/``sigma_t`` in some basis, the
diagonal case of gDDIM's non-isotropic processes, e.g. blurring diffusion) and the score parametrised as
``-K_t^{-T} eps_theta`` with ``K_t = R_t = sigma_t``, the probability-flow ODE in ``y = x / alpha`` is
``dy = eps_theta d rho`` with ``rho = sigma / alpha``. The gDDIM step integrates it exactly for an
``eps_theta`` that is a Lagrange polynomial of order ``order`` through the last ``order + 1`` network
evaluations::

    y_s = y_t + sum_j w_j eps_j,   w_j = int_{rho_t}^{rho_s} l_j(rho) d rho,   x_s = alpha_s y_s.

``order = 0`` is DDIM (eta = 0) exactly (tested); on a diagonal process it is the per-coordinate
exponential-integrator step that plain DDIM (one alpha for all coordinates) gets wrong. The paper (and
its code) interpolates in time t with numerical quadrature; here the polynomial is in rho (DEIS's
rho-AB form), which makes the weights closed-form; the two coincide at order 0.

Stochastic gDDIM (``lam`` = the paper's lambda > 0): the reverse SDEs ``dx = [f x - (1 + lam^2)/2 g^2 s] dt
+ lam g dw`` share the marginals of the forward process (lam = 0 is the ODE, lam = 1 the reverse SDE). Over
one step the score is taken as that of a point mass at the step's x0 prediction (gDDIM's approximation,
exact for Dirac data): the SDE is then linear and solved exactly. With ``x = alpha x0 + sigma u`` it reads
``du = (lam^2/2) u d log(rho^2) + lam dB`` (any alpha, sigma: also the diagonal case), so::

    x_s = alpha_s x0 + sigma_s (c eps + sqrt(1 - c^2) z),   c = (rho_s / rho_t)^(lam^2),   z ~ N(0, I).

On the VP chain this is DDIM's step with sigma_eta^2 = sigma_s^2 (1 - c^2), i.e. a per-step
``eta^2 = (1 - r^(2 lam^2)) / (1 - r^2)``, ``r = rho_s / rho_t``: lam = 0 is eta = 0, lam = 1 is eta = 1
(DDPM's posterior) exactly; other lam give an eta that varies along the chain (tested against
:func:`ddim_step` with that eta). The stochastic step is single-step (``order = 0``): the multistep
extrapolation is for the ODE only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..generators import GeneratorLike
from ..schedules import Schedule, Spacing
from .base import (
    Denoiser,
    Hook,
    Model,
    begin_hooks,
    finish_step,
    predict_with_hooks,
    prepare,
    progress_iter,
    randn_like,
)


def _check_lam(lam: float, order: int) -> None:
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"gDDIM lam must be a finite number >= 0, got {lam!r}")
    if lam > 0 and order != 0:
        raise ValueError(f"stochastic gDDIM (lam = {lam} > 0) is single-step: pass order=0 (got order={order}); "
                         "multistep extrapolation is for the deterministic lam = 0 only")


def gddim_eta(abar_t: float, abar_s: float, lam: float) -> float:
    """The DDIM eta of one stochastic gDDIM step from alpha-bar ``abar_t`` to ``abar_s`` (VP chain):
    ``sqrt((1 - r^(2 lam^2)) / (1 - r^2))``, ``r = rho_s / rho_t``, ``rho = sqrt((1 - abar) / abar)``."""
    r2 = _rho_ratio_sq(abar_t, abar_s)
    if r2 >= 1.0:
        return 0.0
    return math.sqrt((1.0 - r2 ** (lam * lam)) / (1.0 - r2))


def _rho_ratio_sq(abar_t: float, abar_s: float) -> float:
    """(rho_s / rho_t)^2; 0 when abar_t = 0 (rho_t infinite) or abar_s = 1 (rho_s = 0)."""
    if abar_t <= 0.0 or abar_s >= 1.0:
        return 0.0
    return (1.0 - abar_s) * abar_t / (abar_s * (1.0 - abar_t))


def lagrange_weights(nodes: Sequence, lo, hi) -> list:
    """``int_lo^hi l_j(r) dr`` for the Lagrange basis polynomials ``l_j`` on ``nodes``.

    Nodes and limits are floats or (elementwise, for diagonal processes) tensors of one shape; the
    basis polynomials are expanded into monomial coefficients and integrated exactly.
    """
    out = []
    for j, rj in enumerate(nodes):
        coef = [1.0]  # coef[i] multiplies r**i
        for k, rk in enumerate(nodes):
            if k == j:
                continue
            scale = 1.0 / (rj - rk)
            shifted = [0.0, *coef]  # r * poly
            lowered = [*(-rk * c for c in coef), 0.0]  # -r_k * poly
            coef = [(a + b) * scale for a, b in zip(shifted, lowered)]
        out.append(sum(c * (hi ** (i + 1) - lo ** (i + 1)) / (i + 1) for i, c in enumerate(coef)))
    return out


def gddim(
    denoise: Denoiser,
    x_T: Tensor,
    schedule: Schedule,
    *,
    steps: int | None = 20,
    spacing: Spacing = "linspace",
    order: int = 2,
    lam: float = 0.0,
    prediction_type: str = "eps",
    clip: bool | tuple[float, float] = False,
    dynamic_threshold: float | None = None,
    hooks: Sequence[Hook] = (),
    generator: GeneratorLike = None,
    progress: bool | Callable = False,
) -> Tensor:
    """gDDIM: deterministic (``lam = 0``) with ``order``-th order multistep extrapolation (0: DDIM), or
    stochastic (``lam > 0``, ``order = 0``; noise from ``generator``), see the module notes."""
    if order not in (0, 1, 2, 3):
        raise ValueError(f"gDDIM order must be 0, 1, 2 or 3, got {order}")
    _check_lam(lam, order)
    sched = prepare(x_T, schedule, steps, spacing)
    model = Model(denoise, sched, prediction_type, "fixed_small", clip, dynamic_threshold)
    x = x_T
    begin_hooks(hooks, x, sched)
    n = len(sched)
    history: list[tuple[float, Tensor]] = []  # (rho_j, eps_j), most recent last
    for step, index in enumerate(progress_iter(range(n - 1, -1, -1), n, progress, "gddim")):
        abar_s = float(sched.alphas_cumprod_prev[index])
        ctx, _ = predict_with_hooks(model, x, index, step, abar_s, hooks, generator)
        if lam > 0:
            x = finish_step(ctx, _stochastic_step(ctx, abar_s, lam, generator), hooks)
            continue
        with torch.no_grad():
            a_t = ctx.abar_t
            if a_t == 0.0:  # zero terminal SNR: y is undefined; the first step lands on x0 + rho_s eps
                x0, eps = ctx.x0.detach(), ctx.eps.detach()
                x_prev = math.sqrt(abar_s) * x0 + math.sqrt(1 - abar_s) * eps
                x = finish_step(ctx, x_prev, hooks)
                continue
            rho_t = math.sqrt((1 - a_t) / a_t)
            rho_s = math.sqrt((1 - abar_s) / abar_s)
            eps = ctx.eps.detach()
            history.append((rho_t, eps))
            history = history[-(order + 1):]
            nodes = [r for r, _ in history]
            weights = lagrange_weights(nodes, rho_t, rho_s)
            y = ctx.x_t.detach() / math.sqrt(a_t)
            for w, (_, e) in zip(weights, history):
                y = y + w * e
            x_prev = math.sqrt(abar_s) * y
        x = finish_step(ctx, x_prev, hooks)
    return x


@torch.no_grad()
def _stochastic_step(ctx, abar_s: float, lam: float, generator: GeneratorLike) -> Tensor:
    """x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) (c eps + sqrt(1 - c^2) z) on the VP chain."""
    c = _rho_ratio_sq(ctx.abar_t, abar_s) ** (lam * lam / 2)
    x0, eps = ctx.x0.detach(), ctx.eps.detach()
    sigma_s = math.sqrt(max(0.0, 1.0 - abar_s))
    x_prev = math.sqrt(abar_s) * x0 + sigma_s * c * eps
    noise_sd = sigma_s * math.sqrt(max(0.0, 1.0 - c * c))
    if noise_sd > 0:
        x_prev = x_prev + noise_sd * randn_like(ctx.x_t, generator)
    return x_prev


class DiagonalDiffusion:
    """A linear diffusion that is diagonal in some basis: ``x_t = alpha_t * x_0 + sigma_t * eps``
    elementwise, with per-index tensors ``alphas[i]``, ``sigmas[i]`` broadcastable to the sample
    (blurring diffusion in a DCT / Fourier basis is one). Work in the basis: the denoiser sees and
    returns basis coordinates. Index 0 is the least noisy level; sampling ends at x_0."""

    def __init__(self, alphas: Tensor, sigmas: Tensor, timesteps: Tensor | None = None) -> None:
        a, s = torch.as_tensor(alphas, dtype=torch.float64), torch.as_tensor(sigmas, dtype=torch.float64)
        if a.shape != s.shape or a.ndim < 1 or a.shape[0] < 1:
            raise ValueError(f"alphas {tuple(a.shape)} and sigmas {tuple(s.shape)} need one shape (levels, ...)")
        if not (torch.isfinite(a).all() and torch.isfinite(s).all()) or (a <= 0).any() or (s <= 0).any():
            raise ValueError("a diagonal diffusion needs finite alphas > 0 and sigmas > 0 at every level")
        rho = s / a
        if a.shape[0] > 1 and not (rho[1:] > rho[:-1]).all():
            raise ValueError("sigma / alpha must increase with the level index at every coordinate")
        self.alphas, self.sigmas = a, s
        self.timesteps = torch.arange(a.shape[0]) if timesteps is None else torch.as_tensor(timesteps).long()

    def __len__(self) -> int:
        return self.alphas.shape[0]


@torch.no_grad()
def gddim_diagonal(
    denoise: Denoiser,
    x_T: Tensor,
    process: DiagonalDiffusion,
    *,
    order: int = 0,
    lam: float = 0.0,
    generator: GeneratorLike = None,
) -> Tensor:
    """gDDIM on a diagonal linear diffusion (``K_t = R_t = diag(sigma_t)``), every level of ``process``
    walked from the last to index 0, then to x_0 (``rho = 0``). ``denoise(x, t)`` predicts eps.
    With scalar alphas/sigmas this is :func:`gddim` on the same levels. ``lam > 0`` (with ``order = 0``):
    the stochastic step of the module notes per coordinate, noise from ``generator``."""
    if order not in (0, 1, 2, 3):
        raise ValueError(f"gDDIM order must be 0, 1, 2 or 3, got {order}")
    _check_lam(lam, order)
    x = x_T
    a_tab = process.alphas.to(device=x.device, dtype=x.dtype)
    s_tab = process.sigmas.to(device=x.device, dtype=x.dtype)
    rho_tab = (process.sigmas / process.alphas).to(device=x.device, dtype=x.dtype)
    history: list[tuple[Tensor, Tensor]] = []
    for i in range(len(process) - 1, -1, -1):
        t = torch.full((x.shape[0],), int(process.timesteps[i]), device=x.device, dtype=torch.long)
        eps = denoise(x, t)
        if lam > 0:
            x0 = (x - s_tab[i] * eps) / a_tab[i]
            if i == 0:
                x = x0
                continue
            c = (rho_tab[i - 1] / rho_tab[i]) ** (lam * lam)
            noise = (1 - c * c).clamp(min=0).sqrt() * randn_like(x, generator)
            x = a_tab[i - 1] * x0 + s_tab[i - 1] * (c * eps + noise)
            continue
        history = [*history, (rho_tab[i], eps)][-(order + 1):]
        rho_s = rho_tab[i - 1] if i > 0 else torch.zeros_like(rho_tab[i])
        weights = lagrange_weights([r for r, _ in history], rho_tab[i], rho_s)
        y = x / a_tab[i]
        for w, (_, e) in zip(weights, history):
            y = y + w * e
        x = y * a_tab[i - 1] if i > 0 else y
    return x
