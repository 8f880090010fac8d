"""SpectralDiff's denoiser: a 3-D UNet over (B, 1, bands, h, w) whose down / up convolutions change the
**spectral** length only (stride (2, 1, 1)); the spatial size never changes, so every pixel keeps its own
decoder feature vector (Chen et al., TGRS 2023: ``Conv3d`` kernels (4, 5, 5), stride (2, 1, 1)).

``forward(x, t, return_features=True)`` also returns the decoder activations (one tensor per decoder
level, coarsest first), the taps SpectralDiff turns into per-pixel features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .light_unet import sinusoidal_embedding

__all__ = ["SpectralUNet3D"]


def _groups(c: int) -> int:
    for g in (8, 4, 2):
        if c % g == 0:
            return g
    return 1


class _ResBlock3d(nn.Module):
    """GroupNorm-SiLU-Conv3d twice with the time embedding added in between; spatial size kept."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, k: int) -> None:
        super().__init__()
        pad = (1, k // 2, k // 2)
        self.n1, self.c1 = nn.GroupNorm(_groups(c_in), c_in), nn.Conv3d(c_in, c_out, (3, k, k), padding=pad)
        self.t = nn.Linear(t_dim, c_out)
        self.n2, self.c2 = nn.GroupNorm(_groups(c_out), c_out), nn.Conv3d(c_out, c_out, (3, k, k), padding=pad)
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.c1(F.silu(self.n1(x))) + self.t(temb)[:, :, None, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return h + self.skip(x)


class SpectralUNet3D(nn.Module):
    """3-D UNet with spectral-only down-sampling.

    ``channels``: feature channels per level (level i works at ``bands / 2**i`` spectral samples);
    ``spatial_kernel``: the spatial size of every kernel (paper 5; odd). The spectral axis is
    replicate-padded to a multiple of ``2 ** (levels - 1)`` and cropped back.
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32), spatial_kernel: int = 5, time_dim: int = 64) -> None:
        super().__init__()
        if len(channels) < 1 or any(c < 1 for c in channels):
            raise ValueError(f"channels must be positive, got {channels}")
        if spatial_kernel < 1 or spatial_kernel % 2 == 0:
            raise ValueError(f"spatial_kernel must be odd and positive, got {spatial_kernel}")
        k, p = spatial_kernel, spatial_kernel // 2
        self.channels = tuple(int(c) for c in channels)
        self.time_dim = time_dim
        self.t_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.stem = nn.Conv3d(1, channels[0], (3, k, k), padding=(1, p, p))
        self.enc = nn.ModuleList(_ResBlock3d(c, c, time_dim, k) for c in channels)
        # spectral-only down / up: kernel (4, k, k), stride (2, 1, 1)
        self.down = nn.ModuleList(nn.Conv3d(a, b, (4, k, k), stride=(2, 1, 1), padding=(1, p, p))
                                  for a, b in zip(channels[:-1], channels[1:], strict=True))
        self.mid = _ResBlock3d(channels[-1], channels[-1], time_dim, k)
        self.up = nn.ModuleList(nn.ConvTranspose3d(b, a, (4, k, k), stride=(2, 1, 1), padding=(1, p, p))
                                for a, b in zip(channels[:-1], channels[1:], strict=True))
        self.dec = nn.ModuleList(_ResBlock3d(2 * c, c, time_dim, k) for c in channels[:-1])
        self.out = nn.Sequential(nn.GroupNorm(_groups(channels[0]), channels[0]), nn.SiLU(),
                                 nn.Conv3d(channels[0], 1, (3, k, k), padding=(1, p, p)))

    @property
    def spectral_multiple(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def forward(self, x: Tensor, t: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"SpectralUNet3D takes (B, 1, bands, h, w), got {tuple(x.shape)}")
        bands = x.shape[2]
        m = self.spectral_multiple
        pad = (-bands) % m
        if pad:
            x = F.pad(x, (0, 0, 0, 0, 0, pad), mode="replicate")
        temb = self.t_mlp(sinusoidal_embedding(t, self.time_dim))
        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.enc[:-1]):
            h = block(h, temb)
            skips.append(h)
            h = self.down[i](h)
        h = self.mid(self.enc[-1](h, temb), temb)
        feats = [h]
        for i in reversed(range(len(self.dec))):
            h = self.up[i](h)
            h = self.dec[i](torch.cat([h, skips[i]], 1), temb)
            feats.append(h)
        out = self.out(h)[:, :, :bands]
        if return_features:
            return out, feats
        return out
