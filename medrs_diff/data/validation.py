"""A first pass over a dataset's files before training: every voxel finite, every label a declared class.

Training never repairs data silently: a NaN voxel would make the loss NaN, a label ``2`` or ``0.37``
would become a wrong diffusion target. The scan reads each file once and keeps a small summary
(:class:`FileStats`), cached by path, modification time and size, so a second ``setup`` of the same
data is cheap and an edited file is scanned again.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArgumentError, DataError

PathLike = str | os.PathLike

#: Distinct values kept per file; a file with more is not a label map.
MAX_VALUES = 256


@dataclass(frozen=True)
class FileStats:
    """What the scan learnt about one file."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    values: tuple[float, ...] | None = None  # sorted distinct values; None: not collected or > MAX_VALUES
    many_values: bool = False  # more than MAX_VALUES distinct values

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf

    def describe_nonfinite(self) -> str:
        parts = [f"{n} {name}" for n, name in ((self.nan, "NaN"), (self.posinf, "+inf"), (self.neginf, "-inf")) if n]
        return ", ".join(parts)


_CACHE: dict[tuple, FileStats] = {}
_LOCK = threading.Lock()


def _cache_key(kind: str, path: PathLike, *extra: Any) -> tuple:
    p = Path(path).resolve()
    st = p.stat()
    return (kind, str(p), st.st_mtime_ns, st.st_size, *extra)


def _cached(key: tuple, scan: Any) -> FileStats:
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    stats = scan()
    with _LOCK:
        if len(_CACHE) > 200_000:
            _CACHE.clear()
        _CACHE[key] = stats
    return stats


def clear_cache() -> None:
    """Forget every cached scan (tests; files changed within the clock's resolution)."""
    with _LOCK:
        _CACHE.clear()


def _count_nonfinite(x: np.ndarray, exclude: float | None = None) -> tuple[int, int, int]:
    """(NaN, +inf, -inf) counts; ``exclude`` (a nodata value, NaN included) is not counted."""
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.complexfloating):
        return 0, 0, 0
    bad = ~np.isfinite(x)
    if not bad.any():
        return 0, 0, 0
    v = x[bad]
    nan = int(np.isnan(v).sum())
    pos = int((v == np.inf).sum())
    neg = int((v == -np.inf).sum())
    if exclude is not None:
        if np.isnan(exclude):
            nan = 0
        elif exclude == np.inf:
            pos = 0
        elif exclude == -np.inf:
            neg = 0
    return nan, pos, neg


def _distinct(x: np.ndarray) -> tuple[tuple[float, ...] | None, bool]:
    """Sorted distinct finite values (``None``, True when there are more than MAX_VALUES)."""
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.unsignedinteger) and x.dtype.itemsize <= 2:
        counts = np.bincount(x.ravel())
        vals = np.flatnonzero(counts)
    else:
        flat = x.ravel()
        if np.issubdtype(flat.dtype, np.floating):
            flat = flat[np.isfinite(flat)]
        vals = np.unique(flat)
    if vals.size > MAX_VALUES:
        return None, True
    return tuple(float(v) for v in vals), False


def _nifti_data(path: PathLike) -> tuple[np.ndarray, tuple[int, ...]]:
    from ..io.nifti import load_nifti_image

    img = load_nifti_image(path)
    try:
        data = np.asanyarray(img.dataobj)  # stored type, after scl_slope / scl_inter
    except Exception as exc:
        raise DataError(path, f"voxel data cannot be read ({type(exc).__name__}: {exc})",
                        "the file is truncated or corrupt: re-export or re-download it") from exc
    return data, tuple(int(s) for s in img.shape)


def scan_nifti(path: PathLike, values: bool = False) -> FileStats:
    """Count the non-finite voxels of a NIfTI file and (``values``) collect its distinct values. Cached."""

    def scan() -> FileStats:
        data, shape = _nifti_data(path)
        nan, pos, neg = _count_nonfinite(data)
        vals, many = _distinct(data) if values else (None, False)
        return FileStats(str(path), shape, str(data.dtype), nan, pos, neg, vals, many)

    return _cached(_cache_key("nifti", path, values), scan)


def scan_geotiff(path: PathLike) -> FileStats:
    """Count the non-finite pixels of a GeoTIFF that are not its nodata value (read block by block). Cached."""
    from ..io.geotiff import open_geotiff

    def scan() -> FileStats:
        nan = pos = neg = 0
        with open_geotiff(path) as src:
            shape = (src.count, src.height, src.width)
            dtype = src.dtypes[0]
            if np.issubdtype(np.dtype(dtype), np.floating):
                for _, window in src.block_windows(1):
                    a, b, c = _count_nonfinite(src.read(window=window), src.nodata)
                    nan, pos, neg = nan + a, pos + b, neg + c
        return FileStats(str(path), shape, str(dtype), nan, pos, neg)

    return _cached(_cache_key("geotiff", path), scan)


# ------------------------------------------------------------------------------------------ checks
NONFINITE_FIX = {
    "voxel": "replace them in the file (e.g. numpy.nan_to_num) or remove this case; training never fills them in "
             "silently",
    "pixel": "write them as the file's nodata value (or give the file a nodata value), or remove this scene; "
             "training never fills them in silently",
}


def check_finite(stats: FileStats, what: str = "image", unit: str = "voxel") -> None:
    """``DataError`` naming the file and the counts if it holds NaN / inf values."""
    if stats.nonfinite:
        raise DataError(stats.path, f"{what} holds {stats.nonfinite} non-finite {unit}(s) "
                        f"({stats.describe_nonfinite()})", NONFINITE_FIX.get(unit, NONFINITE_FIX["voxel"]))


