"""Model-space scaling: raw intensities <-> about [-1, 1], invertible and recorded with the data.

A :class:`Scaling` is ``y = (clip(x, clip_min, clip_max) - offset) / scale`` per channel, with the
inverse ``x = y * scale + offset``. Fixed scalings (CT window, PET SUV range, reflectance x1e4,
digital numbers, SAR dB) are the same for every image, so models transfer between scans; data-derived
ones (MRI percentiles, z-score) are computed per image and recorded so predictions can be mapped back.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .errors import DataError

Array = np.ndarray | torch.Tensor
Floats = float | Sequence[float]


def _tuple(v: Floats | None) -> tuple[float, ...] | None:
    if v is None:
        return None
    arr = np.atleast_1d(np.asarray(v, dtype=np.float64))
    return tuple(float(a) for a in arr)


@dataclass(frozen=True)
class Scaling:
    """Per-channel affine map with clipping between raw units and model space (about [-1, 1])."""

    kind: str
    offset: tuple[float, ...]
    scale: tuple[float, ...]
    clip_min: tuple[float, ...] | None = None
    clip_max: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("offset", "scale", "clip_min", "clip_max"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        if any(s == 0 or not np.isfinite(s) for s in self.scale):
            raise DataError(None, f"scaling '{self.kind}' has a zero or non-finite scale {self.scale}",
                            "use a range whose upper bound exceeds its lower bound")

    def _param(self, values: tuple[float, ...] | None, x: Array, channel_axis: int) -> Any:
        if values is None:
            return None
        if len(values) == 1:
            return values[0]
        n = x.shape[channel_axis]
        if len(values) != n:
            raise DataError(None, f"scaling '{self.kind}' has {len(values)} channel parameters but the data has "
                            f"{n} channels", "build the scaling with one value per channel (or a single value)")
        shape = [1] * x.ndim
        shape[channel_axis] = n
        v = np.asarray(values, dtype=np.float32).reshape(shape)
        if isinstance(x, torch.Tensor):
            return torch.as_tensor(v, dtype=x.dtype, device=x.device)
        return v

    @staticmethod
    def _float(x: Array) -> Array:
        if isinstance(x, torch.Tensor):
            return x if x.is_floating_point() else x.float()
        x = np.asarray(x)
        return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)

    def forward(self, x: Array, channel_axis: int = 0) -> Array:
        """Raw units -> model space. ``channel_axis`` is 0 for (C, ...) and 1 for (B, C, ...)."""
        x = self._float(x)
        lo = self._param(self.clip_min, x, channel_axis)
        hi = self._param(self.clip_max, x, channel_axis)
        if lo is not None or hi is not None:
            x = torch.clamp(x, lo, hi) if isinstance(x, torch.Tensor) else np.clip(x, lo, hi)
        return (x - self._param(self.offset, x, channel_axis)) / self._param(self.scale, x, channel_axis)

    def inverse(self, y: Array, channel_axis: int = 0) -> Array:
        """Model space -> raw units (exact for values that were not clipped)."""
        y = self._float(y)
        return y * self._param(self.scale, y, channel_axis) + self._param(self.offset, y, channel_axis)

    def to_dict(self) -> dict[str, Any]:
        """Plain record (JSON-serialisable) stored in batch metadata and output file headers."""
        return asdict(self)

    def to_json(self) -> str:
        """The record as JSON (GeoTIFF tags, NIfTI header extensions)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Scaling:
        """Inverse of :meth:`to_dict`."""
        return cls(**record)

    @classmethod
    def from_json(cls, text: str) -> Scaling:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


# fraction of finite input values a fixed-range scaling may clip before inference warns: any SUV above the
# PET range or any value above an n-bit range (wrong units, lost lesions); 1 % for reflectance, dB and plain
# ranges (saturated clouds, dark water are expected tails). Windows and data-derived ranges clip by design.
CLIP_WARN_FRACTION = {"pet_suv": 0.0, "dn": 0.0, "reflectance": 0.01, "db": 0.01, "linear": 0.01}


def clip_counts(scaling: Scaling, x: Array, channel_axis: int = 0) -> tuple[int, int]:
    """(finite values that ``scaling`` clips, finite values) of raw ``x``."""
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    finite = np.isfinite(a)
    out = np.zeros(a.shape, bool)
    for bound, beyond in ((scaling.clip_min, np.less), (scaling.clip_max, np.greater)):
        if bound is not None:
            out |= beyond(a, scaling._param(bound, a, channel_axis), where=finite, out=np.zeros(a.shape, bool))
    return int(out.sum()), int(finite.sum())


