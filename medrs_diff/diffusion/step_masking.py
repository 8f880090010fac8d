"""Learned step skipping by probabilistic masking (EDDPM-style, Zhang et al. ICML 2024).

Each candidate step ``i`` of a respaced chain is kept with probability ``s_i``; a mask drawn from
Bernoulli(s) defines a shorter chain. The keep-probabilities are learned with the score-function
(probabilistic reparameterisation) gradient of a sampling loss and projected after every update onto
the budget ``sum_i s_i = k`` (the sparsity constraint), so they converge towards a deterministic
k-step mask; the result is the k most probable steps. The top candidate (where x_T lives) is always
kept. The loss is the caller's: for a frozen network, e.g. the distance of the masked chain's samples
to the full chain's from the same x_T (:func:`ode_error_loss`); on the engine's Gaussian-mixture
ground truth, the distance to the exact ODE solution.

This is the masking idea applied to a frozen model's sampling chain; EDDPM also fine-tunes the
network weights jointly with the masks (one epoch on a pretrained model), which is not done here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .schedules import Schedule


def masked_schedule(schedule: Schedule, keep: Tensor) -> Schedule:
    """The sub-chain of ``schedule`` at the indices where ``keep`` is True."""
    keep = torch.as_tensor(keep, dtype=torch.bool).cpu()
    if keep.shape != (len(schedule),) or not keep.any():
        raise ValueError(f"keep must be a boolean vector of length {len(schedule)} with at least one True")
    return Schedule(schedule.alphas_cumprod[keep], schedule.timesteps[keep], schedule.parent_alphas_cumprod)


def project_to_budget(s: Tensor, k: float, iters: int = 60) -> Tensor:
    """Euclidean projection of ``s`` onto {v in [0, 1]^n : sum v = k} (bisection on the shift)."""
    lo, hi = float(s.min()) - 1.0, float(s.max())
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if float((s - mid).clamp(0, 1).sum()) > k:
            lo = mid
        else:
            hi = mid
    return (s - 0.5 * (lo + hi)).clamp(0, 1)


@dataclass
class MaskResult:
    schedule: Schedule  # the learned k-step chain
    probs: Tensor  # final keep-probabilities over the candidates
    losses: list[float]  # mean sampled loss per iteration


def learn_step_mask(
    loss_fn: Callable[[Schedule], float],
    candidates: Schedule,
    k: int,
    *,
    iters: int = 200,
    samples: int = 8,
    lr: float = 0.1,
    generator: torch.Generator | None = None,
) -> MaskResult:
    """Learn a ``k``-step sub-chain of ``candidates`` minimising ``loss_fn(chain)``.

    Each iteration draws ``samples`` masks, scores them, and steps the keep-probabilities along the
    score-function gradient ``E[(L - mean L) (m - s) / (s (1 - s))]`` (normalised by its largest entry),
    then projects onto the budget. Probabilities are kept in [0.01, 0.99] while learning.
    """
    n = len(candidates)
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in 1..{n} (the candidate steps), got {k}")
    if samples < 2:
        raise ValueError("samples must be >= 2 (the gradient uses their mean loss as the baseline)")
    free = n - 1  # the top candidate is always kept
    s = torch.full((free,), (k - 1) / max(free, 1), dtype=torch.float64)
    losses: list[float] = []
    for _ in range(iters if free > 0 and k > 1 else 0):
        sc = s.clamp(0.01, 0.99)
        masks = torch.rand(samples, free, generator=generator, dtype=torch.float64) < sc
        vals = []
        for m in masks:
            keep = torch.cat([m, torch.ones(1, dtype=torch.bool)])
            vals.append(float(loss_fn(masked_schedule(candidates, keep))))
        v = torch.tensor(vals, dtype=torch.float64)
        losses.append(float(v.mean()))
        adv = (v - v.mean())[:, None]
        grad = (adv * (masks.double() - sc) / (sc * (1 - sc))).mean(0)
        scale = grad.abs().max()
        if scale > 0:
            s = project_to_budget(s - lr * grad / scale, k - 1)
    top = torch.zeros(free, dtype=torch.bool)
    if k > 1:
        top[torch.topk(s, k - 1).indices] = True
    keep = torch.cat([top, torch.ones(1, dtype=torch.bool)])
    return MaskResult(masked_schedule(candidates, keep), torch.cat([s, torch.ones(1, dtype=torch.float64)]), losses)


def ode_error_loss(sampler: Callable[[Schedule], Tensor], reference: Tensor) -> Callable[[Schedule], float]:
    """Loss of a chain: mean absolute distance of ``sampler(chain)`` to ``reference`` samples drawn from
    the same x_T (the full chain's, or the exact ODE solution's)."""

    def loss(chain: Schedule) -> float:
        return float((sampler(chain) - reference).abs().mean())

    return loss
