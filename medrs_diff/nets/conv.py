"""Dimension-agnostic layer factories: one code path for 2D and 3D nets."""

from __future__ import annotations

from torch import nn


def conv(spatial_dims: int, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, bias: bool = True) -> nn.Module:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    cls = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    return cls(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=bias)


def conv_transpose(spatial_dims: int, in_ch: int, out_ch: int, scale: int) -> nn.Module:
    """A transposed conv that upsamples exactly by ``scale`` (kernel 2*scale, padding scale//2)."""
    cls = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
    if scale == 1:
        return conv(spatial_dims, in_ch, out_ch, 3)
    return cls(in_ch, out_ch, kernel_size=2 * scale, stride=scale, padding=scale // 2)
