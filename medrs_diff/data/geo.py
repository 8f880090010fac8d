"""GeoTIFF datasets on TorchGeo: RasterDataset configured by bands / glob / date regex, nodata masked,
scaled to model space; intersections for pairs and stacks; LR/HR pairs at their own resolutions;
random and grid samplers (``torchgeo.samplers``, queries are GeoSlice tuples).

Samples are dicts with ``image`` (C, H, W) in model space, ``mask`` (1, H, W) True where every band holds
data (nodata/NaN pixels are set to 0 and never reach a network as NaN), ``label`` for label rasters,
``crs``, ``bounds`` and ``transform`` (rasterio Affine of the window).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rasterio.transform import Affine
from torch.utils.data import DataLoader
from torchgeo.datasets import GeoDataset, IntersectionDataset, RasterDataset, stack_samples
from torchgeo.datasets.errors import DatasetNotFoundError
from torchgeo.samplers import GridGeoSampler, RandomGeoSampler, get_random_bounding_box

from ..io.geometry import compare_grids
from ..io.geotiff import has_valid_data, open_geotiff
from . import keys as K
from .errors import DataError
from .scaling import Scaling, ScalingSpec, decibel, reflectance, resolve

#: BigEarthNet Sentinel-2 L2A bands (B10 is not in L2A), one file per band.
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
S1_BANDS = ("VV", "VH")
DATA_DERIVED = ("mri", "percentile", "zscore", "minmax")


class GeoRasterDataset(RasterDataset):
    """A TorchGeo RasterDataset that masks nodata, scales to model space and names keys per ``keys.py``.

    Configure it with constructor arguments rather than subclassing: ``filename_glob``,
    ``filename_regex`` (named groups ``date`` and, with ``separate_files``, ``band``), ``date_format``,
    ``all_bands``, ``separate_files``, ``is_image``.
    """

    filename_glob = "*.tif"

    def __init__(
        self,
        paths: str | os.PathLike | Iterable[str | os.PathLike],
        *,
        bands: Sequence[str] | None = None,
        all_bands: Sequence[str] | None = None,
        filename_glob: str | None = None,
        filename_regex: str | None = None,
        date_format: str | None = None,
        separate_files: bool | None = None,
        is_image: bool = True,
        res: float | tuple[float, float] | None = None,
        crs: Any = None,
        scaling: ScalingSpec = None,
        nodata: float | None = None,
        expected_bands: int | None = None,
        check_nodata: bool = True,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        cache: bool = True,
    ) -> None:
        for name, value in (("filename_glob", filename_glob), ("filename_regex", filename_regex),
                            ("date_format", date_format), ("separate_files", separate_files)):
            if value is not None:
                setattr(self, name, value)
        if all_bands is not None:
            self.all_bands = tuple(all_bands)
        self.is_image = is_image
        if bands is not None and self.all_bands and not set(bands) <= set(self.all_bands):
            raise DataError(paths if isinstance(paths, str | os.PathLike) else None,
                            f"bands {sorted(set(bands) - set(self.all_bands))} are not among {self.all_bands}",
                            "request band names listed in `all_bands`")
        try:
            super().__init__(paths, crs=crs, res=res, bands=bands, transforms=None, cache=cache)
        except DatasetNotFoundError as exc:
            raise DataError(paths if isinstance(paths, str | os.PathLike) else list(paths),
                            f"no readable raster matches glob '{self.filename_glob}' and regex "
                            f"'{self.filename_regex}'", "check the folder, the glob and the regex") from exc
        self.user_transforms = transforms
        if scaling in DATA_DERIVED or (callable(scaling) and not isinstance(scaling, Scaling)):
            raise DataError(None, f"scaling {scaling!r} is computed per image, so patches of one scene would be "
                            "scaled differently", "use a fixed scaling: reflectance(), digital_number(), decibel()")
        self.scaling: Scaling = resolve(scaling)
        self.nodata = nodata
        self._check_files(expected_bands, check_nodata)

    def _band_files(self, filepath: str) -> list[str]:
        if self.separate_files:
            return [self._update_filepath(b, filepath) for b in self.bands]
        return [filepath]

    def _check_files(self, expected_bands: int | None, check_nodata: bool) -> None:
        n_expected = (expected_bands if expected_bands is not None
                      else len(self.all_bands) if self.all_bands and not self.separate_files else None)
        for filepath in self.index.filepath:
            for f in self._band_files(filepath):
                if not Path(f).is_file():
                    raise DataError(f, "band file is missing", f"add it (every scene needs bands {self.bands})")
                with open_geotiff(f) as src:
                    if self.nodata is None:
                        self.nodata = src.nodata
                    count = src.count
                want = 1 if self.separate_files else n_expected
                if want is not None and count != want:
                    raise DataError(f, f"has {count} band(s) but {want} are expected",
                                    "pass files with the expected bands or fix `all_bands` / `expected_bands`")
                if check_nodata and not has_valid_data(f):
                    raise DataError(f, "holds only nodata / NaN pixels", "remove this file from the dataset")

    def __getitem__(self, query: Any) -> dict[str, Any]:
        sample = super().__getitem__(query)
        x, y, _ = self._disambiguate_slice(query)
        sample[K.TRANSFORM] = Affine(x.step, 0.0, x.start, 0.0, -y.step, y.stop)
        if self.is_image:
            data = sample.pop("image")
            valid = torch.isfinite(data)
            if self.nodata is not None and not np.isnan(self.nodata):
                valid &= data != self.nodata
            valid = valid.all(dim=0, keepdim=True)
            data = self.scaling.forward(torch.where(valid, data, torch.zeros_like(data)))
            sample[K.IMAGE] = torch.where(valid, data, torch.zeros_like(data))
            sample[K.MASK] = valid
            sample[K.scaling_key(K.IMAGE)] = self.scaling.to_dict()
        else:
            label = sample.pop("mask")
            sample[K.LABEL] = label
            if self.nodata is not None and not np.isnan(self.nodata):
                sample[K.MASK] = (label != int(self.nodata))[None]
        if self.user_transforms is not None:
            sample = self.user_transforms(sample)
        return sample

    def first_file(self) -> str:
        """Path of the first indexed file (named in error messages)."""
        return str(self.index.filepath.iloc[0])


def raster_dataset(paths: Any, **kwargs: Any) -> GeoRasterDataset:
    """Shorthand for :class:`GeoRasterDataset` (same arguments)."""
    return GeoRasterDataset(paths, **kwargs)


def bigearthnet_s2(root: str | os.PathLike, bands: Sequence[str] = S2_BANDS, res: float = 10.0,
                   **kwargs: Any) -> GeoRasterDataset:
    """BigEarthNet Sentinel-2 L2A patches (one GeoTIFF per band, 10/20/60 m resampled to ``res``),
    reflectance x1e4 scaled onto [-1, 1]."""
    kwargs.setdefault("scaling", reflectance())
    return GeoRasterDataset(
        root, bands=bands, all_bands=S2_BANDS, separate_files=True, res=res,
        filename_glob="S2*_B02.tif",
        filename_regex=r"^S2[AB]_MSIL2A_(?P<date>\d{8})T\d+_\d+_\d+_(?P<band>B[0-9A]{2})\.tif$", **kwargs)


def bigearthnet_s1(root: str | os.PathLike, bands: Sequence[str] = S1_BANDS, **kwargs: Any) -> GeoRasterDataset:
    """BigEarthNet Sentinel-1 GRD patches (VV, VH in dB, one file per band), dB scaled onto [-1, 1]."""
    ranges = {"VV": (-25.0, 0.0), "VH": (-32.0, -5.0)}
    kwargs.setdefault("scaling", decibel([ranges[b][0] for b in bands], [ranges[b][1] for b in bands]))
    return GeoRasterDataset(
        root, bands=bands, all_bands=S1_BANDS, separate_files=True, filename_glob="S1*_VV.tif",
        filename_regex=r"^S1[AB]_IW_GRDH_1SDV_(?P<date>\d{8})T\d+_\w+?_\d+_\d+_(?P<band>VV|VH)\.tif$", **kwargs)


def _grid_of(ds: GeoDataset) -> tuple[Any, Affine, str]:
    """CRS, native transform and path of the first file of a dataset (for compatibility checks)."""
    if isinstance(ds, IntersectionDataset | SRPairDataset):  # its first member's grid
        return _grid_of(ds.datasets[0])
    path = str(ds.index.filepath.iloc[0])
    with open_geotiff(path) as src:
        return src.crs, src.transform, path


def check_compatible(first: GeoDataset, second: GeoDataset, same_res: bool = True) -> None:
    """Raise ``DataError`` if two datasets differ in CRS, or (``same_res``) in resolution or pixel grid."""
    crs1, t1, p1 = _grid_of(first)
    crs2, t2, p2 = _grid_of(second)
    compare_grids(p2, p1, crs=crs2, ref_crs=crs1, hints={"crs": "pass `reproject=True`"})
    if not same_res:
        return
    if not np.allclose(first.res, second.res, rtol=1e-9, atol=1e-9):
        raise DataError(p2, f"resolution {second.res} differs from {first.res} of {p1}",
                        "resample one onto the other, pass `reproject=True`, or use SRPairDataset for LR/HR pairs")
    ox = ((t2.c - t1.c) / t1.a) % 1.0
    oy = ((t2.f - t1.f) / t1.e) % 1.0
    if min(ox, 1 - ox) > 1e-6 or min(oy, 1 - oy) > 1e-6:
        raise DataError(p2, f"pixel grid is shifted by ({ox:.3f}, {oy:.3f}) pixels from that of {p1}",
                        "resample it onto the other's grid (gdalwarp -tap / -te) or pass `reproject=True`")


class _RenameCollate:
    """Collate for an IntersectionDataset: put each member's image (or label) under its own key."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        masks = []
        flat = list(samples)
        for name, s in zip(self.names, flat, strict=True):
            out[name] = s[K.IMAGE] if K.IMAGE in s else s[K.LABEL]
            if K.scaling_key(K.IMAGE) in s:
                out[K.scaling_key(name)] = s[K.scaling_key(K.IMAGE)]
            if K.MASK in s:
                masks.append(s[K.MASK])
        if masks:
            out[K.MASK] = torch.stack(masks).all(dim=0)
        for key in (K.CRS, K.BOUNDS, K.TRANSFORM):
            out[key] = flat[0][key]
        return out


