"""Residual-in-residual dense blocks (ESRGAN's RRDB), in 2D and 3D.

Used as the image encoder G of SegDiff (full resolution, features added to the noisy-mask
features) and as SRDiff's LR encoder (every third block's features concatenated), and, with a
pixel-shuffle/interpolation head, as the regression SR network SRDiff pre-trains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import conv


class ResidualDenseBlock(nn.Module):
    """Five densely connected convs with LeakyReLU; output scaled by 0.2 and added to the input."""

    def __init__(self, spatial_dims: int, features: int = 64, growth: int = 32) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            conv(spatial_dims, features + i * growth, growth if i < 4 else features) for i in range(5)
        )
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for i, c in enumerate(self.convs):
            out = c(torch.cat(feats, 1))
            if i < 4:
                feats.append(self.act(out))
        return x + 0.2 * out


class RRDB(nn.Module):
    """Three residual dense blocks inside a scaled residual connection."""

    def __init__(self, spatial_dims: int, features: int = 64, growth: int = 32) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualDenseBlock(spatial_dims, features, growth) for _ in range(3)))

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.2 * self.blocks(x)


class RRDBEncoder(nn.Module):
    """conv -> n RRDB -> conv (+ the first conv's output) -> conv to ``out_channels``, full resolution.

    ``forward(x, return_features=True)`` also returns the list [first conv, block 1, ..., block n]
    of intermediate features (SRDiff takes every third of them).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: int = 64,
        growth: int = 32,
        num_blocks: int = 10,
    ) -> None:
        super().__init__()
        self.conv_first = conv(spatial_dims, in_channels, features)
        self.blocks = nn.ModuleList(RRDB(spatial_dims, features, growth) for _ in range(num_blocks))
        self.conv_trunk = conv(spatial_dims, features, features)
        self.conv_out = conv(spatial_dims, features, out_channels)
        self.features = features
        self.num_blocks = num_blocks

    def forward(self, x: Tensor, return_features: bool = False):
        fea = self.conv_first(x)
        feats = [fea]
        h = fea
        for blk in self.blocks:
            h = blk(h)
            feats.append(h)
        out = self.conv_out(F.leaky_relu(fea + self.conv_trunk(h), 0.2))
        return (out, feats) if return_features else out


class RRDBUpsampler(nn.Module):
    """RRDB regression SR network: encoder features, nearest-neighbour upsampling and convs, plus the
    interpolated input (the residual form SRDiff's pre-training uses)."""

    def __init__(self, encoder: RRDBEncoder, spatial_dims: int, out_channels: int, scale: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.scale = scale
        self.spatial_dims = spatial_dims
        f = encoder.features
        self.up = nn.Sequential(
            conv(spatial_dims, f, f), nn.LeakyReLU(0.2, inplace=True), conv(spatial_dims, f, out_channels)
        )

    def forward(self, lr: Tensor) -> Tensor:
        _, feats = self.encoder(lr, return_features=True)
        h = feats[-1] + feats[0]
        h = F.interpolate(h, scale_factor=self.scale, mode="nearest")
        base = F.interpolate(lr, scale_factor=self.scale, mode="bicubic" if self.spatial_dims == 2 else "trilinear",
                             align_corners=False)
        return base + self.up(h)


class RRDBNet(nn.Module):
    """ESRGAN's regression SR network in residual form: conv -> RRDB trunk -> conv, long skip, nearest
    upsampling by ``scale`` with convs, added to the bicubic (2-D) / trilinear (3-D) upsampled input.

    Every parameter takes part in the output (no unused branch, so DDP needs no unused-parameter search).
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, scale: int, features: int = 64,
        growth: int = 32, num_blocks: int = 8,
    ) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        if in_channels != out_channels:
            raise ValueError("RRDBNet adds the upsampled input: in_channels must equal out_channels")
        self.spatial_dims, self.scale = spatial_dims, scale
        self.conv_first = conv(spatial_dims, in_channels, features)
        self.blocks = nn.Sequential(*(RRDB(spatial_dims, features, growth) for _ in range(num_blocks)))
        self.conv_trunk = conv(spatial_dims, features, features)
        self.conv_up = conv(spatial_dims, features, features)
        self.conv_hr = conv(spatial_dims, features, features)
        self.conv_last = conv(spatial_dims, features, out_channels)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, lr: Tensor) -> Tensor:
        fea = self.conv_first(lr)
        h = fea + self.conv_trunk(self.blocks(fea))
        if self.scale > 1:
            h = F.interpolate(h, scale_factor=self.scale, mode="nearest")
        h = self.act(self.conv_up(h))
        out = self.conv_last(self.act(self.conv_hr(h)))
        if self.scale == 1:
            return lr + out
        mode = "bicubic" if self.spatial_dims == 2 else "trilinear"
        return F.interpolate(lr, scale_factor=self.scale, mode=mode, align_corners=False) + out
