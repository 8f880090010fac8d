"""The one geometry check: do two arrays sit on the same grid (shape, affine, CRS, transform)?

Used by evaluation (prediction vs reference), the medical pipelines (stacked modalities, image vs
label) and the raster datasets (paired scenes). Every mismatch raises :class:`DataError` naming the
file, what differs and how to fix it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import DataError
from .types import ArrayFile

#: Largest affine difference (mm) still taken as the same voxel grid.
AFFINE_TOL = 1e-3
#: Tolerance on map transforms, in pixels: origins may differ by this fraction of a pixel and pixel
#: sizes / rotations by this relative amount (independent of the size of the map coordinates).
TRANSFORM_TOL = 1e-6
#: Layout axis names that are not spatial (bands, channels incl. NIfTI's 4th+ axes, time, frames).
NON_SPATIAL_AXES = ("band", "channel", "time", "frame", "c", "c2", "c3", "c4")


def _fix(base: str, hints: Mapping[str, str] | None, part: str) -> str:
    extra = (hints or {}).get(part)
    return f"{base}, or {extra}" if extra else base


def compare_grids(path: Any, ref_path: Any, *, shape: tuple[int, ...] | None = None,
                  ref_shape: tuple[int, ...] | None = None, affine: Any = None, ref_affine: Any = None,
                  crs: Any = None, ref_crs: Any = None, transform: Any = None, ref_transform: Any = None,
                  atol: float = AFFINE_TOL, check_crs: bool = True, shape_label: str = "shape",
                  hints: Mapping[str, str] | None = None) -> None:
    """Raise ``DataError`` (naming ``path``) if any of the given geometry parts differs from the reference's.

    Parts left as None on either side are not compared. ``atol=inf`` skips the affine comparison.
    ``shape_label`` names the shape in the message (e.g. ``"spatial shape"``); ``hints`` adds a
    caller-specific way out to the fix of a part (keys ``"shape"``, ``"affine"``, ``"crs"``,
    ``"transform"``), e.g. ``{"crs": "pass `reproject=True`"}``.
    """
    if shape is not None and ref_shape is not None and tuple(shape) != tuple(ref_shape):
        raise DataError(path, f"{shape_label} {tuple(shape)} differs from {tuple(ref_shape)} of {ref_path}",
                        _fix("the two must share one grid: resample this file onto the other (e.g. MONAI "
                             "ResampleToMatchd, gdalwarp or your registration tool)", hints, "shape"))
    if affine is not None and ref_affine is not None and atol != float("inf"):
        diff = float(np.max(np.abs(np.asarray(affine, np.float64) - np.asarray(ref_affine, np.float64))))
        if diff > atol:
            raise DataError(path, f"affine differs from that of {ref_path} by up to {diff:.4g} (tolerance {atol})",
                            _fix("resample or register this file onto the other's grid, or copy the reference "
                                 "header if the difference is only rounding", hints, "affine"))
    if check_crs and crs is not None and ref_crs is not None and crs != ref_crs:
        raise DataError(path, f"CRS {crs} differs from {ref_crs} of {ref_path}",
                        _fix("reproject one file onto the other's CRS (e.g. `gdalwarp -t_srs`)", hints, "crs"))
    if transform is not None and ref_transform is not None:
        a, b = np.asarray(tuple(transform)[:6], np.float64), np.asarray(tuple(ref_transform)[:6], np.float64)
        pixel = max(float(np.abs(b[[0, 1, 3, 4]]).max()), 1e-300)  # (a, b, c, d, e, f): c, f are the origin
        if float(np.abs(a - b).max()) > TRANSFORM_TOL * pixel:
            raise DataError(path, f"transform {tuple(a)} differs from {tuple(b)} of {ref_path}",
                            _fix("resample it onto the other's map grid (gdalwarp -tap / -te)", hints, "transform"))


def check_same_grid(a: ArrayFile, b: ArrayFile, *, skip_leading: int = 0, atol: float = AFFINE_TOL,
                    spatial_only: bool = False) -> None:
    """``a`` must lie on ``b``'s grid. ``skip_leading`` leading axes of ``a`` are ignored (ensemble
    members); ``spatial_only`` compares only the spatial axes (not bands / channels)."""
    sa, sb = a.data.shape[skip_leading:], b.data.shape
    if spatial_only:
        sa, sb = _spatial(a, sa), _spatial(b, sb)
    ga, gb = a.geometry, b.geometry
    compare_grids(a.path, b.path, shape=tuple(sa), ref_shape=tuple(sb),
                  affine=ga.affine, ref_affine=gb.affine, crs=ga.crs, ref_crs=gb.crs,
                  transform=ga.transform, ref_transform=gb.transform, atol=atol)


def _spatial(x: ArrayFile, shape: tuple[int, ...]) -> tuple[int, ...]:
    layout = x.geometry.layout
    if layout and len(layout) == len(shape):
        return tuple(n for n, ax in zip(shape, layout, strict=True) if ax not in NON_SPATIAL_AXES)
    return tuple(shape)
