"""Diffusion autoencoder networks (Preechakul et al., CVPR 2022): a semantic encoder and a z_sem-conditioned denoiser.

The encoder maps x0 to a semantic vector ``z_sem`` (the paper: 512-d, the first half of the UNet; here a small
strided conv net, global average pooling and a linear head, size chosen by ``z_dim``). The decoder is a small
2-D UNet whose residual blocks are modulated by adaptive group normalisation,

    AdaGN(h, t, z_sem) = z_s * (t_s * GroupNorm(h) + t_b),   (t_s, t_b) = MLP(psi(t)),   z_s = Affine(z_sem),

exactly the paper's form. The affine maps' biases are initialised to 1 for the two scales (t_s, z_s) and their
weights to small values, so the untrained block starts as plain GroupNorm; this is a parameterisation of the
same function class, not a change to it. Depth, width and the single down/up level are choices for small
images (the paper's decoder is the ADM UNet); the 2-D network takes any even H, W.

:class:`LatentMLP` is the latent DDIM's denoiser over normalised z_sem (the paper: an MLP with skip connections,
10-20 layers of width 2048, time-modulated LayerNorm + SiLU layers; the official configs use 10 layers).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .light_unet import sinusoidal_embedding

__all__ = ["AdaGN", "AdaGNResBlock", "DiffAEDenoiser", "LatentMLP", "SemanticEncoder"]


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1  # pragma: no cover


class SemanticEncoder(nn.Module):
    """x0 (B, C, H, W) -> z_sem (B, z_dim): strided 3x3 convs, GroupNorm + SiLU, global average pool, linear."""

    def __init__(self, in_channels: int = 1, z_dim: int = 32, base: int = 16, levels: int = 3) -> None:
        super().__init__()
        if z_dim < 1 or base < 1 or levels < 1:
            raise ValueError(f"SemanticEncoder: z_dim, base and levels must be >= 1, got {z_dim}, {base}, {levels}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base, 3, padding=1)]
        ch = base
        for _ in range(levels):
            layers += [nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1)]
            ch *= 2
        layers += [nn.GroupNorm(_groups(ch), ch), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(ch, z_dim)
        self.z_dim = z_dim

    def forward(self, x0: Tensor) -> Tensor:
        return self.head(self.body(x0).mean(dim=(2, 3)))


class AdaGN(nn.Module):
    """z_s * (t_s * GroupNorm(h) + t_b), with (t_s, t_b) from the time embedding and z_s from z_sem."""

    def __init__(self, channels: int, t_dim: int, z_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels, affine=False)
        self.t_proj = nn.Linear(t_dim, 2 * channels)
        self.z_proj = nn.Linear(z_dim, channels)
        with torch.no_grad():
            for lin in (self.t_proj, self.z_proj):
                lin.weight.mul_(0.1)
            self.t_proj.bias.zero_()
            self.t_proj.bias[:channels].fill_(1.0)  # t_s starts at 1, t_b at 0
            self.z_proj.bias.fill_(1.0)  # z_s starts at 1

    def forward(self, h: Tensor, t_emb: Tensor, z: Tensor) -> Tensor:
        t_s, t_b = self.t_proj(t_emb)[:, :, None, None].chunk(2, dim=1)
        z_s = self.z_proj(z)[:, :, None, None]
        return z_s * (t_s * self.norm(h) + t_b)


class AdaGNResBlock(nn.Module):
    """GN-SiLU-conv, AdaGN-SiLU-conv, plus a (1x1 when the width changes) skip."""

    def __init__(self, in_ch: int, out_ch: int, t_dim: int, z_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.ada = AdaGN(out_ch, t_dim, z_dim)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, t_emb: Tensor, z: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.ada(h, t_emb, z)))
        return self.skip(x) + h


class DiffAEDenoiser(nn.Module):
    """eps_theta(x_t, t, z_sem): a one-level UNet (two AdaGN blocks per resolution) for (B, C, H, W), H and W even."""

    def __init__(self, in_channels: int = 1, z_dim: int = 32, base: int = 32, t_dim: int = 64) -> None:
        super().__init__()
        if base < 1 or t_dim < 2 or z_dim < 1:
            raise ValueError(
                f"DiffAEDenoiser: base, t_dim, z_dim must be positive (t_dim >= 2), got {base}, {t_dim}, {z_dim}"
            )
        self.t_dim, self.z_dim = t_dim, z_dim
        self.t_mlp = nn.Sequential(nn.Linear(t_dim, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.inp = nn.Conv2d(in_channels, base, 3, padding=1)
        self.enc = AdaGNResBlock(base, base, t_dim, z_dim)
        self.down = nn.Conv2d(base, 2 * base, 3, stride=2, padding=1)
        self.mid1 = AdaGNResBlock(2 * base, 2 * base, t_dim, z_dim)
        self.mid2 = AdaGNResBlock(2 * base, 2 * base, t_dim, z_dim)
        self.up = nn.Conv2d(2 * base, base, 3, padding=1)
        self.dec = AdaGNResBlock(2 * base, base, t_dim, z_dim)
        self.out = nn.Sequential(
            nn.GroupNorm(_groups(base), base), nn.SiLU(), nn.Conv2d(base, in_channels, 3, padding=1)
        )

    def forward(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"DiffAEDenoiser: needs (B, C, H, W) with even H and W, got {tuple(x.shape)}")
        if z.ndim != 2 or z.shape != (x.shape[0], self.z_dim):
            raise ValueError(f"DiffAEDenoiser: z_sem must be ({x.shape[0]}, {self.z_dim}), got {tuple(z.shape)}")
        emb = self.t_mlp(sinusoidal_embedding(t, self.t_dim))
        h0 = self.enc(self.inp(x), emb, z)
        h = self.mid2(self.mid1(self.down(h0), emb, z), emb, z)
        h = self.up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.dec(torch.cat([h, h0], dim=1), emb, z)
        return self.out(h)


class LatentMLPLayer(nn.Module):
    """Linear -> times (1 + time scale) -> LayerNorm -> SiLU (the paper's latent-DDIM layer; last layer: Linear)."""

    def __init__(self, in_dim: int, out_dim: int, t_dim: int, last: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.last = last
        if not last:
            self.t_scale = nn.Sequential(nn.SiLU(), nn.Linear(t_dim, out_dim))
            self.norm = nn.LayerNorm(out_dim)

    def forward(self, h: Tensor, t_emb: Tensor) -> Tensor:
        h = self.linear(h)
        if self.last:
            return h
        return F.silu(self.norm(h * (1.0 + self.t_scale(t_emb))))


class LatentMLP(nn.Module):
    """eps_theta(z_t, t) over (normalised) z_sem: the paper's MLP with skip connections, the input z_t
    concatenated to every hidden layer's input, each layer modulated by the timestep (scale), LayerNorm, SiLU.
    Takes (B, D) or (B, D, 1, 1) (the engine's spatial layout) and returns the same shape."""

    def __init__(self, z_dim: int = 32, hidden: int = 2048, layers: int = 10, t_dim: int = 64) -> None:
        super().__init__()
        if z_dim < 1 or hidden < 1 or layers < 2 or t_dim < 2:
            raise ValueError(f"LatentMLP: need z_dim >= 1, hidden >= 1, layers >= 2, t_dim >= 2, got {z_dim}, "
                             f"{hidden}, {layers}, {t_dim}")
        self.z_dim, self.t_dim = z_dim, t_dim
        self.t_mlp = nn.Sequential(nn.Linear(t_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        dims = [z_dim] + [hidden + z_dim] * (layers - 1)
        self.layers = nn.ModuleList(
            LatentMLPLayer(d, z_dim if i == layers - 1 else hidden, hidden, last=i == layers - 1)
            for i, d in enumerate(dims)
        )

    def forward(self, z_t: Tensor, t: Tensor) -> Tensor:
        shape = z_t.shape
        z = z_t.flatten(1)
        if z.shape[1] != self.z_dim or (z_t.ndim > 2 and math.prod(shape[2:]) != 1):
            raise ValueError(f"LatentMLP: needs (B, {self.z_dim}) or (B, {self.z_dim}, 1, 1), got {tuple(shape)}")
        emb = self.t_mlp(sinusoidal_embedding(t, self.t_dim))
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(h if i == 0 else torch.cat([h, z], dim=1), emb)
        return h.reshape(shape)
