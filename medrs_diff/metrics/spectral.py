"""Spectral / multiband image metrics for ``(B, C, H, W)`` images (C bands).

* SAM: per pixel arccos(⟨x, y⟩ / (‖x‖‖y‖)) in **degrees**, argument clamped to [−1, 1], pixels where
  either vector is zero (or outside ``mask``) left out; mean over pixels per image. torchmetrics'
  ``SpectralAngleMapper`` gives the same angle in radians.
* ERGAS (Wald 2002): 100 · (h/l) · √(mean_k (RMSE_k / μ_k)²), μ_k the mean of reference band k and
  ``resolution_ratio`` = h/l the ratio of high- to low-resolution pixel size (0.25 for ×4
  super-resolution, 1 when there is no change of resolution). Note torchmetrics' ``ratio=4`` means
  100/4, i.e. the same number for ×4.
* mPSNR / mSSIM: PSNR / SSIM of each band with an explicit ``data_range``, averaged over bands.
* RMSE over all bands and pixels of an image; MRAE = mean |pred − ref| / ref over elements with
  ref ≠ 0 (NTIRE spectral-recovery definition; zero reference values are left out).
* UIQI and Q2ⁿ: see :mod:`medrs_diff.metrics.quality_index`.

Every functional form returns one value per image ``(B,)``; :class:`SpectralMetric` averages them
over images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._common import ArrayLike, MeanTracker, StreamingMetric, as_binary, as_float, check_same_shape
from .image import ssim_map
from .quality_index import q2n, uiqi

__all__ = ["sam", "ergas", "band_psnr", "band_ssim", "rmse", "mrae", "spectral_scores", "SpectralMetric",
           "SPECTRAL_KEYS"]

SPECTRAL_KEYS = ("sam_deg", "ergas", "mpsnr", "mssim", "rmse", "mrae", "uiqi", "q2n")


def _pair(pred: ArrayLike, ref: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    p, r = as_float(pred, "pred"), as_float(ref, "ref")
    check_same_shape(p, r)
    if p.ndim != 4:
        raise ValueError(f"spectral images need layout (B, C, H, W), got shape {tuple(p.shape)}")
    return p, r


def sam(pred: ArrayLike, ref: ArrayLike, mask: ArrayLike | None = None) -> torch.Tensor:
    """Per-image mean spectral angle in degrees ``(B,)``; NaN when no pixel is valid."""
    p, r = _pair(pred, ref)
    dot = (p * r).sum(1)
    norms = p.norm(dim=1) * r.norm(dim=1)
    valid = norms > 0
    if mask is not None:
        m = as_binary(mask, "mask").to(valid.device)
        check_same_shape(m, valid, ("mask", "pixel grid (B, H, W)"))
        valid = valid & m
    cos = (dot / torch.where(valid, norms, torch.ones_like(norms))).clamp(-1.0, 1.0)
    ang = torch.rad2deg(torch.arccos(cos)) * valid
    n = valid.flatten(1).sum(1)
    return torch.where(n > 0, ang.flatten(1).sum(1) / n.clamp(min=1), torch.full_like(n, float("nan"),
                                                                                         dtype=ang.dtype))


def ergas(pred: ArrayLike, ref: ArrayLike, resolution_ratio: float) -> torch.Tensor:
    """Per-image ERGAS ``(B,)`` in Wald's definition; ``resolution_ratio`` = h/l in (0, 1]."""
    if not (0 < resolution_ratio <= 1):
        raise ValueError(f"resolution_ratio is h/l, the high/low pixel-size ratio in (0, 1] (0.25 for ×4 "
                         f"super-resolution, 1 without resolution change), got {resolution_ratio}")
    p, r = _pair(pred, ref)
    rmse_k = ((p - r) ** 2).flatten(2).mean(2).sqrt()
    mu_k = r.flatten(2).mean(2)
    if bool((mu_k == 0).any()):
        raise ValueError("a reference band has mean 0, so ERGAS (RMSE_k / mean_k) is undefined; "
                         "check the band scaling or drop empty bands")
    return 100 * resolution_ratio * ((rmse_k / mu_k) ** 2).mean(1).sqrt()