class _ConcatCollate:
    """Collate for stacks: images concatenated on channels, valid masks combined (logical and)."""

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        out = dict(samples[0])
        out[K.IMAGE] = torch.cat([s[K.IMAGE] for s in samples])
        out[K.MASK] = torch.stack([s[K.MASK] for s in samples]).all(dim=0)
        out[K.scaling_key(K.IMAGE)] = [s.get(K.scaling_key(K.IMAGE)) for s in samples]
        return out


class GeoIntersection(IntersectionDataset):
    """TorchGeo intersection that also works with ``spatial_only=True`` in torchgeo 0.8.1.

    (0.8.1 leaves a RangeIndex after a spatial-only overlay, which breaks ``bounds`` and the samplers;
    here the index keeps the first dataset's time intervals and members are queried by space alone.)
    """

    def __init__(self, first: GeoDataset, second: GeoDataset, spatial_only: bool = False, **kwargs: Any) -> None:
        super().__init__(first, second, spatial_only=spatial_only, **kwargs)
        self.spatial_only = spatial_only
        if spatial_only and not isinstance(self.index.index, pd.IntervalIndex):
            self.index.index = pd.IntervalIndex(self.index["datetime_1"], name="datetime")

    def __getitem__(self, query: Any) -> dict[str, Any]:
        if self.spatial_only:
            x, y, _ = self._disambiguate_slice(query)
            query = (x, y)
        return super().__getitem__(query)


