"""DPM-Solver++ 2M / 3M (Lu et al. 2022): multistep data-prediction solver in log-SNR time.

The walk visits ``steps`` respaced timesteps and ends on clean data (sigma = 0) with a
first-order step, so it uses exactly ``steps`` network evaluations. The default spacing is uniform in
log-SNR (the paper's choice for discrete-time models: a time-uniform grid takes one large step
exactly where low-variance data such as masks or small images take shape). Below 15 steps the last steps
use lower orders (``lower_order_final``), as the paper and diffusers recommend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..generators import GeneratorLike
from ..schedules import Schedule, Spacing
from .base import Denoiser, Hook, Model, begin_hooks, finish_step, predict_with_hooks, prepare, progress_iter


def _alpha_sigma_lambda(abar: float) -> tuple[float, float, float]:
    if abar >= 1.0:
        return 1.0, 0.0, math.inf
    a, s = math.sqrt(abar), math.sqrt(1 - abar)
    return a, s, math.log(a / s) if s > 0 else math.inf


def dpm_solver_pp(
    denoise: Denoiser,
    x_T: Tensor,
    schedule: Schedule,
    *,
    steps: int | None = 20,
    order: int = 2,
    spacing: Spacing = "logsnr",
    prediction_type: str = "eps",
    clip: bool | tuple[float, float] = False,
    dynamic_threshold: float | None = None,
    lower_order_final: bool = True,
    hooks: Sequence[Hook] = (),
    generator: GeneratorLike = None,
    progress: bool | Callable = False,
) -> Tensor:
    """Sample with DPM-Solver++(2M) (``order=2``) or (3M) (``order=3``)."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    sched = prepare(x_T, schedule, steps, spacing)
    model = Model(denoise, sched, prediction_type, "fixed_small", clip, dynamic_threshold)
    n = len(sched)
    indices = list(range(n - 1, -1, -1))
    x = x_T
    begin_hooks(hooks, x, sched)
    history: list[tuple[Tensor, float]] = []  # (x0 prediction, lambda) newest last
    for k in progress_iter(range(n), n, progress, "dpm-solver++"):
        index = indices[k]
        abar_t = float(sched.alphas_cumprod[index])
        abar_next = float(sched.alphas_cumprod_prev[index])
        ctx, _ = predict_with_hooks(model, x, index, k, abar_next, hooks, generator)
        _, _, lam_s = _alpha_sigma_lambda(abar_t)
        history.append((ctx.x0.detach(), lam_s))
        history = history[-3:]
        # Order for this step: limited by the history and by lower-order final steps.
        last, second_last = k == n - 1, k == n - 2
        use = min(order, len(history))
        if last:
            use = 1  # landing on sigma = 0: the first-order update returns x0 exactly
        elif second_last and lower_order_final and n < 15:
            use = min(use, 2)
        a_t, s_t, lam_t = _alpha_sigma_lambda(abar_next)
        with torch.no_grad():
            _, s_s, _ = _alpha_sigma_lambda(abar_t)
            m0 = history[-1][0]
            if math.isinf(lam_t):
                x_next = m0
            else:
                h = lam_t - lam_s
                phi = math.expm1(-h)  # e^{-h} - 1
                x_next = (s_t / s_s) * x - a_t * phi * m0
                if use >= 2:
                    m1, lam_1 = history[-2]
                    r0 = (lam_s - lam_1) / h
                    d1_0 = (m0 - m1) / r0
                    if use == 2:
                        x_next = x_next - 0.5 * a_t * phi * d1_0
                    else:
                        m2, lam_2 = history[-3]
                        r1 = (lam_1 - lam_2) / h
                        d1_1 = (m1 - m2) / r1
                        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                        d2 = (d1_0 - d1_1) / (r0 + r1)
                        x_next = x_next + a_t * (phi / h + 1.0) * d1 - a_t * ((phi + h) / h**2 - 0.5) * d2
        x = finish_step(ctx, x_next, hooks)
    return x
