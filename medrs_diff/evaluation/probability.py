"""Class-probability maps for the ECE of task ``seg`` (``probability=`` / ``--probability``).

A probability file holds one channel per class, in the class-index order of the declared label values
(sorted, background first: ``(0, 1, 2, ET)`` with ``brats``), as ``medrs-diff infer`` writes
``OUT/probability/<case>``: a NIfTI with the channels on its last axis, a raster with them first, a
``.npy`` either way. A binary task also takes one channel (the foreground). The calibrated quantity is
the probability of each scored group: a label's own channel (one-vs-rest), or for BraTS regions
WT = 1 - p(background), TC = p(1) + p(ET), ET = p(ET).

Refused, one line naming the file: a channel count that does not match the classes, values outside
[0, 1] or not finite, multi-channel maps whose channels do not sum to 1 (within :data:`SUM_TOL`), and a
map that is not on the reference's grid.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import io
from ..errors import DataError
from ..io.geometry import compare_grids
from .arrays import AFFINE_TOL, _mismatch, band_first, check_geometry_kinds, load, require_finite
from .pairing import MissingFileError, pair_folder

__all__ = ["SUM_TOL", "class_probabilities", "find_probabilities", "group_probabilities"]

#: Largest deviation of the channel sum from 1 accepted in a multi-channel probability map.
SUM_TOL = 1e-3


def find_probabilities(path: str | os.PathLike, cases: Sequence[str]) -> dict[str, Path]:
    """Probability file per case: one file for a single case, or a folder paired with the cases by name."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(path, "probability path does not exist",
                               "give the probability/ folder that `medrs-diff infer` wrote (or one file per case)")
    if path.is_file():
        io.format_for(path)
        if len(cases) != 1:
            raise DataError(path, f"is one probability file for {len(cases)} cases",
                            "give a folder with one probability file per case, paired by name")
        return {cases[0]: path}
    return pair_folder(path, list(cases), "probability")


def _squeezed(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(n for n in shape if n > 1)


def _channels(f: io.ArrayFile, spatial: tuple[int, ...]) -> np.ndarray:
    """``f``'s data as ``(C, *spatial)``: channels last for NIfTI, first for rasters, either for other files."""
    data, target = f.data, _squeezed(spatial)
    if _squeezed(data.shape) == target:
        return data.reshape(1, *spatial)
    last = (np.moveaxis(data, -1, 0), _squeezed(data.shape[:-1]) == target)
    first = (data, _squeezed(data.shape[1:]) == target)
    order = [first, last] if band_first(f) or f.kind != "nifti" else [last, first]
    for arr, ok in order:
        if ok:
            return arr.reshape(arr.shape[0], *spatial)
    raise DataError(f.path, f"probability map of shape {data.shape} does not fit the reference grid {spatial} plus "
                    f"one class axis", "write one channel per class on the reference's grid (as the probability/ "
                    "output of `medrs-diff infer`)")


def class_probabilities(path: Path, ref: io.ArrayFile, spatial: tuple[int, ...], values: Sequence[int], *,
                        assume_same_grid: bool = False) -> np.ndarray:
    """The checked probability map of ``path`` as ``(C, *spatial)``, C = ``len(values)`` (or 1 for a binary task)."""
    f = load(path, "probability")
    require_finite(f, "probability")
    p = _channels(f, spatial).astype(np.float64)
    k = len(values)
    if p.shape[0] != k and not (k == 2 and p.shape[0] == 1):
        one = " (or 1, the foreground)" if k == 2 else ""
        raise DataError(path, f"probability map has {p.shape[0]} channel(s) but the task has {k} classes{one} "
                        f"(label values {list(values)})",
                        "write one channel per class in the order of the label values, background first (as "
                        "`medrs-diff infer` writes probability/), or declare the classes with --labels / --brats")
    g, gr = f.geometry, ref.geometry
    try:
        compare_grids(f.path, ref.path, shape=spatial, ref_shape=spatial, affine=g.affine, ref_affine=gr.affine,
                      crs=g.crs, ref_crs=gr.crs, transform=g.transform, ref_transform=gr.transform, atol=AFFINE_TOL)
    except DataError as err:
        raise _mismatch("probability", err) from None
    check_geometry_kinds(f, ref, "probability", assume_same_grid=assume_same_grid)
    lo, hi = float(p.min()), float(p.max())
    if lo < 0 or hi > 1:
        raise DataError(path, f"probability map holds values in [{lo:.4g}, {hi:.4g}], outside [0, 1]",
                        "write probabilities (apply a softmax / sigmoid to logits first)")
    if p.shape[0] > 1:
        dev = np.abs(p.sum(0) - 1)
        worst = float(dev.max())
        if worst > SUM_TOL:
            raise DataError(path, f"probability channels do not sum to 1 in {int((dev > SUM_TOL).sum())} of "
                            f"{dev.size} voxels (largest deviation {worst:.4g} > {SUM_TOL:g})",
                            "write one probability per class that sums to 1 over the classes (a softmax), not "
                            "independent per-class scores")
    return p


def group_probabilities(p: np.ndarray, values: Sequence[int], groups: Sequence[int | str], *, brats: bool,
                        et_label: int = 4) -> dict[str, np.ndarray]:
    """The probability of each scored group from class probabilities ``(C, *spatial)``."""
    if p.shape[0] == 1:  # a binary task's foreground channel
        return {str(groups[0]): p[0]}
    index = {int(v): i for i, v in enumerate(values)}
    if brats:
        et = p[index[et_label]]
        return {"WT": np.clip(1 - p[index[0]], 0, 1), "TC": np.clip(p[index[1]] + et, 0, 1), "ET": et}
    return {str(g): p[index[int(g)]] for g in groups}
