"""Fully developed SAR speckle, simulated on clean images (SAR-DDPM's training data).

Multiplicative model on **intensity** (power): ``I_noisy = I * g`` with ``g ~ Gamma(L, 1/L)``
(shape L, scale 1/L: mean 1, variance 1/L, so the equivalent number of looks of a homogeneous
region is L). ``L = 1`` is single-look speckle (exponential intensity), the SAR-DDPM default.
Amplitude is the square root of intensity: a clean amplitude ``A`` speckles to ``sqrt(A**2 * g)``
(``domain="amplitude"``). dB images are ``10 log10`` of intensity (``domain="db"``), speckled as
``10 log10(10**(x/10) * g)``, i.e. an additive ``10 log10 g``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..errors import ArgumentError, DataError

Domain = Literal["intensity", "amplitude", "db"]
DOMAINS = ("intensity", "amplitude", "db")


def check_looks(looks: float) -> float:
    """``looks`` as a float, refused unless finite and > 0."""
    if not np.isfinite(looks) or looks <= 0:
        raise ArgumentError("looks", f"must be a finite number > 0, got {looks!r}", "use 1 (single look) or more")
    return float(looks)


def check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ArgumentError("domain", f"unknown domain {domain!r}", f"choose one of {', '.join(DOMAINS)}")
    return domain


def gamma_field(shape: tuple[int, ...], looks: float = 1.0, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Speckle multipliers ``g ~ Gamma(looks, 1/looks)`` (mean 1, ENL ``looks``), float64."""
    looks = check_looks(looks)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return gen.gamma(shape=looks, scale=1.0 / looks, size=shape)


def add_speckle(
    clean: np.ndarray,
    looks: float = 1.0,
    domain: Domain = "intensity",
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Speckle a clean image given in ``domain`` units and return it in the same units (see the module notes).

    Intensity and amplitude must be >= 0 and finite; dB must be finite. Returns float32.
    """
    check_domain(domain)
    x = np.asarray(clean, dtype=np.float64)
    if not np.isfinite(x).all():
        raise DataError(None, "clean image holds NaN or inf", "mask or fill non-finite pixels before speckling")
    if domain != "db" and (x < 0).any():
        raise DataError(None, f"clean {domain} image has negative values (min {x.min():g})",
                        "give linear intensity / amplitude (>= 0), or use domain='db' for dB images")
    g = gamma_field(x.shape, looks, rng)
    if domain == "intensity":
        out = x * g
    elif domain == "amplitude":
        out = np.sqrt(x**2 * g)
    else:
        out = x + 10.0 * np.log10(np.maximum(g, np.finfo(np.float64).tiny))
    return out.astype(np.float32)


def to_intensity(x: np.ndarray, domain: Domain) -> np.ndarray:
    """Linear intensity from an image in ``domain`` units (amplitude squared, dB undone)."""
    check_domain(domain)
    a = np.asarray(x, dtype=np.float64)
    if domain == "intensity":
        return a
    if domain == "amplitude":
        return a**2
    return 10.0 ** (a / 10.0)


def from_intensity(intensity: np.ndarray, domain: Domain, floor_db: float = -50.0) -> np.ndarray:
    """An intensity image in ``domain`` units (dB floored at ``floor_db`` so zeros stay finite)."""
    check_domain(domain)
    a = np.asarray(intensity, dtype=np.float64)
    if domain == "intensity":
        return a
    if domain == "amplitude":
        return np.sqrt(np.maximum(a, 0.0))
    return np.maximum(10.0 * np.log10(np.maximum(a, np.finfo(np.float64).tiny)), floor_db)
