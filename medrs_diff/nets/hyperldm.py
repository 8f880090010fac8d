"""HyperLDM's nets (Liu et al., TGRS 2023): the conditional VQ autoencoder with the physics-informed
(unmixing) decoder, and the RGB condition branch of the latent diffusion UNet.

- :class:`HSIEncoder`: cube (C bands) -> latent (D channels) at 1/4 resolution (two stride-2 convs).
- :class:`VectorQuantizer`: nearest codebook entry, straight-through gradient, codebook + beta * commitment
  loss (VQ-VAE, beta = 0.25 as in the paper).
- :class:`RGBPyramid`: RGB -> features at 1, 1/2 and 1/4 resolution. The decoder concatenates the 1/4 level
  with the latent and adds the others as skips on the way up (the paper's decoder-side RGB injection); the
  diffusion side uses its own pyramid's 1/4 level as the condition concatenated with the noisy latent.
- :class:`UnmixingHead`: softmax abundances over a fixed endmember library (bands x K) times a learnable
  per-band gain (the paper's "bright"): ``hsi[c] = gain[c] * sum_k library[c, k] * softmax(logits)[k]``.
- :func:`spectral_angle`: the per-pixel angle (radians) by Kahan's formula, exactly 0 for scaled spectra
  (no ``arccos`` near 1, whose gradient is infinite).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FrozenFloat", "HSIEncoder", "HyperVQAE", "PhysicsDecoder", "RGBPyramid", "ResBlock", "UnmixingHead",
    "VectorQuantizer", "spectral_angle", "unmix",
]


def _groups(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """GroupNorm - SiLU - conv, twice, plus the input."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
            nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class HSIEncoder(nn.Module):
    """(B, bands, H, W) -> (B, latent, H/4, W/4)."""

    def __init__(self, bands: int, ch: int, latent: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(bands, ch, 3, padding=1), ResBlock(ch),
            nn.Conv2d(ch, ch, 4, stride=2, padding=1), ResBlock(ch),
            nn.Conv2d(ch, ch, 4, stride=2, padding=1), ResBlock(ch),
            nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, latent, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantisation of (B, D, h, w) latents onto ``n_embed`` D-dim codes.

    The codebook is initialised from the data: on the first training forward pass its entries are set to
    latents of that batch (drawn at random, with replacement when the batch has fewer), so that every code
    starts where the encoder's outputs are (a uniform +-1/n start leaves most codes unused, which makes the
    latent carry almost nothing and the decoder fall back on the RGB alone)."""

    def __init__(self, n_embed: int, dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.codebook = nn.Embedding(n_embed, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / n_embed, 1.0 / n_embed)
        self.beta = float(beta)
        self.register_buffer("initialised", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def init_from(self, z: Tensor) -> None:
        """Set the codebook to random latents of ``z`` (B, D, h, w) (once)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        n = self.codebook.weight.shape[0]
        idx = torch.randperm(flat.shape[0], device=z.device)[:n] if flat.shape[0] >= n else \
            torch.randint(0, flat.shape[0], (n,), device=z.device)
        self.codebook.weight.copy_(flat[idx] + 1e-3 * torch.randn_like(flat[idx]))
        self.initialised.fill_(1)

    def indices(self, z: Tensor) -> Tensor:
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        w = self.codebook.weight
        d = (flat ** 2).sum(1, keepdim=True) - 2 * flat @ w.t() + (w ** 2).sum(1)[None]
        return d.argmin(1).reshape(z.shape[0], *z.shape[2:])

    def lookup(self, idx: Tensor) -> Tensor:
        return self.codebook(idx).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(quantised with straight-through gradient, codebook + beta * commitment loss, indices)."""
        if self.training and not bool(self.initialised):
            self.init_from(z)
        idx = self.indices(z)
        zq = self.lookup(idx)
        loss = F.mse_loss(zq, z.detach()) + self.beta * F.mse_loss(z, zq.detach())
        return z + (zq - z).detach(), loss, idx


class RGBPyramid(nn.Module):
    """RGB (B, 3, H, W) -> [(B, ch, H, W), (B, ch, H/2, W/2), (B, out, H/4, W/4)]."""

    def __init__(self, ch: int, out: int | None = None, in_ch: int = 3) -> None:
        super().__init__()
        out = ch if out is None else out
        self.stem = nn.Sequential(nn.Conv2d(in_ch, ch, 3, padding=1), ResBlock(ch))
        self.down1 = nn.Sequential(nn.Conv2d(ch, ch, 4, stride=2, padding=1), ResBlock(ch))
        self.down2 = nn.Sequential(nn.Conv2d(ch, out, 4, stride=2, padding=1), ResBlock(out))

    def forward(self, rgb: Tensor) -> list[Tensor]:
        f0 = self.stem(rgb)
        f1 = self.down1(f0)
        return [f0, f1, self.down2(f1)]


def unmix(abundances: Tensor, library: Tensor, gain: Tensor) -> Tensor:
    """``gain[c] * sum_k library[c, k] * abundances[:, k]``: (B, K, H, W) -> (B, bands, H, W)."""
    return torch.einsum("ck,bkhw->bchw", library, abundances) * gain[None, :, None, None]


class FrozenFloat(nn.Module):
    """A float32 tensor set once from the data (an endmember library, a latent scale), kept in the state dict
    as the bits of an int32 buffer: weight averaging (EMA) copies integer buffers instead of averaging them,
    so the value stays exactly the one that was set. All zeros means "not set yet"."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.register_buffer("bits", torch.zeros(*shape, dtype=torch.int32))

    @property
    def value(self) -> Tensor:
        return self.bits.view(torch.float32)

    @property
    def is_set(self) -> bool:
        return bool(self.bits.any())

    def set(self, value: Tensor) -> None:
        v = value.detach().to(device=self.bits.device, dtype=torch.float32).reshape(self.bits.shape).contiguous()
        self.bits.copy_(v.view(torch.int32))


