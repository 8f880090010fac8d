"""Sampling helpers shared by methods: run a registered engine sampler over n stochastic samples at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..diffusion.generators import GeneratorLike, randn
from ..diffusion.samplers import SAMPLERS
from ..diffusion.schedules import Schedule
from ..errors import ArgumentError
from ._segmentation import simplex_denoiser
from .base import DiffusionMethod, check_sampler


def sample_n(
    denoise: Callable[[Tensor, Tensor], Tensor],
    shape: tuple[int, ...],
    schedule: Schedule,
    *,
    n_samples: int,
    sampler: str,
    steps: int | None,
    device: torch.device,
    generator: GeneratorLike,
    progress: bool = False,
    simplex: bool = False,
    **sampler_kwargs: Any,
) -> Tensor:
    """Draw ``n_samples`` samples per batch element in one batched chain; returns (n, B, C, ...).

    ``denoise`` must accept the batch repeated ``n_samples`` times along dim 0 (sample-major). The
    generator draws x_T and goes on to the sampler, whichever it is; per-element generators
    (:class:`~medrs_diff.diffusion.generators.SampleGenerators`, one per batch element) give element
    ``j`` rows ``j, j + B, ...``, so its samples do not depend on the rest of the batch.
    """
    check_sampler(sampler)
    if n_samples < 1:
        raise ArgumentError("n_samples", f"must be >= 1, got {n_samples}", "draw at least one sample")
    if simplex:
        denoise = simplex_denoiser(denoise, schedule)
    b = shape[0]
    x_T = randn((n_samples * b, *shape[1:]), generator, device=device)
    out = SAMPLERS[sampler](denoise, x_T, schedule, steps=steps, progress=progress, generator=generator,
                            **sampler_kwargs)
    return out.reshape(n_samples, b, *shape[1:])


def repeat_batch(x: Tensor, n: int) -> Tensor:
    """Repeat a (B, ...) tensor n times sample-major: (n*B, ...), matching :func:`sample_n`."""
    return x.repeat(n, *([1] * (x.ndim - 1)))


def sample_with_features(
    method: DiffusionMethod,
    features: Tensor,
    shape: tuple[int, ...],
    *,
    n_samples: int,
    sampler: str | None,
    steps: int | None,
    generator: GeneratorLike,
    progress: bool = False,
    simplex: bool = False,
) -> Tensor:
    """``n_samples`` clipped samples per batch element from ``method.denoiser`` conditioned by ``features``
    (computed once, not per step; the denoiser takes ``features=``), with the method's default sampler and
    steps where none is given; ``simplex`` as in :func:`sample_n`; returns (B, n, C, ...), the ensemble layout."""
    feats = repeat_batch(features, n_samples)
    net = method.denoiser
    out = sample_n(
        lambda x, t: net(x, t, features=feats), shape, method.schedule, n_samples=n_samples,
        sampler=sampler if sampler is not None else method.default_sampler,
        steps=steps if steps is not None else method.sampling_steps, device=features.device,
        generator=generator, progress=progress, clip=True, simplex=simplex,
    )
    return out.transpose(0, 1)
