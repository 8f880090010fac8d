"""Orthonormal Haar wavelet transforms as space-to-channel layers, and the wavelet down/up-samplers of
the frequency-domain ("slim") UNet option.

:class:`HaarDWT` maps (B, C, *S) to (B, 2^d C, *S/2) for d = 2 or 3 spatial dims: one level of the
separable orthonormal Haar transform, 1-D pair (a, b) -> ((a + b)/sqrt2, (a - b)/sqrt2) along every
spatial axis. Channels are band-major: ``out[:, k*C:(k+1)*C]`` is band k, band 0 the low-pass LL(L)
band (= 2^(d/2) x the mean of each 2^d block). The transform is orthonormal, so energy is preserved
and :class:`HaarIDWT` is its exact inverse (its transpose).

The slim DPM (Yang et al., "Diffusion Probabilistic Model Made Slim", CVPR 2023) replaces the UNet's
strided-conv downsampling and interpolation upsampling by a DWT / IDWT so no frequency content is
aliased away: :class:`WaveletDownsample` is DWT + conv (2^d C -> C_out), :class:`WaveletUpsample`
conv (C -> 2^d C_out) + IDWT. Both take ``forward(x, emb=None)`` like MONAI's
``DiffusionModelUNet`` samplers they stand in for (the time embedding is unused, as there).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .conv import conv

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def _check(x: Tensor, spatial_dims: int, where: str) -> None:
    if x.ndim != spatial_dims + 2:
        raise ValueError(f"{where}: expected a (B, C, {spatial_dims} spatial dims) tensor, got shape {tuple(x.shape)}")


def haar_dwt(x: Tensor, spatial_dims: int) -> Tensor:
    """One level of the orthonormal Haar DWT: (B, C, *S) -> (B, 2^d C, *S/2), band-major, LL first."""
    _check(x, spatial_dims, "haar_dwt")
    if any(s % 2 for s in x.shape[2:]):
        raise ValueError(f"haar_dwt: spatial sizes must be even, got {tuple(x.shape[2:])}; pad or crop to even sizes")
    for dim in range(2, 2 + spatial_dims):
        pairs = x.unflatten(dim, (x.shape[dim] // 2, 2))
        even, odd = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
        x = torch.cat([(even + odd) * _INV_SQRT2, (even - odd) * _INV_SQRT2], 1)
    return x


def haar_idwt(y: Tensor, spatial_dims: int) -> Tensor:
    """Inverse of :func:`haar_dwt`: (B, 2^d C, *S) -> (B, C, *2S)."""
    _check(y, spatial_dims, "haar_idwt")
    if y.shape[1] % (2**spatial_dims):
        raise ValueError(f"haar_idwt: channels must be a multiple of {2**spatial_dims}, got {y.shape[1]}")
    for dim in reversed(range(2, 2 + spatial_dims)):
        low, high = y.chunk(2, dim=1)
        even, odd = (low + high) * _INV_SQRT2, (low - high) * _INV_SQRT2
        y = torch.stack([even, odd], dim + 1).flatten(dim, dim + 1)
    return y


class HaarDWT(nn.Module):
    """:func:`haar_dwt` as a module (no parameters)."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"HaarDWT: spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims

    def forward(self, x: Tensor) -> Tensor:
        return haar_dwt(x, self.spatial_dims)


class HaarIDWT(HaarDWT):
    """:func:`haar_idwt` as a module (no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return haar_idwt(x, self.spatial_dims)


class WaveletDownsample(nn.Module):
    """DWT then a ``kernel`` conv mixing the 2^d C sub-band channels to ``out_channels``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel: int = 1) -> None:
        super().__init__()
        self.dwt = HaarDWT(spatial_dims)
        self.proj = conv(spatial_dims, in_channels * 2**spatial_dims, out_channels, kernel)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        del emb
        return self.proj(self.dwt(x))


class WaveletUpsample(nn.Module):
    """A ``kernel`` conv to 2^d ``out_channels`` sub-band channels, then the IDWT."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel: int = 1) -> None:
        super().__init__()
        self.proj = conv(spatial_dims, in_channels, out_channels * 2**spatial_dims, kernel)
        self.idwt = HaarIDWT(spatial_dims)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        del emb
        return self.idwt(self.proj(x))
