"""A spatiotemporal transformer denoiser for sequence diffusion (radar nowcasting, Zhao et al., TGRS 2024).

Contract: ``net(x_t, t, cond)`` with the noisy future frames ``x_t`` (B, M, C, H, W), the diffusion step
``t`` (B,) and the clean past frames ``cond`` (B, N, C, H, W) returns (B, M, C, H, W) (the x0 or eps
estimate of the future frames). Every frame is cut into ``patch_size`` x ``patch_size`` patch tokens; the
past frames are conditioning tokens in the same sequence (their own patch embedding and a role embedding),
so past and future exchange information in every block.

Blocks are factorised space-time attention (TimeSformer / Earthformer style, divided attention): spatial
self-attention among the tokens of one frame, then temporal self-attention among the tokens of one patch
position across all N + M frames, then an MLP; every attention is ``torch.nn.functional.scaled_dot_product_attention``
(flash / memory-efficient kernels where available, so long sequences fit). The diffusion step enters every
sub-layer through adaptive layer norm with zero-initialised gates (DiT's adaLN-Zero).

Positions: a fixed 2-D sine-cosine embedding for the patch grid (any H, W that the patch divides); time
through rotary embeddings (RoPE) in the temporal attention, on the frame times relative to the forecast
origin (past ``-(N-1) .. 0``, future ``1 .. M`` by default). RoPE makes temporal attention depend only on
time differences, so shifting every frame time by a constant leaves the output unchanged, while the order
of the frames matters; and the number of past frames ``N`` can vary between calls (no learned table of
frame positions).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ArgumentError, DataError


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding (B, dim) of (B,) diffusion steps (float or integer)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def sincos_2d(h: int, w: int, dim: int, device: torch.device) -> Tensor:
    """Fixed 2-D sine-cosine position embedding (h*w, dim) of a patch grid (dim divisible by 4)."""
    quarter = dim // 4
    omega = 1.0 / 10_000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    yy, xx = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    out = [f(c.flatten()[:, None] * omega[None]) for c in (yy, xx) for f in (torch.sin, torch.cos)]
    return torch.cat(out, dim=1)


def rope(x: Tensor, pos: Tensor, base: float = 100.0) -> Tensor:
    """Rotary position embedding of (..., T, d) queries / keys at (T,) float positions (d even)."""
    d = x.shape[-1]
    freqs = 1.0 / base ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    ang = pos.float()[:, None] * freqs[None]  # (T, d/2)
    cos, sin = torch.cos(ang).to(x.dtype), torch.sin(ang).to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class Attention(nn.Module):
    """Multi-head self-attention over the second-to-last axis with SDPA; optional RoPE positions."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if pos is not None:
            q, k = rope(q, pos), rope(k, pos)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class SpaceTimeBlock(nn.Module):
    """Spatial attention, temporal attention (RoPE in time), MLP; each adaLN-Zero modulated by the step."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6) for _ in range(3))
        self.space = Attention(dim, heads)
        self.time = Attention(dim, heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, emb: Tensor, times: Tensor) -> Tensor:
        """x: (B, T, P, D) tokens; emb: (B, D) step embedding; times: (T,) frame times."""
        b, t, p, d = x.shape
        mods = self.ada(emb)[:, None, None].chunk(9, dim=-1)
        h = _modulate(self.norms[0](x), mods[0], mods[1]).reshape(b * t, p, d)
        x = x + mods[2] * self.space(h).reshape(b, t, p, d)
        h = _modulate(self.norms[1](x), mods[3], mods[4]).transpose(1, 2).reshape(b * p, t, d)
        x = x + mods[5] * self.time(h, times).reshape(b, p, t, d).transpose(1, 2)
        return x + mods[8] * self.mlp(_modulate(self.norms[2](x), mods[6], mods[7]))


class SpaceTimeTransformer(nn.Module):
    """Denoiser of future frames (B, M, C, H, W) given past frames (B, N, C, H, W); see the module docstring."""

    def __init__(self, in_channels: int = 1, patch_size: int = 4, dim: int = 64, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if dim % 4 or dim % heads or (dim // heads) % 2:
            raise ArgumentError("dim", f"{dim} with {heads} heads: dim must be divisible by 4 and by heads, with an "
                                "even head width", "use e.g. dim 64 with 4 heads")
        if patch_size < 1 or depth < 1:
            raise ArgumentError("patch_size/depth", f"got {patch_size}/{depth}", "use positive values")
        self.in_channels, self.patch_size, self.dim = int(in_channels), int(patch_size), int(dim)
        self.embed_future = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.embed_past = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.role = nn.Parameter(torch.zeros(2, dim))  # 0: past (conditioning), 1: noisy future
        nn.init.normal_(self.role, std=0.02)
        self.step_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(SpaceTimeBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, patch_size * patch_size * in_channels)
        for m in (self.ada_out[1], self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def size_multiple(self) -> int:
        return self.patch_size

    def _check(self, x: Tensor, cond: Tensor) -> None:
        if x.ndim != 5 or cond.ndim != 5:
            raise DataError("frames", f"expected (B, T, C, H, W) future and past, got {tuple(x.shape)} and "
                            f"{tuple(cond.shape)}", "stack the frames along axis 1")
        if x.shape[0] != cond.shape[0] or x.shape[2:] != cond.shape[2:]:
            raise DataError("frames", f"future {tuple(x.shape)} and past {tuple(cond.shape)} differ in batch, "
                            "channels or grid", "give past and future frames on one grid")
        if x.shape[2] != self.in_channels:
            raise DataError("frames", f"{x.shape[2]} channel(s), the net was built for {self.in_channels}",
                            f"pass {self.in_channels}-channel frames")
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise DataError("frames", f"grid {h}x{w} is not a multiple of the patch size {self.patch_size}",
                            f"crop or pad the frames to a multiple of {self.patch_size}")

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, times: Tensor | None = None) -> Tensor:
        """``x`` (B, M, C, H, W) noisy future, ``t`` (B,) steps, ``cond`` (B, N, C, H, W) past; ``times`` (N + M,)
        frame times (default: past ``-(N-1) .. 0``, future ``1 .. M``). Returns (B, M, C, H, W)."""
        self._check(x, cond)
        b, m, c, h, w = x.shape
        n = cond.shape[1]
        p = self.patch_size
        gh, gw = h // p, w // p
        if times is None:
            times = torch.arange(-(n - 1), m + 1, device=x.device, dtype=torch.float32)
        if times.shape != (n + m,):
            raise DataError("times", f"{tuple(times.shape)} frame times for {n} + {m} frames", "give one per frame")
        fut = self.embed_future(x.reshape(b * m, c, h, w)).flatten(2).transpose(1, 2).reshape(b, m, gh * gw, -1)
        past = self.embed_past(cond.reshape(b * n, c, h, w)).flatten(2).transpose(1, 2).reshape(b, n, gh * gw, -1)
        pos = sincos_2d(gh, gw, self.dim, x.device).to(fut.dtype)
        tokens = torch.cat([past + self.role[0], fut + self.role[1]], dim=1) + pos
        emb = self.step_mlp(timestep_embedding(t.expand(b) if t.ndim == 0 else t, self.dim).to(fut.dtype))
        for block in self.blocks:
            tokens = block(tokens, emb, times.to(x.device))
        shift, scale = self.ada_out(emb)[:, None, None].chunk(2, dim=-1)
        out = self.out(_modulate(self.norm_out(tokens[:, n:]), shift, scale))  # future tokens only
        out = out.reshape(b, m, gh, gw, p, p, c).permute(0, 1, 6, 2, 4, 3, 5)
        return out.reshape(b, m, c, h, w)


class SequenceDiscriminator(nn.Module):
    """DD-GAN's conditional discriminator D(x_{t-1}, x_t, t | past) -> one logit per sample.

    The frames of x_{t-1}, x_t (M each) and the past (N) are stacked as channels of a small strided CNN;
    the diffusion step enters as an embedding added after the first convolution (DD-GAN's time-dependent
    discriminator)."""

    def __init__(self, frames: int, in_channels: int = 1, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.frames = int(frames)
        self.first = nn.Conv2d(frames * in_channels, width, 3, padding=1)
        self.step = nn.Linear(width, width)
        layers: list[nn.Module] = []
        c = width
        for _ in range(depth):
            layers += [nn.LeakyReLU(0.2), nn.Conv2d(c, 2 * c, 4, stride=2, padding=1)]
            c *= 2
        self.body = nn.Sequential(*layers, nn.LeakyReLU(0.2))
        self.head = nn.Linear(c, 1)
        self.width = width

    def forward(self, x_prev: Tensor, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        seq = torch.cat([cond, x_t, x_prev], dim=1)  # (B, N + 2M, C, H, W)
        b, f, c, h, w = seq.shape
        if f * c != self.first.in_channels:
            raise DataError("discriminator", f"{f} frames x {c} channels, built for {self.first.in_channels}",
                            "use the number of past / future frames the method was built with")
        z = self.first(seq.reshape(b, f * c, h, w))
        z = z + self.step(timestep_embedding(t, self.width))[:, :, None, None]
        return self.head(self.body(z).mean(dim=(2, 3))).squeeze(1)


__all__ = ["SequenceDiscriminator", "SpaceTimeBlock", "SpaceTimeTransformer", "rope", "sincos_2d",
           "timestep_embedding"]
