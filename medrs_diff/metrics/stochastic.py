"""Metrics for stochastic segmentation (several samples against several annotations per case).

Distance ``d(a, b) = 1 - IoU(a, b)`` between binary masks, with ``d = 0`` when both are empty
(LIDC-IDRI convention of Kohl et al. 2018, PHiSeg 2019).

* GED² = 2·E[d(S, Y)] − E[d(S, S')] − E[d(Y, Y')], each expectation the mean over **all** ordered
  pairs including i = j (the V-statistic used in the Probabilistic U-Net / PHiSeg evaluation code).
* ``diversity`` = mean d(S_i, S_j) over distinct pairs i ≠ j (the sample diversity reported next to
  GED); ``d_ss`` is the GED term with the diagonal, ``d_ss = diversity·(N−1)/N``.
* HM-IoU (Kohl et al. 2019): both sets repeated to lcm(N, M) elements, matched one-to-one by the
  Hungarian algorithm on IoU, matched IoUs averaged (IoU of two empty masks = 1).

Layout: ``samples (B, N, *spatial)``, ``annotations (B, M, *spatial)``, binary.
"""

from __future__ import annotations

import math

import torch
from scipy.optimize import linear_sum_assignment

from ._common import ArrayLike, MeanTracker, StreamingMetric, as_binary

__all__ = ["pairwise_iou", "generalized_energy_distance", "hungarian_matched_iou", "StochasticSegMetric"]


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix ``(N, M)`` between binary masks ``a (N, ...)`` and ``b (M, ...)``; empty∩empty = 1."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return torch.where(union == 0, torch.ones_like(inter), inter / union.clamp(min=1))


def _inputs(samples: ArrayLike, annotations: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    s, y = as_binary(samples, "samples"), as_binary(annotations, "annotations")
    if s.ndim < 3 or y.ndim < 3:
        raise ValueError("samples and annotations need layout (B, N, *spatial) and (B, M, *spatial), got "
                         f"{tuple(s.shape)} and {tuple(y.shape)}")
    if s.shape[0] != y.shape[0] or s.shape[2:] != y.shape[2:]:
        raise ValueError(f"shape mismatch: samples {tuple(s.shape)} and annotations {tuple(y.shape)} must share "
                         "the batch size and spatial shape")
    if s.shape[1] < 1 or y.shape[1] < 1:
        raise ValueError("need at least one sample and one annotation per case")
    return s, y


def generalized_energy_distance(samples: ArrayLike, annotations: ArrayLike) -> dict[str, torch.Tensor]:
    """Per-case ``ged2``, ``d_sy``, ``d_ss``, ``d_yy`` and ``diversity`` (each ``(B,)``)."""
    s, y = _inputs(samples, annotations)
    keys = ("ged2", "d_sy", "d_ss", "d_yy", "diversity")
    out = {k: torch.empty(s.shape[0], dtype=torch.float64) for k in keys}
    for b in range(s.shape[0]):
        d_sy = (1 - pairwise_iou(s[b], y[b])).mean()
        d_ss_mat = 1 - pairwise_iou(s[b], s[b])
        d_ss = d_ss_mat.mean()
        d_yy = (1 - pairwise_iou(y[b], y[b])).mean()
        n = s.shape[1]
        out["d_sy"][b], out["d_ss"][b], out["d_yy"][b] = d_sy, d_ss, d_yy
        out["ged2"][b] = 2 * d_sy - d_ss - d_yy
        out["diversity"][b] = d_ss_mat.sum() / (n * (n - 1)) if n > 1 else float("nan")
    return out


def hungarian_matched_iou(samples: ArrayLike, annotations: ArrayLike) -> torch.Tensor:
    """Per-case HM-IoU ``(B,)`` (see module docstring)."""
    s, y = _inputs(samples, annotations)
    n, m = s.shape[1], y.shape[1]
    k = math.lcm(n, m)
    out = torch.empty(s.shape[0], dtype=torch.float64)
    for b in range(s.shape[0]):
        iou = pairwise_iou(s[b], y[b]).repeat(k // n, k // m).cpu().numpy()
        rows, cols = linear_sum_assignment(iou, maximize=True)
        out[b] = float(iou[rows, cols].mean())
    return out


class StochasticSegMetric(StreamingMetric):
    """Streaming per-case means of GED², its terms, sample diversity and HM-IoU.

    ``compute()`` keys: ``ged2``, ``d_sy``, ``d_ss``, ``d_yy``, ``diversity``, ``hm_iou``, ``n_cases``.
    """

    def reset(self) -> None:
        self._means = {k: MeanTracker() for k in ("ged2", "d_sy", "d_ss", "d_yy", "diversity", "hm_iou")}
        self._n = 0

    def update(self, samples: ArrayLike, annotations: ArrayLike) -> None:
        res = generalized_energy_distance(samples, annotations)
        res["hm_iou"] = hungarian_matched_iou(samples, annotations)
        for k, v in res.items():
            self._means[k].add(v)
        self._n += int(res["ged2"].numel())

    def compute(self) -> dict[str, float]:
        out = {k: t.mean for k, t in self._means.items()}
        out["n_cases"] = float(self._n)
        return out
