"""Ancestral DDPM sampling, exact on respaced schedules (fixed-small, fixed-large or learned variance)."""

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

StepNoise = Callable[[Tensor, int, GeneratorLike], Tensor]


def step_log_variance(model: Model, index: int, v: Tensor | None) -> Tensor | float:
    """log of the reverse-step variance at schedule ``index`` for the model's variance mode."""
    s = model.schedule
    if model.variance == "fixed_small":
        return float(s.posterior_log_variance_clipped[index])
    if model.variance == "fixed_large":
        return math.log(float(s.betas[index]))
    frac = (v + 1) / 2  # learned: log-space interpolation between beta_tilde and beta (IDDPM)
    return frac * math.log(float(s.betas[index])) + (1 - frac) * float(s.posterior_log_variance_clipped[index])


def posterior_mean(schedule: Schedule, index: int, x0: Tensor, x_t: Tensor) -> Tensor:
    """Mean of q(x_{i-1} | x_i, x_0) on the walked schedule."""
    return float(schedule.posterior_mean_coef_x0[index]) * x0 + float(schedule.posterior_mean_coef_xt[index]) * x_t


def ddpm_step(
    model: Model,
    x: Tensor,
    index: int,
    step: int = 0,
    hooks: Sequence[Hook] = (),
    generator: GeneratorLike = None,
    noise_fn: StepNoise | None = None,
) -> Tensor:
    """One ancestral step from schedule index ``index`` to ``index - 1`` (to x_0 at index 0)."""
    s = model.schedule
    ctx, v = predict_with_hooks(model, x, index, step, float(s.alphas_cumprod_prev[index]), hooks, generator)
    with torch.no_grad():
        mean = posterior_mean(s, index, ctx.x0.detach(), x)
        if index == 0:
            x_prev = mean
        else:
            log_var = step_log_variance(model, index, None if v is None else v.detach())
            noise = noise_fn(x, index, generator) if noise_fn is not None else randn_like(x, generator)
            std = torch.exp(0.5 * log_var) if isinstance(log_var, Tensor) else math.exp(0.5 * log_var)
            x_prev = mean + std * noise
    return finish_step(ctx, x_prev, hooks)


def ddpm(
    denoise: Denoiser,
    x_T: Tensor,
    schedule: Schedule,
    *,
    steps: int | None = None,
    spacing: Spacing = "linspace",
    prediction_type: str = "eps",
    variance: str = "fixed_small",
    clip: bool | tuple[float, float] = False,
    dynamic_threshold: float | None = None,
    hooks: Sequence[Hook] = (),
    generator: GeneratorLike = None,
    noise_fn: StepNoise | None = None,
    progress: bool | Callable = False,
) -> Tensor:
    """Ancestral sampling from x_T over ``steps`` respaced steps (all training steps by default)."""
    sched = prepare(x_T, schedule, steps, spacing)
    model = Model(denoise, sched, prediction_type, variance, clip, dynamic_threshold)
    x = x_T
    begin_hooks(hooks, x, sched)
    n = len(sched)
    for step, index in enumerate(progress_iter(range(n - 1, -1, -1), n, progress, "ddpm")):
        x = ddpm_step(model, x, index, step, hooks, generator, noise_fn)
    return x