def band_psnr(pred: ArrayLike, ref: ArrayLike, data_range: float) -> torch.Tensor:
    """Per-image mean over bands of the band PSNR in dB ``(B,)`` with a fixed ``data_range``."""
    if not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a positive number (e.g. 1.0 for reflectance), got {data_range}")
    p, r = _pair(pred, ref)
    mse_k = ((p - r) ** 2).flatten(2).mean(2)
    return (10 * torch.log10(data_range**2 / mse_k)).mean(1)


def band_ssim(pred: ArrayLike, ref: ArrayLike, data_range: float, win_size: int = 11) -> torch.Tensor:
    """Per-image mean over bands of the 2-D band SSIM ``(B,)`` (Gaussian σ 1.5 window, see image.py)."""
    p, r = _pair(pred, ref)
    return ssim_map(p, r, data_range, spatial_dims=2, win_size=win_size).flatten(2).mean(2).mean(1)


def rmse(pred: ArrayLike, ref: ArrayLike) -> torch.Tensor:
    """Per-image RMSE over all bands and pixels ``(B,)``."""
    p, r = _pair(pred, ref)
    return ((p - r) ** 2).flatten(1).mean(1).sqrt()


def mrae(pred: ArrayLike, ref: ArrayLike) -> torch.Tensor:
    """Per-image mean relative absolute error ``(B,)`` over elements where ref ≠ 0."""
    p, r = _pair(pred, ref)
    nz = r != 0
    rel = (p - r).abs() / torch.where(nz, r.abs(), torch.ones_like(r)) * nz
    n = nz.flatten(1).sum(1)
    return torch.where(n > 0, rel.flatten(1).sum(1) / n.clamp(min=1), torch.full_like(n, float("nan"),
                                                                                       dtype=rel.dtype))


def spectral_scores(pred: ArrayLike, ref: ArrayLike, data_range: float, resolution_ratio: float = 1.0,
                    mask: ArrayLike | None = None, uiqi_block: int = 8, q2n_block: int = 32,
                    include: Sequence[str] = SPECTRAL_KEYS) -> dict[str, torch.Tensor]:
    """All spectral metrics per image; ``include`` selects a subset of :data:`SPECTRAL_KEYS`.

    UIQI / Q2ⁿ blocks are shrunk to the image side for images smaller than the block (the SSIM
    window is not: SSIM needs images of at least 11×11).
    """
    unknown = set(include) - set(SPECTRAL_KEYS)
    if unknown:
        raise ValueError(f"unknown spectral metrics {sorted(unknown)}; choose from {SPECTRAL_KEYS}")
    p, r = _pair(pred, ref)
    side = min(p.shape[-2:])
    fns = {
        "sam_deg": lambda: sam(p, r, mask),
        "ergas": lambda: ergas(p, r, resolution_ratio),
        "mpsnr": lambda: band_psnr(p, r, data_range),
        "mssim": lambda: band_ssim(p, r, data_range),
        "rmse": lambda: rmse(p, r),
        "mrae": lambda: mrae(p, r),
        "uiqi": lambda: uiqi(p, r, min(uiqi_block, side)),
        "q2n": lambda: q2n(p, r, max(2, min(q2n_block, side))),
    }
    return {k: fns[k]() for k in SPECTRAL_KEYS if k in include}


class SpectralMetric(StreamingMetric):
    """Streaming per-image means of the spectral metrics (keys :data:`SPECTRAL_KEYS` + ``n_images``)."""

    def __init__(self, data_range: float, resolution_ratio: float = 1.0,
                 include: Sequence[str] = SPECTRAL_KEYS) -> None:
        self.data_range, self.resolution_ratio, self.include = data_range, resolution_ratio, tuple(include)
        super().__init__()

    def reset(self) -> None:
        self._means = {k: MeanTracker() for k in self.include}
        self._n = 0

    def update(self, pred: ArrayLike, ref: ArrayLike, mask: ArrayLike | None = None) -> None:
        res = spectral_scores(pred, ref, self.data_range, self.resolution_ratio, mask, include=self.include)
        for k, v in res.items():
            self._means[k].add(v)
        self._n += int(next(iter(res.values())).numel())

    def compute(self) -> dict[str, float]:
        out = {k: t.mean for k, t in self._means.items()}
        out["n_images"] = float(self._n)
        return out
