"""Hyperspectral cubes (.mat / ENVI / .npy / multi-band GeoTIFF, read through :mod:`medrs_diff.io`) and
labelled-pixel patches with spatially disjoint train/test splits.

Random pixel splits let a test pixel's patch overlap training patches, which inflates accuracy;
:func:`disjoint_split` assigns whole blocks to train or test and keeps only pixels whose patch lies
entirely inside blocks of their own split, so no training and test patch share a single pixel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from .. import io
from ..io import registry
from ..io.cube import read_cube
from ..io.geotiff import read_geotiff
from ..io.numpy_file import read_numpy
from ..io.types import ArrayFile, Geometry
from . import keys as K
from .errors import DataError, require_file
from .hsi_checks import check_wavelengths
from .scaling import Scaling, linear


@dataclass
class Cube:
    """A cube as (bands, H, W) float32, with optional (H, W) integer labels (0 = unlabelled) and the
    geometry of its file (CRS / transform for GeoTIFF and ENVI, wavelengths when the file has them)."""

    data: np.ndarray
    labels: np.ndarray | None = None
    path: Path | None = None
    geometry: Geometry | None = None


#: The io formats a cube or label map may come in.
CUBE_FORMATS = ("cube", "numpy", "geotiff")


def read_array_file(path: str | os.PathLike, key: str | None = None, band_axis: int | None = None) -> ArrayFile:
    """Read a .mat / ENVI .hdr / .npy / .npz / GeoTIFF through :mod:`medrs_diff.io` (one reader per format).

    ``.mat``, ENVI and GeoTIFF come back as (band, y, x) (``.mat`` 3-D arrays with their band axis
    ``band_axis``, default last, moved first); NumPy arrays as stored (memory-mapped).
    """
    p = require_file(path, "array file")
    fmt = io.format_for(p, CUBE_FORMATS)
    if fmt.name == "cube":
        if registry.suffix_of(p) == ".hdr":
            return read_cube(p)
        return read_cube(p, key=key, band_axis=band_axis)
    if fmt.name == "numpy":
        return read_numpy(p, key=key, mmap=True)
    return read_geotiff(p)


def load_array(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """The array of a .mat / ENVI / .npy / .npz / GeoTIFF file (see :func:`read_array_file` for its layout)."""
    return read_array_file(path, key).data


def load_cube(path: str | os.PathLike, labels: str | os.PathLike | None = None, *, key: str | None = None,
              label_key: str | None = None, band_axis: int | None = None, frame: int | None = None) -> Cube:
    """Load a cube as (bands, H, W) float32 and, optionally, its (H, W) label map.

    ``band_axis`` defaults to the last axis for .mat / .npy (Indian Pines, Pavia, Salinas store
    (H, W, bands)); GeoTIFF and ENVI are band-first already. 2-D (bands, pixels) .mat arrays with the
    image size stored beside them (Jasper Ridge, Samson) are unfolded in MATLAB column-major order.
    4-D arrays (frames, ...) need ``frame``.
    """
    p = Path(path)
    f = read_array_file(p, key, band_axis)
    arr = np.asarray(f.data)
    band_first = f.geometry.layout[:1] == ("band",)
    if arr.ndim == 4:
        if frame is None:
            raise DataError(p, f"is 4-D {arr.shape} (a time series)", "pass `frame=` to pick one frame")
        arr = arr[frame]
    if arr.ndim != 3:
        raise DataError(p, f"has shape {arr.shape}, not a 3-D cube", "pass a (H, W, bands) or (bands, H, W) array")
    if not band_first:
        arr = np.moveaxis(arr, band_axis if band_axis is not None else -1, 0)
    elif band_axis not in (None, 0) and f.geometry.extra.get("format") != "mat":
        arr = np.moveaxis(arr, band_axis, 0)
    data = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(data).any():
        raise DataError(p, "holds no finite value (all NaN)", "check the file; it holds no data")
    dead = np.flatnonzero(~np.isfinite(data).reshape(len(data), -1).any(1))
    if dead.size:  # NaN pixels (nodata edges) are the caller's to mask; a band without any value is an error
        shown = ", ".join(map(str, dead[:10])) + (" ..." if dead.size > 10 else "")
        raise DataError(p, f"{dead.size} of {len(data)} bands hold no finite value (bands {shown}, 0-based)",
                        "drop those bands (e.g. water-absorption bands) before use")
    check_wavelengths(f.geometry.wavelengths, len(data), p)
    lab = None
    if labels is not None:
        lab = np.asarray(load_array(labels, label_key))
        lab = lab[0] if lab.ndim == 3 and lab.shape[0] == 1 else lab
        if lab.shape != data.shape[1:]:
            raise DataError(labels, f"label map {lab.shape} differs from the cube's {data.shape[1:]} pixels",
                            "pass the label map of this cube")
        lab = lab.astype(np.int64)
    return Cube(data, lab, p, f.geometry)


def band_scaling(data: np.ndarray, lower: float = 1.0, upper: float = 99.0,
                 mask: np.ndarray | None = None) -> Scaling:
    """Per-band percentile range onto [-1, 1], from ``mask`` pixels (e.g. training pixels only)."""
    flat = data.reshape(data.shape[0], -1)
    if mask is not None:
        flat = flat[:, mask.reshape(-1)]
    lo = np.nanpercentile(flat, lower, axis=1)
    hi = np.nanpercentile(flat, upper, axis=1)
    return linear(lo, np.where(hi > lo, hi, lo + 1), kind="band_percentile")


def disjoint_split(labels: np.ndarray, patch_size: int, test_fraction: float = 0.5, block_size: int | None = None,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Spatially disjoint train / test pixel masks for patch classifiers.

    The image is cut into ``block_size`` blocks (default 4 x patch) assigned at random to test with
    probability ``test_fraction``; a labelled pixel is kept only if its whole ``patch_size`` window lies
    in blocks of its split, so train and test patches never share a pixel.
    """
    if patch_size < 1 or patch_size % 2 == 0:
        raise DataError(None, f"patch_size {patch_size} must be odd and positive", "use an odd patch size (e.g. 9)")
    h, w = labels.shape
    if patch_size > min(h, w):
        raise DataError(None, f"patch {patch_size} is larger than the image {h}x{w}", "use a smaller patch_size")
    block = 4 * patch_size if block_size is None else int(block_size)
    if block < 1:
        raise DataError(None, f"block_size must be >= 1, got {block_size}",
                        "use a positive block size (default 4 x patch_size)")
    rng = np.random.default_rng(seed)
    nby, nbx = -(-h // block), -(-w // block)
    is_test_block = rng.random((nby, nbx)) < test_fraction
    if is_test_block.all() or not is_test_block.any():  # keep both splits non-empty
        is_test_block.flat[rng.integers(is_test_block.size)] ^= True
    is_test = np.kron(is_test_block, np.ones((block, block), dtype=bool))[:h, :w]
    size = (patch_size, patch_size)
    pure_test = ndimage.minimum_filter(is_test.astype(np.uint8), size=size, mode="nearest").astype(bool)
    pure_train = ndimage.minimum_filter((~is_test).astype(np.uint8), size=size, mode="nearest").astype(bool)
    labelled = labels > 0
    return labelled & pure_train, labelled & pure_test


class HyperspectralPatches(Dataset):
    """Patches centred on the labelled pixels of ``pixels``: ``image`` (bands, p, p) in model space,
    ``label`` (class index, labels - 1). The cube is reflect-padded so border pixels get full patches."""

    def __init__(self, cube: Cube, pixels: np.ndarray, patch_size: int, scaling: Scaling | None = None) -> None:
        if cube.labels is None:
            raise DataError(cube.path, "has no label map", "load it with `labels=`")
        bands, h, w = cube.data.shape
        if patch_size > min(h, w):
            raise DataError(cube.path, f"patch {patch_size} is larger than the image {h}x{w}",
                            "use a smaller patch_size")
        self.scaling = scaling or band_scaling(cube.data, mask=pixels if pixels.any() else None)
        r = patch_size // 2
        data = np.nan_to_num(cube.data, nan=0.0)
        self.data = np.pad(self.scaling.forward(data), ((0, 0), (r, r), (r, r)), mode="reflect")
        self.coords = np.argwhere(pixels & (cube.labels > 0))
        self.labels = cube.labels
        self.patch_size = patch_size

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int) -> dict[str, Any]:
        y, x = self.coords[i]
        p = self.patch_size
        patch = torch.from_numpy(np.ascontiguousarray(self.data[:, y : y + p, x : x + p]))
        return {K.IMAGE: patch, K.LABEL: int(self.labels[y, x]) - 1, "center": (int(y), int(x))}
