"""Pyramidal DDPM (Ryu & Ye 2022): one coordinate-conditioned network, several resolutions.

The network sees ``x_t`` concatenated with coordinate channels: one per spatial axis holding the
pixel-centre position normalised to [-1, 1] (``(2 i + 1) / n - 1``, so a coarse pixel's coordinate is
the mean of the fine pixels it covers) and one constant channel holding the scale (resolution
relative to full size). The paper's ablation finds this positional encoding essential: without it one
network cannot tell the resolutions apart. Training (:class:`PyramidLoss`) draws one scale per batch,
area-resizes x0 to it and applies the engine's :class:`~.process.DiffusionLoss`. Sampling
(:func:`pyramid_sample`) runs the chain from noise at the coarsest scale, upsamples the result
(bilinear, trilinear in 3-D) to the next scale, re-noises it to an intermediate timestep ``t_k`` by
q(x_t | x0_up) and continues from there (the engine's truncated start), up to full size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .generators import GeneratorLike, randn
from .process import DiffusionLoss, check_spatial
from .samplers.truncated import sample_from_estimate
from .schedules import Schedule

DEFAULT_SCALES = (0.25, 0.5, 1.0)


def coord_channels(
    spatial: Sequence[int], scale: float, *, batch: int = 1, device=None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """(batch, len(spatial) + 1, *spatial): pixel-centre coordinates in [-1, 1] per axis, then ``scale``.

    Axis order follows ``spatial`` (y then x in 2-D; z, y, x in 3-D)."""
    if len(spatial) not in (2, 3) or any(int(n) < 1 for n in spatial):
        raise ValueError(f"coord_channels: spatial shape {tuple(spatial)} must be 2 or 3 positive sizes. "
                         "Fix: pass x.shape[2:] of a (B, C, H, W) or (B, C, D, H, W) tensor")
    axes = [(2 * torch.arange(n, device=device, dtype=dtype) + 1) / n - 1 for n in spatial]
    grids = torch.meshgrid(*axes, indexing="ij")
    scale_ch = torch.full(tuple(spatial), float(scale), device=device, dtype=dtype)
    chans = torch.stack([*grids, scale_ch])
    return chans[None].expand(batch, *chans.shape)


def with_coords(x: Tensor, scale: float) -> Tensor:
    """``x`` with the coordinate and scale channels appended along the channel axis."""
    check_spatial(x, "x")
    return torch.cat([x, coord_channels(x.shape[2:], scale, batch=x.shape[0], device=x.device, dtype=x.dtype)], 1)


def num_coord_channels(spatial_dims: int) -> int:
    """Extra input channels the network needs: one per spatial axis plus the scale channel."""
    return spatial_dims + 1


@dataclass
class CoordDenoiser:
    """``denoise(x_t, t, **kw)`` that calls ``net(cat(x_t, coords(scale)), t, **kw)``."""

    net: Callable[..., Tensor]
    scale: float

    def __call__(self, x_t: Tensor, t: Tensor, **kwargs) -> Tensor:
        return self.net(with_coords(x_t, self.scale), t, **kwargs)


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """Validate scales: strictly increasing, in (0, 1], the last equal to 1 (full size)."""
    s = tuple(float(v) for v in scales)
    if not s or any(not 0.0 < v <= 1.0 for v in s) or any(b <= a for a, b in zip(s, s[1:], strict=False)):
        raise ValueError(f"pyramid scales {s} must be strictly increasing values in (0, 1]. "
                         "Fix: e.g. scales=(0.25, 0.5, 1.0)")
    if s[-1] != 1.0:
        raise ValueError(f"pyramid scales {s} must end at 1.0 (full size). Fix: append 1.0")
    return s


def scaled_size(spatial: Sequence[int], scale: float) -> tuple[int, ...]:
    """Spatial size at ``scale``; every axis must divide exactly (no silent rounding)."""
    out = []
    for n in spatial:
        m = n * scale
        if abs(m - round(m)) > 1e-6 or round(m) < 1:
            raise ValueError(f"pyramid: size {tuple(spatial)} times scale {scale} is not an integer size. "
                             "Fix: choose scales such as 1/2, 1/4 that divide the image size")
        out.append(round(m))
    return tuple(out)


def resize_area(x: Tensor, size: Sequence[int]) -> Tensor:
    """Downsample by area averaging (anti-aliased); identity when the size is unchanged."""
    return x if tuple(x.shape[2:]) == tuple(size) else F.interpolate(x, size=tuple(size), mode="area")


def upsample(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear (2-D) or trilinear (3-D) upsampling, pixel-centre aligned (align_corners=False)."""
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


