"""The ``process: rddm`` switch of the paired-restoration methods (SRDiff, SAR-DDPM): RDDM (Liu et al. CVPR 2024).

Under ``rddm`` the degraded input ``I_in`` (SRDiff: the up-sampled LR; SAR-DDPM: the speckled image) and the
clean target ``I_0`` live on one grid; the residual ``I_res = I_in - I_0`` and the noise are diffused with
separate schedules (:func:`~medrs_diff.diffusion.rddm.make_rddm_schedule`: the residual weights follow the
``rddm_alpha`` ramp and sum to 1, the noise variances the ``rddm_beta2`` ramp and sum to ``sum_scale``), the
net sees ``cat(I_t, I_in)`` and returns 2C channels (residual, then noise), trained with L1 on both (the
paper's ``pred_res_noise``), and sampling starts at ``I_in + betabar_T eps`` with the paper's DDIM-like
sampler (:func:`~medrs_diff.diffusion.rddm.rddm_sample`). The registry's VP samplers do not apply; the
sampler name picks the sampler's ``eta``: ``ddim`` = 0 (deterministic, the paper's default), ``ddpm`` = 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor

from ..diffusion.generators import GeneratorLike
from ..diffusion.rddm import RAMPS, RDDMLoss, RDDMSchedule, make_rddm_schedule, rddm_sample
from ..errors import ArgumentError

#: ``process`` values: the paper method of each model, or residual denoising diffusion.
PROCESSES = ("ddpm", "rddm")
#: sampler names accepted under ``process: rddm`` and the ``eta`` of RDDM's sampler each one means.
RDDM_SAMPLERS = {"ddim": 0.0, "ddpm": 1.0}
#: the paper's 10 sampling steps for restoration (used when ``sampling_steps`` is null).
RDDM_DEFAULT_STEPS = 10


def check_process(process: str) -> None:
    if process not in PROCESSES:
        raise ArgumentError("process", f"unknown process {process!r}",
                            f"choose one of {', '.join(PROCESSES)} (ddpm: the paper method; rddm: residual diffusion)")


def build_rddm(timesteps: int, alpha: str, beta2: str, sum_scale: float) -> tuple[RDDMSchedule, RDDMLoss]:
    """The training schedule and the paper's loss (residual + noise, L1) of ``process: rddm``, arguments checked."""
    for name, ramp in (("rddm_alpha", alpha), ("rddm_beta2", beta2)):
        if ramp not in RAMPS:
            raise ArgumentError(name, f"unknown ramp {ramp!r}", f"choose one of {', '.join(RAMPS)} "
                                "(paper, restoration: rddm_alpha decreased, rddm_beta2 increased)")
    if isinstance(sum_scale, bool) or not isinstance(sum_scale, int | float) or not (
            math.isfinite(sum_scale) and 0 < sum_scale <= 1):
        raise ArgumentError("sum_scale", f"must be a number in (0, 1], got {sum_scale!r}",
                            "use the paper's 0.01 for restoration (the total noise variance betabar_T^2)")
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 2:
        raise ArgumentError("timesteps", f"must be an integer >= 2 under process: rddm, got {timesteps!r}",
                            "use e.g. 1000 (the paper) or 100")
    schedule = make_rddm_schedule(timesteps, alpha, beta2, sum_scale=float(sum_scale))
    return schedule, RDDMLoss(schedule, objective="res_noise", loss_type="l1")


def rddm_eta(sampler: str) -> float:
    """The ``eta`` of RDDM's sampler that a sampler name stands for under ``process: rddm``."""
    if sampler not in RDDM_SAMPLERS:
        raise ArgumentError("sampler", f"{sampler!r} is a VP sampler, which does not apply under process: rddm",
                            "use ddim (RDDM's deterministic sampler, eta 0) or ddpm (eta 1)")
    return RDDM_SAMPLERS[sampler]


def check_rddm_steps(steps: Any, schedule: RDDMSchedule, where: str = "steps") -> None:
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                              or not 1 <= steps <= len(schedule)):
        raise ArgumentError(where, f"must be an integer in 1..{len(schedule)} under process: rddm, got {steps!r}",
                            f"use e.g. {RDDM_DEFAULT_STEPS} (the paper's restoration setting) or null")


def rddm_restore(
    denoise: Callable[[Tensor, Tensor], Tensor],
    x_in: Tensor,
    schedule: RDDMSchedule,
    *,
    sampler: str,
    steps: int | None,
    generator: GeneratorLike,
) -> Tensor:
    """``I_0`` from RDDM's sampler started at ``I_in + betabar_T eps``, clipped to [-1, 1] (model space), with
    ``steps`` (null: :data:`RDDM_DEFAULT_STEPS`) and the ``eta`` of ``sampler``. Trailing spacing, as the
    official code's ``linspace(-1, T - 1, steps + 1)``: the first step is always at T (where ``abar = 1``, so
    the start is the input plus noise) and the last jumps to I_0 from index T / steps - 1 (linspace spacing
    would spend the last call at index 0 and, for one step, start at index 0, i.e. return about the input)."""
    eta = rddm_eta(sampler)
    n = RDDM_DEFAULT_STEPS if steps is None else steps
    check_rddm_steps(n, schedule)
    return rddm_sample(denoise, x_in, schedule, steps=int(n), spacing="trailing", eta=eta,
                       objective="res_noise", clip=True, generator=generator)


def rddm_channels(process: str, channels: int) -> int:
    """Output channels of the net: 2C under rddm (residual, then noise), C otherwise."""
    return 2 * channels if process == "rddm" else channels


__all__ = ["PROCESSES", "RDDM_DEFAULT_STEPS", "RDDM_SAMPLERS", "build_rddm", "check_process", "check_rddm_steps",
           "rddm_channels", "rddm_eta", "rddm_restore"]

