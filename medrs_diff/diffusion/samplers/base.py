"""What every sampler shares: the model wrapper, the per-step hook protocol and the loop helpers.

A *denoiser* is any callable ``denoise(x_t, t) -> Tensor`` where ``t`` is a LongTensor (B,) of
training timesteps. :class:`Model` turns its raw output into ``(x0, eps)`` for a prediction type
and variance mode, checking the channel count once. A *hook* (:class:`Hook`) sees every step:
``on_x0`` may change the predicted clean sample before the update (thresholding, projections),
``after_step`` may change the sample after it (ILVR, RePaint, data consistency, DPS). Hooks that
need the gradient of x0 with respect to x_t set ``needs_grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..generators import GeneratorLike
from ..generators import randn_like as _randn_like
from ..process import check_prediction_type, check_spatial, check_variance_type, split_output, to_x0_eps
from ..schedules import Schedule, Spacing

Denoiser = Callable[[Tensor, Tensor], Tensor]


@dataclass
class StepContext:
    """State of one reverse step, handed to hooks.

    ``index`` is the position in the (respaced) schedule, ``t`` the training timestep the network
    saw, ``abar_t`` alpha-bar at x_t and ``abar_prev`` alpha-bar of the step's result (1.0 when
    the step lands on clean data). ``x0``/``eps`` are the (possibly hooked) predictions.
    """

    step: int
    index: int
    t: int
    abar_t: float
    abar_prev: float
    x_t: Tensor
    x0: Tensor
    eps: Tensor
    schedule: Schedule
    model: Model
    generator: GeneratorLike
    extra: dict[str, Any]


class Hook:
    """Base class of per-step hooks; override what you need."""

    needs_grad: bool = False

    def begin(self, x_T: Tensor, schedule: Schedule) -> None:
        """Called once before the first step with the initial sample and the walked schedule."""

    def on_x0(self, ctx: StepContext) -> Tensor:
        return ctx.x0

    def after_step(self, ctx: StepContext, x_prev: Tensor) -> Tensor:
        return x_prev


def clip_and_threshold(x0: Tensor, clip: bool | tuple[float, float], dynamic_threshold: float | None) -> Tensor:
    """Static clipping to a range and/or Imagen's dynamic thresholding (per-sample percentile)."""
    if dynamic_threshold is not None:
        q = torch.quantile(x0.detach().abs().flatten(1).float(), dynamic_threshold, dim=1)
        s = q.clamp(min=1.0).to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        x0 = torch.maximum(torch.minimum(x0, s), -s) / s
    if clip:
        lo, hi = (-1.0, 1.0) if clip is True else clip
        x0 = x0.clamp(lo, hi)
    return x0


class Model:
    """A denoiser with its prediction type, variance mode and x0 post-processing.

    ``model(x, index)`` returns ``(x0, eps, v)`` where ``v`` is the learned-variance channel block
    (None unless ``variance='learned'``).
    """

    def __init__(
        self,
        denoise: Denoiser,
        schedule: Schedule,
        prediction_type: str = "eps",
        variance: str = "fixed_small",
        clip: bool | tuple[float, float] = False,
        dynamic_threshold: float | None = None,
    ) -> None:
        check_prediction_type(prediction_type)
        check_variance_type(variance)
        if schedule.zero_terminal_snr and prediction_type == "eps":
            raise ValueError("zero terminal SNR needs prediction_type 'v' or 'x0': eps cannot recover x0 at SNR 0")
        self.denoise = denoise
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.variance = variance
        self.clip = clip
        self.dynamic_threshold = dynamic_threshold
        self.nfe = 0

    def raw(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor | None]:
        self.nfe += 1
        return split_output(self.denoise(x, t), x.shape[1], self.variance)

    def timestep(self, x: Tensor, index: int) -> Tensor:
        return torch.full((x.shape[0],), int(self.schedule.timesteps[index]), device=x.device, dtype=torch.long)

    def __call__(self, x: Tensor, index: int) -> tuple[Tensor, Tensor, Tensor | None]:
        pred, v = self.raw(x, self.timestep(x, index))
        abar = float(self.schedule.alphas_cumprod[index])
        x0, eps = to_x0_eps(pred, x, abar, self.prediction_type)
        if self.clip or self.dynamic_threshold is not None:
            x0 = clip_and_threshold(x0, self.clip, self.dynamic_threshold)
            eps = (x - abar**0.5 * x0) / (1 - abar) ** 0.5
        return x0, eps, v


def prepare(
    x_T: Tensor,
    schedule: Schedule,
    steps: int | None,
    spacing: Spacing,
) -> Schedule:
    """Validate the start sample and respace the schedule to ``steps`` (None keeps all steps)."""
    check_spatial(x_T, "x_T")
    return schedule if steps is None or steps == len(schedule) else schedule.respace(steps, spacing)


def predict_with_hooks(
    model: Model,
    x: Tensor,
    index: int,
    step: int,
    abar_prev: float,
    hooks: Sequence[Hook],
    generator: GeneratorLike,
) -> tuple[StepContext, Tensor | None]:
    """Run the model at schedule index ``index`` and let hooks adjust x0; returns (ctx, v)."""
    needs_grad = any(h.needs_grad for h in hooks)
    with torch.enable_grad() if needs_grad else torch.no_grad():
        if needs_grad:
            x = x.detach().requires_grad_(True)
        x0, eps, v = model(x, index)
        ctx = StepContext(
            step=step,
            index=index,
            t=int(model.schedule.timesteps[index]),
            abar_t=float(model.schedule.alphas_cumprod[index]),
            abar_prev=abar_prev,
            x_t=x,
            x0=x0,
            eps=eps,
            schedule=model.schedule,
            model=model,
            generator=generator,
            extra={},
        )
        for h in hooks:
            new_x0 = h.on_x0(ctx)
            if new_x0 is not ctx.x0:
                ctx.x0 = new_x0
                ctx.eps = (x - ctx.abar_t**0.5 * new_x0) / (1 - ctx.abar_t) ** 0.5
    return ctx, v


def finish_step(ctx: StepContext, x_prev: Tensor, hooks: Sequence[Hook]) -> Tensor:
    """Apply the hooks' ``after_step`` and drop any autograd graph."""
    for h in hooks:
        x_prev = h.after_step(ctx, x_prev)
    return x_prev.detach()


def begin_hooks(hooks: Sequence[Hook], x: Tensor, schedule: Schedule) -> None:
    for h in hooks:
        h.begin(x, schedule)


def progress_iter(it: Iterable[int], total: int, progress: bool | Callable, desc: str) -> Iterable[int]:
    """Wrap an iterator in a tqdm bar when ``progress`` is True (or a tqdm-like callable)."""
    if progress is True:
        from tqdm.auto import tqdm

        return tqdm(it, total=total, desc=desc, leave=False)
    if callable(progress):
        return progress(it, total=total, desc=desc)
    return it


def randn_like(x: Tensor, generator: GeneratorLike) -> Tensor:
    """Standard normal noise like ``x`` (per batch element for
    :class:`~medrs_diff.diffusion.generators.SampleGenerators`)."""
    return _randn_like(x, generator)
