"""Residual denoising diffusion (RDDM, Liu et al. CVPR 2024).

The residual ``I_res = I_in - I_0`` and the noise are diffused with separate schedules::

    I_t = I_{t-1} + alpha_t I_res + beta_t eps_{t-1}   =>   I_t = I_0 + abar_t I_res + betabar_t eps,

``abar_t = sum_{i<=t} alpha_i`` and ``betabar_t^2 = sum_{i<=t} beta_i^2``. With ``abar_T = 1`` the chain
ends at ``I_in + betabar_T eps`` (restoration: the degraded input plus noise; generation: ``I_in = 0``).
The network predicts the residual, the noise, or both (``objective``: ``res``, ``noise``,
``res_noise``; L1 loss, as in the paper). The sampler is the paper's DDIM-like generalised reverse
step with ``sigma_t^2 = eta beta_t^2 betabar_{t-1}^2 / betabar_t^2``.

Two exact reductions (tested): a zero residual schedule (``abar = 0``) with
``betabar_t^2 = (1 - abar^DDPM_t) / abar^DDPM_t`` is DDIM run in the variance-exploding coordinates
``x / sqrt(abar^DDPM)`` (any ``eta``); :meth:`RDDMSchedule.from_ddpm` (``abar_t = 1 - sqrt(abar^DDPM_t)``,
``betabar_t^2 = 1 - abar^DDPM_t``, ``I_in = 0``) is DDIM itself at ``eta = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .generators import GeneratorLike, randn_like
from .process import check_spatial
from .schedules import Schedule, Spacing, spaced_indices

Objective = Literal["res", "noise", "res_noise"]
Ramp = Literal["increased", "decreased", "average"]
OBJECTIVES = ("res", "noise", "res_noise")
RAMPS = ("increased", "decreased", "average")


def ramp(num_steps: int, kind: Ramp, total: float = 1.0) -> Tensor:
    """The paper's coefficient ramps, normalised to sum ``total``: ``increased`` (i / sum i),
    ``decreased`` (its reverse) or ``average`` (1 / T)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if kind in ("increased", "decreased"):
        x = torch.arange(1, num_steps + 1, dtype=torch.float64)
        x = x if kind == "increased" else x.flip(0)
        w = x / (0.5 * num_steps * (num_steps + 1))
    elif kind == "average":
        w = torch.full((num_steps,), 1.0 / num_steps, dtype=torch.float64)
    else:
        raise ValueError(f"unknown RDDM ramp {kind!r}; choose one of {RAMPS}")
    return w * total


class RDDMSchedule:
    """Cumulative residual and noise coefficients ``abar_t`` and ``betabar_t^2`` per index.

    ``timesteps[i]`` is the training timestep of index ``i`` (identity for a training schedule).
    ``abar`` must be non-decreasing in [0, 1]; ``betabar^2`` strictly increasing and positive.
    """

    def __init__(self, alphas_cumsum: Tensor, betas2_cumsum: Tensor, timesteps: Tensor | None = None) -> None:
        a = torch.as_tensor(alphas_cumsum, dtype=torch.float64).detach().cpu().flatten()
        b2 = torch.as_tensor(betas2_cumsum, dtype=torch.float64).detach().cpu().flatten()
        if a.numel() < 1 or a.shape != b2.shape:
            raise ValueError(f"abar ({a.numel()}) and betabar^2 ({b2.numel()}) need the same, non-zero length")
        if not (torch.isfinite(a).all() and torch.isfinite(b2).all()):
            raise ValueError("RDDM coefficients contain NaN or inf")
        if (a < 0).any() or (a > 1 + 1e-9).any() or (a[1:] < a[:-1] - 1e-15).any():
            raise ValueError("RDDM abar (cumulative residual weights) must be non-decreasing in [0, 1]")
        if (b2 <= 0).any() or (b2[1:] <= b2[:-1]).any():
            raise ValueError("RDDM betabar^2 (cumulative noise variance) must be positive and strictly increasing")
        self.alphas_cumsum = a
        self.betas2_cumsum = b2
        self.timesteps = torch.arange(a.numel()) if timesteps is None else torch.as_tensor(timesteps).long().cpu()
        if self.timesteps.numel() != a.numel():
            raise ValueError("timesteps and coefficients must have the same length")

    def __len__(self) -> int:
        return self.alphas_cumsum.numel()

    def __repr__(self) -> str:
        return (f"RDDMSchedule(steps={len(self)}, abar_T={float(self.alphas_cumsum[-1]):.4g}, "
                f"betabar_T^2={float(self.betas2_cumsum[-1]):.4g})")

    def respace(self, steps: int, spacing: Spacing = "linspace") -> RDDMSchedule:
        """``steps`` indices of this chain (cumulative coefficients are kept, so the step is exact)."""
        if not 1 <= steps <= len(self):
            raise ValueError(f"steps must lie in 1..{len(self)}, got {steps}")
        if spacing == "logsnr":
            raise ValueError("logsnr spacing is not defined for RDDM; use linspace, trailing or leading")
        idx = spaced_indices(len(self), steps, spacing)
        return RDDMSchedule(self.alphas_cumsum[idx], self.betas2_cumsum[idx], self.timesteps[idx])

    def gather(self, name: str, index: Tensor, ndim: int, dtype: torch.dtype = torch.float32) -> Tensor:
        values = getattr(self, name).to(device=index.device, dtype=dtype)[index]
        return values.reshape(-1, *([1] * (ndim - 1)))

    @classmethod
    def from_ddpm(cls, schedule: Schedule) -> RDDMSchedule:
        """The paper's DDPM correspondence (generation, ``I_in = 0``): ``abar = 1 - sqrt(abar^DDPM)``,
        ``betabar^2 = 1 - abar^DDPM``; then ``I_t`` is the DDPM ``x_t``."""
        ac = schedule.alphas_cumprod
        return cls(1.0 - ac.sqrt(), 1.0 - ac, schedule.timesteps)


