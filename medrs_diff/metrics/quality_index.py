"""Universal image quality index (UIQI, Wang & Bovik 2002) and its multiband extension Q2ⁿ
(Garzelli & Nencini 2009, Q4 for four bands).

UIQI of two blocks x, y: Q = 4·σxy·μx·μy / ((σx² + σy²)(μx² + μy²)), computed on **B×B sliding blocks**
(default 8×8, stride 1, uniform weights, as in Wang & Bovik's ``img_qi.m``) and averaged over block
positions and bands. Degenerate blocks follow that code: both blocks constant → 2μxμy/(μx²+μy²);
numerator and denominator both zero → 1.
torchmetrics' ``UniversalImageQualityIndex`` instead uses an 11×11 Gaussian window, so its numbers
are not comparable with the classic 8×8-block UIQI.

Q2ⁿ: each pixel's band vector is a hypercomplex number z with 2ⁿ components (bands zero-padded up to
a power of two; multiplication by the Cayley-Dickson rule (a, b)(c, d) = (ac − d̄b, da + bc̄), which
gives complex numbers for 2 bands and Hamilton quaternions for 4). Per block
Q = |σ_zz'| / (σ_z σ_z') · 2σ_zσ_z'/(σ_z² + σ_z'²) · 2|μ_z||μ_z'|/(|μ_z|² + |μ_z'|²), with
σ_zz' = E[(z − μ_z)(z' − μ_z')*] and σ_z² = E|z − μ_z|²; blocks are ``block_size``² (default 32)
with stride ``stride`` (default = block size, non-overlapping; rows / columns that do not fill a
block are not scored) and Q2ⁿ is the mean over blocks. The reference (``z'``) is the second argument.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._common import ArrayLike, as_float, check_same_shape

__all__ = ["uiqi", "q2n", "cayley_dickson_mult"]


def _spectral_pair(pred: ArrayLike, ref: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    p, r = as_float(pred, "pred"), as_float(ref, "ref")
    check_same_shape(p, r)
    if p.ndim != 4:
        raise ValueError(f"spectral images need layout (B, C, H, W), got shape {tuple(p.shape)}")
    return p, r


def _quality(num_cov: torch.Tensor, var_sum: torch.Tensor, mean_prod: torch.Tensor,
             mean_sq_sum: torch.Tensor) -> torch.Tensor:
    """Q = 4·cov·mean_prod / (var_sum·mean_sq_sum) with the img_qi.m degenerate-block rules."""
    den = var_sum * mean_sq_sum
    q = torch.ones_like(den)
    constant = (var_sum == 0) & (mean_sq_sum != 0)
    q = torch.where(constant, 2 * mean_prod / torch.where(constant, mean_sq_sum, torch.ones_like(den)), q)
    ok = den != 0
    return torch.where(ok, 4 * num_cov * mean_prod / torch.where(ok, den, torch.ones_like(den)), q)


def uiqi(pred: ArrayLike, ref: ArrayLike, block_size: int = 8) -> torch.Tensor:
    """Per-image UIQI ``(B,)`` for ``(B, C, H, W)`` images: mean over bands and sliding blocks."""
    p, r = _spectral_pair(pred, ref)
    if block_size < 1 or min(p.shape[-2:]) < block_size:
        raise ValueError(f"block_size {block_size} must be >= 1 and fit the image {tuple(p.shape[-2:])}")
    b, c, h, w = p.shape
    x, y = p.reshape(b * c, 1, h, w), r.reshape(b * c, 1, h, w)
    m = F.avg_pool2d(torch.cat([x, y, x * x, y * y, x * y]), block_size, stride=1)
    mx, my, mxx, myy, mxy = m.reshape(5, b, c, *m.shape[-2:])
    q = _quality(mxy - mx * my, (mxx - mx * mx) + (myy - my * my), mx * my, mx * mx + my * my)
    return q.flatten(1).mean(1)


def _conj(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[:1], -x[1:]])


def cayley_dickson_mult(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hypercomplex product over the first axis (length a power of two): (p, q)(r, s) = (pr − s̄q, sp + qr̄)."""
    k = a.shape[0]
    if k == 1:
        return a * b
    if k & (k - 1):
        raise ValueError(f"hypercomplex numbers need a power-of-two number of components, got {k}")
    h = k // 2
    p, q, r, s = a[:h], a[h:], b[:h], b[h:]
    return torch.cat([cayley_dickson_mult(p, r) - cayley_dickson_mult(_conj(s), q),
                      cayley_dickson_mult(s, p) + cayley_dickson_mult(q, _conj(r))])


def q2n(pred: ArrayLike, ref: ArrayLike, block_size: int = 32, stride: int | None = None) -> torch.Tensor:
    """Per-image Q2ⁿ ``(B,)`` for ``(B, C, H, W)`` images (see module docstring)."""
    p, r = _spectral_pair(pred, ref)
    stride = block_size if stride is None else stride
    if block_size < 2 or stride < 1 or min(p.shape[-2:]) < block_size:
        raise ValueError(f"block_size {block_size} (>= 2) and stride {stride} (>= 1) must fit the image "
                         f"{tuple(p.shape[-2:])}; pass a smaller block_size")
    b, c = p.shape[:2]
    k = 2 ** math.ceil(math.log2(c)) if c > 1 else 1
    if k > c:
        pad = (0, 0, 0, 0, 0, k - c)
        p, r = F.pad(p, pad), F.pad(r, pad)
    out = torch.empty(b, dtype=torch.float64)
    for i in range(b):
        # blocks: (k, n_blocks, block_size²)
        z1 = F.unfold(p[i].unsqueeze(1), block_size, stride=stride).transpose(1, 2)
        z2 = F.unfold(r[i].unsqueeze(1), block_size, stride=stride).transpose(1, 2)
        mu1, mu2 = z1.mean(-1, keepdim=True), z2.mean(-1, keepdim=True)
        d1, d2 = z1 - mu1, z2 - mu2
        cov = cayley_dickson_mult(d1, _conj(d2)).mean(-1).norm(dim=0)
        var_sum = (d1**2).sum(0).mean(-1) + (d2**2).sum(0).mean(-1)
        m1, m2 = mu1.squeeze(-1).norm(dim=0), mu2.squeeze(-1).norm(dim=0)
        out[i] = _quality(cov, var_sum, m1 * m2, m1**2 + m2**2).mean()
    return out
