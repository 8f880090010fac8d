"""PET data: low-dose simulation by counts thinning, SUV scaling from the header, and a PET reader.

**Low dose.** A PET image in SUV (or Bq/mL) is turned into counts with an explicit, recorded
``counts_per_unit`` (expected detected counts per voxel per SUV (or Bq/mL) unit at full dose, a
stand-in for the scanner's sensitivity x frame duration x voxel volume).
``mode="thin"`` (default) draws the full-dose counts
``n`` (stochastic rounding of ``x * counts_per_unit``, unbiased) and keeps each count with probability
``f`` (binomial thinning, what list-mode subsampling of a real acquisition does, e.g. the UDPET
low-dose data): low = ``Binomial(n, f) / (counts_per_unit * f)``, mean ``x``, variance
``x (1 - f) / (counts_per_unit f)`` given the full-dose image. ``mode="poisson"`` draws an independent
low-dose acquisition, ``Poisson(x counts_per_unit f) / (counts_per_unit f)``, variance
``x / (counts_per_unit f)``. Both act voxel-wise in the image domain (no sinogram / reconstruction model:
reconstructed noise is spatially correlated, this is white); it is Poisson statistics, never Gaussian.

**SUV.** Body-weight SUV = activity [Bq/mL] x weight [g] / decayed dose [Bq], the dose decayed from
injection to the series start with the radionuclide half-life (DICOM DecayCorrection START).
:func:`read_pet` gives SUV from a DICOM file or series (``extra["suv_factor"]`` of
:mod:`medrs_diff.io.dicom`) or from a NIfTI with a JSON sidecar (``<stem>.json``: ``Units`` ``"SUV"`` or
``"Bq/mL"``, ``BodyWeight`` kg, ``InjectedRadioactivity`` MBq, ``RadionuclideHalfLife`` s and
``DecayTime`` s from injection to scan start) or explicit arguments. A missing weight / dose stops with
one error unless ``units="bqml"`` asks for activity concentration.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import ArgumentError, DataError

PathLike = str | os.PathLike

#: The dose fractions of the BC-DPM study design (and the UDPET challenge).
DOSE_FRACTIONS: tuple[float, ...] = (1 / 4, 1 / 10, 1 / 20, 1 / 50, 1 / 100)
#: Default counts per voxel per SUV unit at full dose (recorded with every simulated pair).
COUNTS_PER_UNIT = 50.0
ThinMode = Literal["thin", "poisson"]


def check_dose_fraction(f: float, where: str = "dose_fraction") -> float:
    if not isinstance(f, int | float) or not np.isfinite(f) or not 0.0 < f <= 1.0:
        raise ArgumentError(where, f"must lie in (0, 1], got {f!r}", "use e.g. 0.05 for 1/20 of the full dose")
    return float(f)


def simulate_low_dose(
    image: np.ndarray,
    dose_fraction: float,
    counts_per_unit: float = COUNTS_PER_UNIT,
    rng: np.random.Generator | int | None = None,
    mode: ThinMode = "thin",
) -> np.ndarray:
    """Low-dose version of a full-dose image (SUV or any activity unit) by counts thinning; see the module notes.

    Negative voxels (reconstruction undershoot) count as 0 activity. Returns float32 in the input's units.
    """
    f = check_dose_fraction(dose_fraction)
    if not np.isfinite(counts_per_unit) or counts_per_unit <= 0:
        raise ArgumentError("counts_per_unit", f"must be a positive number, got {counts_per_unit!r}",
                            "use the expected counts per voxel per SUV at full dose, e.g. 50")
    if mode not in ("thin", "poisson"):
        raise ArgumentError("mode", f"unknown thinning mode {mode!r}", "use 'thin' (binomial) or 'poisson'")
    x = np.asarray(image, dtype=np.float64)
    if not np.isfinite(x).all():
        raise DataError("image", f"has {int((~np.isfinite(x)).sum())} non-finite voxels",
                        "fill or mask NaN / Inf before simulating a low dose")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    lam = np.clip(x, 0.0, None) * counts_per_unit
    if mode == "poisson":
        low = gen.poisson(lam * f)
    else:
        base = np.floor(lam)
        n = base + (gen.random(lam.shape) < (lam - base))  # unbiased stochastic rounding
        low = gen.binomial(n.astype(np.int64), f)
    return (low / (counts_per_unit * f)).astype(np.float32)


# -- SUV ----------------------------------------------------------------------------------------------
def suv_factor(weight_kg: float, injected_dose_bq: float, half_life_s: float, decay_s: float) -> float:
    """mL/g factor that turns Bq/mL into body-weight SUV: weight [g] / (dose x 2^(-decay / half-life))."""
    for name, v in (("weight_kg", weight_kg), ("injected_dose_bq", injected_dose_bq), ("half_life_s", half_life_s)):
        if v is None or not np.isfinite(v) or v <= 0:
            raise ArgumentError(name, f"must be a positive number, got {v!r}", "give the value from the scan record")
    if decay_s is None or not np.isfinite(decay_s) or decay_s < 0:
        raise ArgumentError("decay_s", f"must be >= 0 seconds, got {decay_s!r}",
                            "give the time from injection to the series start")
    return weight_kg * 1000.0 / (injected_dose_bq * 2.0 ** (-decay_s / half_life_s))


@dataclass
class PETImage:
    """A PET array (DICOM (z, y, x) / NIfTI (x, y, z) order as read) in ``units`` with where it came from."""

    path: Path
    data: np.ndarray
    units: str  # "suv" or "bqml"
    suv_factor: float | None
    geometry: Any
    info: dict[str, Any] = field(default_factory=dict)


def _sidecar(path: Path) -> dict[str, Any]:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    side = path.with_name(name + ".json")
    if not side.is_file():
        return {}
    try:
        return json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(side, f"PET sidecar is not valid JSON ({exc})", "fix or remove the sidecar") from exc


def _source_units(value: Any, where: Path) -> str | None:
    if value is None:
        return None
    v = str(value).strip().lower().replace(" ", "")
    if v in ("suv", "suvbw", "g/ml"):
        return "suv"
    if v in ("bq/ml", "bqml"):
        return "bqml"
    raise DataError(where, f"PET units {value!r} are not supported", "convert to Bq/mL or body-weight SUV")


def _nifti_factor(side: Mapping[str, Any], explicit: Mapping[str, Any]) -> tuple[float | None, dict[str, Any]]:
    w = explicit.get("weight_kg", side.get("BodyWeight"))
    dose = explicit.get("injected_dose_bq")
    if dose is None and side.get("InjectedRadioactivity") is not None:
        dose = float(side["InjectedRadioactivity"]) * 1e6  # BIDS: MBq
    half = explicit.get("half_life_s", side.get("RadionuclideHalfLife"))
    decay = explicit.get("decay_s", side.get("DecayTime"))  # never assumed 0: stated or refused
    info = {"weight_kg": w, "injected_dose_bq": dose, "half_life_s": half, "decay_s": decay}
    if w is None or dose is None or half is None or decay is None:
        return None, info
    return suv_factor(float(w), float(dose), float(half), float(decay)), info


def read_pet(
    path: PathLike,
    units: Literal["suv", "bqml"] = "suv",
    *,
    source_units: str | None = None,
    suv_factor_value: float | None = None,
    weight_kg: float | None = None,
    injected_dose_bq: float | None = None,
    half_life_s: float | None = None,
    decay_s: float | None = None,
) -> PETImage:
    """Read a PET image (DICOM file, DICOM series folder, or NIfTI) in ``units`` (body-weight SUV or Bq/mL).

    A DICOM whose Modality is not PT and a series with mixed slice spacing are refused. SUV needs the
    weight and decayed dose (header, sidecar or the explicit arguments; ``suv_factor_value`` overrides
    them); without them the read stops with one error naming the missing values, unless ``units="bqml"``.
    ``source_units`` says what a NIfTI without a sidecar ``Units`` holds (``"suv"`` or ``"bqml"``).
    """
    from ..io.dicom import read_dicom, read_dicom_series
    from ..io.nifti import read_nifti

    if units not in ("suv", "bqml"):
        raise ArgumentError("units", f"unknown PET units {units!r}", "use 'suv' or 'bqml'")
    p = Path(path)
    explicit = {k: v for k, v in (("weight_kg", weight_kg), ("injected_dose_bq", injected_dose_bq),
                                  ("half_life_s", half_life_s), ("decay_s", decay_s)) if v is not None}
    name = p.name.lower()
    if p.is_dir() or name.endswith(".dcm"):
        af = read_dicom_series(p) if p.is_dir() else read_dicom(p)
        modality = af.geometry.extra.get("modality")
        if modality != "PT":
            raise DataError(p, f"is a {modality or 'unknown'} DICOM, not PET (Modality must be PT)",
                            "pass a PET series (Modality PT)")
        info = dict(af.geometry.extra.get("pet") or {})
        have = _source_units(info.get("units"), p) if info.get("units") in ("BQML",) else None
        if have is None:
            raise DataError(p, f"PET Units {info.get('units')!r} are not Bq/mL (BQML)",
                            "convert the series to BQML (e.g. with the vendor software)")
        factor = af.geometry.extra.get("suv_factor")
        if explicit:
            fields = {k: info.get(k) for k in ("weight_kg", "injected_dose_bq", "half_life_s", "decay_s")}
            fields["weight_kg"] = info.get("patient_weight_kg")
            fields.update(explicit)
            info.update(fields)
            factor = suv_factor(**fields) if all(v is not None for v in fields.values()) else None
        info.setdefault("weight_kg", info.get("patient_weight_kg"))
    elif name.endswith((".nii", ".nii.gz")):
        af = read_nifti(p)
        side = _sidecar(p)
        have = _source_units(side.get("Units", source_units), p)
        if have is None:
            raise DataError(p, "the units of this PET NIfTI are unknown (no sidecar 'Units')",
                            f"add {p.name.split('.')[0]}.json with \"Units\": \"SUV\" or \"Bq/mL\", "
                            "or pass source_units='suv' / 'bqml'")
        factor, info = _nifti_factor(side, explicit) if have == "bqml" else (None, {})
    else:
        raise DataError(p, "is not a PET file this reader knows", "pass a .dcm file, a DICOM series folder or a NIfTI")
    if suv_factor_value is not None:
        factor = float(suv_factor_value)
    data = np.asarray(af.data, dtype=np.float32)
    info["source_units"] = have
    if have == units:
        out = data
    elif units == "bqml":  # have == "suv"
        if factor is None:
            raise DataError(p, "holds SUV, and Bq/mL needs the weight and dose it was computed with",
                            "read it in SUV (units='suv') or pass weight_kg / injected_dose_bq / half_life_s")
        out = data / np.float32(factor)
    else:
        if factor is None:
            missing = [k for k in ("weight_kg", "injected_dose_bq", "half_life_s", "decay_s")
                       if info.get(k) is None or (k != "decay_s" and not info.get(k))]
            raise DataError(p, f"SUV needs body weight and injected dose, but {', '.join(missing) or 'the decay time'} "
                            "is missing from the header", "pass weight_kg= / injected_dose_bq= (and half_life_s=, "
                            "decay_s=), or units='bqml' to work in Bq/mL")
        out = data * np.float32(factor)
    if not np.isfinite(out).all():
        raise DataError(p, f"has {int((~np.isfinite(out)).sum())} non-finite voxels", "fill or crop them first")
    return PETImage(p, out, units, factor, af.geometry, info)


def body_mask(image: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """Body outline of a PET image (SUV): voxels above ``threshold`` x the image's 99th percentile, holes
    filled and the largest connected component kept (scipy.ndimage)."""
    from scipy import ndimage

    x = np.asarray(image, dtype=np.float64)
    pos = x[x > 0]
    if pos.size == 0:
        return np.zeros(x.shape, dtype=bool)
    m = x > threshold * np.percentile(pos, 99)
    m = np.pad(m, 2, mode="edge")  # a body cut by the volume's edge stays whole through the closing
    m = ndimage.binary_closing(m, iterations=2)[(slice(2, -2),) * m.ndim]
    lab, n = ndimage.label(m)
    if n == 0:
        return m
    sizes = ndimage.sum(m, lab, range(1, n + 1))
    m = lab == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(m)
