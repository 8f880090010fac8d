"""Image-fusion metrics (no reference fused image exists): EN, SD, MI, VIF, Qabf, SSIM, with their conventions.

Inputs are single-channel 2-D images ``(H, W)`` (numpy or torch) in **[0, 1]** (a fused image F and its
two sources A, B on one grid); values outside [0, 1] are clipped for the histogram metrics.

* **EN** (entropy, bits): Shannon entropy of F's 256-bin histogram, bins of width 1/256 over [0, 1]
  (the 8-bit grey levels of the fusion literature).
* **SD**: population standard deviation of F (ddof 0) in [0, 1] units (x 255 for the 8-bit numbers papers print).
* **MI** (bits) = MI(F, A) + MI(F, B), each from the 256 x 256 joint histogram of the quantised images
  (the same 256 bins); MI(X, Y) = sum p(x, y) log2(p(x, y) / (p(x) p(y))). Equals
  ``sklearn.metrics.mutual_info_score`` of the bin indices divided by ln 2.
* **SSIM** = (SSIM(F, A) + SSIM(F, B)) / 2 with :func:`medrs_diff.metrics.image.ssim` (Gaussian window
  sigma 1.5, 11 taps, data range 1; = scikit-image ``structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1)``).
* **VIF** = VIFp(A, F) + VIFp(B, F): the pixel-domain visual information fidelity of Sheikh & Bovik (2006),
  four scales (Gaussian windows of N = 2^(5-s) + 1 taps, sigma N / 5, dyadic down-sampling), sigma_n^2 = 2
  on the 0-255 scale; VIFp(X, X) = 1.
* **Qabf** (Xydeas & Petrovic 2000): Sobel gradients (scipy.ndimage.sobel, reflected borders), strength
  g = sqrt(gx^2 + gy^2) and orientation alpha = arctan(gy / gx) (pi/2 where gx = 0); per source S:
  G = min(gS, gF) / max(gS, gF) (1 where both are 0), A = 1 - |alphaS - alphaF| / (pi / 2),
  Q = Gamma_g / (1 + exp(k_g (G - s_g))) * Gamma_a / (1 + exp(k_a (A - s_a))) with Gamma_g 0.9994,
  k_g -15, s_g 0.5, Gamma_a 0.9879, k_a -22, s_a 0.8; Qabf = sum(Q_AF gA + Q_BF gB) / sum(gA + gB).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from .image import ssim as _ssim

__all__ = ["FUSION_KEYS", "entropy", "fusion_scores", "mutual_information", "qabf", "vif", "vifp"]

#: The metrics :func:`fusion_scores` returns, in table order.
FUSION_KEYS = ("EN", "SD", "MI", "VIF", "Qabf", "SSIM")
BINS = 256


def _img(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    a = np.squeeze(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a single-channel 2-D image, got shape {np.shape(x)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has NaN / inf values")
    return a


def quantise(x: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Bin index 0..bins-1 of each pixel: floor(bins x), x clipped to [0, 1] (1.0 goes to the last bin)."""
    return np.minimum((np.clip(x, 0.0, 1.0) * bins).astype(np.int64), bins - 1)


def entropy(f: Any) -> float:
    """EN: Shannon entropy (bits) of the 256-bin histogram of ``f`` in [0, 1]."""
    q = quantise(_img(f, "fused image"))
    p = np.bincount(q.ravel(), minlength=BINS) / q.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def mutual_information(x: Any, y: Any, bins: int = BINS) -> float:
    """MI(X, Y) in bits from the ``bins`` x ``bins`` joint histogram of two [0, 1] images (256: the convention;
    fewer bins for small images, whose 256-bin MI is dominated by the sparse joint histogram)."""
    if not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    qx, qy = quantise(_img(x, "image"), bins), quantise(_img(y, "image"), bins)
    if qx.shape != qy.shape:
        raise ValueError(f"images differ in shape: {qx.shape} vs {qy.shape}")
    joint = np.bincount((qx * bins + qy).ravel(), minlength=bins * bins).reshape(bins, bins) / qx.size
    px, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / (px @ py)[nz])).sum())


