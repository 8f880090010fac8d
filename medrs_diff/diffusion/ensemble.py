"""Fuse N stochastic samples and measure their disagreement.

Layout (the metrics' convention, e.g. ``metrics.stochastic``): the sample axis N follows the batch
axis. Continuous samples (images, mask probabilities) are (B, N, ...); label maps for voting and
STAPLE are integer tensors (B, N, *spatial), with STAPLE's rater parameters estimated per case b;
class probabilities for the uncertainty maps are (B, N, K, *spatial) (K = 1 means the foreground
probability of a binary task). Stack sampler outputs with ``torch.stack(samples, dim=1)``.

* :func:`fuse_mean`, :func:`majority_vote`, :func:`staple` (Warfield et al. 2004 EM, binary and
  multi-class with per-rater confusion matrices);
* :func:`variance_map`, :func:`predictive_entropy` (entropy of the mean prediction) and
  :func:`mutual_information` (its epistemic part, H[mean p] - mean H[p], "BALD").

An ensemble of one sample has no spread: the uncertainty maps then warn and return the value a
single sample gives (a zero map for the variance and the mutual information).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor


def _check_ensemble(x: Tensor, name: str, min_ndim: int = 2) -> None:
    if not isinstance(x, Tensor) or x.ndim < min_ndim or x.shape[1] < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"{name} must be (B, N, ...) with the sample axis N >= 1 second, got shape {shape}; "
            "stack samples with torch.stack(samples, dim=1)"
        )


def _warn_single(what: str) -> None:
    warnings.warn(
        f"{what} of an ensemble of one sample: a single sample carries no spread; draw N >= 2 samples",
        UserWarning,
        stacklevel=3,
    )


def fuse_mean(samples: Tensor) -> Tensor:
    """Mean over the sample axis: (B, N, ...) -> (B, ...)."""
    _check_ensemble(samples, "samples")
    return samples.mean(1)


def _labels(labels: Tensor, num_classes: int | None) -> tuple[Tensor, int]:
    if labels.dtype == torch.bool:
        labels = labels.long()
    if labels.is_floating_point():
        if not (labels == labels.round()).all():
            raise ValueError("label maps must hold integer class indices; threshold or argmax the samples first")
        labels = labels.long()
    if labels.numel() and labels.min() < 0:
        raise ValueError("label maps must hold class indices >= 0")
    k = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if num_classes is None:
        k = max(k, 2)
    if labels.numel() and labels.max() >= k:
        raise ValueError(f"labels reach {int(labels.max())} but num_classes is {k}")
    return labels, k


def majority_vote(labels: Tensor, num_classes: int | None = None) -> Tensor:
    """Per-pixel most frequent label over the N axis: (B, N, ...) -> (B, ...); ties go to the lower class."""
    _check_ensemble(labels, "labels")
    labels, k = _labels(labels, num_classes)
    counts = torch.nn.functional.one_hot(labels, k).sum(1)
    return counts.argmax(-1)  # argmax returns the first maximum: the lowest tied class


@dataclass
class StapleResult:
    """STAPLE estimate: ``probabilities`` (B, K, *spatial) of the hidden true labels, ``confusion``
    (B, N, K, K) with confusion[b, j, k, s] = P(rater j says k | truth s), ``prior`` (B, K)."""

    probabilities: Tensor
    confusion: Tensor
    prior: Tensor
    iterations: int
    converged: bool

    @property
    def labels(self) -> Tensor:
        """The maximum a posteriori label map (B, *spatial)."""
        return self.probabilities.argmax(1)

    @property
    def sensitivity(self) -> Tensor:
        """(B, N) P(rater says 1 | truth 1) of a binary task."""
        return self.confusion[..., 1, 1]

    @property
    def specificity(self) -> Tensor:
        """(B, N) P(rater says 0 | truth 0) of a binary task."""
        return self.confusion[..., 0, 0]


def staple(
    labels: Tensor,
    num_classes: int | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-7,
    prior: Tensor | None = None,
    init_accuracy: float = 0.9,
) -> StapleResult:
    """STAPLE by expectation-maximisation over raters' label maps (B, N, *spatial).

    E-step: W(s) proportional to f(s) prod_j theta_j[d_j, s]; M-step: theta_j[k, s] = sum over pixels
    of W(s) [d_j = k] / sum of W(s). The prior f is fixed: by default each case's class frequencies
    averaged over raters (Warfield et al.); pass ``prior`` (K,) to set it. Every rater starts with
    accuracy ``init_accuracy`` on the diagonal. Binary tasks (K = 2) give Warfield's sensitivity
    p_j = theta_j[1, 1] and specificity q_j = theta_j[0, 0]. ``probabilities`` come from the last
    E-step and ``confusion`` from the last M-step.
    """
    _check_ensemble(labels, "labels", min_ndim=3)
    if not 0.0 < init_accuracy < 1.0:
        raise ValueError(f"init_accuracy must lie in (0, 1), got {init_accuracy}")
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")
    labels, k = _labels(labels, num_classes)
    b, n, *spatial = labels.shape
    onehot = torch.nn.functional.one_hot(labels.reshape(b, n, -1), k).double()  # (B, N, V, K)
    if prior is None:
        f = onehot.mean(dim=(1, 2))  # (B, K)
    else:
        f = torch.as_tensor(prior, dtype=torch.float64, device=labels.device).reshape(1, -1).expand(b, -1)
        if f.shape[1] != k or (f < 0).any() or not torch.allclose(f.sum(1), torch.ones_like(f[:, 0])):
            raise ValueError(f"prior must be {k} non-negative class probabilities summing to 1")
    log_f = torch.log(f.clamp_min(1e-300))
    off = (1.0 - init_accuracy) / (k - 1) if k > 1 else 0.0
    theta = torch.full((b, n, k, k), off, dtype=torch.float64, device=labels.device)
    theta.diagonal(dim1=-2, dim2=-1).fill_(init_accuracy)
    converged = False
    it = 0
    w = f[:, None, :].expand(b, onehot.shape[2], k)
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        log_theta = torch.log(theta.clamp_min(1e-300))
        logits = log_f[:, None, :] + torch.einsum("bnvk,bnks->bvs", onehot, log_theta)
        w = torch.softmax(logits, dim=-1)  # (B, V, K)
        num = torch.einsum("bvs,bnvk->bnks", w, onehot)
        den = w.sum(1)[:, None, None, :]  # (B, 1, 1, K)
        new = torch.where(den > 0, num / den.clamp_min(1e-300), theta)
        delta = float((new - theta).abs().max())
        theta = new
        if delta < tol:
            converged = True
            break
    probs = w.transpose(1, 2).reshape(b, k, *spatial).float()
    return StapleResult(probs, theta.float(), f.float(), it, converged)


def variance_map(samples: Tensor) -> Tensor:
    """Per-pixel unbiased variance over the sample axis: (B, N, ...) -> (B, ...); zeros and a warning for N = 1."""
    _check_ensemble(samples, "samples")
    if samples.shape[1] == 1:
        _warn_single("variance")
        return torch.zeros_like(samples[:, 0])
    return samples.var(1, correction=1)


def _class_probs(probs: Tensor) -> Tensor:
    """Validate (B, N, K, *spatial) probabilities; a single channel becomes (1 - p, p)."""
    _check_ensemble(probs, "probabilities", min_ndim=4)
    if not torch.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise ValueError("probabilities must lie in [0, 1]; apply softmax/sigmoid to logits first")
    if probs.shape[2] == 1:
        return torch.cat([1 - probs, probs], dim=2)
    total = probs.sum(2)
    if not torch.allclose(total, torch.ones_like(total), atol=1e-4):
        raise ValueError(
            "class probabilities must sum to 1 over the class axis (axis 2 of (B, N, K, *spatial)); "
            "apply softmax over classes first"
        )
    return probs


def _entropy(p: Tensor, dim: int) -> Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim)


def predictive_entropy(probs: Tensor) -> Tensor:
    """Entropy (nats) of the mean prediction: (B, N, K, *spatial) -> (B, *spatial).

    For N = 1 it is the single sample's own entropy (a warning says so).
    """
    p = _class_probs(probs)
    if p.shape[1] == 1:
        _warn_single("predictive entropy")
    return _entropy(p.mean(1), dim=1)


def mutual_information(probs: Tensor) -> Tensor:
    """H[mean_n p_n] - mean_n H[p_n] (nats, >= 0): (B, N, K, *spatial) -> (B, *spatial); zeros for N = 1."""
    p = _class_probs(probs)
    if p.shape[1] == 1:
        _warn_single("mutual information")
        return torch.zeros_like(p[:, 0, 0])
    mi = _entropy(p.mean(1), dim=1) - _entropy(p, dim=2).mean(1)
    return mi.clamp_min(0.0)
