"""Paired image-to-image translation data (DDBM): Sentinel-1 -> Sentinel-2 and cloudy -> clear S2, units and checks.

Units are owned here, as in :mod:`medrs_diff.data.cloud`: S1 is sigma0 in **dB** (VV, VH; linear power
refused), S2 is reflectance (0..1) read from DN = reflectance x 1e4 (reflectance stored in place of DN
refused). Every reader returns raw units; the data module maps them to model space with the named
scalings it records (``s1_db``, ``s1_db_s2_dn``, ``reflectance``), so inference maps files exactly so.

- :func:`read_bigearthnet_pair`: one BigEarthNet S1 patch folder (``*_VV.tif``, ``*_VH.tif``,
  ``*_labels_metadata.json``) and its S2 folder (one GeoTIFF per band). The pair must agree: the S1
  metadata's ``corresponding_s2_patch`` names the S2 folder (when present), and every 10 m band shares the
  S1 grid (size, CRS, transform). Only 10 m bands (B02, B03, B04, B08): no resampling.
- :func:`bigearthnet_pairs`: every pair under a ``bigearthnet_s1_s2``-style root, paired by the patch suffix.
- :func:`sar_optical_phantom`: a synthetic S1 / S2 scene whose land-cover classes share one fixed S1 and S2
  signature across scenes, so S1 -> S2 is learnable from a few scenes (the CI phantom).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io.geometry import compare_grids
from ..io.geotiff import read_geotiff
from .cloud import S1_POLS, check_reflectance, check_s1_db
from .errors import DataError

#: Sentinel-2 bands at 10 m (the ones translation reads: no resampling).
S2_10M_BANDS = ("B02", "B03", "B04", "B08")
#: RGB + NIR in the order the recipes use (B04, B03, B02 is the RGB composite).
RGBN = ("B04", "B03", "B02", "B08")

PathLike = str | os.PathLike


def check_s2_dn(dn: np.ndarray, where: object) -> np.ndarray:
    """S2 DN (reflectance x 1e4) as float32 reflectance; ``DataError`` for reflectance stored in place of DN
    (a float band whose values never exceed 2) and for NaN / inf."""
    a = np.asarray(dn, dtype=np.float32)
    if not np.isfinite(a).all():
        raise DataError(where, "S2 holds NaN or inf", "fill nodata first")
    if np.issubdtype(np.asarray(dn).dtype, np.floating) and a.size and float(np.abs(a).max()) <= 2.0:
        raise DataError(where, f"S2 reaches only {float(np.abs(a).max()):.3g}: reflectance, not DN (x 1e4)",
                        "give DN (reflectance x 1e4, as BigEarthNet / SEN12MS-CR store it)")
    return check_reflectance(a / 1e4, where)


def check_10m_bands(bands: Sequence[str]) -> list[str]:
    """``bands`` if each is a 10 m S2 band, else ``DataError`` naming the others."""
    bad = [b for b in bands if b not in S2_10M_BANDS]
    if bad or not bands:
        raise DataError("bands", f"{list(bad) or 'no band'} not 10 m Sentinel-2 band(s)",
                        f"choose among {list(S2_10M_BANDS)} (S1 -> S2 translation works at 10 m, no resampling)")
    return list(bands)


def read_bigearthnet_pair(s1_dir: PathLike, s2_dir: PathLike, bands: Sequence[str] = RGBN
                          ) -> tuple[np.ndarray, np.ndarray, dict]:
    """(S1 dB (2, H, W), S2 reflectance (C, H, W), grid {crs, transform}) of one BigEarthNet S1 / S2 pair."""
    s1_dir, s2_dir = Path(s1_dir), Path(s2_dir)
    bands = check_10m_bands(bands)
    meta = s1_dir / f"{s1_dir.name}_labels_metadata.json"
    if meta.is_file():
        partner = json.loads(meta.read_text()).get("corresponding_s2_patch")
        if partner is not None and partner != s2_dir.name:
            raise DataError(s1_dir, f"is the S1 patch of {partner}, not of {s2_dir.name}",
                            "pair each S1 folder with the S2 folder its metadata names")
    pols = []
    for p in S1_POLS:
        f = s1_dir / f"{s1_dir.name}_{p}.tif"
        if not f.is_file():
            raise DataError(f, f"polarisation {p} is missing", "give both VV and VH of the S1 patch")
        pols.append((f, read_geotiff(f, expected_bands=1)))
    ref_path, ref = pols[0]
    g = ref.geometry
    for f, r in pols[1:]:
        compare_grids(f, ref_path, shape=r.data.shape[1:], ref_shape=ref.data.shape[1:], crs=r.geometry.crs,
                      ref_crs=g.crs, transform=r.geometry.transform, ref_transform=g.transform)
    s1 = check_s1_db(np.concatenate([r.data for _, r in pols]), s1_dir)
    planes = []
    for b in bands:
        f = s2_dir / f"{s2_dir.name}_{b}.tif"
        if not f.is_file():
            raise DataError(f, f"band {b} is missing", "give every requested band, or drop it from `bands`")
        r = read_geotiff(f, expected_bands=1)
        compare_grids(f, ref_path, shape=r.data.shape[1:], ref_shape=ref.data.shape[1:], crs=r.geometry.crs,
                      ref_crs=g.crs, transform=r.geometry.transform, ref_transform=g.transform,
                      hints={"shape": "S1 and the 10 m S2 bands of a pair must share one grid"})
        planes.append(check_s2_dn(r.data[0], f))
    return s1, np.stack(planes), {"crs": g.crs, "transform": g.transform}


def bigearthnet_pairs(root: PathLike, bands: Sequence[str] = RGBN) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Every (S2 patch name, S1 dB, S2 reflectance) under ``root`` (``BigEarthNet-S1-Example`` and
    ``BigEarthNet-S2-Example`` folders, or the two kinds of patch folders directly), sorted by S2 name; S1
    and S2 folders are paired by the patch suffix (the last two ``_`` fields, e.g. ``87_48``)."""
    root = Path(root)
    s1_root = root / "BigEarthNet-S1-Example" if (root / "BigEarthNet-S1-Example").is_dir() else root
    s2_root = root / "BigEarthNet-S2-Example" if (root / "BigEarthNet-S2-Example").is_dir() else root
    s2_dirs = sorted(p for p in s2_root.glob("S2*") if p.is_dir())
    if not s2_dirs:
        raise DataError(root, "holds no BigEarthNet S2 patch folders (S2*)", "point it at bigearthnet_s1_s2/")
    s1_dirs = {"_".join(p.name.split("_")[-2:]): p for p in s1_root.glob("S1*") if p.is_dir()}
    out = []
    for d in s2_dirs:
        key = "_".join(d.name.split("_")[-2:])
        if key not in s1_dirs:
            raise DataError(d, f"has no S1 patch folder ending in _{key}", "add its BigEarthNet-S1 folder")
        s1, s2, _ = read_bigearthnet_pair(s1_dirs[key], d, bands)
        out.append((d.name, s1, s2))
    return out