def make_rddm_schedule(
    num_steps: int = 1000,
    alpha: Ramp = "decreased",
    beta2: Ramp = "increased",
    sum_scale: float = 1.0,
    residual_scale: float = 1.0,
) -> RDDMSchedule:
    """A training schedule from the paper's ramps: ``alpha_t`` sums to ``residual_scale`` (1: the chain
    ends at I_in; 0: no residual diffusion), ``beta_t^2`` to ``sum_scale`` (1 for generation;
    the paper's restoration configs use smaller totals, e.g. 0.01)."""
    if not (math.isfinite(sum_scale) and sum_scale > 0):
        raise ValueError(f"sum_scale must be a positive number, got {sum_scale}")
    if not (math.isfinite(residual_scale) and 0 <= residual_scale <= 1):
        raise ValueError(f"residual_scale must lie in [0, 1], got {residual_scale}")
    a = torch.cumsum(ramp(num_steps, alpha, residual_scale), 0)
    b2 = torch.cumsum(ramp(num_steps, beta2, sum_scale), 0)
    return RDDMSchedule(a.clamp(max=1.0), b2)


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown RDDM objective {objective!r}; choose one of {OBJECTIVES}")


def output_channels(objective: str, channels: int) -> int:
    """Channels the network must return: 2C for ``res_noise`` (residual, then noise), C otherwise."""
    check_objective(objective)
    return 2 * channels if objective == "res_noise" else channels


def q_sample(schedule: RDDMSchedule, x0: Tensor, x_in: Tensor, index: Tensor, noise: Tensor) -> Tensor:
    """``I_t = I_0 + abar_t (I_in - I_0) + betabar_t eps`` at per-sample indices."""
    a = schedule.gather("alphas_cumsum", index, x0.ndim, x0.dtype)
    b = schedule.gather("betas2_cumsum", index, x0.ndim, x0.dtype).sqrt()
    return x0 + a * (x_in - x0) + b * noise


def split_prediction(out: Tensor, x_t: Tensor, x_in: Tensor, abar: Tensor | float, betabar: Tensor | float,
                     objective: str) -> tuple[Tensor, Tensor, Tensor]:
    """(I_0, I_res, eps) implied by a network output at ``I_t`` (all three agree with ``I_t``)."""
    c = x_t.shape[1]
    if out.shape[1] != output_channels(objective, c):
        raise ValueError(f"the network returned {out.shape[1]} channels; RDDM objective {objective!r} with {c} "
                         f"data channel(s) needs {output_channels(objective, c)}")
    if objective == "res_noise":
        res, eps = out[:, :c], out[:, c:]
        x0 = x_t - abar * res - betabar * eps
    elif objective == "res":
        res = out
        x0 = x_in - res
        eps = (x_t - x0 - abar * res) / betabar
    else:  # noise: I_t - abar I_in - betabar eps = (1 - abar) I_0
        eps = out
        x0 = (x_t - abar * x_in - betabar * eps) / (1 - abar)
        res = x_in - x0
    return x0, res, eps


