"""Pixel-wise sensitivity, specificity, accuracy and AUROC inside a field-of-view mask.

Retinal-vessel convention (DRIVE, STARE, CHASE_DB1, HRF): only pixels inside the circular
field of view (FOV) count; pixels outside are dropped, not scored as true negatives.

* ``prob`` is a foreground probability map in [0, 1]; sensitivity, specificity and accuracy use the
  binary map ``prob >= threshold`` (default 0.5), AUROC uses ``prob`` itself.
* sensitivity = TP/(TP+FN), specificity = TN/(TN+FP), accuracy = (TP+TN)/N, all over FOV pixels.
* AUROC (functional form) is exact: the Mann-Whitney statistic with tied scores counted half, the
  same number as ``sklearn.metrics.roc_auc_score``.
* :class:`PixelMetric` pools the confusion counts over the whole set and computes AUROC from a
  ``num_bins`` histogram of scores (bounded memory); that is exact for scores quantised to the bins
  and within about 1/num_bins of the exact value otherwise.

Layout: ``(B, *spatial)`` for ``prob``, ``ref`` and ``fov``.
"""

from __future__ import annotations

import torch
from scipy.stats import rankdata

from ._common import ArrayLike, MeanTracker, StreamingMetric, as_binary, as_float, check_same_shape, safe_div

__all__ = ["auroc", "pixel_scores", "PixelMetric"]


def _inputs(prob: ArrayLike, ref: ArrayLike, fov: ArrayLike | None):
    p = as_float(prob, "prob")
    r = as_binary(ref, "ref")
    check_same_shape(p, r, ("prob", "ref"))
    if p.ndim < 2:
        raise ValueError(f"inputs must be batched (B, *spatial), got shape {tuple(p.shape)}")
    if bool(((p < 0) | (p > 1) | torch.isnan(p)).any()):
        raise ValueError("prob must be probabilities in [0, 1]; apply a sigmoid/softmax to logits first")
    f = torch.ones_like(r) if fov is None else as_binary(fov, "fov").to(r.device)
    check_same_shape(p, f, ("prob", "fov"))
    return p.flatten(1), r.flatten(1), f.flatten(1)


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Exact area under the ROC curve of 1-D ``scores`` against binary ``labels`` (ties count half).

    NaN when only one class is present.
    """
    s = as_float(scores, "scores").flatten().cpu().numpy()
    y = as_binary(labels, "labels").flatten().cpu().numpy()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) must have the same number of elements")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _confusion(p: torch.Tensor, r: torch.Tensor, f: torch.Tensor, threshold: float) -> torch.Tensor:
    b = p >= threshold
    tp = (b & r & f).sum(1)
    fp = (b & ~r & f).sum(1)
    fn = (~b & r & f).sum(1)
    tn = (~b & ~r & f).sum(1)
    return torch.stack([tp, fp, fn, tn], 1).to(torch.float64)


def _rates(c: torch.Tensor) -> dict[str, torch.Tensor]:
    tp, fp, fn, tn = c.unbind(-1)
    return {
        "sensitivity": safe_div(tp, tp + fn),
        "specificity": safe_div(tn, tn + fp),
        "accuracy": safe_div(tp + tn, tp + fp + fn + tn),
    }


def pixel_scores(prob: ArrayLike, ref: ArrayLike, fov: ArrayLike | None = None,
                 threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """Per-image sensitivity, specificity, accuracy and exact AUROC inside ``fov`` (each ``(B,)``)."""
    p, r, f = _inputs(prob, ref, fov)
    out = _rates(_confusion(p, r, f, threshold))
    out["auroc"] = torch.tensor([auroc(p[b][f[b]], r[b][f[b]]) for b in range(p.shape[0])],
                                dtype=torch.float64)
    return out


class PixelMetric(StreamingMetric):
    """Streaming FOV-restricted pixel scores.

    ``compute()`` keys: ``sensitivity``, ``specificity``, ``accuracy``, ``auroc`` (pooled over all
    FOV pixels of the set), the per-image means ``sensitivity_mean``, ``specificity_mean``,
    ``accuracy_mean``, and ``n_images``.
    """

    def __init__(self, threshold: float = 0.5, num_bins: int = 1000) -> None:
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        self.threshold, self.num_bins = threshold, int(num_bins)
        super().__init__()

    def reset(self) -> None:
        self._counts = torch.zeros(4, dtype=torch.float64)
        self._pos = torch.zeros(self.num_bins, dtype=torch.float64)
        self._neg = torch.zeros(self.num_bins, dtype=torch.float64)
        self._means = {k: MeanTracker() for k in ("sensitivity", "specificity", "accuracy")}
        self._n = 0

    def update(self, prob: ArrayLike, ref: ArrayLike, fov: ArrayLike | None = None) -> None:
        p, r, f = _inputs(prob, ref, fov)
        c = _confusion(p, r, f, self.threshold).cpu()
        self._counts += c.sum(0)
        for k, v in _rates(c).items():
            self._means[k].add(v)
        idx = (p[f] * self.num_bins).long().clamp(max=self.num_bins - 1).cpu()
        lab = r[f].cpu()
        self._pos += torch.bincount(idx[lab], minlength=self.num_bins).double()
        self._neg += torch.bincount(idx[~lab], minlength=self.num_bins).double()
        self._n += p.shape[0]

    def _binned_auroc(self) -> float:
        n_pos, n_neg = float(self._pos.sum()), float(self._neg.sum())
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        neg_below = torch.cumsum(self._neg, 0) - self._neg
        return float(((neg_below + 0.5 * self._neg) * self._pos).sum() / (n_pos * n_neg))

    def compute(self) -> dict[str, float]:
        out = {k: float(v) for k, v in _rates(self._counts).items()}
        out["auroc"] = self._binned_auroc()
        out.update({f"{k}_mean": t.mean for k, t in self._means.items()})
        out["n_images"] = float(self._n)
        return out