@dataclass(frozen=True)
class LabelSpec:
    """The label values a dataset declares: binary ``{0, 1}`` (optionally stored as ``{0, 255}``), ``K``
    classes ``{0, ..., K-1}``, or an explicit set of values."""

    values: tuple[float, ...] = (0.0, 1.0)
    mask_255: bool = False  # binary masks may also be stored as {0, 255} (read as {0, 1})
    origin: str = "binary masks: the default"

    @property
    def binary(self) -> bool:
        return self.values == (0.0, 1.0)

    def accepted(self) -> list[set[float]]:
        """The value sets a file may draw from (one of them, not a mix)."""
        out = [set(self.values)]
        if self.mask_255:
            out.append({0.0, 255.0})
        return out


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _fmt_set(values: Iterable[float], limit: int = 12) -> str:
    vals = sorted(values)
    text = ", ".join(_fmt(v) for v in vals[:limit])
    return "{" + text + (", ..." if len(vals) > limit else "") + "}"


def label_spec(label_values: Sequence[float] | None = None, num_classes: int | None = None,
               mask_255: bool = False, where: str = "labels") -> LabelSpec:
    """Resolve the data module arguments into a :class:`LabelSpec` (``ArgumentError`` when inconsistent)."""
    if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) != num_classes
                                    or num_classes < 2):
        raise ArgumentError(where, f"num_classes must be an integer >= 2 (background counts), got {num_classes}",
                            "set num_classes to the number of classes including background, e.g. 2 for a mask")
    if label_values is not None:
        vals = [float(v) for v in label_values]
        if len(vals) < 2 or len(set(vals)) != len(vals) or not all(math.isfinite(v) for v in vals):
            raise ArgumentError(where, f"label_values must list at least 2 distinct finite values, got "
                                f"{list(label_values)}", "list every class value once, background included, "
                                "e.g. label_values: [0, 1, 2, 4]")
        if num_classes is not None and num_classes != len(vals):
            raise ArgumentError(where, f"num_classes={num_classes} disagrees with the {len(vals)} label_values "
                                f"{_fmt_set(vals)}", "give one of the two, or make them agree")
        spec_values, origin = tuple(sorted(vals)), "label_values"
    elif num_classes is not None:
        spec_values, origin = tuple(float(v) for v in range(int(num_classes))), f"num_classes={num_classes}"
    else:
        spec_values, origin = (0.0, 1.0), "binary masks: the default"
    spec = LabelSpec(spec_values, bool(mask_255), origin)
    if spec.mask_255 and not spec.binary:
        raise ArgumentError(where, f"mask_255 is for binary masks stored as {{0, 255}}, but the labels declare "
                            f"classes {_fmt_set(spec_values)} ({origin})",
                            "drop mask_255 (it only applies to {0, 1} masks)")
    return spec


def check_label_values(stats: FileStats, spec: LabelSpec) -> None:
    """``DataError`` unless every value of a scanned label file is one of the declared classes."""
    check_finite(stats, "label map")
    if stats.many_values or stats.values is None:
        raise DataError(stats.path, f"label map holds more than {MAX_VALUES} distinct values: it is not a label "
                        f"map of the declared classes {_fmt_set(spec.values)}",
                        "pass the mask / label file (class indices), not an image or a probability map")
    found = set(stats.values)
    accepted = spec.accepted()
    if any(found <= ok for ok in accepted):
        return
    bad = sorted(found - set().union(*accepted))
    if not bad:  # each value is allowed, but the file mixes {0, 1} with {0, 255}
        raise DataError(stats.path, f"label map mixes the values {_fmt_set(found)}: a mask is either {{0, 1}} or "
                        "{0, 255}", "re-save it with values {0, 1}")
    if any(not float(v).is_integer() for v in bad):
        fix = ("labels must be class indices: threshold the file (e.g. mask > 0.5) or re-export it with "
               "nearest-neighbour resampling (linear interpolation makes fractions)")
    elif spec.binary and found <= {0.0, 255.0}:
        fix = "it is a 0/255 mask: set `mask_255: true` to read 255 as foreground, or re-save it with values {0, 1}"
    elif spec.binary:
        fix = ("re-save it as a {0, 1} mask if it is binary, or declare its classes with `label_values: [...]` "
               "or `num_classes: K` (the method must support them)")
    else:
        fix = "declare every class with `label_values` / `num_classes`, or fix the file"
    raise DataError(stats.path, f"label map holds value(s) {_fmt_set(bad)} outside the declared classes "
                    f"{_fmt_set(spec.values)} ({spec.origin}; values found: {_fmt_set(found)})", fix)


def validate_segmentation_files(records: Sequence[dict[str, Any]], image_keys: Sequence[str],
                                label_keys: Sequence[str], spec: LabelSpec) -> None:
    """Scan every image (finite voxels) and label (finite, declared values) of NIfTI records; first bad file
    raises ``DataError``."""
    for rec in records:
        for key in image_keys:
            check_finite(scan_nifti(rec[key]), "image")
        for key in label_keys:
            check_label_values(scan_nifti(rec[key], values=True), spec)


def validate_geotiff_files(paths: Iterable[PathLike], what: str = "raster") -> None:
    """Every pixel of every GeoTIFF is finite or its nodata value; first bad file raises ``DataError``."""
    for path in paths:
        check_finite(scan_geotiff(path), what, unit="pixel")
