"""The ``pyramid`` switch of the unconditional generative methods: Pyramidal DDPM (Ryu & Ye 2022).

``pyramid: {scales: [0.25, 0.5, 1.0], t_starts: [500, 500]}`` (null: off) makes the method's net a
coordinate-conditioned one: it takes ``x_t`` plus ``spatial_dims + 1`` coordinate channels (pixel-centre
positions in [-1, 1] and the scale; :mod:`medrs_diff.diffusion.pyramid`), is trained on each batch
area-downsampled to a random scale of ``scales`` (:class:`~medrs_diff.diffusion.pyramid.PyramidLoss`) and samples
coarse to fine (:func:`~medrs_diff.diffusion.pyramid.pyramid_sample`): the chain runs from noise at the coarsest
scale, the result is upsampled, re-noised to ``t_starts[k]`` and the chain continues at the next scale, up to
full size. ``scales`` (default [0.25, 0.5, 1.0]) must increase strictly and end at 1.0; ``t_starts`` (required)
holds one training timestep per finer scale. Image sizes must be multiples of :func:`size_multiple` (every
scale's size an integer the net can take).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor

from ..diffusion.generators import GeneratorLike
from ..diffusion.pyramid import PyramidLoss, num_coord_channels, pyramid_sample
from ..diffusion.samplers import SAMPLERS
from ..diffusion.schedules import Schedule
from ..errors import ArgumentError

_EXAMPLE = "e.g. pyramid: {scales: [0.25, 0.5, 1.0], t_starts: [500, 500]}, or null (off)"


def check_pyramid(pyramid: Any, timesteps: int) -> tuple[tuple[float, ...], tuple[int, ...]] | None:
    """``(scales, t_starts)`` of a recipe's ``pyramid`` value (None when it is null), every entry checked."""
    if pyramid is None:
        return None
    if not isinstance(pyramid, Mapping) or set(pyramid) - {"scales", "t_starts"} or "t_starts" not in pyramid:
        raise ArgumentError("pyramid", f"must be a mapping with keys scales and t_starts, got {pyramid!r}", _EXAMPLE)
    raw_scales = pyramid.get("scales", (0.25, 0.5, 1.0))
    raw_t = pyramid["t_starts"]
    if not isinstance(raw_scales, list | tuple) or not all(
            isinstance(s, int | float) and not isinstance(s, bool) and math.isfinite(s) for s in raw_scales):
        raise ArgumentError("pyramid.scales", f"must be a list of numbers, got {raw_scales!r}", _EXAMPLE)
    scales = tuple(float(s) for s in raw_scales)
    if len(scales) < 2 or any(not 0 < s <= 1 for s in scales) or any(b <= a for a, b in zip(scales, scales[1:])):
        raise ArgumentError("pyramid.scales", f"{list(scales)} must be two or more strictly increasing values in "
                            "(0, 1]", "e.g. [0.25, 0.5, 1.0]")
    if scales[-1] != 1.0:
        raise ArgumentError("pyramid.scales", f"{list(scales)} must end at 1.0 (full size)", "append 1.0")
    if not isinstance(raw_t, list | tuple) or len(raw_t) != len(scales) - 1:
        raise ArgumentError("pyramid.t_starts", f"{raw_t!r} must hold one timestep per finer scale "
                            f"({len(scales) - 1} for {len(scales)} scales)", "give len(scales) - 1 timesteps")
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < timesteps for t in raw_t):
        raise ArgumentError("pyramid.t_starts", f"{list(raw_t)} must be integer timesteps in 0..{timesteps - 1}",
                            "re-noise each upsampled scale to a training timestep, e.g. timesteps // 2")
    return scales, tuple(int(t) for t in raw_t)


def size_multiple(net_multiple: int, scales: tuple[float, ...]) -> int:
    """Full-size multiple so that every scale's size is an integer multiple of ``net_multiple``: for a scale
    p/q (reduced), sizes must be multiples of ``q * net_multiple / gcd(net_multiple, p)``."""
    out = 1
    for s in scales:
        f = Fraction(s).limit_denominator(1 << 16)
        need = f.denominator * net_multiple // math.gcd(net_multiple, f.numerator)
        out = out * need // math.gcd(out, need)
    return out


def extra_channels(pyramid: tuple | None, spatial_dims: int) -> int:
    """Input channels the net gains under the pyramid (the coordinate and scale channels), else 0."""
    return 0 if pyramid is None else num_coord_channels(spatial_dims)


def pyramid_loss(
    loss: Callable[..., tuple[Tensor, dict[str, Tensor]]], scales: tuple[float, ...], net: Callable[..., Tensor],
    x0: Tensor, generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``loss(model, x0, generator=)`` (the method's own objective) at one random scale, the net fed coordinates."""
    return PyramidLoss(loss, scales)(net, x0, generator=generator)  # type: ignore[arg-type]


def pyramid_draw(
    net: Callable[..., Tensor], shape: tuple[int, ...], schedule: Schedule, pyramid: tuple, *, n_samples: int,
    sampler: str, steps: int | None, generator: GeneratorLike, device: torch.device, **sampler_kwargs: Any,
) -> Tensor:
    """``n_samples`` coarse-to-fine samples per batch element, sample-major as ``sample_n``: (n, B, C, ...)."""
    if n_samples < 1:
        raise ArgumentError("n_samples", f"must be >= 1, got {n_samples}", "draw at least one sample")
    scales, t_starts = pyramid
    b = shape[0]
    out = pyramid_sample(SAMPLERS[sampler], net, (n_samples * b, *shape[1:]), schedule, scales=scales,
                         t_starts=t_starts, generator=generator, device=device, steps=steps, **sampler_kwargs)
    return out.reshape(n_samples, b, *shape[1:])


__all__ = ["check_pyramid", "extra_channels", "pyramid_draw", "pyramid_loss", "size_multiple"]
