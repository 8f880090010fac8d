"""Data-consistency block (BC-DPM's diffusion-domain condition): pull every step toward a measurement.

After each reverse step x'_{t-1}, draw y_{t-1} ~ q(y_{t-1} | y) from the measured image y (e.g. a
low-dose PET volume in model space) and move x'_{t-1} toward it in one frequency band:

    x_{t-1} = x'_{t-1} + w * B(y_{t-1} - x'_{t-1})

with B the identity (``band="all"``), the block low-pass phi_N (``"low"``, ILVR when w = 1) or its
complement I - phi_N (``"high"``). ``enabled=False`` turns the block off without changing anything
else (same random stream as a run without it), for ablations.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..process import check_spatial
from ..samplers.base import Hook, StepContext
from ..schedules import Schedule
from ._common import as_batch, block_lowpass, check_factor, check_same_image_shape, forward_sample

Band = Literal["all", "low", "high"]
BANDS = ("all", "low", "high")


class DataConsistency(Hook):
    """Hook for any sampler: blend band ``band`` of each step's result toward q(y_{t-1} | measured).

    ``weight`` in [0, 1] (1 replaces the band); ``factor`` is N of phi_N for the low/high bands;
    the block acts on steps whose training timestep is >= ``stop_t``.
    """

    def __init__(
        self,
        measured: Tensor,
        weight: float = 0.5,
        band: Band = "low",
        factor: int = 4,
        stop_t: int = 0,
        enabled: bool = True,
    ) -> None:
        check_spatial(measured, "measured image")
        if band not in BANDS:
            raise ValueError(f"unknown band {band!r}; choose one of {BANDS}")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"data-consistency weight must lie in [0, 1], got {weight}")
        if band != "all":
            check_factor(tuple(measured.shape), factor, "data-consistency band")
        if stop_t < 0:
            raise ValueError(f"stop_t must be >= 0, got {stop_t}")
        self.measured = measured
        self.weight = float(weight)
        self.band = band
        self.factor = factor
        self.stop_t = stop_t
        self.enabled = enabled

    def begin(self, x_T: Tensor, schedule: Schedule) -> None:
        check_same_image_shape(x_T, self.measured, "measured image")

    def project(self, d: Tensor) -> Tensor:
        """The band part of ``d``."""
        if self.band == "all":
            return d
        low = block_lowpass(d, self.factor)
        return low if self.band == "low" else d - low

    def after_step(self, ctx: StepContext, x_prev: Tensor) -> Tensor:
        if not self.enabled or self.weight == 0.0 or ctx.t < self.stop_t:
            return x_prev
        y = as_batch(self.measured.to(x_prev.device, x_prev.dtype), x_prev.shape[0], "measured image")
        y_prev = forward_sample(y, ctx.abar_prev, ctx.generator)
        with torch.no_grad():
            return x_prev + self.weight * self.project(y_prev - x_prev)
