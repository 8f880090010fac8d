"""LR / HR GeoTIFF pairs made from real HR scenes by a known degradation (block mean, optional
Gaussian blur), e.g. Sentinel-2 10 m bands of BigEarthNet -> 40 m LR. The LR keeps the HR's CRS
and upper-left corner with a ``scale`` times coarser transform, so the pair is pixel-aligned."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rasterio.transform import Affine
from scipy import ndimage

from ..io.geotiff import read_geotiff, write_geotiff
from . import keys as K
from .errors import DataError

PathLike = str | os.PathLike
S2_RGB = ("B04", "B03", "B02")


def degrade(hr: np.ndarray, scale: int, blur_sigma: float = 0.0) -> np.ndarray:
    """(C, H, W) -> (C, H/scale, W/scale): optional Gaussian blur, then ``scale`` x ``scale`` block mean."""
    c, h, w = hr.shape
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of the scale {scale}")
    x = hr.astype(np.float64)
    if blur_sigma > 0:
        x = ndimage.gaussian_filter(x, (0, blur_sigma, blur_sigma), mode="reflect")
    return x.reshape(c, h // scale, scale, w // scale, scale).mean(axis=(2, 4))


def write_sr_pair(hr: np.ndarray, crs, transform: Affine, out_dir: PathLike, name: str, scale: int, *,
                  nodata: float | None = 0, band_names: Sequence[str] | None = None,
                  blur_sigma: float = 0.0) -> dict[str, str]:
    """Write ``hr/<name>.tif`` and its degraded ``lr/<name>.tif`` (same dtype as HR)."""
    out = Path(out_dir)
    lr = degrade(hr, scale, blur_sigma)
    if np.issubdtype(hr.dtype, np.integer):
        lr = np.clip(np.round(lr), max(1, np.iinfo(hr.dtype).min), np.iinfo(hr.dtype).max)
    lr = lr.astype(hr.dtype)
    lr_transform = transform @ Affine.scale(scale)
    rec = {K.IMAGE: str(out / "hr" / f"{name}.tif"), K.COND: str(out / "lr" / f"{name}.tif")}
    write_geotiff(hr, rec[K.IMAGE], crs=crs, transform=transform, nodata=nodata, band_names=band_names)
    write_geotiff(lr, rec[K.COND], crs=crs, transform=lr_transform, nodata=nodata, band_names=band_names)
    return rec


def bigearthnet_sr_pairs(root: PathLike, out_dir: PathLike, bands: Sequence[str] = S2_RGB, scale: int = 4,
                         blur_sigma: float = 0.0) -> list[dict[str, str]]:
    """HR = the 10 m bands of each BigEarthNet-S2 patch stacked (uint16 reflectance x 1e4); LR = its
    ``scale`` x block mean. ``root`` is the folder holding ``BigEarthNet-S2-Example`` (or the patches)."""
    root = Path(root)
    s2 = root / "BigEarthNet-S2-Example" if (root / "BigEarthNet-S2-Example").is_dir() else root
    patches = sorted(p for p in s2.iterdir() if p.is_dir()) if s2.is_dir() else []
    if not patches:
        raise DataError(root, "holds no BigEarthNet-S2 patch folders", "point it at bigearthnet_s1_s2/")
    records = []
    for patch in patches:
        stack, ref = [], None
        for band in bands:
            path = patch / f"{patch.name}_{band}.tif"
            r = read_geotiff(path, expected_bands=1)
            if ref is not None and (r.data.shape != ref.data.shape or r.transform != ref.transform):
                raise DataError(path, f"band {band} is not on the grid of {bands[0]}", "use bands of one resolution")
            ref = ref or r
            stack.append(r.data[0])
        hr = np.stack(stack)
        h, w = (s - s % scale for s in hr.shape[1:])
        records.append(write_sr_pair(hr[:, :h, :w], ref.crs, ref.transform, out_dir, patch.name, scale,
                                     nodata=0, band_names=list(bands), blur_sigma=blur_sigma))
    return records


def raster_sr_pairs(path: PathLike, out_dir: PathLike, tile: int = 120, scale: int = 8,
                    blur_sigma: float = 0.0) -> list[dict[str, str]]:
    """HR = the ``tile`` x ``tile`` tiles of one scene (e.g. a Landsat RGB GeoTIFF) that hold no nodata pixel,
    named ``r<row>_c<col>`` in row order (the last ones lie south: hold those out to split by region);
    LR = their ``scale`` x block mean. Same dtype, CRS and band names as the scene."""
    if tile % scale:
        raise ValueError(f"tile {tile} is not a multiple of the scale {scale}")
    r = read_geotiff(path)
    data = np.asarray(r.data)
    nodata = r.nodata
    records = []
    for i in range(data.shape[1] // tile):
        for j in range(data.shape[2] // tile):
            hr = data[:, i * tile:(i + 1) * tile, j * tile:(j + 1) * tile]
            if nodata is not None and bool((hr == nodata).all(axis=0).any()):
                continue
            tr = r.transform @ Affine.translation(j * tile, i * tile)
            records.append(write_sr_pair(hr, r.crs, tr, out_dir, f"r{i:02d}_c{j:02d}", scale, nodata=nodata,
                                         band_names=list(r.band_names) if r.band_names and all(r.band_names) else None,
                                         blur_sigma=blur_sigma))
    if not records:
        raise DataError(path, f"holds no {tile} x {tile} tile free of nodata", "use a smaller tile or another scene")
    return records
