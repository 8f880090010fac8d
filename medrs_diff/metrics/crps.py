"""Continuous ranked probability score (CRPS) of an ensemble forecast, plain and spatially pooled.

For members x_1..x_m and observation y at one pixel:
CRPS = (1/m)·Σ|x_i − y| − (1/(2m²))·Σ_i Σ_j |x_i − x_j|, the CRPS of the ensemble's empirical
distribution (Hersbach 2000; pysteps ``CRPS`` and torchmetrics ``ContinuousRankedProbabilityScore``
compute the same number). ``fair=True`` uses 1/(2m(m−1)) instead (Ferro 2014), the estimator that
does not reward small ensembles. With one member the CRPS is the absolute error.

Pooled CRPS (DGMR, Ravuri et al. 2021): members and observation are first average- or max-pooled
over ``k×k`` windows (stride k) and the CRPS is computed on the pooled fields.
Pixels where the observation or any member is NaN are left out. The score is the mean over pixels.

Layout: ``ensemble (B, M, *field)``, ``ref (B, *field)``, the field's last two axes (H, W).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from ._common import ArrayLike, StreamingMetric, as_float, check_positive_ints

__all__ = ["crps_sums", "crps", "pooled_crps", "CRPSMetric"]


def _inputs(ensemble: ArrayLike, ref: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    e, r = as_float(ensemble, "ensemble"), as_float(ref, "ref")
    if e.ndim != r.ndim + 1 or e.shape[0] != r.shape[0] or e.shape[2:] != r.shape[1:]:
        raise ValueError(f"shape mismatch: ensemble must be (B, M, *field) for ref (B, *field), got ensemble "
                         f"{tuple(e.shape)} and ref {tuple(r.shape)}; put the member axis second")
    return e, r


def _pool(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    if size == 1:
        return x
    h, w = x.shape[-2:]
    if min(h, w) < size:
        raise ValueError(f"pool size {size} is larger than the field ({h}×{w})")
    fn = {"avg": F.avg_pool2d, "max": F.max_pool2d}[mode]
    y = fn(x.reshape(-1, 1, h, w), size, stride=size)
    return y.reshape(*x.shape[:-2], *y.shape[-2:])


def crps_sums(ensemble: ArrayLike, ref: ArrayLike, fair: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample sum of pixel CRPS and number of valid pixels, each ``(B,)``."""
    e, r = _inputs(ensemble, ref)
    m = e.shape[1]
    if fair and m < 2:
        raise ValueError("the fair CRPS needs at least two ensemble members")
    valid = ~(torch.isnan(r) | torch.isnan(e).any(1))
    e = torch.where(valid.unsqueeze(1), e, torch.zeros_like(e))
    r = torch.where(valid, r, torch.zeros_like(r))
    skill = (e - r.unsqueeze(1)).abs().mean(1)
    xs = torch.sort(e, dim=1).values
    w = (2 * torch.arange(1, m + 1, dtype=torch.float64, device=e.device) - m - 1)
    spread = (xs * w.reshape(1, m, *([1] * (e.ndim - 2)))).sum(1)  # = ½ Σ_i Σ_j |x_i − x_j|
    spread = spread / (m * (m - 1) if fair else m * m)
    pixel = (skill - spread) * valid
    return pixel.reshape(pixel.shape[0], -1).sum(1), valid.reshape(valid.shape[0], -1).sum(1).double()


def crps(ensemble: ArrayLike, ref: ArrayLike, fair: bool = False) -> torch.Tensor:
    """Per-sample mean CRPS over valid pixels ``(B,)``."""
    s, n = crps_sums(ensemble, ref, fair)
    return torch.where(n > 0, s / n.clamp(min=1), torch.full_like(s, float("nan")))


def pooled_crps(ensemble: ArrayLike, ref: ArrayLike, scales: Sequence[int] = (1, 4, 16),
                pool: Literal["avg", "max"] = "avg", fair: bool = False) -> dict[int, torch.Tensor]:
    """Per-sample CRPS ``(B,)`` after ``pool``-pooling members and observation at each scale."""
    if pool not in ("avg", "max"):
        raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
    e, r = _inputs(ensemble, ref)
    return {k: crps(_pool(e, k, pool), _pool(r, k, pool), fair) for k in check_positive_ints(scales, "scales")}


class CRPSMetric(StreamingMetric):
    """CRPS pooled over all pixels of the test set; keys ``crps`` and ``crps_{pool}pool{k}`` for k > 1."""

    def __init__(self, scales: Sequence[int] = (1,), pool: Literal["avg", "max"] = "avg",
                 fair: bool = False) -> None:
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.scales, self.pool, self.fair = check_positive_ints(scales, "scales"), pool, fair
        super().__init__()

    def reset(self) -> None:
        self._sum = {k: 0.0 for k in self.scales}
        self._n = {k: 0.0 for k in self.scales}

    def update(self, ensemble: ArrayLike, ref: ArrayLike) -> None:
        e, r = _inputs(ensemble, ref)
        for k in self.scales:
            s, n = crps_sums(_pool(e, k, self.pool), _pool(r, k, self.pool), self.fair)
            self._sum[k] += float(s.sum())
            self._n[k] += float(n.sum())

    def compute(self) -> dict[str, float]:
        return {("crps" if k == 1 else f"crps_{self.pool}pool{k}"):
                (self._sum[k] / self._n[k] if self._n[k] else float("nan")) for k in self.scales}
