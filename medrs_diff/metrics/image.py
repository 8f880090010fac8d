"""Image-quality metrics with their conventions stated: PSNR, SSIM (2-D / 3-D), NRMSE, PET SUV
bias, SAR equivalent number of looks.

* PSNR = 10·log10(L² / MSE), one value per image over all channels and voxels (inside ``mask``).
  ``data_range`` L is required: a number (e.g. 1.0, 255, a fixed SUV range) or ``"ref_range"``
  (max − min of the reference image) or ``"ref_max"`` (max of the reference image).
* SSIM (Wang et al. 2004): Gaussian window σ = 1.5, 11 taps, K1 = 0.01, K2 = 0.03, population
  (co)variances, computed only where the window fits inside the image (no padding) and averaged
  over channels and positions; equals ``skimage.metrics.structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=L)`` and MONAI ``SSIMMetric``. 3-D SSIM uses
  a 3-D window (not a mean of 2-D slices).
* NRMSE = RMSE / normaliser with ``normalization`` one of ``"euclidean"`` (√mean(ref²)),
  ``"min-max"`` (ref max − min) or ``"mean"`` (ref mean), the scikit-image names.
* SUV bias (PET, inside a lesion / organ mask): mean bias % = 100·(mean pred − mean ref)/mean ref and
  max bias % = 100·(max pred − max ref)/max ref.
* ENL (SAR, no reference) = mean² / variance (population) of **linear intensity** over a homogeneous
  ``mask``; negative values (dB data) are rejected.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from ._common import ArrayLike, MeanTracker, StreamingMetric, as_binary, as_float, check_same_shape

__all__ = ["psnr", "ssim", "ssim_map", "nrmse", "suv_bias", "enl", "ImageMetric"]

DataRange = float | Literal["ref_range", "ref_max"]


def _mask_for(x: torch.Tensor, mask: ArrayLike | None) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(x, dtype=torch.bool)
    m = as_binary(mask, "mask").to(x.device)
    if m.shape != x.shape:
        try:
            m = m.expand_as(x) if m.ndim == x.ndim else m.unsqueeze(1).expand_as(x)
        except RuntimeError as err:
            raise ValueError(f"mask shape {tuple(m.shape)} does not fit image shape {tuple(x.shape)}") from err
    return m


def _pair(pred: ArrayLike, ref: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    p, r = as_float(pred, "pred"), as_float(ref, "ref")
    check_same_shape(p, r)
    if p.ndim < 2:
        raise ValueError(f"images must be batched (B, ...), got shape {tuple(p.shape)}; add a batch axis")
    return p, r


def _data_range(r: torch.Tensor, m: torch.Tensor, data_range: DataRange) -> torch.Tensor:
    """Per-image data range ``(B,)``."""
    if isinstance(data_range, str):
        big = torch.finfo(torch.float64).max
        hi = torch.where(m, r, torch.full_like(r, -big)).flatten(1).amax(1)
        lo = torch.where(m, r, torch.full_like(r, big)).flatten(1).amin(1)
        if data_range == "ref_range":
            return hi - lo
        if data_range == "ref_max":
            return hi
        raise ValueError(f"data_range must be a number, 'ref_range' or 'ref_max', got {data_range!r}")
    if not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a positive number, got {data_range}")
    return torch.full((r.shape[0],), float(data_range), dtype=torch.float64, device=r.device)


def psnr(pred: ArrayLike, ref: ArrayLike, data_range: DataRange, mask: ArrayLike | None = None) -> torch.Tensor:
    """Per-image PSNR in dB ``(B,)`` (inf when pred equals ref)."""
    p, r = _pair(pred, ref)
    m = _mask_for(r, mask)
    n = m.flatten(1).sum(1)
    if bool((n == 0).any()):
        raise ValueError("mask is empty for at least one image; PSNR needs at least one pixel")
    mse = (((p - r) ** 2) * m).flatten(1).sum(1) / n
    return 10 * torch.log10(_data_range(r, m, data_range) ** 2 / mse)


def _gauss_1d(win_size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(win_size, dtype=torch.float64, device=device) - (win_size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x: torch.Tensor, w: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Separable 'valid' filtering of ``x (N, 1, *spatial)`` with the 1-D window ``w`` on every axis."""
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    for axis in range(spatial_dims):
        shape = [1, 1] + [1] * spatial_dims
        shape[2 + axis] = w.numel()
        x = conv(x, w.reshape(shape))
    return x


