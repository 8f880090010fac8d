"""AdamW parameter groups and the linear warm-up + cosine decay learning-rate schedule.

The schedule is a picklable callable object (not a closure), so ``LambdaLR.state_dict`` stores its
settings and a resumed run continues on exactly the same curve.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosine:
    """LR multiplier after ``step`` optimizer steps: linear warm-up to 1, then cosine decay to ``min_ratio``.

    Warm-up: ``(step + 1) / warmup_steps`` for ``step < warmup_steps`` (the first step already has a
    non-zero rate). Decay: ``min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2`` with
    ``p = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1]. ``total_steps=None``
    keeps the rate constant after warm-up.
    """

    def __init__(self, warmup_steps: int = 0, total_steps: int | None = None, min_ratio: float = 0.0) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1 or None, got {total_steps}")
        if not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"min_ratio must lie in [0, 1], got {min_ratio}")
        self.warmup_steps = int(warmup_steps)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.total_steps is None:
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        p = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))

    def __repr__(self) -> str:
        return (f"WarmupCosine(warmup_steps={self.warmup_steps}, total_steps={self.total_steps}, "
                f"min_ratio={self.min_ratio})")


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int | None, min_ratio: float = 0.0
) -> LambdaLR:
    """A ``LambdaLR`` (to be stepped once per optimizer step) following :class:`WarmupCosine`."""
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_ratio))


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight matrices / kernels decay, biases and normalisation scales (1-D) do not.

    Only parameters that require gradients are included; the order is ``named_parameters`` order, so
    a rebuilt module gives the same groups and a saved optimizer state loads onto them.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]

