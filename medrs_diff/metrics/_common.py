"""Shared input checks and the streaming-metric base class used by every metric module.

Inputs may be torch tensors or numpy arrays; they are converted to float64 (or bool) torch tensors
on the input's device so that sums over a large test set stay exact enough to compare with the
reference libraries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def as_float(x: Any, name: str) -> torch.Tensor:
    """Return ``x`` as a float64 tensor (numpy arrays, tensors and nested lists accepted)."""
    if not isinstance(x, torch.Tensor):
        arr = np.asarray(x)
        if arr.dtype.kind not in "biufc":
            raise ValueError(f"{name} must be a torch tensor or numpy array of numbers, got "
                             f"{type(x).__name__} of dtype {arr.dtype}")
        if not arr.dtype.isnative:  # e.g. big-endian NIfTI data
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if not arr.flags.writeable:  # read-only (memory-mapped, Pillow) arrays: torch needs its own copy
            arr = arr.copy()
        x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.is_complex():
        raise ValueError(f"{name} is complex; pass real-valued data")
    return x.to(torch.float64)


def as_binary(x: Any, name: str) -> torch.Tensor:
    """Return ``x`` as a bool tensor; raise if it holds values other than 0 and 1.

    Binary metrics never threshold silently: a probability map passed where a mask is expected
    would otherwise be scored as if every non-zero voxel were foreground.
    """
    if isinstance(x, torch.Tensor) and x.dtype == torch.bool:
        return x
    if isinstance(x, np.ndarray) and x.dtype == np.bool_:
        return torch.from_numpy(x if x.flags.writeable else x.copy())
    t = as_float(x, name)
    bad = (t != 0) & (t != 1)
    if bool(bad.any()):
        example = t[bad].flatten()[0].item()
        raise ValueError(
            f"{name} must be binary (only 0 and 1), found e.g. {example!r}; threshold probabilities first "
            "(e.g. `prob >= 0.5`) or pass `threshold=` where the metric offers it"
        )
    return t.bool()


def binarize(x: Any, name: str, threshold: float | None) -> torch.Tensor:
    """Threshold ``x`` at ``threshold`` (value >= threshold is foreground) or require it binary."""
    if threshold is None:
        return as_binary(x, name)
    return as_float(x, name) >= threshold


def check_same_shape(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str] = ("pred", "ref")) -> None:
    """Raise a ValueError naming both shapes when they differ."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"shape mismatch: {names[0]} has shape {tuple(a.shape)} but {names[1]} has shape "
            f"{tuple(b.shape)}; they must match element for element"
        )


def check_ndim(x: torch.Tensor, allowed: Sequence[int], name: str, layout: str) -> None:
    """Raise when ``x.ndim`` is not one of ``allowed``; ``layout`` says what the axes mean."""
    if x.ndim not in allowed:
        raise ValueError(f"{name} must have layout {layout} ({' or '.join(map(str, allowed))} dims), "
                         f"got shape {tuple(x.shape)}")


def check_thresholds(thresholds: Sequence[float] | float, name: str = "thresholds") -> list[float]:
    """Return thresholds as a list of floats; raise unless finite and strictly increasing."""
    if isinstance(thresholds, int | float):
        thresholds = [thresholds]
    values = [float(t) for t in thresholds]
    if not values:
        raise ValueError(f"{name} is empty; give at least one threshold")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be finite, got {values}")
    if any(b <= a for a, b in zip(values[:-1], values[1:])):
        raise ValueError(f"{name} must be strictly increasing, got {values}; sort them and drop duplicates")
    return values


def check_positive_ints(values: Sequence[int] | int, name: str) -> list[int]:
    """Return a list of positive ints (window sizes, scales); raise otherwise."""
    if isinstance(values, int):
        values = [values]
    out = []
    for v in values:
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be positive integers, got {list(values)}")
        out.append(int(v))
    if not out:
        raise ValueError(f"{name} is empty")
    return out


def check_spacing(spacing: Sequence[float] | float | None, ndim: int) -> tuple[float, ...]:
    """Return a per-axis spacing tuple of length ``ndim`` (1.0 each when ``None``)."""
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, int | float):
        spacing = [spacing] * ndim
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim:
        raise ValueError(f"spacing has {len(values)} values but the masks have {ndim} spatial axes; "
                         "give one spacing (mm) per spatial axis")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be positive and finite, got {values}")
    return values


def safe_div(num: torch.Tensor | float, den: torch.Tensor | float) -> torch.Tensor:
    """``num / den`` with NaN where the denominator is zero (an undefined score, not a zero one)."""
    num = torch.as_tensor(num, dtype=torch.float64)
    den = torch.as_tensor(den, dtype=torch.float64, device=num.device)
    out = num / torch.where(den == 0, torch.ones_like(den), den)
    return torch.where(den == 0, torch.full_like(out, float("nan")), out)


class MeanTracker:
    """Running mean of per-item values that skips NaN (undefined) entries and counts them."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0
        self.undefined = 0

    def add(self, values: torch.Tensor) -> None:
        """Add per-item values; NaN entries are counted as undefined, not averaged."""
        v = values.detach().to(torch.float64).flatten().cpu()
        finite_or_inf = ~torch.isnan(v)
        self.total += float(v[finite_or_inf].sum())
        self.count += int(finite_or_inf.sum())
        self.undefined += int((~finite_or_inf).sum())

    @property
    def mean(self) -> float:
        """Mean of the defined values (NaN when there are none)."""
        return self.total / self.count if self.count else float("nan")


class StreamingMetric:
    """Base class: ``update(...)`` per batch, ``compute() -> dict[str, float]``, ``reset()``.

    Subclasses keep only sufficient statistics (sums, counts, histograms), never the data, so a
    whole test set streams through in bounded memory.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def update(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def compute(self) -> dict[str, float]:  # pragma: no cover - overridden
        raise NotImplementedError
