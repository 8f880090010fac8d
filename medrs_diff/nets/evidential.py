"""Evidential fusion of K-class segmentations from M sources (EI-DDPM, Zhao & Li, MICCAI 2023).

Subjective-logic opinions and Dempster-Shafer mass functions over the frame of the K classes, per voxel,
batched. A mass function is stored on every subset of the frame: a tensor (B, 2**K, *spatial) whose
axis 1 is indexed by the subset's bit mask (index 0 the empty set, ``1 << k`` the singleton {k},
``2**K - 1`` the whole frame: ignorance).

- :func:`dirichlet_opinion`: evidence e >= 0 -> Dirichlet alpha = e + 1, S = sum(alpha), belief
  b_k = e_k / S and uncertainty u = K / S (they sum to 1 exactly).
- :func:`opinion_masses`: (b, u) as a mass function (b on the singletons, u on the frame).
- :func:`contextual_discount`: Mercier's contextual discounting with one reliability beta_k per class:
  the disjunctive combination of m with, for each k, the mass function {} -> beta_k, {k} -> 1 - beta_k.
  Its plausibilities are pl'(k) = 1 - beta_k + beta_k pl(k); beta = 1 leaves m unchanged, beta = 0
  gives total ignorance.
- :func:`dempster` / :func:`dempster_combine`: the conjunctive rule with conflict normalisation; total
  conflict (no mass left on a non-empty set) raises instead of dividing by zero.
- :func:`pignistic` and :func:`plausibility`: class probabilities from a mass function.
- :class:`EvidenceLayer` (the EIL: a 1x1 convolution and a non-negative activation) and
  :class:`ContextualDiscounting` (the CDO: learned reliabilities per source and class).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ArgumentError, DataError

__all__ = [
    "ACTIVATIONS",
    "MAX_CLASSES",
    "ContextualDiscounting",
    "EvidenceLayer",
    "contextual_discount",
    "dempster",
    "dempster_combine",
    "dirichlet_opinion",
    "opinion_masses",
    "pignistic",
    "plausibility",
]

#: the largest frame handled: 2**K subsets per voxel, and a pairwise combination costs 4**K products
MAX_CLASSES = 6
ACTIVATIONS = ("softplus", "exp", "relu")
#: exp evidence is taken of logits clamped to this bound (exp(20) ~ 5e8), so it never overflows
EXP_CLAMP = 20.0


def _classes_of(subsets: int, where: str) -> int:
    k = subsets.bit_length() - 1
    if subsets < 2 or 1 << k != subsets:
        raise ArgumentError(where, f"axis 1 holds {subsets} entries, not 2**K subsets",
                            "pass mass functions made by opinion_masses (shape (B, 2**K, *spatial))")
    return k


def _check_classes(k: int) -> int:
    if not 2 <= k <= MAX_CLASSES:
        raise ArgumentError("num_classes", f"evidential fusion takes 2 .. {MAX_CLASSES} classes, got {k}",
                            "merge classes, or fuse nested regions (WT / TC / ET) as binary tasks")
    return k


def dirichlet_opinion(evidence: Tensor) -> tuple[Tensor, Tensor]:
    """Evidence (B, K, *spatial) >= 0 -> belief masses (B, K, *spatial) and uncertainty (B, 1, *spatial)."""
    if evidence.ndim < 2:
        raise ArgumentError("evidence", f"shape {tuple(evidence.shape)} has no class axis", "pass (B, K, *spatial)")
    if not bool(torch.isfinite(evidence).all()) or bool((evidence < 0).any()):
        raise DataError("evidence", "holds negative, NaN or infinite values",
                        "map network outputs through a non-negative activation (EvidenceLayer)")
    k = evidence.shape[1]
    strength = (evidence + 1).sum(1, keepdim=True)
    return evidence / strength, k / strength


def opinion_masses(belief: Tensor, uncertainty: Tensor) -> Tensor:
    """(b (B, K, ...), u (B, 1, ...)) -> the mass function (B, 2**K, ...): b_k on {k}, u on the frame."""
    k = _check_classes(belief.shape[1])
    masses = belief.new_zeros(belief.shape[0], 1 << k, *belief.shape[2:])
    masses[:, [1 << c for c in range(k)]] = belief
    masses[:, (1 << k) - 1] = uncertainty[:, 0]
    return masses


def contextual_discount(masses: Tensor, reliability: Tensor) -> Tensor:
    """Contextual discounting of ``masses`` (B, 2**K, *spatial) by ``reliability`` beta in [0, 1]:
    (K,) for all voxels, or (B, K, *spatial) (broadcastable) per voxel."""
    k = _classes_of(masses.shape[1], "masses")
    if reliability.shape[min(1, reliability.ndim - 1)] != k:
        raise ArgumentError("reliability", f"shape {tuple(reliability.shape)} has no axis of the {k} classes",
                            "pass (K,) or (B, K, *spatial)")
    if bool((reliability < 0).any()) or bool((reliability > 1).any()):
        raise ArgumentError("reliability", "must lie in [0, 1]", "map learned parameters through a sigmoid")
    beta = reliability.reshape(1, k, *([1] * (masses.ndim - 2))) if reliability.ndim == 1 else reliability
    subsets = torch.arange(1 << k, device=masses.device)
    out = masses
    for c in range(k):
        b = beta[:, c:c + 1]
        moved = torch.zeros_like(out).index_add_(1, subsets | (1 << c), out * (1 - b))
        out = out * b + moved  # A keeps beta_c of its mass; A u {c} receives 1 - beta_c of it
    return out


def _intersections(k: int, device: torch.device) -> Tensor:
    s = torch.arange(1 << k, device=device)
    return s[:, None] & s[None, :]


def dempster_combine(m1: Tensor, m2: Tensor) -> tuple[Tensor, Tensor]:
    """Dempster's rule for two mass functions (B, 2**K, *spatial): the combined, normalised masses and
    the conflict kappa (B, 1, *spatial), the mass the conjunctive rule puts on the empty set."""
    if m1.shape != m2.shape:
        raise ArgumentError("masses", f"shapes {tuple(m1.shape)} and {tuple(m2.shape)} differ",
                            "combine mass functions over the same frame and grid")
    k = _classes_of(m1.shape[1], "masses")
    inter = _intersections(k, m1.device)
    joint = torch.zeros_like(m1)
    for a in range(1 << k):  # one focal set of m1 at a time: memory of two mass functions, not 4**K products
        joint.index_add_(1, inter[a], m1[:, a:a + 1] * m2)
    kept = joint[:, 1:].sum(1, keepdim=True)  # 1 - kappa, summed rather than subtracted (exact near total conflict)
    if bool((kept <= 0).any()):
        n = int((kept <= 0).sum())
        raise DataError("masses", f"total conflict at {n} voxel(s): the sources put all their mass on disjoint "
                        "classes, so Dempster's rule is undefined", "keep some ignorance in every source "
                        "(Dirichlet opinions always have u > 0) or discount the sources")
    combined = torch.cat([torch.zeros_like(kept), joint[:, 1:] / kept], 1)
    return combined, joint[:, :1]


def dempster(masses: Tensor) -> tuple[Tensor, Tensor]:
    """Dempster's rule over M sources stacked on axis 1, (B, M, 2**K, *spatial): the fused masses and the
    total conflict 1 - prod(1 - kappa_i) of the sequential combination (the rule is associative)."""
    if masses.ndim < 3 or masses.shape[1] < 1:
        raise ArgumentError("masses", f"shape {tuple(masses.shape)} is not (B, M, 2**K, *spatial)",
                            "stack the sources' mass functions on axis 1")
    fused = masses[:, 0]
    agreement = torch.ones_like(fused[:, :1])
    for m in range(1, masses.shape[1]):
        fused, kappa = dempster_combine(fused, masses[:, m])
        agreement = agreement * (1 - kappa)
    return fused, 1 - agreement


def _members(k: int, device: torch.device) -> Tensor:
    """(2**K, K) 0/1 table: subset A contains class c."""
    s = torch.arange(1 << k, device=device)
    return ((s[:, None] >> torch.arange(k, device=device)[None]) & 1).float()


def plausibility(masses: Tensor) -> Tensor:
    """pl(k) = sum of the masses of the sets that contain k: (B, K, *spatial)."""
    k = _classes_of(masses.shape[1], "masses")
    return torch.einsum("bs...,sk->bk...", masses, _members(k, masses.device).to(masses.dtype))


def pignistic(masses: Tensor) -> Tensor:
    """Smets' pignistic probabilities BetP(k) = sum over A containing k of m(A) / |A|, normalised by
    1 - m(empty): (B, K, *spatial), summing to 1."""
    k = _classes_of(masses.shape[1], "masses")
    member = _members(k, masses.device).to(masses.dtype)
    size = member.sum(1).clamp_min(1)
    share = torch.einsum("bs...,sk->bk...", masses, member / size[:, None])
    return share / share.sum(1, keepdim=True).clamp_min(torch.finfo(masses.dtype).tiny)


class EvidenceLayer(nn.Module):
    """The Evidence-Identified Layer: a 1x1 convolution from a branch's output channels to K logits and a
    non-negative activation (``softplus``, ``exp`` of clamped logits, or ``relu``) giving the evidence."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, activation: str = "softplus") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ArgumentError("activation", f"unknown evidence activation {activation!r}",
                                f"choose one of {', '.join(ACTIVATIONS)}")
        conv = {2: nn.Conv2d, 3: nn.Conv3d}.get(spatial_dims)
        if conv is None:
            raise ArgumentError("spatial_dims", f"must be 2 or 3, got {spatial_dims}", "use 2 or 3")
        self.proj = conv(in_channels, _check_classes(num_classes), 1)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        z = self.proj(x)
        if self.activation == "softplus":
            return nn.functional.softplus(z)
        if self.activation == "exp":
            return torch.exp(z.clamp(max=EXP_CLAMP))
        return torch.relu(z)


