"""Expected calibration error (ECE) of a foreground probability map.

Definition (Guo et al. 2017, in the class-wise form MONAI's ``CalibrationErrorMetric`` uses for
segmentation): pixels are grouped into ``num_bins`` equal-width bins of the predicted foreground
probability p, bin k = [k/n, (k+1)/n) with p = 1 in the last bin; per bin compare the mean p with the
observed foreground fraction; ECE = Σ_k (n_k / N) · |mean p_k − mean y_k|.

The functional form scores each image; :class:`CalibrationMetric` pools the bin sums over the whole
set (so every pixel has equal weight) and also returns the maximum calibration error (MCE).
Layout ``(B, *spatial)``; an optional binary ``mask`` restricts the pixels (e.g. a FOV).
"""

from __future__ import annotations

import torch

from ._common import ArrayLike, StreamingMetric, as_binary, as_float, check_same_shape

__all__ = ["expected_calibration_error", "CalibrationMetric"]


def _bin_sums(prob: ArrayLike, ref: ArrayLike, mask: ArrayLike | None, num_bins: int) -> torch.Tensor:
    """Per-image bin statistics ``(B, 3, num_bins)``: count, sum of p, sum of y."""
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    p = as_float(prob, "prob")
    y = as_binary(ref, "ref")
    check_same_shape(p, y, ("prob", "ref"))
    if p.ndim < 2:
        raise ValueError(f"inputs must be batched (B, *spatial), got shape {tuple(p.shape)}")
    if bool(((p < 0) | (p > 1) | torch.isnan(p)).any()):
        raise ValueError("prob must be probabilities in [0, 1]; apply a sigmoid/softmax to logits first")
    m = torch.ones_like(y) if mask is None else as_binary(mask, "mask").to(y.device)
    check_same_shape(p, m, ("prob", "mask"))
    p, y, m = p.flatten(1), y.flatten(1).double(), m.flatten(1).double()
    idx = (p * num_bins).long().clamp(max=num_bins - 1)
    out = torch.zeros(p.shape[0], 3, num_bins, dtype=torch.float64, device=p.device)
    out[:, 0].scatter_add_(1, idx, m)
    out[:, 1].scatter_add_(1, idx, p * m)
    out[:, 2].scatter_add_(1, idx, y * m)
    return out


def _ece(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, sp, sy = sums.unbind(-2)
    gap = (sp - sy).abs() / n.clamp(min=1)
    total = n.sum(-1)
    ece = torch.where(total > 0, (gap * n).sum(-1) / total.clamp(min=1), torch.full_like(total, float("nan")))
    mce = torch.where(total > 0, torch.where(n > 0, gap, torch.zeros_like(gap)).amax(-1),
                      torch.full_like(total, float("nan")))
    return ece, mce


def expected_calibration_error(prob: ArrayLike, ref: ArrayLike, mask: ArrayLike | None = None,
                               num_bins: int = 20) -> torch.Tensor:
    """Per-image ECE ``(B,)`` of probabilities ``prob`` against binary ``ref``."""
    return _ece(_bin_sums(prob, ref, mask, num_bins))[0]


class CalibrationMetric(StreamingMetric):
    """Streaming ECE and MCE with bin sums pooled over all pixels; keys ``ece``, ``mce``, ``n_pixels``."""

    def __init__(self, num_bins: int = 20) -> None:
        self.num_bins = int(num_bins)
        super().__init__()

    def reset(self) -> None:
        self._sums = torch.zeros(3, self.num_bins, dtype=torch.float64)

    def update(self, prob: ArrayLike, ref: ArrayLike, mask: ArrayLike | None = None) -> None:
        self._sums += _bin_sums(prob, ref, mask, self.num_bins).sum(0).cpu()

    def compute(self) -> dict[str, float]:
        ece, mce = _ece(self._sums)
        return {"ece": float(ece), "mce": float(mce), "n_pixels": float(self._sums[0].sum())}
