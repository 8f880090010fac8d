"""Synthetic phantoms for every task, deterministic from a seed, written as real files with geometry.

Tests and the quick start use these instead of downloads. Each generator writes into ``out_dir`` and
returns records (dicts of file paths under the keys of ``keys.py``) that the readers and pipelines of
this package take directly:

=============================  ==========================================================================
``make_segmentation_phantoms``  2D/3D NIfTI image + mask of bright ellipses on noise (SegDiff quick start)
``make_sr_pairs``               LR / HR GeoTIFF pairs, LR = known Gaussian blur + area downsampling + noise
``make_brats_phantoms``         four MRI modalities (t1, t1ce, t2, flair) + BraTS labels 1/2/4 (WT/TC/ET)
``make_pet_pairs``              low-dose / full-dose PET in SUV by Poisson thinning, + body mask
``make_sar_speckle``            clean / speckled SAR in dB (multiplicative Gamma, ``looks``)
``make_cloud_pairs``            cloudy / clear optical reflectance, SAR companion (VV, VH dB), cloud mask
``make_rain_sequence``          advected rain cells, netCDF (time, y, x) in mm/h with map coordinates
``make_hyperspectral_cube``     cube mixed from endmembers with class labels (.npy / .mat / .tif)
``make_fundus_phantoms``        vessel trees + fundus-like RGB images + FOV masks in the DRIVE layout
=============================  ==========================================================================

Scalings that map each generator's raw units to model space are given as constants (``SEG_SCALING`` ...).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy import ndimage

from ..io.atomic import atomic_save
from ..io.geotiff import write_geotiff
from ..io.image2d import write_image2d
from ..io.nifti import write_nifti
from ..io.numpy_file import write_numpy
from . import keys as K
from .radar import RAIN_NAME, write_radar_netcdf
from .scaling import decibel, linear, pet_suv, reflectance

PathLike = str | os.PathLike

SEG_SCALING = linear(0.0, 1.0, kind="synthetic_seg")  #: segmentation phantom intensities are about [0, 1]
MRI_SCALING = "mri"  #: BraTS-like phantoms: per-volume percentiles, like real MRI
PET_SCALING = pet_suv(10.0)  #: PET phantoms are in SUV
OPTICAL_SCALING = reflectance()  #: optical GeoTIFFs are uint16 reflectance x 1e4
SAR_SCALING = decibel(-25.0, 5.0)  #: SAR GeoTIFFs are float32 dB
UTM = CRS.from_epsg(32633)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _tuple(size: int | Sequence[int], n: int) -> tuple[int, ...]:
    return (int(size),) * n if np.isscalar(size) else tuple(int(s) for s in size)


def _ellipsoid(shape: Sequence[int], center: Sequence[float], radii: Sequence[float],
               angle: float = 0.0) -> np.ndarray:
    """Boolean n-D ellipsoid (rotated by ``angle`` in the first two axes)."""
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    d = [g - c for g, c in zip(grids, center)]
    if len(shape) >= 2 and angle:
        ca, sa = np.cos(angle), np.sin(angle)
        d[0], d[1] = ca * d[0] + sa * d[1], -sa * d[0] + ca * d[1]
    return sum((di / r) ** 2 for di, r in zip(d, radii)) <= 1.0


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Smooth random field scaled to [0, 1]."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (f - f.min()) / (np.ptp(f) + 1e-8)


def _affine(spacing: Sequence[float], dims: int) -> np.ndarray:
    aff = np.eye(4)
    aff[:dims, :dims] = np.diag(spacing[:dims])
    aff[:dims, 3] = [-(0.5 * s) for s in spacing[:dims]]
    return aff


# ----------------------------------------------------------------------------------------- medical


def make_segmentation_phantoms(out_dir: PathLike, n: int = 8, size: int | Sequence[int] = (64, 64),
                               spatial_dims: int = 2, seed: int = 0, noise: float = 0.08,
                               spacing: float | Sequence[float] = 1.0) -> list[dict[str, str]]:
    """Write ``n`` NIfTI image + mask pairs of one bright ellipse (ellipsoid) on a noisy background.

    Image intensities: background 0.2, ellipse 0.8, plus Gaussian noise ``noise`` (use ``SEG_SCALING``);
    the mask (uint8) is exactly the ellipse. 2D cases are stored as 2-D NIfTI (H, W).
    Returns ``[{"image": ".../case_000_image.nii.gz", "label": ".../case_000_label.nii.gz"}, ...]``.
    """
    out = Path(out_dir)
    shape = _tuple(size, spatial_dims)
    if len(shape) != spatial_dims:
        raise ValueError(f"size {size} does not have {spatial_dims} dimensions")
    sp = _tuple(spacing, spatial_dims) if np.isscalar(spacing) else tuple(spacing)
    affine = _affine([float(s) for s in sp], spatial_dims)
    rng = _rng(seed)
    records = []
    for i in range(n):
        radii = [rng.uniform(0.15, 0.3) * s for s in shape]
        center = [rng.uniform(r + 1, s - r - 1) for r, s in zip(radii, shape)]
        mask = _ellipsoid(shape, center, radii, angle=rng.uniform(0, np.pi))
        image = 0.2 + 0.6 * mask + noise * rng.standard_normal(shape)
        image = ndimage.gaussian_filter(image, 0.5).astype(np.float32)
        rec = {K.IMAGE: str(out / f"case_{i:03d}_image.nii.gz"), K.LABEL: str(out / f"case_{i:03d}_label.nii.gz")}
        write_nifti(image, rec[K.IMAGE], affine)
        write_nifti(mask.astype(np.uint8), rec[K.LABEL], affine)
        records.append(rec)
    return records


def make_brats_phantoms(out_dir: PathLike, n: int = 2, size: int | Sequence[int] = (48, 48, 32),
                        seed: int = 0) -> list[dict[str, str]]:
    """Write ``n`` four-modality brain-tumour volumes (t1, t1ce, t2, flair) with a BraTS label map:
    1 necrotic core, 2 oedema, 4 enhancing rim (so WT = 1|2|4, TC = 1|4, ET = 4), 1 mm isotropic."""
    out = Path(out_dir)
    shape = _tuple(size, 3)
    affine = _affine([1.0, 1.0, 1.0], 3)
    rng = _rng(seed)
    # tissue intensity per modality: background, brain, oedema, enhancing, necrosis
    contrast = {"t1": (0, 600, 480, 520, 280), "t1ce": (0, 600, 560, 1000, 300),
                "t2": (0, 500, 900, 700, 950), "flair": (0, 500, 1000, 800, 600)}
    records = []
    for i in range(n):
        brain = _ellipsoid(shape, [s / 2 for s in shape], [0.42 * s for s in shape])
        c = [s / 2 + rng.uniform(-0.12, 0.12) * s for s in shape]
        r = rng.uniform(0.12, 0.18) * min(shape)
        edema = _ellipsoid(shape, c, [1.8 * r] * 3) & brain
        enh = _ellipsoid(shape, c, [r] * 3)
        core = _ellipsoid(shape, c, [0.55 * r] * 3)
        label = np.zeros(shape, np.uint8)
        label[edema] = 2
        label[enh] = 4
        label[core] = 1
        tissue = np.select([core, enh, edema, brain], [4, 3, 2, 1], 0)
        texture = 0.9 + 0.2 * _smooth_field(rng, shape, 3)
        rec = {K.LABEL: str(out / f"brats_{i:03d}_seg.nii.gz")}
        for m in K.BRATS_MODALITIES:
            vol = np.asarray(contrast[m], np.float32)[tissue] * texture
            vol = np.clip(vol + 20 * rng.standard_normal(shape), 0, None).astype(np.float32)
            rec[m] = str(out / f"brats_{i:03d}_{m}.nii.gz")
            write_nifti(vol, rec[m], affine)
        write_nifti(label, rec[K.LABEL], affine)
        records.append(rec)
    return records


def make_pet_pairs(out_dir: PathLike, n: int = 2, size: int | Sequence[int] = (32, 32, 32),
                   dose_fraction: float = 0.1, counts_per_suv: float = 20.0, seed: int = 0,
                   spacing: float = 2.0) -> list[dict[str, str]]:
    """Write low-dose / full-dose PET pairs in SUV: full-dose counts ~ Poisson(counts_per_suv x SUV),
    low-dose counts = Binomial thinning with ``dose_fraction`` (exactly a Poisson process at that dose),
    both rescaled to SUV. Also a body mask. Records: ``cond`` low dose, ``image`` full dose, ``mask``."""
    out = Path(out_dir)
    shape = _tuple(size, 3)
    affine = _affine([spacing] * 3, 3)
    rng = _rng(seed)
    records = []
    for i in range(n):
        body = _ellipsoid(shape, [s / 2 for s in shape], [0.45 * shape[0], 0.35 * shape[1], 0.48 * shape[2]])
        suv = body * 1.0
        liver = _ellipsoid(shape, [0.4 * shape[0], 0.55 * shape[1], 0.5 * shape[2]], [0.15 * s for s in shape])
        suv = np.where(liver & body, 2.5, suv)
        for _ in range(3):
            c = [rng.uniform(0.3, 0.7) * s for s in shape]
            suv = np.where(_ellipsoid(shape, c, [rng.uniform(1.5, 3.0)] * 3) & body, rng.uniform(5, 10), suv)
        counts = rng.poisson(suv * counts_per_suv)
        low_counts = rng.binomial(counts, dose_fraction)
        full = (counts / counts_per_suv).astype(np.float32)
        low = (low_counts / (counts_per_suv * dose_fraction)).astype(np.float32)
        rec = {K.COND: str(out / f"pet_{i:03d}_low.nii.gz"), K.IMAGE: str(out / f"pet_{i:03d}_full.nii.gz"),
               K.MASK: str(out / f"pet_{i:03d}_body.nii.gz")}
        write_nifti(low, rec[K.COND], affine)
        write_nifti(full, rec[K.IMAGE], affine)
        write_nifti(body.astype(np.uint8), rec[K.MASK], affine)
        records.append(rec)
    return records


# --------------------------------------------------------------------------------- remote sensing


def _land_cover(rng: np.random.Generator, size: int, n_classes: int, n_seeds: int = 12) -> np.ndarray:
    """Voronoi-like class map with smooth borders."""
    pts = rng.uniform(0, size, (n_seeds, 2))
    cls = rng.integers(0, n_classes, n_seeds)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    warp = 4 * (_smooth_field(rng, (size, size), size / 8) - 0.5)
    d = (yy[None] + warp - pts[:, 0, None, None]) ** 2 + (xx[None] - warp - pts[:, 1, None, None]) ** 2
    return cls[np.argmin(d, axis=0)]


def _spectra(rng: np.random.Generator, n_classes: int, bands: int) -> np.ndarray:
    """Class reflectance spectra in [0.02, 0.5], smooth across bands."""
    base = rng.uniform(0.03, 0.3, (n_classes, 1))
    slope = rng.uniform(-0.02, 0.05, (n_classes, 1)) * np.arange(bands)[None]
    return np.clip(base + slope, 0.02, 0.5)


def _band_names(bands: int) -> list[str]:
    return ["B02", "B03", "B04", "B08"][:bands] if bands <= 4 else [f"B{i + 1:02d}" for i in range(bands)]


def _to_uint16_reflectance(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 1e4), 1, 65535).astype(np.uint16)  # 0 is nodata


def make_sr_pairs(out_dir: PathLike, n: int = 4, hr_size: int = 64, scale: int = 4, bands: int = 4, seed: int = 0,
                  blur_sigma: float | None = None, noise: float = 0.005, res: float = 10.0) -> list[dict[str, Any]]:
    """Write ``n`` HR / LR GeoTIFF pairs (uint16 reflectance x 1e4, nodata 0, EPSG:32633).

    HR is ``hr_size`` x ``hr_size`` at ``res`` m; LR = Gaussian blur (``blur_sigma`` HR pixels, default
    ``scale / 2``) then ``scale`` x ``scale`` block mean, plus Gaussian ``noise`` (reflectance units), at
    ``res * scale`` m with the same upper-left corner, so both cover exactly the same ground. Scenes are
    placed side by side (disjoint). HR files go to ``hr/``, LR files to ``lr/``.
    Returns ``[{"image": hr.tif, "cond": lr.tif, "scale": scale, "blur_sigma": s}, ...]``.
    """
    if hr_size % scale:
        raise ValueError(f"hr_size {hr_size} must be a multiple of scale {scale}")
    out = Path(out_dir)
    sigma = scale / 2 if blur_sigma is None else blur_sigma
    rng = _rng(seed)
    records = []
    for i in range(n):
        classes = _land_cover(rng, hr_size, 5, n_seeds=max(6, hr_size // 6))
        spectra = _spectra(rng, 5, bands)
        hr = spectra[classes].transpose(2, 0, 1) * (0.85 + 0.3 * _smooth_field(rng, (hr_size, hr_size), 2))[None]
        blurred = ndimage.gaussian_filter(hr, (0, sigma, sigma), mode="reflect")
        h = hr_size // scale
        lr = blurred.reshape(bands, h, scale, h, scale).mean(axis=(2, 4))
        lr = lr + noise * rng.standard_normal(lr.shape)
        x0, y0 = 500_000.0 + i * 2 * hr_size * res, 5_000_000.0
        rec = {K.IMAGE: str(out / "hr" / f"scene_{i:03d}_hr.tif"), K.COND: str(out / "lr" / f"scene_{i:03d}_lr.tif"),
               "scale": scale, "blur_sigma": sigma}
        names = _band_names(bands)
        write_geotiff(_to_uint16_reflectance(hr), rec[K.IMAGE], crs=UTM, transform=from_origin(x0, y0, res, res),
                      nodata=0, band_names=names, scaling=OPTICAL_SCALING)
        write_geotiff(_to_uint16_reflectance(lr), rec[K.COND], crs=UTM,
                      transform=from_origin(x0, y0, res * scale, res * scale), nodata=0, band_names=names,
                      scaling=OPTICAL_SCALING)
        records.append(rec)
    return records


def _speckle(rng: np.random.Generator, shape: Sequence[int], looks: int) -> np.ndarray:
    """Multiplicative speckle on intensity: Gamma(looks, 1/looks), mean 1."""
    return rng.gamma(looks, 1.0 / looks, shape).astype(np.float32)


def _db(x: np.ndarray) -> np.ndarray:
    return (10.0 * np.log10(np.maximum(x, 1e-6))).astype(np.float32)


def make_sar_speckle(out_dir: PathLike, n: int = 2, size: int = 64, looks: int = 1, seed: int = 0,
                     res: float = 10.0) -> list[dict[str, str]]:
    """Write clean / speckled single-band SAR GeoTIFFs in dB (float32). The clean intensity is piecewise
    smooth (fields); speckled = clean x Gamma(looks, 1/looks). Records: ``image`` clean, ``cond`` speckled."""
    out = Path(out_dir)
    rng = _rng(seed)
    records = []
    for i in range(n):
        classes = _land_cover(rng, size, 4)
        sigma0 = np.array([0.01, 0.04, 0.1, 0.3])[classes] * (0.8 + 0.4 * _smooth_field(rng, (size, size), 3))
        speckled = sigma0 * _speckle(rng, sigma0.shape, looks)
        t = from_origin(600_000.0 + i * 2 * size * res, 5_100_000.0, res, res)
        rec = {K.IMAGE: str(out / f"sar_{i:03d}_clean.tif"), K.COND: str(out / f"sar_{i:03d}_speckled.tif")}
        write_geotiff(_db(sigma0), rec[K.IMAGE], crs=UTM, transform=t, band_names=["VV"], scaling=SAR_SCALING)
        write_geotiff(_db(speckled), rec[K.COND], crs=UTM, transform=t, band_names=["VV"], scaling=SAR_SCALING)
        records.append(rec)
    return records


def make_cloud_pairs(out_dir: PathLike, n: int = 2, size: int = 64, bands: int = 4, seed: int = 0,
                     res: float = 10.0, cloud_cover: float = 0.35) -> list[dict[str, str]]:
    """Write cloudy / clear optical pairs (uint16 reflectance x 1e4) with a SAR companion (VV, VH dB,
    4-look speckle, from the same land cover) and the cloud mask. Clouds are smooth opacity fields
    blended over the clear scene. Records: ``image`` clear, ``cond`` cloudy, ``sar``, ``cloud_mask``."""
    out = Path(out_dir)
    rng = _rng(seed)
    records = []
    for i in range(n):
        classes = _land_cover(rng, size, 5)
        clear = _spectra(rng, 5, bands)[classes].transpose(2, 0, 1)
        field = _smooth_field(rng, (size, size), size / 10)
        thr = np.quantile(field, 1 - cloud_cover)
        alpha = np.clip((field - thr) / 0.08 + 0.5, 0, 1)
        cloudy = (1 - alpha) * clear + alpha * rng.uniform(0.55, 0.75, (bands, 1, 1))
        vv = np.array([0.02, 0.05, 0.1, 0.2, 0.3])[classes] * _speckle(rng, (size, size), 4)
        vh = 0.2 * vv * _speckle(rng, (size, size), 4)
        t = from_origin(700_000.0 + i * 2 * size * res, 5_200_000.0, res, res)
        stem = out / f"cloud_{i:03d}"
        rec = {K.IMAGE: f"{stem}_clear.tif", K.COND: f"{stem}_cloudy.tif", K.SAR: f"{stem}_sar.tif",
               K.CLOUD_MASK: f"{stem}_cloudmask.tif"}
        names = _band_names(bands)
        write_geotiff(_to_uint16_reflectance(clear), rec[K.IMAGE], crs=UTM, transform=t, nodata=0, band_names=names)
        write_geotiff(_to_uint16_reflectance(cloudy), rec[K.COND], crs=UTM, transform=t, nodata=0, band_names=names)
        write_geotiff(np.stack([_db(vv), _db(vh)]), rec[K.SAR], crs=UTM, transform=t, band_names=["VV", "VH"])
        write_geotiff((alpha > 0.5).astype(np.uint8)[None], rec[K.CLOUD_MASK], crs=UTM, transform=t,
                      band_names=["cloud"])
        records.append(rec)
    return records


def make_rain_sequence(out_dir: PathLike, n_frames: int = 16, size: int = 64, seed: int = 0,
                       velocity: tuple[float, float] = (0.5, 1.0), n_cells: int = 4, res: float = 1000.0,
                       minutes: int = 5) -> dict[str, Any]:
    """Write a netCDF rain-rate sequence (time, y, x) in mm/h: Gaussian rain cells advected by a constant
    ``velocity`` (rows, columns per frame), every ``minutes``. Returns ``{"path", "velocity"}``."""
    rng = _rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cells = [(rng.uniform(0.2, 0.6) * size, rng.uniform(0.1, 0.5) * size, rng.uniform(2, 5) * size / 64,
              rng.uniform(5, 40)) for _ in range(n_cells)]
    frames = np.zeros((n_frames, size, size), np.float32)
    for t in range(n_frames):
        for cy, cx, r, peak in cells:
            py, px = cy + velocity[0] * t, cx + velocity[1] * t
            frames[t] += peak * np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * r**2))
    frames[frames < 0.05] = 0.0
    times = np.datetime64("2024-06-01T12:00", "ns") + np.arange(n_frames) * np.timedelta64(minutes, "m")
    x = (np.arange(size) + 0.5) * res
    y = -(np.arange(size) + 0.5) * res
    da = xr.DataArray(frames, dims=("time", "y", "x"), name=RAIN_NAME, coords={"time": times, "y": y, "x": x},
                      attrs={"units": "mm/h", "crs": "EPSG:3035", "transform": (0.0, res, 0.0, 0.0, 0.0, -res),
                             "source": "medrs_diff synthetic advected rain cells"})
    path = Path(out_dir) / "rain_sequence.nc"
    write_radar_netcdf(da, path)
    return {"path": str(path), "velocity": velocity}


def make_hyperspectral_cube(out_dir: PathLike, size: int | Sequence[int] = (40, 40), bands: int = 32,
                            n_classes: int = 4, seed: int = 0, fmt: str = "npy",
                            noise: float = 0.005) -> dict[str, Any]:
    """Write a cube linearly mixed from ``n_classes`` endmember spectra and its label map (1..n_classes,
    0 = unlabelled border). Each class region is dominated (80-95 %) by its endmember. ``fmt``: ``npy``
    ((H, W, bands) + labels .npy), ``mat`` (variables ``cube`` and ``labels``) or ``tif`` (bands first).
    Returns ``{"image": cube path, "label": labels path, "endmembers": (n_classes, bands) array}``."""
    out = Path(out_dir)
    h, w = _tuple(size, 2)
    rng = _rng(seed)
    wl = np.linspace(0, 1, bands)
    endmembers = np.stack([0.1 + 0.3 * np.exp(-((wl - rng.uniform(0, 1)) ** 2) / (2 * rng.uniform(0.05, 0.2) ** 2))
                           + rng.uniform(0, 0.1) * wl for _ in range(n_classes)])
    classes = _land_cover(rng, max(h, w), n_classes, n_seeds=3 * n_classes)[:h, :w]
    abund = rng.dirichlet(np.ones(n_classes), (h, w)) * 0.15
    dominant = rng.uniform(0.8, 0.95, (h, w))
    abund = abund / abund.sum(-1, keepdims=True) * (1 - dominant)[..., None]
    abund[np.arange(h)[:, None], np.arange(w)[None], classes] += dominant
    cube = (abund @ endmembers + noise * rng.standard_normal((h, w, bands))).astype(np.float32)
    labels = (classes + 1).astype(np.uint8)
    labels[[0, -1], :] = 0
    labels[:, [0, -1]] = 0
    out.mkdir(parents=True, exist_ok=True)
    paths = {K.IMAGE: out / f"hsi_cube.{fmt}", K.LABEL: out / f"hsi_labels.{fmt}"}
    if fmt == "npy":
        for key, arr in ((K.IMAGE, cube), (K.LABEL, labels)):
            write_numpy(paths[key], arr)
    elif fmt == "mat":
        import scipy.io

        for key, name, arr in ((K.IMAGE, "cube", cube), (K.LABEL, "labels", labels)):
            atomic_save(paths[key], lambda tmp, name=name, arr=arr: scipy.io.savemat(tmp, {name: arr}))
    elif fmt == "tif":
        t = from_origin(300_000.0, 4_000_000.0, 1.0, 1.0)
        write_geotiff(cube.transpose(2, 0, 1), paths[K.IMAGE], crs=UTM, transform=t)
        write_geotiff(labels[None], paths[K.LABEL], crs=UTM, transform=t)
    else:
        raise ValueError(f"fmt must be 'npy', 'mat' or 'tif', not {fmt!r}")
    return {K.IMAGE: str(paths[K.IMAGE]), K.LABEL: str(paths[K.LABEL]), "endmembers": endmembers.astype(np.float32)}


# ---------------------------------------------------------------------------------------- fundus


def _vessel_tree(rng: np.random.Generator, size: int, start: tuple[float, float], depth: int = 5) -> np.ndarray:
    """Binary vessel tree: branches grown from ``start`` with random turns, thinner at each split."""
    from skimage.draw import line

    out = np.zeros((size, size), bool)
    stack = [(start[0], start[1], rng.uniform(0, 2 * np.pi), depth)]
    while stack:
        y, x, ang, level = stack.pop()
        layer = np.zeros_like(out)
        for _ in range(int(rng.integers(4, 8))):
            ang += rng.normal(0, 0.25)
            ny, nx = y + np.sin(ang) * size / 24, x + np.cos(ang) * size / 24
            rr, cc = line(int(y), int(x), int(ny), int(nx))
            ok = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
            layer[rr[ok], cc[ok]] = True
            y, x = ny, nx
        width = max(0, level // 2)
        out |= ndimage.binary_dilation(layer, iterations=width) if width else layer
        if level > 1:
            for turn in (-0.6, 0.6):
                stack.append((y, x, ang + turn + rng.normal(0, 0.2), level - 1))
    return out


def make_fundus_phantoms(out_dir: PathLike, n: int = 2, size: int = 128, seed: int = 0,
                         image_ext: str = ".png", mask_ext: str = ".png") -> list[dict[str, str]]:
    """Write fundus-like RGB images with their vessel trees and field-of-view masks in the DRIVE layout
    (``images/21_training.png``, ``1st_manual/21_manual1.png``, ``mask/21_training_mask.png``; masks are
    0/255 grey). ``mask_ext=".gif"`` mimics DRIVE's GIF masks. Records: ``image``, ``label``, ``mask``."""
    out = Path(out_dir)
    rng = _rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    rad = np.hypot(yy - c, xx - c) / (0.46 * size)
    fov = rad <= 1.0
    records = []
    for i in range(n):
        case = 21 + i
        disc = (c + rng.uniform(-0.05, 0.05) * size, c + rng.choice([-1, 1]) * 0.25 * size)
        vessels = np.zeros((size, size), bool)
        for _ in range(4):
            vessels |= _vessel_tree(rng, size, disc, depth=4)
        vessels &= fov
        shade = 1.0 - 0.45 * rad**2
        disc_glow = np.exp(-((yy - disc[0]) ** 2 + (xx - disc[1]) ** 2) / (2 * (0.05 * size) ** 2))
        rgb = np.stack([0.85 * shade + 0.15 * disc_glow, 0.38 * shade + 0.5 * disc_glow,
                        0.15 * shade + 0.3 * disc_glow])
        rgb = np.where(vessels[None], rgb * np.array([0.6, 0.45, 0.6])[:, None, None], rgb)
        rgb = ndimage.gaussian_filter(rgb, (0, 0.7, 0.7)) + 0.02 * rng.standard_normal(rgb.shape)
        rgb = np.where(fov[None], np.clip(rgb, 0, 1), 0)
        rec = {K.IMAGE: str(out / "images" / f"{case}_training{image_ext}"),
               K.LABEL: str(out / "1st_manual" / f"{case}_manual1{mask_ext}"),
               K.MASK: str(out / "mask" / f"{case}_training_mask{mask_ext}")}
        write_image2d((rgb * 255).round().astype(np.uint8), rec[K.IMAGE])
        write_image2d(vessels.astype(np.uint8) * 255, rec[K.LABEL])
        write_image2d(fov.astype(np.uint8) * 255, rec[K.MASK])
        records.append(rec)
    return records