class ContextualDiscounting(nn.Module):
    """The Contextual Discounting Operator: a learned reliability beta[m, k] = sigmoid(gain * theta[m, k]) for
    each of M sources and K classes (initial value ``init``), applied by :func:`contextual_discount`.
    ``gain`` only rescales the parameter: under Adam a step moves the logit about ``gain`` times the
    learning rate, so the M x K reliabilities can move faster than the network weights."""

    def __init__(self, num_sources: int, num_classes: int, init: float = 0.9, gain: float = 1.0) -> None:
        super().__init__()
        if not 0 < init < 1:
            raise ArgumentError("init", f"initial reliability must lie in (0, 1), got {init}", "use e.g. 0.9")
        if isinstance(gain, bool) or not isinstance(gain, int | float) or not gain > 0:
            raise ArgumentError("gain", f"must be a number > 0, got {gain!r}", "use 1.0 (plain logits) or e.g. 10.0")
        logit = float(torch.logit(torch.tensor(init))) / float(gain)
        self.theta = nn.Parameter(torch.full((num_sources, _check_classes(num_classes)), logit))
        self.gain = float(gain)

    @property
    def reliability(self) -> Tensor:
        """(M, K) reliabilities in (0, 1)."""
        return torch.sigmoid(self.gain * self.theta)

    def forward(self, masses: Tensor) -> Tensor:
        """Discount each source of ``masses`` (B, M, 2**K, *spatial) by its reliabilities."""
        if masses.shape[1] != self.theta.shape[0]:
            raise ArgumentError("masses", f"holds {masses.shape[1]} sources, the operator {self.theta.shape[0]}",
                                "stack one mass function per modality, in the recipe's modality order")
        beta = self.reliability
        return torch.stack([contextual_discount(masses[:, m], beta[m]) for m in range(masses.shape[1])], 1)