def pair_datasets(first: GeoDataset, second: GeoDataset, keys: Sequence[str] = (K.COND, K.IMAGE), *,
                  spatial_only: bool = False, reproject: bool = False) -> IntersectionDataset:
    """Intersect two datasets and return their images under ``keys`` (image + label, S1 + S2, cloudy +
    clear). CRS, resolution and pixel grid must agree unless ``reproject`` (then TorchGeo warps
    ``second`` onto ``first``). ``spatial_only`` pairs acquisitions from different dates."""
    if not reproject:
        check_compatible(first, second)
    return GeoIntersection(first, second, spatial_only=spatial_only, collate_fn=_RenameCollate(keys))


def stack_datasets(datasets: Sequence[GeoDataset], *, spatial_only: bool = False,
                   reproject: bool = False) -> GeoDataset:
    """Intersect several image datasets and concatenate their bands as channels of ``image``."""
    out = datasets[0]
    for ds in datasets[1:]:
        if not reproject:
            check_compatible(out, ds)
        out = GeoIntersection(out, ds, spatial_only=spatial_only, collate_fn=_ConcatCollate())
    return out


class SRPairDataset(GeoDataset):
    """LR / HR pairs, each read at its own resolution: ``image`` = HR (C, s*h, s*w), ``cond`` = LR (C, h, w).

    Index it with GeoSlices of the HR grid (samplers use the HR resolution); the LR window is snapped to
    the LR pixel grid so that no resampling happens. The scale factor must be an integer.
    """

    def __init__(self, hr: GeoRasterDataset, lr: GeoRasterDataset) -> None:
        check_compatible(hr, lr, same_res=False)
        self.datasets = [hr, lr]
        self.hr, self.lr = hr, lr
        scale = lr.res[0] / hr.res[0]
        if abs(scale - round(scale)) > 1e-6 or round(scale) < 1 or not np.isclose(lr.res[1] / hr.res[1], scale):
            raise DataError(lr.first_file(), f"resolution {lr.res} is not an integer multiple of the HR {hr.res}",
                            "resample the LR files to an integer scale factor of the HR grid")
        self.scale = int(round(scale))
        _, self.lr_origin, _ = _grid_of(lr)
        self.index = hr.index
        self._res = hr.res

    def __getitem__(self, query: Any) -> dict[str, Any]:
        x, y, t = self.hr._disambiguate_slice(query)
        lx, ly = self.lr.res
        x0 = self.lr_origin.c + np.floor((x.start - self.lr_origin.c) / lx + 1e-6) * lx
        y1 = self.lr_origin.f - np.floor((self.lr_origin.f - y.stop) / ly + 1e-6) * ly
        w, h = round((x.stop - x.start) / lx), round((y.stop - y.start) / ly)
        if w < 1 or h < 1:
            raise DataError(self.lr.first_file(), f"query is smaller than one LR pixel ({lx} m)",
                            f"use patches of at least {self.scale} HR pixels (a multiple of the scale)")
        lr = self.lr[slice(x0, x0 + w * lx, lx), slice(y1 - h * ly, y1, ly), t]
        hr_res = self.hr.res
        hr = self.hr[slice(x0, x0 + w * lx, hr_res[0]), slice(y1 - h * ly, y1, hr_res[1]), t]
        return {K.IMAGE: hr[K.IMAGE], K.COND: lr[K.IMAGE], K.MASK: hr[K.MASK], K.CRS: hr[K.CRS],
                K.BOUNDS: hr[K.BOUNDS], K.TRANSFORM: hr[K.TRANSFORM], "cond_transform": lr[K.TRANSFORM],
                K.scaling_key(K.IMAGE): hr[K.scaling_key(K.IMAGE)],
                K.scaling_key(K.COND): lr[K.scaling_key(K.IMAGE)]}


