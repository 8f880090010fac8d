"""DDIM (Song et al. 2021): sampling with eta, and deterministic inversion for eta = 0."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..generators import GeneratorLike
from ..process import check_spatial
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


def ddim_sigma(abar_t: float, abar_s: float, eta: float) -> float:
    """sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s)."""
    return eta * math.sqrt((1 - abar_s) / (1 - abar_t)) * math.sqrt(max(0.0, 1 - abar_t / abar_s))


def ddim_step(
    model: Model,
    x: Tensor,
    index: int,
    eta: float = 0.0,
    step: int = 0,
    hooks: Sequence[Hook] = (),
    generator: GeneratorLike = None,
) -> Tensor:
    """One DDIM step from schedule index ``index`` to ``index - 1`` (alpha-bar 1 after index 0)."""
    s = model.schedule
    abar_s = float(s.alphas_cumprod_prev[index])
    ctx, _ = predict_with_hooks(model, x, index, step, abar_s, hooks, generator)
    with torch.no_grad():
        sigma = ddim_sigma(ctx.abar_t, abar_s, eta)
        x0, eps = ctx.x0.detach(), ctx.eps.detach()
        x_prev = math.sqrt(abar_s) * x0 + math.sqrt(max(0.0, 1 - abar_s - sigma**2)) * eps
        if sigma > 0:
            x_prev = x_prev + sigma * randn_like(x, generator)
    return finish_step(ctx, x_prev, hooks)


def ddim(
    denoise: Denoiser,
    x_T: Tensor,
    schedule: Schedule,
    *,
    steps: int | None = 50,
    spacing: Spacing = "linspace",
    eta: float = 0.0,
    prediction_type: str = "eps",
    clip: bool | tuple[float, float] = False,
    dynamic_threshold: float | None = None,
    hooks: Sequence[Hook] = (),
    generator: GeneratorLike = None,
    progress: bool | Callable = False,
) -> Tensor:
    """DDIM sampling; ``eta = 0`` is deterministic, ``eta = 1`` is DDPM on the sub-sequence."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    sched = prepare(x_T, schedule, steps, spacing)
    model = Model(denoise, sched, prediction_type, "fixed_small", clip, dynamic_threshold)
    x = x_T
    begin_hooks(hooks, x, sched)
    n = len(sched)
    for step, index in enumerate(progress_iter(range(n - 1, -1, -1), n, progress, "ddim")):
        x = ddim_step(model, x, index, eta, step, hooks, generator)
    return x


@torch.no_grad()
def ddim_invert(
    denoise: Denoiser,
    x0: Tensor,
    schedule: Schedule,
    *,
    steps: int | None = 50,
    spacing: Spacing = "linspace",
    prediction_type: str = "eps",
    fixed_point_iters: int = 3,
    progress: bool | Callable = False,
) -> Tensor:
    """Encode x0 to the x_T from which deterministic DDIM (same steps, eta 0) decodes x0.

    Each step solves ``ddim_step(x_next) = x_cur`` for x_next by fixed-point iteration on the
    network's noise estimate; ``fixed_point_iters = 1`` is the usual one-evaluation inversion.
    """
    check_spatial(x0, "x0")
    if fixed_point_iters < 1:
        raise ValueError("fixed_point_iters must be >= 1")
    sched = prepare(x0, schedule, steps, spacing)
    model = Model(denoise, sched, prediction_type, "fixed_small")
    x = x0
    n = len(sched)
    for index in progress_iter(range(n), n, progress, "ddim-invert"):
        a_t, a_s = float(sched.alphas_cumprod[index]), float(sched.alphas_cumprod_prev[index])
        x_next = x
        for _ in range(fixed_point_iters):
            _, eps, _ = model(x_next, index)
            x_next = math.sqrt(a_t / a_s) * (x - math.sqrt(1 - a_s) * eps) + math.sqrt(1 - a_t) * eps
        x = x_next
    return x