class UnmixingHead(nn.Module):
    """Abundance logits (B, K, H, W) -> (cube, abundances) through a fixed library and a learnable gain.

    The library (bands, K) is set once from the data (``library.set``); the gain starts at 1."""

    def __init__(self, bands: int, k: int) -> None:
        super().__init__()
        self.library = FrozenFloat(bands, k)
        self.gain = nn.Parameter(torch.ones(bands))

    def forward(self, logits: Tensor, library: Tensor | None = None) -> tuple[Tensor, Tensor]:
        a = torch.softmax(logits, dim=1)
        return unmix(a, self.library.value if library is None else library, self.gain), a


class HyperVQAE(nn.Module):
    """The conditional VQ autoencoder: :meth:`encode` a cube to quantised latents at 1/4 resolution,
    :meth:`decode` latents + RGB to (cube, abundances) through the unmixing head."""

    def __init__(self, bands: int, k: int, latent: int, ch: int, codebook_size: int, beta: float = 0.25,
                 rgb_channels: int = 3) -> None:
        super().__init__()
        self.encoder = HSIEncoder(bands, ch, latent)
        self.quantizer = VectorQuantizer(codebook_size, latent, beta)
        self.rgb = RGBPyramid(ch, in_ch=rgb_channels)
        self.decoder = PhysicsDecoder(latent, ch, k)
        self.head = UnmixingHead(bands, k)

    def encode(self, hsi: Tensor) -> tuple[Tensor, Tensor]:
        """(straight-through quantised latent, codebook + commitment loss)."""
        zq, vq_loss, _ = self.quantizer(self.encoder(hsi))
        return zq, vq_loss

    def decode(self, z: Tensor, rgb: Tensor, library: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.head(self.decoder(z, self.rgb(rgb)), library)


class PhysicsDecoder(nn.Module):
    """(latent (B, D, h, w), RGB pyramid) -> abundance logits (B, K, 4h, 4w): the RGB's 1/4 level is
    concatenated with the latent, its 1/2 and full levels are added on the way up."""

    def __init__(self, latent: int, ch: int, k: int) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Conv2d(latent + ch, ch, 3, padding=1), ResBlock(ch))
        self.up1 = nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1)
        self.mid1 = ResBlock(ch)
        self.up2 = nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1)
        self.mid2 = ResBlock(ch)
        self.out = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, k, 3, padding=1))

    def forward(self, z: Tensor, rgb_feats: list[Tensor]) -> Tensor:
        f0, f1, f2 = rgb_feats
        h = self.inp(torch.cat([z, f2], 1))
        h = self.mid1(self.up1(h) + f1)
        h = self.mid2(self.up2(h) + f0)
        return self.out(h)


def spectral_angle(pred: Tensor, ref: Tensor, dim: int = 1) -> Tensor:
    """Per-pixel spectral angle (radians) between ``pred`` and ``ref`` along ``dim``, by Kahan's stable form
    ``2 atan2(|a |b| - b |a||, |a |b| + b |a||)``: exactly 0 for positively scaled spectra."""
    na = pred.norm(dim=dim, keepdim=True)
    nb = ref.norm(dim=dim, keepdim=True)
    u, v = pred * nb, ref * na
    num = (u - v).pow(2).sum(dim).clamp_min(1e-24).sqrt()
    den = (u + v).pow(2).sum(dim).clamp_min(1e-24).sqrt()
    return 2 * torch.atan2(num, den)