def _gauss_window(n: int, sigma: float) -> np.ndarray:
    x = np.arange(n) - (n - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    w = np.outer(g, g)
    return w / w.sum()


def _valid_filter(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    from scipy.signal import convolve2d

    return convolve2d(x, np.rot90(w, 2), mode="valid")


def vifp(ref: Any, dist: Any, sigma_nsq: float = 2.0) -> float:
    """Pixel-domain VIF of ``dist`` given ``ref`` (both [0, 1], scaled to 0-255 inside), four scales."""
    r, d = _img(ref, "reference") * 255.0, _img(dist, "image") * 255.0
    if r.shape != d.shape:
        raise ValueError(f"images differ in shape: {r.shape} vs {d.shape}")
    num = den = 0.0
    eps = 1e-10
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        w = _gauss_window(n, n / 5.0)
        if scale > 1:
            r, d = _valid_filter(r, w)[::2, ::2], _valid_filter(d, w)[::2, ::2]
        if min(r.shape) < n:
            break
        mu1, mu2 = _valid_filter(r, w), _valid_filter(d, w)
        s1 = np.maximum(_valid_filter(r * r, w) - mu1 * mu1, 0)
        s2 = np.maximum(_valid_filter(d * d, w) - mu2 * mu2, 0)
        s12 = _valid_filter(r * d, w) - mu1 * mu2
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        g = np.where(s1 < eps, 0.0, g)
        sv = np.where(s1 < eps, s2, sv)
        s1 = np.where(s1 < eps, 0.0, s1)
        g = np.where(s2 < eps, 0.0, g)
        sv = np.where(s2 < eps, 0.0, sv)
        sv = np.where(g < 0, s2, sv)
        g = np.maximum(g, 0)
        sv = np.maximum(sv, eps)
        num += float(np.log10(1 + g * g * s1 / (sv + sigma_nsq)).sum())
        den += float(np.log10(1 + s1 / sigma_nsq).sum())
    return num / den if den > 0 else float("nan")


def vif(f: Any, a: Any, b: Any) -> float:
    """VIF of a fusion: VIFp(A, F) + VIFp(B, F)."""
    return vifp(a, f) + vifp(b, f)


def _sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx = ndimage.sobel(x, axis=1, mode="reflect")
    gy = ndimage.sobel(x, axis=0, mode="reflect")
    g = np.hypot(gx, gy)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(gx == 0, math.pi / 2, np.arctan(gy / np.where(gx == 0, 1, gx)))
    return g, alpha


def _edge_preservation(gs: np.ndarray, als: np.ndarray, gf: np.ndarray, alf: np.ndarray) -> np.ndarray:
    hi, lo = np.maximum(gs, gf), np.minimum(gs, gf)
    big = np.where(hi > 0, lo / np.where(hi > 0, hi, 1), 1.0)
    ang = 1 - np.abs(als - alf) / (math.pi / 2)
    qg = 0.9994 / (1 + np.exp(-15 * (big - 0.5)))
    qa = 0.9879 / (1 + np.exp(-22 * (ang - 0.8)))
    return qg * qa


def qabf(f: Any, a: Any, b: Any) -> float:
    """Qabf (Xydeas-Petrovic edge preservation), see the module docstring."""
    ff, aa, bb = _img(f, "fused image"), _img(a, "source a"), _img(b, "source b")
    if not (ff.shape == aa.shape == bb.shape):
        raise ValueError(f"images differ in shape: {ff.shape}, {aa.shape}, {bb.shape}")
    gf, alf = _sobel(ff)
    ga, ala = _sobel(aa)
    gb, alb = _sobel(bb)
    qaf, qbf = _edge_preservation(ga, ala, gf, alf), _edge_preservation(gb, alb, gf, alf)
    wsum = (ga + gb).sum()
    return float((qaf * ga + qbf * gb).sum() / wsum) if wsum > 0 else float("nan")


def fusion_scores(f: Any, a: Any, b: Any) -> dict[str, float]:
    """EN, SD, MI, VIF, Qabf and SSIM of fused image ``f`` from sources ``a``, ``b`` (all [0, 1], one grid)."""
    ff, aa, bb = _img(f, "fused image"), _img(a, "source a"), _img(b, "source b")
    if not (ff.shape == aa.shape == bb.shape):
        raise ValueError(f"fused image and sources differ in shape: {ff.shape}, {aa.shape}, {bb.shape}")
    t = torch.from_numpy
    win = min(11, min(ff.shape) - (1 - min(ff.shape) % 2))
    s = [float(_ssim(t(ff)[None], t(src)[None], data_range=1.0, win_size=win)[0]) for src in (aa, bb)]
    return {
        "EN": entropy(ff),
        "SD": float(ff.std()),
        "MI": mutual_information(ff, aa) + mutual_information(ff, bb),
        "VIF": vif(ff, aa, bb),
        "Qabf": qabf(ff, aa, bb),
        "SSIM": (s[0] + s[1]) / 2,
    }
