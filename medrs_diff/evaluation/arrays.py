"""Reading the files of a case and checking them: readable, finite, on one grid, in the task's layout.

Arrays keep the layout of :mod:`medrs_diff.io` (NIfTI: stored voxel order x, y, z[, c]; GeoTIFF and
2-D images: (band, y, x); ``.npy``: as stored). Every problem raises :class:`~medrs_diff.errors.DataError`
naming the file. Grids are compared with :func:`medrs_diff.io.check_same_grid` (NIfTI affines within
``AFFINE_TOL``, GeoTIFF CRS and transform, shapes always).

Formats without geometry (``.npy``, PNG / JPEG, plain TIFF) carry no orientation, so only their shape
can be compared: such a file paired with one that has geometry (a ``.npy`` prediction against a NIfTI
reference) is refused unless ``assume_same_grid`` says it holds the reference's stored array order,
and label maps of two geometry-less files are checked not to match far better once transposed or
flipped (:func:`check_orientation`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .. import io
from ..errors import DataError, MedrsError
from ..io.geometry import compare_grids
from .pairing import Case, MissingFileError

__all__ = ["AFFINE_TOL", "band_first", "check_geometry_kinds", "check_orientation", "check_pair", "has_geometry",
           "iter_cases", "label_map", "load", "mask_on_grid", "orientation_variants", "require_finite", "scoring"]

#: Largest NIfTI affine difference (mm) still taken as the same voxel grid in evaluation.
AFFINE_TOL = 1e-4
#: Axis names of :attr:`medrs_diff.io.Geometry.layout` that hold bands / channels, not space.
BAND_AXES = ("band", "channel", "c")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def load(path: Path, role: str = "input") -> io.ArrayFile:
    """Read ``path`` with the :mod:`medrs_diff.io` registry; one-line ``DataError`` for empty or bad files."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise MissingFileError(path, f"{role} cannot be opened ({err.strerror})", "check the path") from None
    if size == 0:
        raise DataError(path, f"{role} file is empty (0 bytes)",
                        "re-create it: an interrupted or failed run may have left it")
    try:
        fmt = io.format_for(path)
        # readers that convert by default (NIfTI -> float32) are asked for the stored type: labels stay integers
        kwargs = {"dtype": None} if "dtype" in inspect.signature(fmt.reader).parameters else {}
        f = fmt.reader(path, **kwargs)
    except MedrsError:
        raise
    except Exception as err:  # nibabel / rasterio / numpy errors on a truncated or mislabelled file
        raise DataError(path, f"{role} cannot be read ({type(err).__name__}: {_first_line(err)})",
                        "check that the file is complete and of the type its suffix says") from err
    data = np.asarray(f.data)
    if data.size == 0:
        raise DataError(path, f"{role} holds no values (shape {data.shape})", "write a non-empty array")
    if data.dtype.kind not in "biuf":
        raise DataError(path, f"{role} holds {data.dtype} values", "store real numbers (integers or floats)")
    f.data = data
    return f


def require_finite(x: io.ArrayFile, role: str, *, allow_nan: bool = False) -> None:
    """Raise naming the file when ``x`` holds NaN or infinite values (NaN allowed with ``allow_nan``)."""
    data = x.data
    if data.dtype.kind != "f":
        return
    nan = np.isnan(data)
    n_nan, n_inf = int(nan.sum()), int(np.isinf(data).sum())
    if allow_nan and n_nan == data.size:
        raise DataError(x.path, f"{role} holds only NaN values", "check the run that wrote it")
    if n_inf or (n_nan and not allow_nan):
        what = " and ".join(s for s in (f"{n_nan} NaN" if n_nan and not allow_nan else "",
                                        f"{n_inf} infinite" if n_inf else "") if s)
        raise DataError(x.path, f"{role} holds {what} value(s) among {data.size}",
                        "fix the run that wrote it or fill those pixels (NaN means 'no data' only for the "
                        "forecast task)")


def band_first(x: io.ArrayFile) -> bool:
    """True when the first axis holds bands / channels (GeoTIFF, 2-D images, cubes read as (band, y, x))."""
    layout = x.geometry.layout
    if layout and len(layout) == x.data.ndim:
        return layout[0] in BAND_AXES
    return x.kind == "geotiff"