def warn_clipped(where: Any, scaling: Scaling, n_clipped: int, n_total: int) -> None:
    """Warn, naming ``where`` and the fix, when a fixed-range scaling clipped more of an input than
    :data:`CLIP_WARN_FRACTION` allows (values outside the trained range are flattened to its ends)."""
    limit = CLIP_WARN_FRACTION.get("dn" if scaling.kind.startswith("dn") else scaling.kind)
    if limit is None or n_total <= 0 or n_clipped <= limit * n_total:
        return
    lo = "-inf" if scaling.clip_min is None else ", ".join(f"{v:g}" for v in scaling.clip_min)
    hi = "inf" if scaling.clip_max is None else ", ".join(f"{v:g}" for v in scaling.clip_max)
    warnings.warn(f"{where}: {n_clipped} values ({n_clipped / n_total:.3%}) lie outside the range [{lo}] .. [{hi}] "
                  f"of input scaling '{scaling.kind}' and are clipped to it, as in training. Fix: check the "
                  "input's units, or retrain with a wider scaling (for PET 'pet:<max SUV>')", stacklevel=3)


def identity() -> Scaling:
    """No change (data already in model space)."""
    return Scaling("identity", 0.0, 1.0)


def linear(lo: Floats, hi: Floats, *, clip: bool = True, kind: str = "linear") -> Scaling:
    """Map [lo, hi] (per channel) onto [-1, 1], clipping outside values when ``clip``."""
    lo_a, hi_a = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    return Scaling(kind, (lo_a + hi_a) / 2, (hi_a - lo_a) / 2, lo_a if clip else None, hi_a if clip else None)


def ct_window(level: float = 40.0, width: float = 400.0) -> Scaling:
    """CT Hounsfield window (default soft tissue, L40/W400) onto [-1, 1]."""
    return linear(level - width / 2, level + width / 2, kind="ct_window")


def pet_suv(max_suv: float = 10.0) -> Scaling:
    """PET in SUV, fixed range [0, max_suv] onto [-1, 1] (fixed so that quantification is kept)."""
    return linear(0.0, max_suv, kind="pet_suv")


def reflectance(quantification: float = 1e4, max_reflectance: float = 1.0) -> Scaling:
    """Surface reflectance stored as integers x ``quantification`` (Sentinel-2 L2A: 1e4)."""
    return linear(0.0, quantification * max_reflectance, kind="reflectance")


def digital_number(bits: int = 8) -> Scaling:
    """Unsigned digital numbers [0, 2**bits - 1] (8-bit RGB, 12/16-bit sensors)."""
    return linear(0.0, 2.0**bits - 1, kind=f"dn{bits}")


def decibel(lo: Floats = -25.0, hi: Floats = 0.0) -> Scaling:
    """SAR backscatter in dB (Sentinel-1 sigma0 VV roughly -25..0 dB, VH -32..-5 dB)."""
    return linear(lo, hi, kind="db")


def _valid_values(x: Array, mask: Array | None) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if mask is not None:
        m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        a = a[np.broadcast_to(m.astype(bool), a.shape)]
    a = a[np.isfinite(a)]
    if a.size == 0:
        raise DataError(None, "no finite values to compute a scaling from (all NaN or masked)",
                        "check the image and its mask")
    return a


def percentiles(x: Array, lower: float = 0.5, upper: float = 99.5, mask: Array | None = None) -> Scaling:
    """MRI-style robust range: the [lower, upper] percentiles of ``x`` onto [-1, 1]."""
    lo, hi = np.percentile(_valid_values(x, mask), [lower, upper])
    if hi <= lo:
        hi = lo + 1.0
    return linear(lo, hi, kind="percentile")


def zscore(x: Array, mask: Array | None = None) -> Scaling:
    """Zero mean, unit variance (inside ``mask`` when given); not clipped."""
    v = _valid_values(x, mask)
    std = float(v.std()) or 1.0
    return Scaling("zscore", float(v.mean()), std)


def minmax(x: Array, mask: Array | None = None) -> Scaling:
    """The image's own [min, max] onto [-1, 1]."""
    v = _valid_values(x, mask)
    lo, hi = float(v.min()), float(v.max())
    return linear(lo, hi if hi > lo else lo + 1.0, kind="minmax")


#: Sentinel-1 dB clipping ranges (VV, VH) of SEN12MS-CR / DSen2-CR (also :data:`medrs_diff.data.cloud.S1_DB_RANGE`).
S1_DB_LO, S1_DB_HI = (-25.0, -32.5), (0.0, 0.0)


def s1_decibel() -> Scaling:
    """Sentinel-1 VV, VH in dB: VV -25..0 and VH -32.5..0 onto [-1, 1] (two channels, clipped)."""
    return linear(S1_DB_LO, S1_DB_HI, kind="db")


def s1_db_s2_dn(x: Array | None) -> Scaling:
    """A stack of S1 VV, VH in dB (channels 0-1, :func:`s1_decibel`) and S2 reflectance x 1e4 (the other
    channels, 0..1e4 onto [-1, 1]), channel-first; the channel count is read from ``x``."""
    if x is None or np.ndim(x) < 1 or x.shape[0] < 3:
        raise DataError(None, "scaling 's1_db_s2_dn' needs a channel-first stack of VV, VH and >= 1 S2 band",
                        "give the S1 dB bands first, then the S2 DN bands")
    n = int(x.shape[0]) - 2
    return linear((*S1_DB_LO, *([0.0] * n)), (*S1_DB_HI, *([1e4] * n)), kind="linear")