@dataclass
class RDDMLoss:
    """Training objective: L1 (default, the paper's) or MSE on the residual and/or the noise.

    ``__call__(model, x0, x_in, **model_kwargs)`` draws indices and noise, runs ``model(I_t, t, **kw)``
    (pass the condition, e.g. I_in concatenated, through the model or ``model_kwargs``) and returns
    (loss, logs).
    """

    schedule: RDDMSchedule
    objective: Objective = "res_noise"
    loss_type: Literal["l1", "mse"] = "l1"

    def __post_init__(self) -> None:
        check_objective(self.objective)
        if self.loss_type not in ("l1", "mse"):
            raise ValueError(f"unknown loss type {self.loss_type!r}; choose 'l1' or 'mse'")
        if self.objective == "noise" and float(self.schedule.alphas_cumsum[-1]) >= 1 - 1e-12:
            raise ValueError("RDDM objective 'noise' cannot recover I_0 where abar = 1 (the last step); "
                             "use 'res' or 'res_noise', or a residual schedule that sums to less than 1")

    def __call__(self, model: Callable[..., Tensor], x0: Tensor, x_in: Tensor, *, index: Tensor | None = None,
                 noise: Tensor | None = None, generator: torch.Generator | None = None,
                 **model_kwargs) -> tuple[Tensor, dict[str, Tensor]]:
        check_spatial(x0, "x0")
        if x_in.shape != x0.shape:
            raise ValueError(f"RDDM input {tuple(x_in.shape)} and target {tuple(x0.shape)} differ in shape")
        if index is None:
            index = torch.randint(0, len(self.schedule), (x0.shape[0],), device=x0.device, generator=generator)
        if noise is None:
            noise = randn_like(x0, generator)
        x_t = q_sample(self.schedule, x0, x_in, index, noise)
        t = self.schedule.timesteps.to(x0.device)[index]
        out = model(x_t, t, **model_kwargs)
        c = x0.shape[1]
        if out.shape[1] != output_channels(self.objective, c):
            raise ValueError(f"the network returned {out.shape[1]} channels; RDDM objective {self.objective!r} "
                             f"needs {output_channels(self.objective, c)}")
        res = x_in - x0
        target = {"res": res, "noise": noise, "res_noise": torch.cat([res, noise], 1)}[self.objective]
        err = (out - target).abs() if self.loss_type == "l1" else (out - target) ** 2
        logs = {}
        if self.objective == "res_noise":
            logs = {"loss_res": err[:, :c].mean().detach(), "loss_noise": err[:, c:].mean().detach()}
        loss = err.mean()
        return loss, {"loss_simple": loss.detach(), **logs}


@torch.no_grad()
def rddm_sample(
    denoise: Callable[[Tensor, Tensor], Tensor],
    x_in: Tensor,
    schedule: RDDMSchedule,
    *,
    steps: int | None = 10,
    spacing: Spacing = "linspace",
    eta: float = 0.0,
    objective: Objective = "res_noise",
    x_T: Tensor | None = None,
    clip: bool | tuple[float, float] = False,
    generator: GeneratorLike = None,
) -> Tensor:
    """RDDM's DDIM-like sampler from ``I_T = I_in + betabar_T eps`` (or a given ``x_T``) to I_0.

    Step from index i to s = i - 1 (``abar``/``betabar`` of the walked schedule)::

        I_s = I_t - (abar_t - abar_s) I_res - (betabar_t - sqrt(betabar_s^2 - sigma^2)) eps + sigma z,
        sigma^2 = eta (betabar_t^2 - betabar_s^2) betabar_s^2 / betabar_t^2;

    the last step returns the predicted I_0. ``denoise(I_t, t)`` closes over the condition.
    """
    check_spatial(x_in, "x_in")
    check_objective(objective)
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a number >= 0, got {eta}")
    sched = schedule if steps is None or steps == len(schedule) else schedule.respace(steps, spacing)
    a_tab, b2_tab = sched.alphas_cumsum.tolist(), sched.betas2_cumsum.tolist()
    if objective == "noise" and a_tab[-1] >= 1 - 1e-12:
        raise ValueError("RDDM objective 'noise' cannot recover I_0 where abar = 1; use 'res' or 'res_noise'")
    if x_T is None:
        x = x_in + math.sqrt(b2_tab[-1]) * randn_like(x_in, generator)
    else:
        if x_T.shape != x_in.shape:
            raise ValueError(f"x_T {tuple(x_T.shape)} and x_in {tuple(x_in.shape)} differ in shape")
        x = x_T
    x0 = x
    for i in range(len(sched) - 1, -1, -1):
        t = torch.full((x.shape[0],), int(sched.timesteps[i]), device=x.device, dtype=torch.long)
        a_t, bb_t = a_tab[i], math.sqrt(b2_tab[i])
        x0, res, eps = split_prediction(denoise(x, t), x, x_in, a_t, bb_t, objective)
        if clip:
            lo, hi = (-1.0, 1.0) if clip is True else clip
            x0 = x0.clamp(lo, hi)
            res = x_in - x0
            eps = (x - x0 - a_t * res) / bb_t
        if i == 0:
            break
        a_s, b2_s = a_tab[i - 1], b2_tab[i - 1]
        sigma2 = eta * (b2_tab[i] - b2_s) * b2_s / b2_tab[i]
        x = x - (a_t - a_s) * res - (bb_t - math.sqrt(max(b2_s - sigma2, 0.0))) * eps
        if sigma2 > 0:
            x = x + math.sqrt(sigma2) * randn_like(x, generator)
    if not torch.isfinite(x0).all():
        raise FloatingPointError("RDDM sampling produced NaN or inf; check the network and the schedule")
    return x0