def ssim_map(pred: ArrayLike, ref: ArrayLike, data_range: DataRange, spatial_dims: int = 2,
             win_size: int = 11, sigma: float = 1.5, kernel: Literal["gaussian", "uniform"] = "gaussian",
             k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """SSIM map ``(B, C, *valid)`` for images ``(B, C, *spatial)`` or ``(B, *spatial)``.

    ``valid`` is each spatial size minus ``win_size - 1`` (the window must fit inside the image).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    p, r = _pair(pred, ref)
    if p.ndim == spatial_dims + 1:
        p, r = p.unsqueeze(1), r.unsqueeze(1)
    if p.ndim != spatial_dims + 2:
        raise ValueError(f"SSIM with spatial_dims={spatial_dims} needs (B, C, *spatial) or (B, *spatial) "
                         f"inputs, got shape {tuple(p.shape)}")
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be a positive odd number, got {win_size}")
    if min(p.shape[2:]) < win_size:
        raise ValueError(f"image spatial shape {tuple(p.shape[2:])} is smaller than the SSIM window "
                         f"({win_size}); pass a smaller win_size")
    if kernel == "gaussian":
        w = _gauss_1d(win_size, sigma, p.device)
    elif kernel == "uniform":
        w = torch.full((win_size,), 1.0 / win_size, dtype=torch.float64, device=p.device)
    else:
        raise ValueError(f"kernel must be 'gaussian' or 'uniform', got {kernel!r}")
    L = _data_range(r, torch.ones_like(r, dtype=torch.bool), data_range)
    L = L.reshape(-1, *([1] * (p.ndim - 1)))
    b, c = p.shape[:2]
    x, y = p.reshape(b * c, 1, *p.shape[2:]), r.reshape(b * c, 1, *r.shape[2:])
    stats = _filter(torch.cat([x, y, x * x, y * y, x * y]), w, spatial_dims)
    mx, my, mxx, myy, mxy = stats.reshape(5, b, c, *stats.shape[2:])
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    c1, c2 = (k1 * L) ** 2, (k2 * L) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim(pred: ArrayLike, ref: ArrayLike, data_range: DataRange, spatial_dims: int = 2,
         mask: ArrayLike | None = None, win_size: int = 11, sigma: float = 1.5,
         kernel: Literal["gaussian", "uniform"] = "gaussian") -> torch.Tensor:
    """Per-image mean SSIM ``(B,)``; with ``mask`` ``(B, *spatial)`` only window centres inside it count."""
    smap = ssim_map(pred, ref, data_range, spatial_dims, win_size, sigma, kernel)
    if mask is None:
        return smap.flatten(1).mean(1)
    m = as_binary(mask, "mask").to(smap.device)
    if m.ndim == smap.ndim:
        m = m.any(1)
    if tuple(m.shape[1:]) != tuple(d + win_size - 1 for d in smap.shape[2:]) or m.shape[0] != smap.shape[0]:
        raise ValueError(f"mask shape {tuple(m.shape)} does not match the images' (B, *spatial)")
    h = win_size // 2
    m = m[(slice(None),) + tuple(slice(h, s - h) for s in m.shape[1:])].unsqueeze(1).expand_as(smap)
    n = m.flatten(1).sum(1)
    return torch.where(n > 0, (smap * m).flatten(1).sum(1) / n.clamp(min=1), torch.full_like(n, float("nan"),
                                                                                             dtype=smap.dtype))


def nrmse(pred: ArrayLike, ref: ArrayLike, normalization: Literal["euclidean", "min-max", "mean"],
          mask: ArrayLike | None = None) -> torch.Tensor:
    """Per-image normalised RMSE ``(B,)`` with the stated ``normalization`` of the reference."""
    p, r = _pair(pred, ref)
    m = _mask_for(r, mask)
    n = m.flatten(1).sum(1)
    if bool((n == 0).any()):
        raise ValueError("mask is empty for at least one image; NRMSE needs at least one pixel")
    rmse = torch.sqrt((((p - r) ** 2) * m).flatten(1).sum(1) / n)
    if normalization == "euclidean":
        denom = torch.sqrt(((r**2) * m).flatten(1).sum(1) / n)
    elif normalization == "min-max":
        denom = _data_range(r, m, "ref_range")
    elif normalization == "mean":
        denom = (r * m).flatten(1).sum(1) / n
    else:
        raise ValueError(f"normalization must be 'euclidean', 'min-max' or 'mean', got {normalization!r}")
    return rmse / denom


def suv_bias(pred: ArrayLike, ref: ArrayLike, mask: ArrayLike) -> dict[str, torch.Tensor]:
    """Per-image SUVmean and SUVmax bias in percent inside ``mask``: ``{"mean_bias_pct", "max_bias_pct"}``."""
    p, r = _pair(pred, ref)
    m = _mask_for(r, mask)
    n = m.flatten(1).sum(1)
    if bool((n == 0).any()):
        raise ValueError("SUV bias mask is empty for at least one image; give a lesion/organ mask with voxels")
    mean_p, mean_r = (p * m).flatten(1).sum(1) / n, (r * m).flatten(1).sum(1) / n
    neg = -torch.finfo(torch.float64).max
    max_p = torch.where(m, p, torch.full_like(p, neg)).flatten(1).amax(1)
    max_r = torch.where(m, r, torch.full_like(r, neg)).flatten(1).amax(1)
    return {"mean_bias_pct": 100 * (mean_p - mean_r) / mean_r, "max_bias_pct": 100 * (max_p - max_r) / max_r}


def enl(image: ArrayLike, mask: ArrayLike | None = None) -> torch.Tensor:
    """Per-image equivalent number of looks ``(B,)`` of linear SAR intensity over a homogeneous ``mask``."""
    x = as_float(image, "image")
    if x.ndim < 2:
        raise ValueError(f"image must be batched (B, ...), got shape {tuple(x.shape)}")
    if bool((x < 0).any()):
        raise ValueError("ENL needs linear intensity (>= 0); convert dB with 10**(x/10) first")
    m = _mask_for(x, mask)
    n = m.flatten(1).sum(1)
    if bool((n < 2).any()):
        raise ValueError("ENL mask needs at least two pixels per image")
    mean = (x * m).flatten(1).sum(1) / n
    var = (((x - mean.reshape(-1, *([1] * (x.ndim - 1)))) ** 2) * m).flatten(1).sum(1) / n
    return mean**2 / var


class ImageMetric(StreamingMetric):
    """Streaming per-image means of PSNR, SSIM and NRMSE; keys ``psnr``, ``ssim``, ``nrmse``, ``n_images``.

    ``data_range`` and ``normalization`` are required so the reported number says what it is.
    """

    def __init__(self, data_range: DataRange, normalization: Literal["euclidean", "min-max", "mean"],
                 spatial_dims: int = 2, win_size: int = 11) -> None:
        self.data_range, self.normalization = data_range, normalization
        self.spatial_dims, self.win_size = spatial_dims, win_size
        super().__init__()

    def reset(self) -> None:
        self._means = {k: MeanTracker() for k in ("psnr", "ssim", "nrmse")}
        self._n = 0

    def update(self, pred: ArrayLike, ref: ArrayLike, mask: ArrayLike | None = None) -> None:
        self._means["psnr"].add(psnr(pred, ref, self.data_range, mask))
        self._means["ssim"].add(ssim(pred, ref, self.data_range, self.spatial_dims, mask, self.win_size))
        v = nrmse(pred, ref, self.normalization, mask)
        self._means["nrmse"].add(v)
        self._n += v.numel()

    def compute(self) -> dict[str, float]:
        out = {k: t.mean for k, t in self._means.items()}
        out["n_images"] = float(self._n)
        return out