#: the phantom's land-cover classes: (VV dB, VH dB) and a reflectance spectrum over B02, B03, B04, B08
_CLASSES = {
    "water": ((-22.0, -29.0), (0.06, 0.05, 0.03, 0.02)),
    "crop": ((-12.0, -18.0), (0.04, 0.08, 0.05, 0.40)),
    "forest": ((-8.0, -14.0), (0.02, 0.04, 0.02, 0.28)),
    "urban": ((-4.0, -11.0), (0.12, 0.13, 0.14, 0.20)),
    "bare": ((-15.0, -23.0), (0.14, 0.18, 0.24, 0.30)),
}


def sar_optical_phantom(size: int, seed: int, bands: Sequence[str] = RGBN, n_regions: int = 8,
                        speckle_db: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """(S1 dB (2, size, size), S2 reflectance (C, size, size)) of a synthetic scene: Voronoi regions, each one of
    five land-cover classes with a fixed S1 and S2 signature (the same in every scene), S1 with
    ``speckle_db`` Gaussian dB noise, S2 with 2 % texture. Float32, deterministic in ``seed``."""
    bands = check_10m_bands(bands)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(0, size, (n_regions, 2))
    region = np.argmin((yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2, axis=-1)
    names = list(_CLASSES)
    cls = rng.integers(len(names), size=n_regions)[region]
    sar_table = np.array([_CLASSES[n][0] for n in names])  # (K, 2)
    idx = [S2_10M_BANDS.index(b) for b in bands]
    opt_table = np.array([_CLASSES[n][1] for n in names])[:, idx]  # (K, C)
    s1 = np.moveaxis(sar_table[cls], -1, 0) + rng.normal(0.0, speckle_db, (2, size, size))
    s2 = np.moveaxis(opt_table[cls], -1, 0) * rng.normal(1.0, 0.02, (1, size, size))
    return s1.astype(np.float32), np.clip(s2, 0.0, 1.0).astype(np.float32)


__all__ = ["RGBN", "S2_10M_BANDS", "bigearthnet_pairs", "check_10m_bands", "check_s2_dn", "read_bigearthnet_pair",
           "sar_optical_phantom"]
