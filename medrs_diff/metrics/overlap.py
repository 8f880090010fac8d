"""Dice and IoU (Jaccard) for binary masks: per image and pooled over a data set.

Definitions (binary masks ``P`` predicted, ``R`` reference, one score per image):

* Dice = 2|P∩R| / (|P|+|R|), IoU = |P∩R| / |P∪R|; per image IoU = Dice / (2 - Dice).
* Empty-mask rule: when ``P`` and ``R`` are both empty the ratio is 0/0; the score is then
  ``empty_score`` (default 1.0: agreeing that the structure is absent is a correct answer, as in the
  BraTS challenge and MONAI ``ignore_empty=False``). Pass ``float('nan')`` to leave such images out
  of the per-image mean instead. ``R`` empty with ``P`` non-empty scores 0.
* Per-image mean = mean over images of the per-image score (what SegDiff and most papers report).
* Pooled = 2ΣTP / (Σ|P|+Σ|R|) over the whole set, which weights large structures more; the two are
  different numbers and are reported under different keys.

Masks have layout ``(B, *spatial)``; the score is over all non-batch axes.
"""

from __future__ import annotations

import torch

from ._common import ArrayLike, StreamingMetric, binarize, check_same_shape, safe_div

__all__ = ["dice", "iou", "overlap_counts", "OverlapMetric"]


def overlap_counts(pred: ArrayLike, ref: ArrayLike, threshold: float | None = None) -> torch.Tensor:
    """Per-image counts ``(B, 3)``: intersection, |pred|, |ref| of binary masks ``(B, *spatial)``."""
    p = binarize(pred, "pred", threshold)
    r = binarize(ref, "ref", None)
    check_same_shape(p, r)
    if p.ndim < 2:
        raise ValueError(f"masks must be batched (B, *spatial), got shape {tuple(p.shape)}; add a batch axis")
    p, r = p.flatten(1), r.flatten(1)
    return torch.stack([(p & r).sum(1), p.sum(1), r.sum(1)], dim=1).to(torch.float64)


def _dice_from_counts(c: torch.Tensor, empty_score: float) -> torch.Tensor:
    inter, sp, sr = c.unbind(-1)
    d = safe_div(2 * inter, sp + sr)
    return torch.where((sp + sr) == 0, torch.full_like(d, empty_score), d)


def _iou_from_counts(c: torch.Tensor, empty_score: float) -> torch.Tensor:
    inter, sp, sr = c.unbind(-1)
    union = sp + sr - inter
    j = safe_div(inter, union)
    return torch.where(union == 0, torch.full_like(j, empty_score), j)


def dice(pred: ArrayLike, ref: ArrayLike, threshold: float | None = None,
         empty_score: float = 1.0) -> torch.Tensor:
    """Per-image Dice ``(B,)`` of binary masks ``(B, *spatial)``.

    ``threshold``: binarise ``pred`` as ``pred >= threshold`` (otherwise ``pred`` must be binary).
    ``empty_score``: value when both masks are empty (see module docstring).
    """
    return _dice_from_counts(overlap_counts(pred, ref, threshold), empty_score)


def iou(pred: ArrayLike, ref: ArrayLike, threshold: float | None = None,
        empty_score: float = 1.0) -> torch.Tensor:
    """Per-image IoU (Jaccard) ``(B,)`` of binary masks ``(B, *spatial)``; same rules as :func:`dice`."""
    return _iou_from_counts(overlap_counts(pred, ref, threshold), empty_score)


class OverlapMetric(StreamingMetric):
    """Streaming Dice and IoU: per-image means and data-set pooled values.

    ``compute()`` keys: ``dice_mean``, ``iou_mean`` (per-image means, NaN images skipped),
    ``dice_pooled``, ``iou_pooled``, ``n_images``, ``n_both_empty``.
    """

    def __init__(self, threshold: float | None = None, empty_score: float = 1.0) -> None:
        self.threshold = threshold
        self.empty_score = float(empty_score)
        super().__init__()

    def reset(self) -> None:
        self._sums = torch.zeros(3, dtype=torch.float64)  # intersection, |P|, |R|
        self._dice_sum = self._iou_sum = 0.0
        self._n_valid = self._n = self._n_empty = 0

    def update(self, pred: ArrayLike, ref: ArrayLike) -> None:
        c = overlap_counts(pred, ref, self.threshold).cpu()
        self._sums += c.sum(0)
        d = _dice_from_counts(c, self.empty_score)
        j = _iou_from_counts(c, self.empty_score)
        valid = ~torch.isnan(d)
        self._dice_sum += float(d[valid].sum())
        self._iou_sum += float(j[valid].sum())
        self._n_valid += int(valid.sum())
        self._n += c.shape[0]
        self._n_empty += int(((c[:, 1] + c[:, 2]) == 0).sum())

    def compute(self) -> dict[str, float]:
        nan = float("nan")
        return {
            "dice_mean": self._dice_sum / self._n_valid if self._n_valid else nan,
            "iou_mean": self._iou_sum / self._n_valid if self._n_valid else nan,
            "dice_pooled": float(_dice_from_counts(self._sums, self.empty_score)),
            "iou_pooled": float(_iou_from_counts(self._sums, self.empty_score)),
            "n_images": float(self._n),
            "n_both_empty": float(self._n_empty),
        }
