"""BlindSRSNF's nets: the degradation encoder (MoCo), degradation-aware dynamic convolutions and the denoiser.

- :class:`DegradationEncoder`: DASR's encoder (six 3 x 3 convs, two of stride 2, BatchNorm, LeakyReLU, global
  average pooling) giving the ``dim``-d degradation representation (64 in BlindSRSNF), plus an MLP
  projection head for the InfoNCE loss. BatchNorm uses running statistics in eval mode, so a tile's code does
  not depend on its batch at inference (per-sample GroupNorm was tried: it divides out the noise level and
  the codes collapsed on phantoms). A BatchNorm on the pooled features centres them (MoCo v3's heads).
  ``high_pass`` (default, not in the paper): the encoder sees the LR minus its 3 x 3 local mean, since blur
  and noise live in the high frequencies and the scene's colour otherwise dominates the code.
- :class:`DAConv`: DASR's ``DA_conv``. The representation predicts a per-sample depthwise ``k x k`` kernel
  (applied by a grouped conv) followed by a 1 x 1 conv, plus a channel attention from the representation;
  ``out = conv1x1(relu(dwconv_r(x))) + x * sigmoid(att(r))``.
- :class:`DAResBlock`: GroupNorm-SiLU-conv, + time embedding, GroupNorm-SiLU-conv, then a :class:`DAConv`,
  residual: the dynamic convolution sits in **every** residual block.
- :class:`BlindSRDenoiser`: the SR3-style UNet on the pixel-unshuffled (fold 2) noisy HR; after its first
  conv the unshuffled SR estimate (through a conv) and the RRDB features ``ctx`` (bilinearly resized to the
  unshuffled grid, through a conv) are **concatenated** and fused by a 1 x 1 conv.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .light_unet import sinusoidal_embedding

__all__ = ["BlindSRDenoiser", "DAConv", "DAResBlock", "DegradationEncoder"]


class DegradationEncoder(nn.Module):
    """LR image -> (representation ``(B, dim)``, projection ``(B, dim)``); see the module notes."""

    def __init__(self, in_channels: int, dim: int = 64, width: int = 64, high_pass: bool = True) -> None:
        super().__init__()
        self.high_pass = high_pass
        w = width
        spec = [(in_channels, w, 1), (w, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 4 * w, 2), (4 * w, 4 * w, 1)]
        layers: list[nn.Module] = []
        for cin, cout, stride in spec:
            layers += [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True)]
        self.body = nn.Sequential(*layers)
        self.pool_norm = nn.BatchNorm1d(4 * w)  # centres the pooled features across the batch (MoCo v3 heads)
        self.to_rep = nn.Linear(4 * w, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.1, inplace=True), nn.Linear(dim, dim))
        self.dim = dim

    def forward(self, lr: Tensor) -> tuple[Tensor, Tensor]:
        if self.high_pass:  # blur and noise live in the high frequencies; the scene's colour does not
            lr = lr - F.avg_pool2d(lr, 3, 1, 1, count_include_pad=False)
        rep = self.to_rep(self.pool_norm(self.body(lr).mean(dim=(2, 3))))
        return rep, self.mlp(rep)


class DAConv(nn.Module):
    """Degradation-aware dynamic convolution (DASR's DA_conv) of ``channels`` features by a ``dim``-d code."""

    def __init__(self, channels: int, dim: int, kernel: int = 3, reduction: int = 8) -> None:
        super().__init__()
        self.channels, self.k = channels, kernel
        self.kernel = nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.1, inplace=True),
                                    nn.Linear(dim, channels * kernel * kernel, bias=False))
        self.conv = nn.Conv2d(channels, channels, 1)
        hidden = max(channels // reduction, 4)
        self.attention = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(0.1, inplace=True),
                                       nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: Tensor, rep: Tensor) -> Tensor:
        b, c, h, w = x.shape
        k = self.kernel(rep).view(b * c, 1, self.k, self.k)
        y = F.conv2d(x.reshape(1, b * c, h, w), k, padding=self.k // 2, groups=b * c).view(b, c, h, w)
        y = self.conv(F.leaky_relu(y, 0.1))
        return y + x * self.attention(rep)[:, :, None, None]


class DAResBlock(nn.Module):
    """A time-conditioned residual block whose second half is a degradation-aware dynamic convolution."""

    def __init__(self, cin: int, cout: int, time_dim: int, dim: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(groups, cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(time_dim, cout)
        self.norm2, self.conv2 = nn.GroupNorm(min(groups, cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.da = DAConv(cout, dim)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor, rep: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.time(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + self.da(h, rep)


class BlindSRDenoiser(nn.Module):
    """``net(x_t, t, sr=SR estimate, ctx=RRDB features, rep=degradation code)`` -> prediction at HR size.

    ``channels`` per level (the first level works on the fold-2 unshuffled grid); ``num_res_blocks``
    :class:`DAResBlock` per level, down by stride-2 convs, up by nearest + conv with skip concatenation.
    HR sizes must be multiples of ``size_multiple``."""

    def __init__(self, in_channels: int, ctx_channels: int, channels: Sequence[int] = (64, 128, 256),
                 num_res_blocks: int = 2, dim: int = 64, norm_num_groups: int = 32, fold: int = 2) -> None:
        super().__init__()
        ch = list(channels)
        self.fold, self.time_dim = fold, 4 * ch[0]
        unshuffled = in_channels * fold * fold
        self.time_mlp = nn.Sequential(nn.Linear(ch[0], self.time_dim), nn.SiLU(), nn.Linear(self.time_dim,
                                                                                             self.time_dim))
        self.conv_first = nn.Conv2d(unshuffled, ch[0], 3, padding=1)
        self.sr_conv = nn.Conv2d(unshuffled, ch[0], 3, padding=1)
        self.ctx_conv = nn.Conv2d(ctx_channels, ch[0], 3, padding=1)
        self.fuse = nn.Conv2d(3 * ch[0], ch[0], 1)
        g, t = norm_num_groups, self.time_dim
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [ch[0]]
        cur = ch[0]
        for i, c in enumerate(ch):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(DAResBlock(cur, c, t, dim, g))
                cur = c
                skips.append(cur)
            self.down.append(blocks)
            self.downsample.append(nn.Conv2d(cur, cur, 3, 2, 1) if i < len(ch) - 1 else nn.Identity())
            if i < len(ch) - 1:
                skips.append(cur)
        self.mid = nn.ModuleList([DAResBlock(cur, cur, t, dim, g), DAResBlock(cur, cur, t, dim, g)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, c in reversed(list(enumerate(ch))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(DAResBlock(cur + skips.pop(), c, t, dim, g))
                cur = c
            self.up.append(blocks)
            self.upsample.append(nn.Conv2d(cur, cur, 3, padding=1) if i > 0 else nn.Identity())
        self.norm_out = nn.GroupNorm(min(g, cur), cur)
        self.conv_out = nn.Conv2d(cur, unshuffled, 3, padding=1)
        self.size_multiple = fold * 2 ** (len(ch) - 1)

    def forward(self, x: Tensor, t: Tensor, *, sr: Tensor, ctx: Tensor, rep: Tensor) -> Tensor:
        f = self.fold
        h = self.conv_first(F.pixel_unshuffle(x, f))
        s = self.sr_conv(F.pixel_unshuffle(sr, f))
        c = self.ctx_conv(F.interpolate(ctx, size=h.shape[-2:], mode="bilinear", align_corners=False))
        h = self.fuse(torch.cat([h, s, c], 1))
        temb = self.time_mlp(sinusoidal_embedding(t, self.conv_first.out_channels).to(x.dtype))
        hs = [h]
        for blocks, down in zip(self.down, self.downsample):
            for blk in blocks:
                h = blk(h, temb, rep)
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)
        for blk in self.mid:
            h = blk(h, temb, rep)
        for blocks, up in zip(self.up, self.upsample):
            for blk in blocks:
                h = blk(torch.cat([h, hs.pop()], 1), temb, rep)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2, mode="nearest"))
        return F.pixel_shuffle(self.conv_out(F.silu(self.norm_out(h))), f)