def label_map(x: io.ArrayFile) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Label / image array without singleton axes (the band axis of rasters, trailing NIfTI axes) + spacing."""
    data, spacing = x.data, x.geometry.spacing
    if band_first(x):
        if data.shape[0] != 1:
            raise DataError(x.path, f"has {data.shape[0]} bands; a label / image map needs one band",
                            "write one band per file")
        return data[0], spacing
    keep = [i for i, n in enumerate(data.shape) if n > 1 or i < 2]
    data = data.reshape([data.shape[i] for i in keep])
    if spacing is not None:
        spacing = tuple(spacing[i] for i in keep if i < len(spacing))
    return data, spacing


def _mismatch(role: str, err: DataError) -> DataError:
    out = DataError(None, f"geometry mismatch: {role} {err.where}: {err.problem}", err.fix)
    out.path = err.path
    return out


def has_geometry(x: io.ArrayFile) -> bool:
    """True when the file places its array in the world (a NIfTI affine, a GeoTIFF CRS or transform)."""
    g = x.geometry
    return g.affine is not None or g.crs is not None or g.transform is not None


def _describe(x: io.ArrayFile) -> str:
    g = x.geometry
    what = f"{'an' if x.kind[:1] in 'aeiou' else 'a'} {x.kind} file"
    if g.affine is not None:
        return f"{what} with an affine"
    if g.crs is not None or g.transform is not None:
        return f"{what} with a map transform"
    return f"{what} without geometry"


def check_geometry_kinds(x: io.ArrayFile, ref: io.ArrayFile, role: str, *, assume_same_grid: bool = False) -> None:
    """Refuse pairing a file without geometry (``.npy``, PNG, plain TIFF) with one that has it.

    Only the shape of such a pair can be compared: a transposed or flipped square array would pass.
    ``assume_same_grid`` accepts the pair (the caller vouches that ``x`` holds ``ref``'s stored array
    order: NIfTI x, y, z as nibabel's ``dataobj``; rasters (band, y, x) with row 0 at the top).
    """
    if assume_same_grid or has_geometry(x) == has_geometry(ref):
        return
    order = ("x, y, z as nibabel's dataobj gives them" if ref.geometry.affine is not None or x.geometry.affine
             is not None else "(band, y, x), row 0 at the top")
    raise DataError(x.path, f"{role} is {_describe(x)} but the reference {ref.path} is {_describe(ref)}, so only "
                    f"the shape can be compared (a transposed or flipped array would pass)",
                    f"write the {role} in the reference's format with its header (as `medrs-diff infer` does), or, "
                    f"if it holds the reference's stored array order ({order}), pass --assume-same-grid "
                    f"(assume_same_grid=True)")


def check_pair(pred: io.ArrayFile, ref: io.ArrayFile, skip_leading: int = 0, *,
               assume_same_grid: bool = False) -> None:
    """The prediction must lie on the reference grid (``skip_leading`` leading axes of ``pred`` ignored).

    A prediction without geometry against a reference with it (or the other way round) is refused
    unless ``assume_same_grid`` (:func:`check_geometry_kinds`).
    """
    try:
        io.check_same_grid(pred, ref, skip_leading=skip_leading, atol=AFFINE_TOL)
    except DataError as err:
        raise _mismatch("prediction", err) from None
    check_geometry_kinds(pred, ref, "prediction", assume_same_grid=assume_same_grid)


def mask_on_grid(mask: io.ArrayFile, ref: io.ArrayFile, grid: Iterable[int], *,
                 assume_same_grid: bool = False) -> np.ndarray:
    """The mask as a bool array on ``grid`` (the reference's spatial shape); raise naming both files.

    A mask of several identical bands (HRF's RGB field-of-view masks) counts as its first band."""
    require_finite(mask, "mask")
    data = mask.data
    if band_first(mask) and data.ndim >= 3 and data.shape[0] > 1:
        if not all(np.array_equal(data[0], band) for band in data[1:]):
            raise DataError(mask.path, f"has {data.shape[0]} bands that differ; a mask needs one band (or identical "
                            "bands, as an RGB mask saved from a grey one)", "write the mask as one grey band")
        mask = dataclasses.replace(mask, data=data[:1])
    m, _ = label_map(mask)
    gm, gr = mask.geometry, ref.geometry
    try:
        compare_grids(mask.path, ref.path, shape=m.shape, ref_shape=tuple(grid), affine=gm.affine,
                      ref_affine=gr.affine, crs=gm.crs, ref_crs=gr.crs, transform=gm.transform,
                      ref_transform=gr.transform, atol=AFFINE_TOL)
    except DataError as err:
        raise _mismatch("mask", err) from None
    check_geometry_kinds(mask, ref, "mask", assume_same_grid=assume_same_grid)
    return m != 0


def orientation_variants(shape: tuple[int, ...]) -> Iterator[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """Every axis permutation and flip that keeps ``shape``, except the identity: ``(name, axes, flips)``."""
    n = len(shape)
    for axes in itertools.permutations(range(n)):
        if tuple(shape[a] for a in axes) != tuple(shape):
            continue
        for k in range(n + 1):
            for flips in itertools.combinations(range(n), k):
                if axes == tuple(range(n)) and not flips:
                    continue
                parts = []
                if axes != tuple(range(n)):
                    parts.append(f"axes permuted to {axes}")
                if flips:
                    parts.append(f"axis {', '.join(map(str, flips))} flipped")
                yield " and ".join(parts), axes, flips


def _fg_dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 2.0 * int(np.count_nonzero(a & b)) / total if total else 1.0


#: A variant must reach this foreground Dice, and beat the stored order by ORIENTATION_MARGIN, to be reported.
ORIENTATION_MIN = 0.5
ORIENTATION_MARGIN = 0.25


def check_orientation(pred: io.ArrayFile, ref: io.ArrayFile, p: np.ndarray, r: np.ndarray) -> None:
    """Refuse a label map that matches the reference far better once transposed or flipped.

    For pairs whose orientation no geometry confirms (``.npy``, PNG, plain TIFF): ``p`` and ``r`` are
    the two label arrays (non-zero = foreground). When some axis permutation / flip of ``p`` reaches a
    foreground Dice >= ``ORIENTATION_MIN`` that beats the stored order by ``ORIENTATION_MARGIN``, the
    prediction is almost surely stored in another order (a square transposed array passes every shape
    check); ``assume_same_grid`` at the caller skips this check.
    """
    a, b = np.asarray(p) != 0, np.asarray(r) != 0
    if a.shape != b.shape or a.ndim < 2 or not a.any() or not b.any():
        return
    as_stored = _fg_dice(a, b)
    best, best_name = as_stored, ""
    for name, axes, flips in orientation_variants(a.shape):
        v = np.transpose(a, axes)
        if flips:
            v = np.flip(v, flips)
        score = _fg_dice(v, b)
        if score > best:
            best, best_name = score, name
    if best_name and best >= ORIENTATION_MIN and best - as_stored >= ORIENTATION_MARGIN:
        raise DataError(pred.path, f"matches the reference {ref.path} with foreground Dice {as_stored:.3f} as "
                        f"stored but {best:.3f} with its {best_name}: the two are probably stored in different "
                        f"array orders", "write the prediction in the reference's array order, or pass "
                        "--assume-same-grid (assume_same_grid=True) if it really is stored that way")


def iter_cases(cases: Iterable[Case]) -> Iterator[tuple[Case, io.ArrayFile, io.ArrayFile, io.ArrayFile | None]]:
    """Read each case's prediction, reference and mask, one case at a time."""
    for case in cases:
        pred, ref = load(case.pred, "prediction"), load(case.ref, "reference")
        mask = load(case.mask, "mask") if case.mask is not None else None
        yield case, pred, ref, mask


@contextlib.contextmanager
def scoring(case: Case) -> Iterator[None]:
    """Turn a metric's ValueError on this case's arrays into a ``DataError`` naming its files."""
    try:
        yield
    except MedrsError:
        raise
    except ValueError as err:
        raise DataError(case.pred, f"cannot be scored against {case.ref}: {err}",
                        "check that both files hold what the task expects (see `medrs-diff evaluate --help`)"
                        ) from err
