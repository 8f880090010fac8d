"""Checks shared by the task option classes; each error names the option and its CLI flag."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ArgumentError

__all__ = ["CommonOptions", "DataRange", "flag", "number", "data_range", "int_tuple", "float_tuple"]

#: A data range: a number, or (image task) ``"ref_range"`` / ``"ref_max"`` computed from each reference.
DataRange = float | str


@dataclass
class CommonOptions:
    """Options every task takes (keyword-only).

    ``assume_same_grid``: accept a prediction or mask without geometry (``.npy``, PNG, plain TIFF) for a
    reference with geometry (NIfTI, GeoTIFF) or the other way round, and skip the transposed / flipped
    check of geometry-less label maps: you vouch that both hold the same stored array order.
    """

    assume_same_grid: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.assume_same_grid, bool):
            raise ArgumentError(flag("assume_same_grid"), f"must be True or False, got {self.assume_same_grid!r}",
                                "give a bool")


def flag(name: str) -> str:
    """``data_range`` -> ``"data_range (--data-range)"``: the API name and the CLI flag."""
    return f"{name} (--{name.replace('_', '-')})"


def number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, allow_nan: bool = False) -> float:
    """``value`` as a float within ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ArgumentError(flag(name), f"must be a number, got {value!r}", "give a number") from None
    if math.isnan(v):
        if allow_nan:
            return v
        raise ArgumentError(flag(name), "is NaN", "give a finite number")
    bad = (not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low))
           or (high is not None and v > high))
    if bad:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"<= {high:g}"
        rng = " and ".join(s for s in (lo, hi) if s) or "finite"
        raise ArgumentError(flag(name), f"must be {rng}, got {value!r}", f"give a value {rng}")
    return v


def data_range(value: Any, task: str, *, allow_reference: bool) -> DataRange:
    """Required PSNR / SSIM data range; ``ref_range`` / ``ref_max`` only where ``allow_reference``."""
    if value is None:
        refs = "; 'ref_range' or 'ref_max' for image" if allow_reference else ""
        raise ArgumentError(flag("data_range"), f"task {task!r} needs a data range",
                            f"pass data_range= / --data-range (e.g. 1.0 for reflectance, 10000 for Sentinel-2 DN, "
                            f"255 for 8-bit{refs})")
    if isinstance(value, str) and value in ("ref_range", "ref_max"):
        if allow_reference:
            return value
        raise ArgumentError(flag("data_range"), f"{value!r} is only available for task 'image'",
                            "give a number")
    return number(value, "data_range", low=0.0, low_open=True)


def int_tuple(values: Any, name: str, *, low: int | None = None) -> tuple[int, ...]:
    """A sequence (or one value) of integers, each ``>= low``."""
    seq = [values] if isinstance(values, int | float) else list(values)
    out = []
    for v in seq:
        if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v or (low is not None and v < low):
            need = "integers" if low is None else f"integers >= {low}"
            raise ArgumentError(flag(name), f"must be {need}, got {seq}", f"give {need}")
        out.append(int(v))
    if not out:
        raise ArgumentError(flag(name), "is empty", "give at least one value")
    return tuple(out)


def float_tuple(values: Sequence[Any] | float, name: str, *, positive: bool = False) -> tuple[float, ...]:
    """A sequence (or one value) of finite floats, each ``> 0`` with ``positive``."""
    seq = [values] if isinstance(values, int | float) else list(values)
    if not seq:
        raise ArgumentError(flag(name), "is empty", "give at least one value")
    return tuple(number(v, name, low=0.0 if positive else None, low_open=positive) for v in seq)

