"""The retinal dual model's light UNet (ReTree; Alimanov & Islam 2023): a small convolutional UNet whose down
stages are each followed by a transformer block with **locality self-attention** (LSA; Lee, Lee & Song 2021,
"Vision Transformer for Small-Size Datasets"), a convolutional bottleneck and a 256-d sinusoidal time embedding.

What is fixed by the paper's description (``../shared/reference/medical.md`` section 6): two down stages, each
followed by an LSA transformer block; a conv bottleneck; a 256-d sinusoidal time embedding. What is chosen here
(the description leaves it open; written from the facts, not from the GPL code): each stage is two 3x3
conv - GroupNorm - SiLU layers with the time embedding added (projected) between them; downsampling by 2x2
max-pooling, upsampling bilinear then concatenation with the skip; the up stages are convolutional only.

LSA differs from plain multi-head self-attention in two ways: the softmax temperature is a learned scalar
(initialised to sqrt(head dim)) and each token's attention to itself is masked out (the diagonal of the logits
is -inf), which sharpens attention towards the other tokens. The block is pre-norm: ``x + LSA(LN(x))`` then
``x + MLP(LN(x))`` (GELU, ratio 2). Tokens are the feature map's pixels, or ``attention_patch`` x
``attention_patch`` patches of them (linearly embedded and mapped back) so memory stays bounded on larger images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LightUNet", "LocalitySelfAttention", "LSATransformerBlock", "sinusoidal_embedding"]


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(B,) timesteps -> (B, dim) [cos | sin] features at geometric frequencies (the DDPM / Transformer encoding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class LocalitySelfAttention(nn.Module):
    """Multi-head self-attention with a learned temperature and the diagonal masked (Lee et al. 2021) on (B, N, C)."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"LocalitySelfAttention: {dim} channels do not split into {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        #: learned softmax temperature (logits are q.k / temperature), initialised to sqrt(head dim)
        self.temperature = nn.Parameter(torch.tensor(math.sqrt(self.head_dim)))

    def attention(self, x: Tensor) -> Tensor:
        """The (B, heads, N, N) attention weights (rows sum to 1, zero diagonal)."""
        q, k, _ = self._qkv(x)
        return self._weights(q, k)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _weights(self, q: Tensor, k: Tensor) -> Tensor:
        logits = q @ k.transpose(-2, -1) / self.temperature
        n = logits.shape[-1]
        if n > 1:
            eye = torch.eye(n, dtype=torch.bool, device=logits.device)
            logits = logits.masked_fill(eye, float("-inf"))
        return logits.softmax(-1)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._qkv(x)
        out = self._weights(q, k) @ v
        b, _, n, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class LSATransformerBlock(nn.Module):
    """Pre-norm transformer block with :class:`LocalitySelfAttention` on a (B, C, H, W) feature map."""

    def __init__(self, channels: int, heads: int = 4, patch: int = 1, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.patch = int(patch)
        dim = channels * self.patch**2
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = LocalitySelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"LSATransformerBlock: feature map {h} x {w} does not split into {p} x {p} patches")
        tokens = F.pixel_unshuffle(x, p) if p > 1 else x  # (B, C p^2, H/p, W/p)
        hp, wp = tokens.shape[-2:]
        t = tokens.flatten(2).transpose(1, 2)  # (B, N, C p^2)
        t = t + self.attn(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        t = t.transpose(1, 2).reshape(b, c * p * p, hp, wp)
        return F.pixel_shuffle(t, p) if p > 1 else t


class _ConvStage(nn.Module):
    """conv3x3 - GN - SiLU, + projected time embedding, conv3x3 - GN - SiLU."""

    def __init__(self, cin: int, cout: int, time_dim: int, groups: int) -> None:
        super().__init__()
        g = math.gcd(groups, cout)
        self.conv1, self.norm1 = nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(g, cout)
        self.conv2, self.norm2 = nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(g, cout)
        self.time = nn.Linear(time_dim, cout)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = F.silu(self.norm1(self.conv1(x))) + self.time(temb)[:, :, None, None]
        return F.silu(self.norm2(self.conv2(h)))


class LightUNet(nn.Module):
    """``forward(x_t, t, cond=None)`` -> (B, out_channels, H, W); ``cond`` (B, cond_channels, H, W) is concatenated
    to x_t. ``channels``: widths of the input stage and of each down stage (the paper: two down stages, so three
    entries); every down stage is followed by an :class:`LSATransformerBlock` (``heads`` heads, tokens of
    ``attention_patch``^2 pixels)."""

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int] = (64, 128, 256),
                 cond_channels: int = 0, time_dim: int = 256, heads: int = 4, attention_patch: int = 1,
                 norm_num_groups: int = 8) -> None:
        super().__init__()
        ch = [int(c) for c in channels]
        if len(ch) < 2:
            raise ValueError(f"LightUNet: channels needs the input width and at least one down stage, got {ch}")
        self.time_dim, self.cond_channels = time_dim, cond_channels
        self.size_multiple = 2 ** (len(ch) - 1) * int(attention_patch)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.inc = _ConvStage(in_channels + cond_channels, ch[0], time_dim, norm_num_groups)
        self.downs = nn.ModuleList(_ConvStage(a, b, time_dim, norm_num_groups) for a, b in zip(ch[:-1], ch[1:]))
        self.attns = nn.ModuleList(LSATransformerBlock(c, heads, attention_patch) for c in ch[1:])
        self.mid = _ConvStage(ch[-1], ch[-1], time_dim, norm_num_groups)
        self.ups = nn.ModuleList(_ConvStage(b + a, a, time_dim, norm_num_groups)
                                 for a, b in zip(reversed(ch[:-1]), reversed(ch[1:])))
        self.out = nn.Conv2d(ch[0], out_channels, 1)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.cond_channels:
            if cond is None or cond.shape[1] != self.cond_channels:
                raise ValueError(f"this LightUNet concatenates a {self.cond_channels}-channel condition to x_t")
            x = torch.cat([x, cond], 1)
        temb = self.time_mlp(sinusoidal_embedding(t, self.time_dim).to(x.dtype))
        h = self.inc(x, temb)
        skips = [h]
        for down, attn in zip(self.downs, self.attns, strict=True):
            h = attn(down(F.max_pool2d(h, 2), temb))
            skips.append(h)
        h = self.mid(skips.pop(), temb)
        for up in self.ups:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = up(torch.cat([h, skip], 1), temb)
        return self.out(h)