def time_series(dataset: GeoRasterDataset, query: Any) -> dict[str, Any]:
    """Every acquisition of ``dataset`` over the query's area, stacked: ``image`` (T, C, H, W),
    ``mask`` (T, 1, H, W), ``time`` (interval starts), sorted by time."""
    x, y, _ = dataset._disambiguate_slice(query)
    hits = dataset.index.cx[x.start : x.stop, y.start : y.stop]
    intervals = sorted(set(hits.index))
    if not intervals:
        raise DataError(dataset.first_file(), "no acquisition covers the query", "query inside the dataset bounds")
    images, masks, times = [], [], []
    for iv in intervals:
        s = dataset[slice(x.start, x.stop, x.step), slice(y.start, y.stop, y.step), slice(iv.left, iv.right)]
        images.append(s[K.IMAGE])
        masks.append(s[K.MASK])
        times.append(pd.Timestamp(iv.left))
    return {K.IMAGE: torch.stack(images), K.MASK: torch.stack(masks), K.TIME: times,
            K.TRANSFORM: s[K.TRANSFORM], K.CRS: s[K.CRS]}


def _check_patch(dataset: GeoDataset, size: Any) -> tuple[float, float]:
    h, w = (size, size) if np.isscalar(size) else tuple(size)
    xres, yres = dataset.res
    widest = max(((b.bounds[2] - b.bounds[0]) / xres, (b.bounds[3] - b.bounds[1]) / yres)
                 for b in dataset.index.geometry)
    fits = [(b.bounds[2] - b.bounds[0]) >= w * xres - 1e-6 and (b.bounds[3] - b.bounds[1]) >= h * yres - 1e-6
            for b in dataset.index.geometry]
    if not any(fits):
        raise DataError(_grid_of(dataset)[2], f"patch {h}x{w} px is larger than every scene (largest about "
                        f"{widest[1]:.0f}x{widest[0]:.0f} px at {xres:g} m)", "use a smaller patch size")
    return h, w


class SeededRandomGeoSampler(RandomGeoSampler):
    """RandomGeoSampler whose scene choice also uses ``generator`` (torchgeo 0.8.1 draws it from the
    global RNG, so the same seed could give different patches)."""

    def __iter__(self) -> Iterator[tuple[slice, slice, slice]]:
        for _ in range(len(self)):
            idx = int(torch.multinomial(self.areas, 1, generator=self.generator))
            interval = self.intervals[idx]
            box = get_random_bounding_box(self.bounds[idx], self.size, self.res, self.generator)
            yield *box, slice(interval.left, interval.right)


def random_sampler(dataset: GeoDataset, size: int | tuple[int, int], length: int, seed: int = 0,
                   **kwargs: Any) -> SeededRandomGeoSampler:
    """Random patches of ``size`` pixels, reproducible from ``seed``; ``DataError`` if no scene fits."""
    _check_patch(dataset, size)
    return SeededRandomGeoSampler(dataset, size, length, generator=torch.Generator().manual_seed(seed), **kwargs)


def grid_sampler(dataset: GeoDataset, size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 **kwargs: Any) -> GridGeoSampler:
    """Regular (optionally overlapping, ``stride < size``) patches over every scene."""
    _check_patch(dataset, size)
    return GridGeoSampler(dataset, size, stride, **kwargs)


def geo_loader(dataset: GeoDataset, sampler: Any, batch_size: int = 8, num_workers: int = 0) -> DataLoader:
    """DataLoader that stacks samples into (B, C, H, W) batches (metadata as lists)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=stack_samples)
