"""Pixel-level anomaly detection scores and threshold selection on a validation split.

* ``auprc`` is the average precision ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score
  thresholds (no interpolation), the definition of ``sklearn.metrics.average_precision_score``;
  AUROC is the exact Mann-Whitney value of :func:`medrs_diff.metrics.pixel.auroc`. Both pool every
  pixel of every image given (the AnoDDPM / medical-anomaly convention for "pixel AUC").
* Dice and IoU at a threshold ``tau`` binarise ``map >= tau``; :func:`anomaly_scores` reports the pooled
  values (all pixels as one set) and the per-image means over images that contain a lesion.
* :func:`select_threshold` picks ``tau`` on *validation* data, never on the test set: ``rule="dice"``
  maximises the pooled Dice over the validation maps with lesion labels (candidate thresholds: the
  distinct validation scores, or ``num_candidates`` quantiles of them when there are more; the smallest
  maximiser wins), ``rule="percentile"`` takes the ``percentile``-th
  percentile of the validation errors of healthy pixels (label 0).
"""

from __future__ import annotations

import numpy as np
import torch

from ._common import ArrayLike, as_binary, as_float, check_same_shape
from .pixel import auroc

__all__ = ["THRESHOLD_RULES", "anomaly_scores", "auprc", "select_threshold"]

THRESHOLD_RULES = ("dice", "percentile")


def _flat(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = as_float(scores, "scores")
    y = as_binary(labels, "labels")
    check_same_shape(s, y, ("scores", "labels"))
    s_np = s.flatten().cpu().double().numpy()
    if not np.isfinite(s_np).all():
        raise ValueError("scores hold NaN or Inf values; anomaly maps must be finite")
    return s_np, y.flatten().cpu().numpy().astype(bool)


def auprc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Average precision of ``scores`` against binary ``labels`` (all elements pooled); NaN without positives."""
    s, y = _flat(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each distinct score (descending)
    tp_at, n_at = tp[last], last + 1
    precision = tp_at / n_at
    recall = tp_at / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _dice_iou_pooled(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    tp = float(np.sum(pred & y))
    fp = float(np.sum(pred & ~y))
    fn = float(np.sum(~pred & y))
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def anomaly_scores(maps: ArrayLike, labels: ArrayLike, threshold: float | None = None) -> dict[str, float]:
    """Pixel AUROC and AUPRC (pooled) of anomaly ``maps`` ``(B, *spatial)`` against lesion ``labels``; with
    ``threshold`` also pooled Dice / IoU, the per-image mean Dice / IoU over images with a lesion
    (``dice_mean``, ``iou_mean``), precision and recall of ``maps >= threshold``."""
    m = as_float(maps, "maps")
    y = as_binary(labels, "labels")
    check_same_shape(m, y, ("maps", "labels"))
    if m.ndim < 2:
        raise ValueError(f"maps must be batched (B, *spatial), got shape {tuple(m.shape)}")
    s, yf = _flat(m, y)
    out = {"auroc": auroc(torch.from_numpy(s), torch.from_numpy(yf)), "auprc": auprc(s, yf)}
    if threshold is None:
        return out
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    pred = s >= threshold
    out["dice"], out["iou"] = _dice_iou_pooled(pred, yf)
    tp = float(np.sum(pred & yf))
    out["precision"] = tp / float(pred.sum()) if pred.any() else float("nan")
    out["recall"] = tp / float(yf.sum()) if yf.any() else float("nan")
    per = []
    mb = m.flatten(1).cpu().double().numpy() >= threshold
    yb = y.flatten(1).cpu().numpy().astype(bool)
    for p_i, y_i in zip(mb, yb):
        if y_i.any():
            per.append(_dice_iou_pooled(p_i, y_i))
    out["dice_mean"] = float(np.mean([d for d, _ in per])) if per else float("nan")
    out["iou_mean"] = float(np.mean([j for _, j in per])) if per else float("nan")
    out["threshold"] = float(threshold)
    return out


def select_threshold(maps: ArrayLike, labels: ArrayLike | None = None, rule: str = "dice",
                     percentile: float = 99.0, num_candidates: int = 512) -> float:
    """The mask threshold chosen on validation data (see the module docstring for the two rules).

    ``rule="dice"`` needs ``labels`` with at least one lesion pixel; ``rule="percentile"`` uses the
    pixels with label 0 (all pixels when ``labels`` is None: a healthy validation split)."""
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; choose one of {', '.join(THRESHOLD_RULES)}")
    m = as_float(maps, "maps")
    if labels is None:
        if rule == "dice":
            raise ValueError("rule 'dice' needs validation labels with lesions")
        s = m.flatten().cpu().double().numpy()
        if not np.isfinite(s).all():
            raise ValueError("maps hold NaN or Inf values; anomaly maps must be finite")
        y = np.zeros(s.shape, bool)
    else:
        s, y = _flat(m, labels)
    if rule == "percentile":
        if not 0.0 < percentile < 100.0:
            raise ValueError(f"percentile must lie in (0, 100), got {percentile}")
        healthy = s[~y]
        if healthy.size == 0:
            raise ValueError("no healthy (label 0) validation pixels to take a percentile of")
        return float(np.percentile(healthy, percentile))
    if not y.any():
        raise ValueError("rule 'dice' needs validation labels with at least one lesion pixel")
    if num_candidates < 2:
        raise ValueError(f"num_candidates must be >= 2, got {num_candidates}")
    cands = np.unique(s)  # every distinct score when few, else num_candidates quantiles
    if cands.size > num_candidates:
        cands = np.unique(np.quantile(s, np.linspace(0.0, 1.0, num_candidates)))
    # pooled Dice for every candidate at once from the sorted scores
    order = np.argsort(s)
    s_sorted, y_sorted = s[order], y[order]
    pos_above = np.r_[np.cumsum(y_sorted[::-1])[::-1], 0]  # positives with index >= k
    idx = np.searchsorted(s_sorted, cands, side="left")  # first index with score >= candidate
    n_above = s.size - idx
    tp = pos_above[idx]
    dice = 2 * tp / (n_above + y.sum())
    return float(cands[int(np.argmax(dice))])
