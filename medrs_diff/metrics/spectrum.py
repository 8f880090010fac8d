"""Radially averaged log spectral distance (RALSD) between forecast and observed fields.

Per 2-D field: power spectrum P = |FFT2(x)|², radially averaged over integer wavenumber rings
k = 1 .. ⌊n/2⌋ (n = min(H, W); ring k holds frequencies with |f|·n in [k − ½, k + ½), |f| in cycles
per pixel; the mean k = 0 and the corners beyond Nyquist are left out). Then
RALSD = √( mean_k (10·log10(P_ref(k) / P_pred(k)))² ) in dB, over rings where both powers are > 0.
A forecast that is everywhere twice the observation scores 20·log10 2 ≈ 6.02 dB; blurring raises the
high-wavenumber terms. Fields must be finite. Layout: last two axes (H, W); one value per field.
"""

from __future__ import annotations

import torch

from ._common import ArrayLike, MeanTracker, StreamingMetric, as_float, check_same_shape

__all__ = ["radial_power_spectrum", "ralsd", "RALSDMetric"]


def radial_power_spectrum(field: ArrayLike) -> torch.Tensor:
    """Radially averaged power spectrum ``(..., ⌊n/2⌋)`` of fields ``(..., H, W)`` (rings k = 1..n/2)."""
    x = as_float(field, "field")
    if x.ndim < 2 or min(x.shape[-2:]) < 4:
        raise ValueError(f"fields need (H, W) axes of at least 4 pixels, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("RALSD needs finite fields; fill NaN / nodata pixels first")
    h, w = x.shape[-2:]
    n = min(h, w)
    power = torch.fft.fft2(x).abs() ** 2
    fy = torch.fft.fftfreq(h, dtype=torch.float64, device=x.device)
    fx = torch.fft.fftfreq(w, dtype=torch.float64, device=x.device)
    ring = torch.floor(torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) * n + 0.5).long()
    kmax = n // 2
    keep = (ring >= 1) & (ring <= kmax)
    idx = (ring[keep] - 1)
    flat = power[..., keep]
    sums = torch.zeros(*flat.shape[:-1], kmax, dtype=torch.float64, device=x.device)
    sums.index_add_(-1, idx, flat)
    counts = torch.bincount(idx, minlength=kmax).to(torch.float64)
    return sums / counts


def ralsd(pred: ArrayLike, ref: ArrayLike) -> torch.Tensor:
    """RALSD in dB per field, shape = leading axes of the inputs (e.g. ``(B, T)``)."""
    p, r = as_float(pred, "pred"), as_float(ref, "ref")
    check_same_shape(p, r)
    sp, sr = radial_power_spectrum(p), radial_power_spectrum(r)
    ok = (sp > 0) & (sr > 0)
    d = torch.where(ok, 10 * torch.log10(torch.where(ok, sr, 1.0) / torch.where(ok, sp, 1.0)), 0.0)
    n = ok.sum(-1)
    return torch.where(n > 0, torch.sqrt((d**2).sum(-1) / n.clamp(min=1)), torch.full_like(d[..., 0], float("nan")))


class RALSDMetric(StreamingMetric):
    """Mean RALSD over all fields of the test set; keys ``ralsd``, ``n_fields``."""

    def reset(self) -> None:
        self._mean = MeanTracker()
        self._n = 0

    def update(self, pred: ArrayLike, ref: ArrayLike) -> None:
        v = ralsd(pred, ref)
        self._mean.add(v)
        self._n += v.numel()

    def compute(self) -> dict[str, float]:
        return {"ralsd": self._mean.mean, "n_fields": float(self._n)}
