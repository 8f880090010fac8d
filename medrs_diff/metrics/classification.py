"""Classification / land-cover map metrics from a confusion matrix accumulated over the test set.

Confusion matrix C[i, j] = number of samples (or pixels) with reference class i predicted as j.
* overall accuracy OA = trace(C) / N
* average accuracy AA = mean over classes present in the reference of the per-class recall
  C[i, i] / Σ_j C[i, j] (= scikit-learn ``balanced_accuracy_score``)
* Cohen's kappa = (p_o − p_e) / (1 − p_e), p_e = Σ_i (row_i · col_i) / N² (= ``cohen_kappa_score``)

Labels are integers in [0, num_classes); predictions given as scores with one more axis than the
reference (class axis 1, e.g. ``(B, C)`` logits for ``(B,)`` labels) are reduced with argmax.
Pixels / samples equal to ``ignore_index`` in the reference are left out.
"""

from __future__ import annotations

import torch

from ._common import ArrayLike, StreamingMetric, as_float, check_same_shape

__all__ = ["confusion_matrix", "classification_scores", "ClassificationMetric"]


def _labels(x: torch.Tensor, name: str) -> torch.Tensor:
    if bool((x != torch.round(x)).any()) or bool(torch.isnan(x).any()):
        raise ValueError(f"{name} must hold integer class labels, found non-integer values")
    return x.long()


def confusion_matrix(pred: ArrayLike, ref: ArrayLike, num_classes: int,
                     ignore_index: int | None = None) -> torch.Tensor:
    """Confusion matrix ``(num_classes, num_classes)`` (rows: reference, columns: prediction)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    p, r = as_float(pred, "pred"), as_float(ref, "ref")
    if p.ndim == r.ndim + 1:
        p = p.argmax(1).double()
    check_same_shape(p, r)
    p, r = _labels(p, "pred").flatten(), _labels(r, "ref").flatten()
    if ignore_index is not None:
        keep = r != ignore_index
        p, r = p[keep], r[keep]
    for x, name in ((p, "pred"), (r, "ref")):
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_classes):
            raise ValueError(f"{name} labels must lie in [0, {num_classes}), found range "
                             f"[{int(x.min())}, {int(x.max())}]; set num_classes or ignore_index")
    return torch.bincount(r * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def classification_scores(cm: torch.Tensor) -> dict[str, float]:
    """OA, AA, kappa and per-class recall ``recall_{i}`` from a confusion matrix."""
    c = cm.to(torch.float64)
    n = c.sum()
    rows, cols = c.sum(1), c.sum(0)
    nan = float("nan")
    oa = float(c.trace() / n) if n > 0 else nan
    recall = torch.where(rows > 0, c.diag() / rows.clamp(min=1), torch.full_like(rows, nan))
    aa = float(torch.nanmean(recall)) if bool((rows > 0).any()) else nan
    pe = float((rows * cols).sum() / n**2) if n > 0 else nan
    kappa = (oa - pe) / (1 - pe) if n > 0 and pe != 1 else nan
    out = {"overall_accuracy": oa, "average_accuracy": aa, "kappa": kappa, "n_samples": float(n)}
    out.update({f"recall_{i}": float(v) for i, v in enumerate(recall)})
    return out


class ClassificationMetric(StreamingMetric):
    """Streaming confusion matrix; ``compute()`` gives :func:`classification_scores` keys."""

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        super().__init__()

    def reset(self) -> None:
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: ArrayLike, ref: ArrayLike) -> None:
        self.matrix += confusion_matrix(pred, ref, self.num_classes, self.ignore_index).cpu()

    def compute(self) -> dict[str, float]:
        return classification_scores(self.matrix)
