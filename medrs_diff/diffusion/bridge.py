"""Denoising diffusion bridges (DDBM, Zhou et al. ICLR 2024): diffusion pinned at the condition x_T = y.

A base diffusion ``x_t = alpha_t x_0 + sigma_t eps`` (VE: ``alpha = 1, sigma = t``; VP: DDBM's
``log alpha_t = -beta_d t^2 / 4 - beta_min t / 2``, ``sigma_t^2 = 1 - alpha_t^2``) conditioned by Doob's
h-transform on ``x_T = y`` has the marginal ``q(x_t | x_0, y) = N(a_t y + b_t x_0, c_t I)`` with
``r_t = SNR_T / SNR_t``::

    a_t = (alpha_t / alpha_T) r_t,   b_t = alpha_t (1 - r_t),   c_t = sigma_t^2 (1 - r_t).

A denoiser ``D(x_t, t, y) ~ E[x_0 | x_t, y]`` (bridge score matching) gives the bridge score
``s = -(x_t - a_t y - b_t D) / c_t``; ``h = grad_x log p(x_T = y | x_t)`` is closed form. The reverse
SDE drift is ``f - g^2 (s - h)``, the probability-flow ODE drift ``f - g^2 (s / 2 - h)``.
:func:`ddbm_sample` is the paper's hybrid sampler: per step an Euler-Maruyama SDE step over the first
``churn_step_ratio`` of the interval, then a Heun ODE step (Euler on the last step to t = 0), on the
Karras (rho = 7) time grid. :class:`BridgePreconditioner` is the paper's EDM-style preconditioning
(``sigma_data``, ``sigma_data_end``, ``cov_xy``), :class:`BridgeLoss` the weighted denoising loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .generators import GeneratorLike, generator_device, randn_like
from .process import check_spatial

BridgeKind = Literal["ve", "vp"]
BridgeDenoiser = Callable[[Tensor, Tensor, Tensor], Tensor]  # D(x_t, t, y) -> x0 estimate


def _col(v: Tensor, ndim: int) -> Tensor:
    return v.reshape(-1, *([1] * (ndim - 1)))


@dataclass(frozen=True)
class BridgeProcess:
    """The base diffusion of a bridge and its closed forms; times ``t`` in (0, ``t_max``].

    VE defaults are DDBM's (t_max = sigma_max = 80, t_min = 0.002); VP uses ``beta_d = 2``,
    ``beta_min = 0.1`` on t in (0, 1] (t_max = 1, t_min = 1e-4).
    """

    kind: BridgeKind = "ve"
    t_max: float | None = None
    t_min: float | None = None
    beta_d: float = 2.0
    beta_min: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in ("ve", "vp"):
            raise ValueError(f"unknown bridge kind {self.kind!r}; choose 've' or 'vp'")
        if self.t_max is None:
            object.__setattr__(self, "t_max", 80.0 if self.kind == "ve" else 1.0)
        if self.t_min is None:
            object.__setattr__(self, "t_min", 0.002 if self.kind == "ve" else 1e-4)
        if not (0 < self.t_min < self.t_max and math.isfinite(self.t_max)):
            raise ValueError(f"bridge times need 0 < t_min < t_max, got t_min={self.t_min}, t_max={self.t_max}")
        if self.kind == "vp" and not (self.beta_d >= 0 and self.beta_min > 0):
            raise ValueError("a VP bridge needs beta_d >= 0 and beta_min > 0")

    # -- base diffusion -------------------------------------------------------------------------
    def log_alpha(self, t: Tensor) -> Tensor:
        if self.kind == "ve":
            return torch.zeros_like(t)
        return -0.25 * self.beta_d * t**2 - 0.5 * self.beta_min * t

    def log_snr(self, t: Tensor) -> Tensor:
        if self.kind == "ve":
            return -2.0 * torch.log(t)
        return -torch.log(torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t))

    def sigma2(self, t: Tensor) -> Tensor:
        """Marginal noise variance of the base diffusion: sigma_t^2 = alpha_t^2 / SNR_t."""
        return torch.exp(2 * self.log_alpha(t) - self.log_snr(t))

    def drift_coef(self, t: Tensor) -> Tensor:
        """f(x, t) = drift_coef(t) x (d log alpha / dt)."""
        return torch.zeros_like(t) if self.kind == "ve" else -0.5 * (self.beta_d * t + self.beta_min)

    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion coefficient: d sigma^2/dt - 2 (d log alpha/dt) sigma^2."""
        return 2.0 * t if self.kind == "ve" else self.beta_d * t + self.beta_min

    # -- bridge marginals ------------------------------------------------------------------------
    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(a_t, b_t, c_t) of q(x_t | x_0, x_T) = N(a_t x_T + b_t x_0, c_t I)."""
        t = t.double()
        t_max = torch.full_like(t, self.t_max)
        d_snr = self.log_snr(t_max) - self.log_snr(t)  # log r_t <= 0
        one_minus_r = -torch.expm1(d_snr)
        la = self.log_alpha(t)
        a = torch.exp(la - self.log_alpha(t_max) + d_snr)
        b = torch.exp(la) * one_minus_r
        c = self.sigma2(t) * one_minus_r
        return a, b, c

    def sample(self, x0: Tensor, y: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t ~ q(x_t | x_0, y) at per-sample times ``t`` (B,)."""
        a, b, c = (_col(v, x0.ndim).to(x0.dtype) for v in self.coefficients(t))
        return a * y + b * x0 + c.sqrt() * noise

    def h(self, x: Tensor, y: Tensor, t: float) -> Tensor:
        """grad_x log p(x_T = y | x_t = x) of the base diffusion."""
        tt = torch.tensor([t], dtype=torch.float64)
        ratio = float(torch.exp(self.log_alpha(tt) - self.log_alpha(torch.tensor([self.t_max], dtype=torch.float64))))
        denom = float(self.sigma2(tt) * torch.expm1(self.log_snr(tt) - self.log_snr(
            torch.tensor([self.t_max], dtype=torch.float64))))
        return (ratio * y - x) / denom

    def drifts(self, x: Tensor, y: Tensor, t: float, x0: Tensor, guidance: float = 1.0) -> tuple[Tensor, Tensor, float]:
        """(ODE drift, SDE drift, g^2) at time ``t`` given the denoised estimate ``x0``."""
        tt = torch.tensor([t], dtype=torch.float64)
        a, b, c = (float(v) for v in self.coefficients(tt))
        score = -(x - a * y - b * x0) / c
        hx = guidance * self.h(x, y, t)
        f = float(self.drift_coef(tt)) * x
        g2 = float(self.g2(tt))
        return f - g2 * (0.5 * score - hx), f - g2 * (score - hx), g2


