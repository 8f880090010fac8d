"""DDRM (Kawar et al. 2022): denoising diffusion restoration of linear inverse problems y = H x + n.

Work in the operator's SVD basis (x_bar = V^T x, y_bar = s^+ U^T y) and in variance-exploding units
(x_t / sqrt(abar_t) = x_0 + sigma_t eps, sigma_t = sqrt((1 - abar_t) / abar_t)). Each step predicts
x0_bar with the network and draws the next x_bar_s per coordinate i:

* s_i = 0 (unmeasured): DDIM-like, N(x0_bar + sqrt(1 - eta^2) sigma_s eps_bar, eta^2 sigma_s^2);
* sigma_s < sigma_y / s_i (the sample is less noisy than the measurement):
  N(x0_bar + sqrt(1 - eta^2) sigma_s (y_bar - x0_bar) / (sigma_y / s_i), eta^2 sigma_s^2);
* sigma_s >= sigma_y / s_i: N((1 - eta_b) x0_bar + eta_b y_bar, sigma_s^2 - eta_b^2 sigma_y^2 / s_i^2).

The start draws x_bar_T ~ N(y_bar, sigma_T^2 - sigma_y^2 / s_i^2) where that variance is positive and
N(0, sigma_T^2) elsewhere. Defaults are the paper's: eta = 0.85, eta_b = 1, 20 steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..generators import GeneratorLike
from ..generators import randn as _randn
from ..samplers.base import (
    Denoiser,
    Hook,
    Model,
    begin_hooks,
    finish_step,
    predict_with_hooks,
    prepare,
    progress_iter,
)
from ..schedules import Schedule, Spacing
from .operators import LinearOperator


def _ve_sigma(abar: float) -> float:
    return 0.0 if abar >= 1.0 else math.sqrt((1.0 - abar) / abar)


def ddrm(
    denoise: Denoiser,
    y: Tensor,
    operator: LinearOperator,
    schedule: Schedule,
    *,
    sigma_y: float,
    steps: int | None = 20,
    eta: float = 0.85,
    eta_b: float = 1.0,
    spacing: Spacing = "linspace",
    prediction_type: str = "eps",
    clip: bool | tuple[float, float] = False,
    dynamic_threshold: float | None = None,
    hooks: Sequence[Hook] = (),
    generator: GeneratorLike = None,
    progress: bool | Callable = False,
) -> Tensor:
    """Sample x ~ p(x | y) for y = operator(x) + N(0, sigma_y^2 I); returns (B, *operator.x_shape).

    ``y`` has shape (B, *operator.y_shape) in model space and ``sigma_y`` is the measurement noise
    std in the same units. Hooks see every step (``on_x0`` may clip or project x0).
    """
    if not isinstance(operator, LinearOperator):
        raise ValueError(
            f"DDRM needs a LinearOperator with an SVD (operators.Inpainting, SuperResolution, ...), "
            f"got {type(operator).__name__}; use DPS for other forward models"
        )
    operator.check_y(y, "y")
    if not sigma_y >= 0:
        raise ValueError(f"sigma_y must be >= 0, got {sigma_y}")
    if not (0.0 <= eta <= 1.0 and 0.0 <= eta_b <= 1.0):
        raise ValueError(f"eta and eta_b must lie in [0, 1], got eta={eta}, eta_b={eta_b}")
    b = y.shape[0]
    template = y.new_empty((b, *operator.x_shape))
    sched = prepare(template, schedule, steps, spacing)
    if sched.zero_terminal_snr:
        raise ValueError("DDRM needs alpha-bar > 0 at the first step; do not use a zero-terminal-SNR schedule")
    model = Model(denoise, sched, prediction_type, "fixed_small", clip, dynamic_threshold)

    s = operator.singulars(y)
    if s.shape[0] not in (1, b):
        raise ValueError(f"the operator holds {s.shape[0]} per-sample masks but y has batch {b}")
    measured = s > 0
    s_safe = torch.where(measured, s, torch.ones_like(s))
    y_bar = torch.where(measured, operator.Ut(y) / s_safe, torch.zeros_like(s))
    level = sigma_y / s_safe  # sigma_y / s_i: the measurement's noise in x_bar units (measured coords)
    d = operator.dim

    def randn() -> Tensor:
        return _randn((b, d), generator, device=y.device, dtype=y.dtype)

    abar_T = float(sched.alphas_cumprod[-1])
    sigma_T = _ve_sigma(abar_T)
    with torch.no_grad():
        from_y = measured & (level < sigma_T)
        std0 = torch.where(from_y, (sigma_T**2 - level**2).clamp_min(0).sqrt(), torch.full_like(s, sigma_T))
        x_bar = torch.where(from_y, y_bar, torch.zeros_like(y_bar)) + std0 * randn()
        x = math.sqrt(abar_T) * operator.V(x_bar)

    begin_hooks(hooks, x, sched)
    n = len(sched)
    c = math.sqrt(1.0 - eta**2)
    for step, index in enumerate(progress_iter(range(n - 1, -1, -1), n, progress, "ddrm")):
        abar_s = float(sched.alphas_cumprod_prev[index])
        ctx, _ = predict_with_hooks(model, x, index, step, abar_s, hooks, generator)
        with torch.no_grad():
            sig_s = _ve_sigma(abar_s)
            x0_bar = operator.Vt(ctx.x0.detach())
            eps_bar = operator.Vt(ctx.eps.detach())
            # Unmeasured coordinates: DDIM with eta.
            mean = x0_bar + c * sig_s * eps_bar
            std = torch.full_like(x0_bar, eta * sig_s)
            # Measured, sample less noisy than y: move toward y_bar in proportion to sigma_s / level.
            quiet = measured & (sig_s < level)
            toward_y = x0_bar + c * sig_s * (y_bar - x0_bar) / torch.where(quiet, level, torch.ones_like(level))
            mean = torch.where(quiet, toward_y, mean)
            # Measured, sample noisier than y: centre on y_bar with the remaining variance.
            loud = measured & ~quiet
            mean = torch.where(loud, (1 - eta_b) * x0_bar + eta_b * y_bar, mean)
            std = torch.where(loud, (sig_s**2 - (eta_b * level) ** 2).clamp_min(0).sqrt(), std)
            x_bar = mean + std * randn()
            x_next = math.sqrt(abar_s) * operator.V(x_bar)
        x = finish_step(ctx, x_next, hooks)
    return x
