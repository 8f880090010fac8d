"""ILVR (Choi et al. 2021): iterative latent variable refinement toward a reference's low frequencies.

After every reverse step x'_{t-1}, ILVR replaces its low band with the low band of a fresh forward
sample y_{t-1} ~ q(y_{t-1} | y) of the reference:

    x_{t-1} = phi_N(y_{t-1}) + x'_{t-1} - phi_N(x'_{t-1}),   phi_N = up(down(., N)).

Here phi_N is the block mean (average pooling + nearest upsampling), an orthogonal projection, so the
final sample's low band equals the reference's exactly. Larger N leaves more to the model (more
diversity, less fidelity). Refinement stops below ``stop_t`` (the paper's ``range_t``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..process import check_spatial
from ..samplers.base import Hook, StepContext
from ..schedules import Schedule
from ._common import as_batch, block_lowpass, check_factor, check_same_image_shape, forward_sample


class ILVR(Hook):
    """Hook for any sampler: refine each step's result toward ``reference`` (B or 1, C, *spatial).

    ``factor`` is N (it must divide every spatial size); refinement runs on steps whose training
    timestep is >= ``stop_t`` (0 refines every step, including the last).
    """

    def __init__(self, reference: Tensor, factor: int = 4, stop_t: int = 0) -> None:
        check_spatial(reference, "ILVR reference")
        check_factor(tuple(reference.shape), factor, "ILVR")
        if stop_t < 0:
            raise ValueError(f"stop_t must be >= 0, got {stop_t}")
        self.reference = reference
        self.factor = factor
        self.stop_t = stop_t

    def begin(self, x_T: Tensor, schedule: Schedule) -> None:
        check_same_image_shape(x_T, self.reference, "ILVR reference")

    def after_step(self, ctx: StepContext, x_prev: Tensor) -> Tensor:
        if ctx.t < self.stop_t:
            return x_prev
        ref = as_batch(self.reference.to(x_prev.device, x_prev.dtype), x_prev.shape[0], "ILVR reference")
        y_prev = forward_sample(ref, ctx.abar_prev, ctx.generator)
        with torch.no_grad():
            return x_prev + block_lowpass(y_prev - x_prev, self.factor)
