"""Analytic-DPM (Bao et al. 2022): the optimal reverse variance from the network's noise norm.

For the DDPM family on a (respaced) chain, the optimal variance of p(x_{n-1} | x_n) is

    sigma*_n^2 = lambda_n^2 + (sqrt(beta_bar_n / alpha_n) - sqrt(beta_bar_{n-1} - lambda_n^2))^2 (1 - Gamma_n)

with lambda_n^2 the posterior variance, alpha_n = abar_n / abar_{n-1} the step's alpha,
beta_bar = 1 - abar and Gamma_n = E ||eps_theta(x_n, n)||^2 / d, estimated once per checkpoint by
Monte Carlo over training data (:func:`estimate_gamma`). The implied Cov[x_0 | x_n] is clipped to
[0, ((b - a) / 2)^2] for data in [a, b], the paper's bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..generators import GeneratorLike
from ..process import check_spatial, q_sample, to_x0_eps
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
from .ddpm import posterior_mean


@dataclass
class AnalyticGamma:
    """Gamma_n = E||eps_theta(x_n, n)||^2 / d at training timesteps; save it with the checkpoint."""

    timesteps: Tensor  # (K,) long, ascending
    gamma: Tensor  # (K,) float64

    def state_dict(self) -> dict[str, Tensor]:
        return {"timesteps": self.timesteps, "gamma": self.gamma}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> AnalyticGamma:
        return cls(state["timesteps"].long().cpu(), state["gamma"].double().cpu())

    def at(self, timesteps: Tensor) -> Tensor:
        """Gamma at the given training timesteps; raises if any was not estimated."""
        lookup = {int(t): float(g) for t, g in zip(self.timesteps, self.gamma)}
        missing = [int(t) for t in timesteps if int(t) not in lookup]
        if missing:
            raise ValueError(
                f"Gamma was not estimated at timesteps {missing[:8]}...; call estimate_gamma with the "
                "sampling schedule (or with all training timesteps)"
            )
        return torch.tensor([lookup[int(t)] for t in timesteps], dtype=torch.float64)


@torch.no_grad()
def estimate_gamma(
    denoise: Denoiser,
    schedule: Schedule,
    data: Iterable[Tensor],
    *,
    prediction_type: str = "eps",
    max_batches: int | None = None,
    generator: GeneratorLike = None,
    progress: bool | Callable = False,
) -> AnalyticGamma:
    """Monte-Carlo estimate of Gamma_n at every index of ``schedule`` (respace it first to save work)."""
    n = len(schedule)
    total = torch.zeros(n, dtype=torch.float64)
    count = 0
    for b, x0 in enumerate(data):
        if max_batches is not None and b >= max_batches:
            break
        check_spatial(x0, "data batch")
        model = Model(denoise, schedule, prediction_type)
        for index in progress_iter(range(n), n, progress, "analytic-dpm gamma"):
            idx = torch.full((x0.shape[0],), index, device=x0.device, dtype=torch.long)
            eps = randn_like(x0, generator)
            x_t = q_sample(schedule, x0, idx, eps)
            pred, _ = model.raw(x_t, model.timestep(x_t, index))
            _, eps_hat = to_x0_eps(pred, x_t, float(schedule.alphas_cumprod[index]), prediction_type)
            total[index] += float(eps_hat.double().pow(2).flatten(1).mean(1).sum())
        count += x0.shape[0]
    if count == 0:
        raise ValueError("estimate_gamma got no data batches")
    return AnalyticGamma(schedule.timesteps.clone(), total / count)


def analytic_variances(schedule: Schedule, gamma: Tensor, data_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """sigma*_n^2 for every index of ``schedule`` (index 0 is the final, noise-free step)."""
    ac, prev = schedule.alphas_cumprod, schedule.alphas_cumprod_prev
    lam2 = schedule.posterior_variance
    cov_max = ((data_range[1] - data_range[0]) / 2) ** 2
    cov = ((1 - ac) / ac * (1 - gamma)).clamp(0.0, cov_max)  # Cov[x0 | x_n] per dimension, clipped
    c = prev.sqrt() - (1 - prev - lam2).clamp_min(0).sqrt() * (ac / (1 - ac)).sqrt()
    return lam2 + c**2 * cov


def analytic_dpm(
    denoise: Denoiser,
    x_T: Tensor,
    schedule: Schedule,
    gamma: AnalyticGamma,
    *,
    steps: int | None = 50,
    spacing: Spacing = "linspace",
    prediction_type: str = "eps",
    clip: bool | tuple[float, float] = False,
    data_range: tuple[float, float] = (-1.0, 1.0),
    hooks: Sequence[Hook] = (),
    generator: GeneratorLike = None,
    progress: bool | Callable = False,
) -> Tensor:
    """Ancestral sampling with the analytic optimal variances (no noise on the final step)."""
    sched = prepare(x_T, schedule, steps, spacing)
    var = analytic_variances(sched, gamma.at(sched.timesteps), data_range)
    model = Model(denoise, sched, prediction_type, "fixed_small", clip)
    x = x_T
    begin_hooks(hooks, x, sched)
    n = len(sched)
    for step, index in enumerate(progress_iter(range(n - 1, -1, -1), n, progress, "analytic-dpm")):
        ctx, _ = predict_with_hooks(model, x, index, step, float(sched.alphas_cumprod_prev[index]), hooks, generator)
        with torch.no_grad():
            mean = posterior_mean(sched, index, ctx.x0.detach(), x)
            x_next = mean if index == 0 else mean + math.sqrt(float(var[index])) * randn_like(x, generator)
        x = finish_step(ctx, x_next, hooks)
    return x
