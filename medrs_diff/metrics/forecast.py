"""Categorical verification of precipitation / nowcasting fields and the fractions skill score.

Events are ``value >= threshold`` (SEVIR / Earthformer convention; pysteps ``det_cat_fct`` uses
``value > threshold``, which differs only for values equal to a threshold). The contingency table
of a threshold holds hits H, misses M, false alarms F and correct negatives R; pixels where either
field is NaN are left out. Scores (pysteps / Jolliffe & Stephenson definitions):

* CSI = H / (H + M + F), POD = H / (H + M), FAR = F / (H + F), frequency bias = (H + F) / (H + M)
* HSS = 2(HR − FM) / [(H + M)(M + R) + (H + F)(F + R)]
* ETS = (H − Hr) / (H + M + F − Hr), Hr = (H + M)(H + F) / N

A score with a zero denominator is NaN (undefined), never 0.
**Tables are summed over the whole test set and the ratios taken once at the end** (pysteps
``det_cat_fct_accum``); the mean of per-sample CSI is a different, sample-size-dependent number and
is not what :class:`CategoricalMetric` returns. ``csi_m`` is the mean CSI over thresholds (SEVIR
CSI-M; undefined CSIs skipped). Max-pooled CSI (Earthformer / PreDiff / CasCast) max-pools both
fields over ``k×k`` windows with stride ``k`` (incomplete edge windows dropped) before thresholding.

FSS (Roberts & Lean 2008): binary fields → event fractions in ``n×n`` neighbourhoods (zero padding
outside the field, as ``scipy.ndimage.uniform_filter(mode="constant")``; NaN counts as no event),
FSS = 1 − Σ(Pf − Po)² / (ΣPf² + ΣPo²), the sums taken over all pixels of all fields of the set.

Layout: any shape whose last two axes are (H, W), e.g. ``(B, T, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._common import (
    ArrayLike,
    StreamingMetric,
    as_float,
    check_positive_ints,
    check_same_shape,
    check_thresholds,
    safe_div,
)

__all__ = ["contingency_table", "categorical_scores", "fss", "CategoricalMetric", "FSSMetric", "SCORE_NAMES"]

SCORE_NAMES = ("csi", "pod", "far", "hss", "ets", "bias")


def _fields(pred: ArrayLike, ref: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    p, r = as_float(pred, "pred"), as_float(ref, "ref")
    check_same_shape(p, r)
    if p.ndim < 2:
        raise ValueError(f"fields need at least (H, W) axes, got shape {tuple(p.shape)}")
    return p, r


def _max_pool(x: torch.Tensor, size: int, stride: int | None) -> torch.Tensor:
    if size == 1:
        return x
    h, w = x.shape[-2:]
    if min(h, w) < size:
        raise ValueError(f"pool size {size} is larger than the field ({h}×{w})")
    flat = x.reshape(-1, 1, h, w)
    pooled = F.max_pool2d(flat, size, stride=stride or size)  # NaN propagates: such cells are dropped
    return pooled.reshape(*x.shape[:-2], *pooled.shape[-2:])


def contingency_table(pred: ArrayLike, ref: ArrayLike, thresholds: Sequence[float] | float,
                      pool_size: int = 1, pool_stride: int | None = None,
                      per_sample: bool = False) -> torch.Tensor:
    """Contingency counts ``(T, 4)`` = [hits, misses, false alarms, correct negatives] per threshold.

    Summed over every element of the batch; with ``per_sample=True`` one table per leading index,
    ``(B, T, 4)``. ``pool_size > 1`` max-pools both fields first.
    """
    thr = check_thresholds(thresholds)
    check_positive_ints(pool_size, "pool_size")
    p, r = _fields(pred, ref)
    p, r = _max_pool(p, pool_size, pool_stride), _max_pool(r, pool_size, pool_stride)
    valid = ~(torch.isnan(p) | torch.isnan(r))
    p, r, valid = p.reshape(p.shape[0], -1), r.reshape(r.shape[0], -1), valid.reshape(p.shape[0], -1)
    tables = []
    for t in thr:
        pe, re_ = (p >= t) & valid, (r >= t) & valid
        pn, rn = (p < t) & valid, (r < t) & valid
        tables.append(torch.stack([(pe & re_).sum(1), (pn & re_).sum(1), (pe & rn).sum(1), (pn & rn).sum(1)], 1))
    out = torch.stack(tables, 1).to(torch.int64)
    return out if per_sample else out.sum(0)


def categorical_scores(table: torch.Tensor) -> dict[str, torch.Tensor]:
    """CSI, POD, FAR, HSS, ETS and frequency bias from counts ``(..., 4)`` (NaN when undefined)."""
    h, m, f, r = table.to(torch.float64).unbind(-1)
    n = h + m + f + r
    hr = safe_div((h + m) * (h + f), n)
    return {
        "csi": safe_div(h, h + m + f),
        "pod": safe_div(h, h + m),
        "far": safe_div(f, h + f),
        "hss": safe_div(2 * (h * r - f * m), (h + m) * (m + r) + (h + f) * (f + r)),
        "ets": safe_div(h - hr, h + m + f - hr),
        "bias": safe_div(h + f, h + m),
    }


def _fss_sums(pred: torch.Tensor, ref: torch.Tensor, thr: list[float], scales: list[int]) -> torch.Tensor:
    """Sums ``(T, S, 3)``: Σ(Pf − Po)², ΣPf², ΣPo² over every pixel of the batch."""
    h, w = pred.shape[-2:]
    p, r = pred.reshape(-1, 1, h, w), ref.reshape(-1, 1, h, w)
    out = torch.zeros(len(thr), len(scales), 3, dtype=torch.float64)
    for i, t in enumerate(thr):
        bp, br = (p >= t).double(), (r >= t).double()  # NaN >= t is False: no event
        for j, n in enumerate(scales):
            pad = (n // 2, n - 1 - n // 2, n // 2, n - 1 - n // 2)
            fp = F.avg_pool2d(F.pad(bp, pad), n, stride=1)
            fr = F.avg_pool2d(F.pad(br, pad), n, stride=1)
            out[i, j] = torch.stack([((fp - fr) ** 2).sum(), (fp**2).sum(), (fr**2).sum()]).cpu()
    return out


def _fss_from_sums(s: torch.Tensor) -> torch.Tensor:
    return 1 - safe_div(s[..., 0], s[..., 1] + s[..., 2])


def fss(pred: ArrayLike, ref: ArrayLike, thresholds: Sequence[float] | float,
        scales: Sequence[int] | int) -> torch.Tensor:
    """Fractions skill score ``(T, S)`` per threshold and neighbourhood size, pooled over the batch."""
    thr, sc = check_thresholds(thresholds), check_positive_ints(scales, "scales")
    p, r = _fields(pred, ref)
    return _fss_from_sums(_fss_sums(p, r, thr, sc))


def _tag(t: float) -> str:
    return f"{t:g}"


class CategoricalMetric(StreamingMetric):
    """Contingency tables accumulated over the test set, scores computed once in ``compute()``.

    ``compute()`` keys: ``csi@{thr}``, ``pod@{thr}``, ``far@{thr}``, ``hss@{thr}``, ``ets@{thr}``,
    ``bias@{thr}``, ``csi_m``; for each pool size k > 1 ``csi_pool{k}@{thr}`` and ``csi_m_pool{k}``.
    The summed counts are in :attr:`tables` (pool size → ``(T, 4)``).
    """

    def __init__(self, thresholds: Sequence[float] | float, pool_sizes: Sequence[int] = (1,),
                 pool_stride: int | None = None) -> None:
        self.thresholds = check_thresholds(thresholds)
        self.pool_sizes = check_positive_ints(pool_sizes, "pool_sizes")
        self.pool_stride = pool_stride
        super().__init__()

    def reset(self) -> None:
        self.tables = {k: torch.zeros(len(self.thresholds), 4, dtype=torch.int64) for k in self.pool_sizes}

    def update(self, pred: ArrayLike, ref: ArrayLike) -> None:
        for k in self.pool_sizes:
            self.tables[k] += contingency_table(pred, ref, self.thresholds, k, self.pool_stride).cpu()

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, table in self.tables.items():
            scores = categorical_scores(table)
            names = SCORE_NAMES if k == 1 else ("csi",)
            suffix = "" if k == 1 else f"_pool{k}"
            for name in names:
                for t, v in zip(self.thresholds, scores[name]):
                    out[f"{name}{suffix}@{_tag(t)}"] = float(v)
            out[f"csi_m{suffix}"] = float(torch.nanmean(scores["csi"]))
        return out


class FSSMetric(StreamingMetric):
    """Fractions skill score with sums accumulated over the test set; keys ``fss_{n}@{thr}``."""

    def __init__(self, thresholds: Sequence[float] | float, scales: Sequence[int] | int) -> None:
        self.thresholds = check_thresholds(thresholds)
        self.scales = check_positive_ints(scales, "scales")
        super().__init__()

    def reset(self) -> None:
        self._sums = torch.zeros(len(self.thresholds), len(self.scales), 3, dtype=torch.float64)

    def update(self, pred: ArrayLike, ref: ArrayLike) -> None:
        p, r = _fields(pred, ref)
        self._sums += _fss_sums(p, r, self.thresholds, self.scales)

    def compute(self) -> dict[str, float]:
        v = _fss_from_sums(self._sums)
        return {f"fss_{n}@{_tag(t)}": float(v[i, j]) for i, t in enumerate(self.thresholds)
                for j, n in enumerate(self.scales)}
