"""RePaint (Lugmayr et al. 2022): inpainting by known-region replacement and resampling.

Each reverse step's result is combined as x_{t-1} = m * known_{t-1} + (1 - m) * x'_{t-1} with a fresh
forward sample known_{t-1} ~ q(x_{t-1} | known) (:class:`KnownRegion`, a hook for any sampler).
Replacement alone leaves the unknown region out of tune with the known one; the :func:`repaint`
sampler therefore re-noises: at every ``jump_length``-th index it jumps from its current index i up to
i + jump_length with q(x_{i+j} | x_i) = N(sqrt(abar_{i+j} / abar_i) x_i, (1 - abar_{i+j} / abar_i) I)
and denoises back, ``resample - 1`` times. The jump always starts from the current level (re-noising
to a fixed level instead is lucidrains' bug).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..generators import GeneratorLike
from ..process import check_spatial
from ..samplers.base import Denoiser, Hook, Model, StepContext, begin_hooks, prepare, progress_iter, randn_like
from ..samplers.ddpm import ddpm_step
from ..schedules import Schedule, Spacing
from ._common import as_batch, check_binary_mask, check_same_image_shape, forward_sample


class KnownRegion(Hook):
    """Hook for any sampler: paste a fresh forward sample of ``known`` where ``mask`` is 1.

    ``known`` is (B or 1, C, *spatial) in model space; ``mask`` is {0, 1} (1 = known), shaped
    (B or 1, C or 1, *spatial). At the last step (alpha-bar 1) the known pixels are copied exactly.
    """

    def __init__(self, known: Tensor, mask: Tensor) -> None:
        check_spatial(known, "known image")
        m = check_binary_mask(mask)
        if m.ndim != known.ndim or m.shape[2:] != known.shape[2:] or m.shape[1] not in (1, known.shape[1]):
            raise ValueError(
                f"mask shape {tuple(m.shape)} does not fit the known image {tuple(known.shape)}; "
                "the mask must be (B or 1, C or 1, *spatial) with the image's spatial size"
            )
        self.known = known
        self.mask = m

    def begin(self, x_T: Tensor, schedule: Schedule) -> None:
        check_same_image_shape(x_T, self.known, "known image")
        as_batch(self.mask, x_T.shape[0], "mask")

    def after_step(self, ctx: StepContext, x_prev: Tensor) -> Tensor:
        b = x_prev.shape[0]
        known = as_batch(self.known.to(x_prev.device, x_prev.dtype), b, "known image")
        m = self.mask.to(x_prev.device, x_prev.dtype)
        known_prev = forward_sample(known, ctx.abar_prev, ctx.generator)
        with torch.no_grad():
            return m * known_prev + (1 - m) * x_prev


def repaint_schedule(n: int, jump_length: int = 10, resample: int = 10) -> list[int]:
    """The schedule indices RePaint visits, from ``n - 1`` (x_T) to ``-1`` (the clean sample).

    A step to ``i - 1`` is a reverse step from index ``i``; a step to ``i + jump_length`` is a forward
    jump. Jump points are indices 0, j, 2j, ... below ``n - j``, each jumped from ``resample - 1``
    times, which costs about ``resample`` times the plain chain's evaluations.
    """
    if jump_length < 1 or resample < 1:
        raise ValueError(f"jump_length and resample must be >= 1, got {jump_length} and {resample}")
    remaining = {i: resample - 1 for i in range(0, n - jump_length, jump_length)}
    i = n - 1
    path = [i]
    while i >= 0:
        i -= 1
        path.append(i)
        if remaining.get(i, 0) > 0:
            remaining[i] -= 1
            i += jump_length
            path.append(i)
    return path


def repaint(
    denoise: Denoiser,
    x_T: Tensor,
    schedule: Schedule,
    known: Tensor,
    mask: Tensor,
    *,
    jump_length: int = 10,
    resample: int = 10,
    steps: int | None = 250,
    spacing: Spacing = "linspace",
    prediction_type: str = "eps",
    variance: str = "fixed_small",
    clip: bool | tuple[float, float] = False,
    dynamic_threshold: float | None = None,
    hooks: Sequence[Hook] = (),
    generator: GeneratorLike = None,
    progress: bool | Callable = False,
) -> Tensor:
    """Inpaint ``known`` outside ``mask == 0`` with ancestral steps, replacement and jumps.

    Defaults are the paper's: 250 respaced steps, jump length 10, 10 resamplings (about 10x the
    evaluations of a 250-step chain). ``hooks`` run at every reverse step before the replacement.
    """
    replace = KnownRegion(known, mask)
    sched = prepare(x_T, schedule, steps, spacing)
    model = Model(denoise, sched, prediction_type, variance, clip, dynamic_threshold)
    all_hooks = (*hooks, replace)
    begin_hooks(all_hooks, x_T, sched)
    path = repaint_schedule(len(sched), jump_length, resample)
    x, step = x_T, 0
    for k in progress_iter(range(len(path) - 1), len(path) - 1, progress, "repaint"):
        i, nxt = path[k], path[k + 1]
        if nxt < i:
            x = ddpm_step(model, x, i, step, all_hooks, generator)
            step += 1
        else:
            ratio = float(sched.alphas_cumprod[nxt] / sched.alphas_cumprod[i])
            x = math.sqrt(ratio) * x + math.sqrt(1.0 - ratio) * randn_like(x, generator)
    return x
