"""Truncated start (ES-DDPM) and partial diffusion (AnoDDPM, SDEdit): begin the reverse process at
an intermediate training timestep t' from q(x_t' | x0_hat) of a prior estimate x0_hat."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..generators import GeneratorLike
from ..noise import gaussian_like
from ..process import check_spatial, q_sample_at
from ..schedules import Schedule


def truncated_start(
    x0_hat: Tensor,
    schedule: Schedule,
    t_start: int,
    *,
    generator: GeneratorLike = None,
    noise: Tensor | None = None,
) -> tuple[Tensor, Schedule]:
    """Diffuse ``x0_hat`` to training timestep ``t_start``; return (x_t', the truncated schedule)."""
    check_spatial(x0_hat, "x0_hat")
    if not 0 <= t_start < schedule.num_train_timesteps:
        raise ValueError(f"t_start must lie in 0..{schedule.num_train_timesteps - 1}, got {t_start}")
    last = schedule.index_of_timestep(t_start)
    trunc = schedule.truncate(last)
    eps = gaussian_like(x0_hat, generator) if noise is None else noise
    return q_sample_at(x0_hat, float(trunc.alphas_cumprod[-1]), eps), trunc


def sample_from_estimate(
    sampler: Callable[..., Tensor],
    denoise: Callable[[Tensor, Tensor], Tensor],
    x0_hat: Tensor,
    schedule: Schedule,
    *,
    t_start: int,
    generator: GeneratorLike = None,
    noise: Tensor | None = None,
    **sampler_kwargs,
) -> Tensor:
    """Run any sampler from q(x_t' | x0_hat): ES-DDPM, SDEdit and AnoDDPM's partial diffusion.

    ``steps`` in ``sampler_kwargs`` counts steps between t' and 0 (trailing spacing keeps t')."""
    x, trunc = truncated_start(x0_hat, schedule, t_start, generator=generator, noise=noise)
    return sampler(denoise, x, trunc, generator=generator, **sampler_kwargs)