@dataclass(frozen=True)
class BridgePreconditioner:
    """DDBM's EDM-style scalings for ``D = c_skip x_t + c_out F(c_in x_t, c_noise, y)``.

    With ``A = a^2 s_T^2 + b^2 s_0^2 + 2 a b cov + c`` (s_0 = sigma_data, s_T = sigma_data_end):
    ``c_in = A^-1/2``, ``c_skip = (b s_0^2 + a cov) / A``,
    ``c_out = sqrt(a^2 (s_T^2 s_0^2 - cov^2) + s_0^2 c) / sqrt(A)``, loss weight ``1 / c_out^2``;
    ``c_noise = log(t) / 4``. ``F`` sees unit-variance inputs and regresses a unit-variance target
    when (x_0, y) have these second moments (tested).
    """

    process: BridgeProcess
    sigma_data: float = 0.5
    sigma_data_end: float | None = None
    cov_xy: float = 0.0

    def scalings(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in, weight) at times ``t`` (float64)."""
        s0 = self.sigma_data
        sT = self.sigma_data if self.sigma_data_end is None else self.sigma_data_end
        a, b, c = self.process.coefficients(t)
        big_a = a**2 * sT**2 + b**2 * s0**2 + 2 * a * b * self.cov_xy + c
        c_in = big_a.rsqrt()
        c_skip = (b * s0**2 + a * self.cov_xy) / big_a
        c_out = (a**2 * (sT**2 * s0**2 - self.cov_xy**2) + s0**2 * c).sqrt() * c_in
        return c_skip, c_out, c_in, c_out.pow(-2)

    def denoiser(self, net: Callable[..., Tensor]) -> BridgeDenoiser:
        """``D(x_t, t, y)`` from a raw network ``net(c_in x_t, c_noise, y)``."""

        def denoise(x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
            c_skip, c_out, c_in, _ = (_col(v, x_t.ndim).to(x_t.dtype) for v in self.scalings(t))
            c_noise = 0.25 * torch.log(t.to(x_t.dtype))
            return c_skip * x_t + c_out * net(c_in * x_t, c_noise, y)

        return denoise


@dataclass
class BridgeLoss:
    """Bridge score matching: ``E_t weight(t) |D(x_t, t, y) - x_0|^2`` with t uniform on
    [t_min, t_max - 1e-4 t_max] (DDBM's code clips t at t_max) and the preconditioner's weight."""

    precond: BridgePreconditioner

    def __call__(self, net: Callable[..., Tensor], x0: Tensor, y: Tensor, *, t: Tensor | None = None,
                 noise: Tensor | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        check_spatial(x0, "x0")
        if y.shape != x0.shape:
            raise ValueError(f"bridge condition y {tuple(y.shape)} and target {tuple(x0.shape)} differ in shape; "
                             "a bridge needs both ends in one space (project or resize y first)")
        p = self.precond.process
        if t is None:
            # drawn where the generator lives (a CUDA generator in GPU training), then moved to x0's device
            u = torch.rand(x0.shape[0], generator=generator, dtype=torch.float64,
                           device=generator_device(generator)).to(x0.device)
            t = p.t_min + (p.t_max * (1 - 1e-4) - p.t_min) * u
        if noise is None:
            noise = randn_like(x0, generator)
        x_t = p.sample(x0, y, t, noise)
        den = self.precond.denoiser(net)(x_t, t, y)
        weight = _col(self.precond.scalings(t)[3], x0.ndim).to(x0.dtype)
        per_sample = (weight * (den - x0) ** 2).flatten(1).mean(1)
        loss = per_sample.mean()
        return loss, {"loss_simple": loss.detach(), "xs_mse": ((den - x0) ** 2).mean().detach()}


def karras_times(steps: int, t_min: float, t_max: float, rho: float = 7.0) -> list[float]:
    """``steps`` Karras times from ``t_max`` down to ``t_min``, then 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = t_min ** (1 / rho), t_max ** (1 / rho)
    return [*((hi + ramp * (lo - hi)) ** rho).tolist(), 0.0]


@torch.no_grad()
def ddbm_sample(
    denoise: BridgeDenoiser,
    y: Tensor,
    process: BridgeProcess,
    *,
    steps: int = 40,
    churn_step_ratio: float = 0.33,
    rho: float = 7.0,
    guidance: float = 1.0,
    clip: bool | tuple[float, float] = False,
    generator: GeneratorLike = None,
) -> tuple[Tensor, int]:
    """DDBM's hybrid sampler from ``x_T = y``; returns (x_0, network evaluations).

    Each of ``steps`` intervals [t_i, t_{i+1}] starts with an Euler-Maruyama step of the reverse SDE to
    ``t_i + churn_step_ratio (t_{i+1} - t_i)`` (skipped when the ratio is 0), then a Heun step of the
    probability-flow ODE (Euler when t_{i+1} = 0). Starts at ``t_max - 1e-4`` as DDBM does. The ODE
    alone (ratio 0) is deterministic given y, so it cannot draw from p(x_0 | y): keep the ratio > 0
    to sample.
    """
    check_spatial(y, "y")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 <= churn_step_ratio < 1:
        raise ValueError(f"churn_step_ratio must lie in [0, 1), got {churn_step_ratio}")
    times = karras_times(steps, process.t_min, process.t_max - 1e-4, rho)
    x, nfe = y.clone(), 0

    def d_at(x_: Tensor, t_: float) -> Tensor:
        x0 = denoise(x_, torch.full((x_.shape[0],), t_, dtype=torch.float64, device=x_.device), y)
        if clip:
            lo, hi = (-1.0, 1.0) if clip is True else clip
            x0 = x0.clamp(lo, hi)
        return x0

    for i in range(steps):
        t_i, t_next = times[i], times[i + 1]
        t_hat = t_i
        if churn_step_ratio > 0:
            t_hat = t_i + (t_next - t_i) * churn_step_ratio
            _, d_sde, g2 = process.drifts(x, y, t_i, d_at(x, t_i), guidance)
            nfe += 1
            dt = t_hat - t_i
            x = x + d_sde * dt + math.sqrt(abs(dt) * g2) * randn_like(x, generator)
        d, _, _ = process.drifts(x, y, t_hat, d_at(x, t_hat), guidance)
        nfe += 1
        dt = t_next - t_hat
        if t_next == 0.0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2, _, _ = process.drifts(x2, y, t_next, d_at(x2, t_next), guidance)
            nfe += 1
            x = x + 0.5 * (d + d2) * dt
    if not torch.isfinite(x).all():
        raise FloatingPointError("DDBM sampling produced NaN or inf; check the network, t_min and the time grid")
    return x, nfe