@dataclass
class PyramidLoss:
    """Multi-scale training: one scale per batch (uniform over ``scales``), x0 area-resized to it.

    ``model`` receives ``x_t`` with the coordinate channels (C + spatial_dims + 1 input channels);
    other keyword inputs are passed unchanged (resize spatial conditions yourself)."""

    loss: DiffusionLoss
    scales: Sequence[float] = field(default=DEFAULT_SCALES)

    def __post_init__(self) -> None:
        self.scales = check_scales(self.scales)

    def draw_scale(self, generator: torch.Generator | None = None) -> float:
        i = int(torch.randint(0, len(self.scales), (1,), generator=generator))
        return self.scales[i]

    def __call__(
        self,
        model: Callable[..., Tensor],
        x0: Tensor,
        *,
        scale: float | None = None,
        generator: torch.Generator | None = None,
        **model_kwargs,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        check_spatial(x0, "x0")
        if scale is None:
            scale = self.draw_scale(generator)
        elif float(scale) not in self.scales:
            raise ValueError(f"PyramidLoss: scale {scale} is not one of {self.scales}. Fix: pick one of them")
        x_s = resize_area(x0, scaled_size(x0.shape[2:], scale))
        loss, logs = self.loss(CoordDenoiser(model, scale), x_s, generator=generator, **model_kwargs)
        logs["scale"] = torch.tensor(float(scale))
        return loss, logs


def pyramid_sample(
    sampler: Callable[..., Tensor],
    net: Callable[..., Tensor],
    shape: Sequence[int],
    schedule: Schedule,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    t_starts: Sequence[int],
    generator: GeneratorLike = None,
    device=None,
    return_all: bool = False,
    **sampler_kwargs,
) -> Tensor | list[Tensor]:
    """Coarse-to-fine sampling of a full-size ``shape`` (B, C, *spatial).

    ``sampler`` is any engine sampler (``ddpm``, ``ddim``, ...); ``net(x_with_coords, t)`` the
    coordinate-conditioned network. ``t_starts[k]`` is the training timestep to which the upsampled
    output of scale k is re-noised before scale k + 1 continues (one per finer scale).
    ``sampler_kwargs`` (``steps``, ``prediction_type``, ...) apply at every scale; ``steps`` of a
    finer scale counts steps between its t_k and 0, capped at the t_k + 1 steps that exist there.
    ``return_all`` returns the output of every scale."""
    scales = check_scales(scales)
    if len(shape) not in (4, 5):
        raise ValueError(f"pyramid_sample: shape {tuple(shape)} must be (B, C, H, W) or (B, C, D, H, W). "
                         "Fix: include the batch and channel sizes")
    if len(t_starts) != len(scales) - 1:
        raise ValueError(f"pyramid_sample: {len(t_starts)} t_starts for {len(scales)} scales. "
                         f"Fix: give one re-noising timestep per finer scale ({len(scales) - 1})")
    b, c, spatial = int(shape[0]), int(shape[1]), tuple(int(n) for n in shape[2:])
    sizes = [scaled_size(spatial, s) for s in scales]
    x_T = randn((b, c, *sizes[0]), generator, device=device)
    has_steps = "steps" in sampler_kwargs  # absent: each sampler's default; None: all steps
    steps = sampler_kwargs.pop("steps", None)
    first = {"steps": steps} if has_steps else {}
    x = sampler(CoordDenoiser(net, scales[0]), x_T, schedule, generator=generator, **first, **sampler_kwargs)
    outs = [x]
    for scale, size, t_k in zip(scales[1:], sizes[1:], t_starts, strict=True):
        x0_up = upsample(x, size)
        n_k = schedule.index_of_timestep(int(t_k)) + 1
        step_kw = {"steps": None if steps is None else min(int(steps), n_k)} if has_steps else {}
        x = sample_from_estimate(
            sampler, CoordDenoiser(net, scale), x0_up, schedule, t_start=int(t_k), generator=generator,
            **step_kw, **sampler_kwargs,
        )
        outs.append(x)
    return outs if return_all else x