ScalingSpec = Scaling | str | Callable[[Array], Scaling] | None

_NAMED: dict[str, Callable[[Array], Scaling]] = {
    "ct": lambda x: ct_window(),
    "pet": lambda x: pet_suv(),
    "mri": percentiles,
    "percentile": percentiles,
    "zscore": zscore,
    "minmax": minmax,
    "reflectance": lambda x: reflectance(),
    "unit": lambda x: linear(0.0, 1.0, kind="unit"),  # reflectance already in [0, 1] (hyperspectral cubes)
    "dn8": lambda x: digital_number(8),
    "dn16": lambda x: digital_number(16),
    "db": lambda x: decibel(),
    "s1_db": lambda x: s1_decibel(),
    "s1_db_s2_dn": lambda x: s1_db_s2_dn(x),
    "none": lambda x: identity(),
}
#: The scaling names :func:`resolve` takes (besides ``"pet:<max>"``).
SCALING_NAMES = tuple(_NAMED)


def resolve(spec: ScalingSpec, x: Array | None = None) -> Scaling:
    """Turn a scaling spec (Scaling, name such as ``"ct"``/``"mri"``/``"pet"``, or callable) into a Scaling.

    ``"pet"`` is SUV [0, 10]; ``"pet:<max>"`` (e.g. ``"pet:30"``) the same onto [0, max], for tracers or lesions
    above SUV 10, which ``"pet"`` clips."""
    if spec is None:
        return identity()
    if isinstance(spec, Scaling):
        return spec
    if isinstance(spec, str):
        if spec.startswith("pet:"):
            return pet_suv(_pet_max(spec))
        if spec not in _NAMED:
            raise DataError(None, f"unknown scaling '{spec}'",
                            f"use one of {sorted(_NAMED)}, 'pet:<max SUV>' (e.g. 'pet:30') or a Scaling")
        return _NAMED[spec](x)
    return spec(x)


def _pet_max(spec: str) -> float:
    """The upper end of a ``"pet:<max>"`` scaling name (a finite number > 0)."""
    try:
        hi = float(spec[4:])
    except ValueError:
        hi = float("nan")
    if not (np.isfinite(hi) and hi > 0):
        raise DataError(None, f"scaling '{spec}' does not end in a positive number",
                        "write it as 'pet:<max SUV>', e.g. 'pet:30'")
    return hi


def mask_to_model(mask: Array) -> Array:
    """Binary mask {0, 1} -> model space {-1, 1} (what a mask-diffusion model generates)."""
    return mask * 2.0 - 1.0


def model_to_mask(y: Array, threshold: float = 0.0) -> Array:
    """Model-space mask -> binary {0, 1} by thresholding at ``threshold`` (0 = halfway)."""
    out = y > threshold
    return out.to(torch.uint8) if isinstance(out, torch.Tensor) else out.astype(np.uint8)


def check_bit_depth(spec: ScalingSpec, x: Array, where: object = None) -> None:
    """Refuse data in the wrong units for a fixed digital-number scaling: above the top of an n-bit range
    (``dn8``: 255; e.g. 16-bit pixels given to a model trained on 8-bit images, which the scaling would clip to
    white), or reflectance in 0..1 given to a ``reflectance`` model trained on DN (reflectance x 1e4), which it
    would see as black. Other scalings pass."""
    if isinstance(spec, str) and not (spec.startswith("dn") or spec == "reflectance"):
        return
    scaling = spec if isinstance(spec, Scaling) else resolve(spec) if isinstance(spec, str) else None
    if scaling is None or scaling.clip_max is None:
        return
    if not (scaling.kind.startswith("dn") or scaling.kind == "reflectance"):
        return
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    finite = a[np.isfinite(a)] if np.issubdtype(a.dtype, np.floating) else a.ravel()
    top = max(scaling.clip_max)
    big = float(finite.max()) if finite.size else 0.0
    if scaling.kind == "reflectance":
        if top >= 100 and 0 < big <= 1.5:
            raise DataError(where, f"values reach only {big:g}: reflectance in 0..1, but this model was trained on "
                            f"reflectance x {top:g} (digital numbers)",
                            f"multiply the image by {top:g} (Sentinel-2 L2A DN), or use a model trained on 0..1 data")
        return
    if big > top:
        n = scaling.kind[2:]
        raise DataError(where, f"values reach {big:g}, above {top:g}, the top of the {scaling.kind} range this model "
                        f"was trained on: data of more than {n} bits (e.g. 16-bit) given to an {n}-bit model",
                        f"convert the image to {n} bits as the training data were (e.g. a percentile stretch), "
                        "or use a model trained on data of this bit depth (scaling dn16 or reflectance)")
