"""``medrs-diff evaluate PRED REF --task ...``: score prediction files against reference files.

PRED and REF are two files or two folders of NIfTI (``.nii``/``.nii.gz``), GeoTIFF (``.tif``/``.tiff``)
or NumPy (``.npy``) files; in folders, files are paired by name without extension, and every
prediction needs a reference and vice versa. Each pair's geometry is checked (NIfTI: shape and
affine within 1e-4; GeoTIFF: shape, CRS and transform; otherwise shape). Per-case scores and the
data-set aggregate (the streaming classes of :mod:`medrs_diff.metrics`, so pooled metrics are pooled
over the whole set) are printed as a table and written as CSV (long format: case, group, metric,
value; case ``ALL`` holds the aggregate) and JSON (settings, definitions, aggregate, cases), each
written to a temporary name and renamed so a crash never leaves half a file.

Array conventions per task:

* ``seg``: integer label maps (2-D or 3-D); each foreground label is scored, or the BraTS regions
  with ``--brats`` (without ``--labels`` a first pass over the files finds the label set, so a
  label absent from some cases still scores those cases by the empty-mask rule). A float map in
  [0, 1] is a probability map for a binary task: thresholded at ``--threshold`` for the overlap
  metrics, used as is for AUROC and ECE. Spacing for HD95 / ASD
  comes from the NIfTI header or GeoTIFF transform (``--spacing`` overrides; ``.npy`` uses 1).
  ``--mask`` is a field-of-view mask for the pixel-wise scores of binary tasks.
* ``spectral``: band stacks (C, H, W) (GeoTIFF band order; ``.npy`` as (C, H, W) or with
  ``--channels-last`` (H, W, C)); ``--mask`` restricts SAM.
* ``forecast``: fields (H, W) or (T, H, W), NaN = no data; with ``--ensemble`` the prediction has a
  leading member axis (M, ...). ``--mask`` marks the verification domain.
* ``image``: 2-D or 3-D images (GeoTIFF bands are channels); ``--mask`` restricts PSNR / SSIM /
  NRMSE and gives SUV bias (PET) inside it.
* ``class``: integer class maps or label vectors.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrs_diff import metrics as M
from medrs_diff.metrics._common import MeanTracker, check_positive_ints, check_thresholds

__all__ = ["add_arguments", "run", "find_pairs", "load_array", "check_geometry", "check_mask_geometry",
           "LoadedArray"]

TASKS = ("seg", "spectral", "forecast", "image", "class")
SUFFIXES = (".nii.gz", ".nii", ".tif", ".tiff", ".npy")
AFFINE_TOL = 1e-4


# ----------------------------------------------------------------------------------------- files


@dataclass
class LoadedArray:
    """An array read from disk with the geometry needed for checks and physical units."""

    path: Path
    data: np.ndarray
    kind: str  # "nifti" | "geotiff" | "npy"
    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None
    crs: Any = None
    transform: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_supported(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(SUFFIXES)


def _list_folder(folder: Path, role: str) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not _is_supported(p):
            continue
        key = _stem(p)
        if key in files:
            raise ValueError(f"{role} folder {folder} holds two files named {key!r} ({files[key].name}, "
                             f"{p.name}); keep one file per case")
        files[key] = p
    if not files:
        raise FileNotFoundError(f"{role} folder {folder} holds no {'/'.join(SUFFIXES)} files")
    return files


def find_pairs(pred: Path, ref: Path) -> list[tuple[str, Path, Path]]:
    """Match prediction and reference files by name; ``(case, pred_path, ref_path)`` sorted by case.

    Two files make one pair. Two folders are matched by file name without extension; a prediction
    without reference or a reference without prediction raises FileNotFoundError naming them.
    """
    pred, ref = Path(pred), Path(ref)
    for p, role in ((pred, "PRED"), (ref, "REF")):
        if not p.exists():
            raise FileNotFoundError(f"{role} {p} does not exist")
    if pred.is_file() and ref.is_file():
        for p, role in ((pred, "PRED"), (ref, "REF")):
            if not _is_supported(p):
                raise ValueError(f"{role} {p} is not a {'/'.join(SUFFIXES)} file")
        return [(_stem(ref), pred, ref)]
    if pred.is_dir() and ref.is_dir():
        fp, fr = _list_folder(pred, "PRED"), _list_folder(ref, "REF")
        no_ref, no_pred = sorted(set(fp) - set(fr)), sorted(set(fr) - set(fp))
        if no_ref or no_pred:
            parts = []
            if no_ref:
                parts.append(f"no reference in {ref} for prediction(s) {', '.join(no_ref[:5])}"
                             + (" ..." if len(no_ref) > 5 else ""))
            if no_pred:
                parts.append(f"no prediction in {pred} for reference(s) {', '.join(no_pred[:5])}"
                             + (" ..." if len(no_pred) > 5 else ""))
            raise FileNotFoundError("; ".join(parts) + ". Files are paired by name without extension; "
                                    "add the missing files or remove the unpaired ones")
        return [(k, fp[k], fr[k]) for k in sorted(fp)]
    raise ValueError(f"PRED ({pred}) and REF ({ref}) must both be files or both be folders")


def _find_masks(mask: Path | None, cases: list[str]) -> dict[str, Path | None]:
    if mask is None:
        return dict.fromkeys(cases)
    mask = Path(mask)
    if not mask.exists():
        raise FileNotFoundError(f"--mask {mask} does not exist")
    if mask.is_file():
        return dict.fromkeys(cases, mask)
    files = _list_folder(mask, "mask")
    missing = [c for c in cases if c not in files]
    if missing:
        raise FileNotFoundError(f"no mask in {mask} for case(s) {', '.join(missing[:5])}; masks are paired "
                                "with references by name without extension")
    return {c: files[c] for c in cases}


def load_array(path: Path) -> LoadedArray:
    """Read a NIfTI, GeoTIFF or ``.npy`` file with its geometry (GeoTIFF as (bands, H, W))."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms()[: data.ndim])
        return LoadedArray(path, data, "nifti", spacing=zooms, affine=np.asarray(img.affine, dtype=np.float64))
    if name.endswith((".tif", ".tiff")):
        import rasterio

        with rasterio.open(path) as ds:
            data = ds.read()
            spacing = (abs(float(ds.transform.e)), abs(float(ds.transform.a)))
            return LoadedArray(path, data, "geotiff", spacing=spacing, crs=ds.crs, transform=ds.transform,
                               extra={"nodata": ds.nodata})
    if name.endswith(".npy"):
        return LoadedArray(path, np.load(path, allow_pickle=False), "npy")
    raise ValueError(f"{path} is not a {'/'.join(SUFFIXES)} file")


def check_geometry(a: LoadedArray, b: LoadedArray, skip_leading: int = 0) -> None:
    """Raise ValueError naming both files when their grids differ.

    ``skip_leading`` leading axes of ``a`` are ignored (an ensemble member axis).
    """
    shape_a = a.data.shape[skip_leading:]
    if shape_a != b.data.shape:
        raise ValueError(f"geometry mismatch: {a.path} has shape {shape_a} but {b.path} has shape "
                         f"{b.data.shape}; resample the prediction onto the reference grid")
    if a.kind == b.kind == "nifti":
        if not np.allclose(a.affine, b.affine, atol=AFFINE_TOL, rtol=0):
            diff = float(np.abs(a.affine - b.affine).max())
            raise ValueError(f"geometry mismatch: affines of {a.path} and {b.path} differ by up to {diff:.3g} "
                             f"(tolerance {AFFINE_TOL}); resample or copy the reference header")
    elif a.kind == b.kind == "geotiff":
        if a.crs != b.crs:
            raise ValueError(f"geometry mismatch: {a.path} has CRS {a.crs} but {b.path} has CRS {b.crs}; "
                             "reproject the prediction onto the reference grid")
        if not a.transform.almost_equals(b.transform, precision=1e-6):
            raise ValueError(f"geometry mismatch: {a.path} has transform {tuple(a.transform)[:6]} but "
                             f"{b.path} has {tuple(b.transform)[:6]}; resample onto the reference grid")


def check_mask_geometry(mask: LoadedArray, ref: LoadedArray, grid: tuple[int, ...]) -> np.ndarray:
    """Return the mask as a bool array on ``grid`` (the reference's spatial shape) or raise naming both files."""
    m, _ = _squeeze_spatial(mask)
    if m.shape != tuple(grid):
        raise ValueError(f"geometry mismatch: mask {mask.path} has shape {m.shape} but {ref.path} has grid "
                         f"{tuple(grid)}; give a mask on the reference grid")
    if mask.kind == ref.kind == "nifti" and not np.allclose(mask.affine, ref.affine, atol=AFFINE_TOL, rtol=0):
        raise ValueError(f"geometry mismatch: affines of mask {mask.path} and {ref.path} differ")
    if mask.kind == ref.kind == "geotiff" and (
            mask.crs != ref.crs or not mask.transform.almost_equals(ref.transform, precision=1e-6)):
        raise ValueError(f"geometry mismatch: CRS/transform of mask {mask.path} and {ref.path} differ")
    return m != 0


def _squeeze_spatial(x: LoadedArray) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Label / image array without singleton axes (GeoTIFF band axis, NIfTI trailing axes) + spacing."""
    data, spacing = x.data, x.spacing
    if x.kind == "geotiff":
        if data.shape[0] != 1:
            raise ValueError(f"{x.path} has {data.shape[0]} bands; a label / image map needs one band")
        return data[0], spacing
    keep = [i for i, n in enumerate(data.shape) if n > 1 or i < 2]
    data = data.reshape([data.shape[i] for i in keep])
    if spacing is not None:
        spacing = tuple(spacing[i] for i in keep if i < len(spacing))
    return data, spacing


# --------------------------------------------------------------------------------------- tasks


@dataclass
class _Results:
    settings: dict[str, Any]
    cases: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    aggregate: dict[str, dict[str, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _iter_loaded(pairs, masks) -> Iterator[tuple[str, LoadedArray, LoadedArray, LoadedArray | None]]:
    for case, p, r in pairs:
        lp, lr = load_array(p), load_array(r)
        lm = load_array(masks[case]) if masks[case] is not None else None
        yield case, lp, lr, lm


def _is_probability(x: np.ndarray) -> bool:
    if not np.issubdtype(x.dtype, np.floating):
        return False
    finite = x[np.isfinite(x)]
    return finite.size > 0 and finite.min() >= 0 and finite.max() <= 1 and bool((finite != np.round(finite)).any())


def _eval_seg(pairs, masks, args) -> _Results:
    spacing_override = tuple(args.spacing) if args.spacing else None
    res = _Results(settings={
        "threshold": args.threshold, "tolerance_mm": args.tolerance, "empty_score": args.empty_score,
        "brats": args.brats, "et_label": args.et_label, "spacing_override": spacing_override,
        "definitions": {
            "dice/iou": "per-image mean (dice_mean) and pooled over the set (dice_pooled); both masks empty "
                        "-> empty_score",
            "hd95_mm": "max of directed 95th percentiles of boundary distances in mm (MONAI); one mask empty -> "
                       "image diagonal in mm, both empty -> 0",
            "asd_mm": "mean of both directed boundary-distance sets in mm",
            "surface_dice": "fraction of boundary points within tolerance_mm",
            "pixel scores": "binary tasks only, inside --mask (FOV) when given; AUROC/ECE need probability maps",
        },
    })
    # the label set: BraTS regions, --labels, or a first pass over all files
    if args.brats:
        groups: list[Any] = list(M.BRATS_REGIONS)
    elif args.labels:
        groups = [int(v) for v in args.labels]
    else:
        found: set[int] = set()
        for _, p, r in pairs:
            ref = load_array(r).data
            pred = load_array(p).data
            found |= {int(v) for v in np.unique(ref) if v != 0}
            found |= {1} if _is_probability(pred) else {int(v) for v in np.unique(pred) if v != 0}
        groups = sorted(found) or [1]
    res.settings["labels"] = [str(g) for g in groups]
    binary_task = not args.brats and groups == [1]
    if args.mask is not None and not binary_task:
        raise ValueError(f"--mask is a field-of-view mask for the pixel scores of binary segmentation, but the "
                         f"labels are {res.settings['labels']}; drop --mask or pass --labels 1")
    overlap = {g: M.OverlapMetric(empty_score=args.empty_score) for g in groups}
    surface = {g: {k: MeanTracker() for k in ("hd95", "asd", "surface_dice")} for g in groups}
    pixel, calib = M.PixelMetric(threshold=args.threshold), M.CalibrationMetric()
    spacing_sources = set()
    any_prob = False
    for case, lp, lr, lm in _iter_loaded(pairs, masks):
        check_geometry(lp, lr)
        pred, _ = _squeeze_spatial(lp)
        ref, spacing = _squeeze_spatial(lr)
        if pred.ndim not in (2, 3):
            raise ValueError(f"{lp.path}: segmentation maps must be 2-D or 3-D, got shape {pred.shape}")
        if spacing_override is not None:
            spacing, source = spacing_override, "--spacing"
        elif spacing is None:
            spacing, source = (1.0,) * ref.ndim, "unit (no header)"
        else:
            source = f"{lr.kind} header"
        spacing_sources.add(source)
        prob = _is_probability(pred)
        any_prob |= prob
        if prob and not binary_task:
            raise ValueError(f"{lp.path} is a probability map but the reference labels are {groups}; "
                             "probability maps are only scored for binary (0/1) references")
        labels = (pred >= args.threshold).astype(np.int64) if prob else pred
        case_out: dict[str, dict[str, float]] = {}
        if args.brats:
            pm, rm = M.brats_regions(labels[None], args.et_label), M.brats_regions(ref[None], args.et_label)
        else:
            pm = {g: torch.from_numpy(np.asarray(labels == g))[None] for g in groups}
            rm = {g: torch.from_numpy(np.asarray(ref == g))[None] for g in groups}
        for g in groups:
            overlap[g].update(pm[g], rm[g])
            sd = M.surface_distances(pm[g], rm[g], spacing, args.tolerance, empty_score=args.empty_score)
            for k, tracker in surface[g].items():
                tracker.add(sd[k])
            case_out[str(g)] = {
                "dice": float(M.dice(pm[g], rm[g], empty_score=args.empty_score)[0]),
                "iou": float(M.iou(pm[g], rm[g], empty_score=args.empty_score)[0]),
                "hd95_mm": float(sd["hd95"][0]), "asd_mm": float(sd["asd"][0]),
                "surface_dice": float(sd["surface_dice"][0]),
            }
        if binary_task:
            fov = None if lm is None else check_mask_geometry(lm, lr, ref.shape)[None]
            score_map = pred if prob else labels.astype(np.float64)
            ref_b = ref[None]
            ps = M.pixel_scores(score_map[None], ref_b, fov, args.threshold)
            case_out["1"].update({k: float(v[0]) for k, v in ps.items() if prob or k != "auroc"})
            pixel.update(score_map[None], ref_b, fov)
            if prob:
                case_out["1"]["ece"] = float(M.expected_calibration_error(score_map[None], ref_b, fov)[0])
                calib.update(score_map[None], ref_b, fov)
        res.cases[case] = case_out
    for g in groups:
        agg = overlap[g].compute()
        agg.update(hd95_mm_mean=surface[g]["hd95"].mean, asd_mm_mean=surface[g]["asd"].mean,
                   surface_dice_mean=surface[g]["surface_dice"].mean)
        res.aggregate[str(g)] = agg
    if binary_task:
        pix = pixel.compute()
        if not any_prob:
            pix.pop("auroc")
        res.aggregate["1"].update({f"pixel_{k}": v for k, v in pix.items() if k != "n_images"})
        if any_prob:
            res.aggregate["1"].update(calib.compute())
    res.settings["spacing_source"] = sorted(spacing_sources)
    return res


def _band_stack(x: LoadedArray, channels_last: bool) -> np.ndarray:
    data = x.data
    if x.kind == "nifti" and data.ndim == 3:
        data = np.moveaxis(data, -1, 0)
    elif x.kind == "npy" and channels_last:
        data = np.moveaxis(data, -1, 0)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"{x.path}: spectral images must be (C, H, W) band stacks, got shape {x.data.shape}")
    return data


def _require_data_range(args) -> float | str:
    if args.data_range is None:
        raise ValueError(f"--task {args.task} needs --data-range (e.g. 1.0 for reflectance, 10000 for Sentinel-2 "
                         "DN, 255 for 8-bit; 'ref_range' or 'ref_max' for image)")
    try:
        return float(args.data_range)
    except ValueError:
        if args.task == "image" and args.data_range in ("ref_range", "ref_max"):
            return args.data_range
        raise ValueError(f"--data-range must be a number, got {args.data_range!r}") from None


def _eval_spectral(pairs, masks, args) -> _Results:
    data_range = _require_data_range(args)
    res = _Results(settings={
        "data_range": data_range, "resolution_ratio": args.resolution_ratio,
        "definitions": {
            "sam_deg": "mean per-pixel spectral angle in degrees, zero vectors (and pixels outside --mask) left out",
            "ergas": "Wald: 100*(h/l)*sqrt(mean_k (RMSE_k/mean_ref_k)^2), h/l = resolution_ratio",
            "mpsnr/mssim": "per-band PSNR / SSIM (Gaussian 11x11, sigma 1.5) with data_range, mean over bands",
            "uiqi": "Wang-Bovik 8x8 sliding blocks, mean over bands",
            "q2n": "Garzelli-Nencini, 32x32 blocks (both shrink to the image side for smaller images)",
            "rmse": "over all bands and pixels", "mrae": "mean |pred-ref|/ref over ref != 0",
            "aggregate": "mean over images of the per-image values",
        },
    })
    means = {k: MeanTracker() for k in M.SPECTRAL_KEYS}
    for case, lp, lr, lm in _iter_loaded(pairs, masks):
        check_geometry(lp, lr)
        p = _band_stack(lp, args.channels_last)[None]
        r = _band_stack(lr, args.channels_last)[None]
        mask = None
        if lm is not None:
            mask = check_mask_geometry(lm, lr, r.shape[-2:])[None]
        scores = M.spectral_scores(p, r, float(data_range), args.resolution_ratio, mask)
        res.cases[case] = {"all": {k: float(v[0]) for k, v in scores.items()}}
        for k, v in scores.items():
            means[k].add(v)
    res.aggregate["all"] = {k: t.mean for k, t in means.items()}
    res.aggregate["all"]["n_images"] = float(len(res.cases))
    return res


def _eval_forecast(pairs, masks, args) -> _Results:
    if not args.thresholds:
        raise ValueError("--task forecast needs --thresholds, e.g. --thresholds 0.5 2 5 10 30 (mm/h)")
    thresholds = check_thresholds(args.thresholds, "--thresholds")
    scales = check_positive_ints(args.scales, "--scales")
    res = _Results(settings={
        "thresholds": thresholds, "scales": scales, "ensemble": args.ensemble,
        "definitions": {
            "events": "value >= threshold; NaN and pixels outside --mask left out",
            "csi/pod/far/hss/ets/bias": "contingency tables summed over the whole test set, ratios taken once",
            "csi_poolK": "CSI after KxK max pooling (stride K)",
            "fss_N": "Roberts-Lean FSS, NxN neighbourhood, sums pooled over the set",
            "crps": "ensemble CRPS of the empirical distribution (pysteps), pooled over all pixels; "
                    "crps_avgpoolK after KxK average pooling",
            "ralsd": "radially averaged log spectral distance in dB, mean over fields",
            "deterministic scores with --ensemble": "computed on the ensemble mean",
        },
    })
    cat = M.CategoricalMetric(thresholds, scales)
    fss_metric = M.FSSMetric(thresholds, scales)
    ralsd_metric = M.RALSDMetric()
    crps_metric = M.CRPSMetric(scales) if args.ensemble else None
    for case, lp, lr, lm in _iter_loaded(pairs, masks):
        check_geometry(lp, lr, skip_leading=1 if args.ensemble else 0)
        pred = lp.data.astype(np.float64)
        ref = lr.data.astype(np.float64)
        if ref.ndim < 2:
            raise ValueError(f"{lr.path}: forecast fields need (H, W) axes, got shape {ref.shape}")
        if lm is not None:
            grid = ref.shape if lm.data.ndim == ref.ndim and lm.kind != "geotiff" else ref.shape[-2:]
            outside = ~check_mask_geometry(lm, lr, grid)
            ref = np.where(outside, np.nan, ref)
            pred = np.where(outside, np.nan, pred)
        det = np.nanmean(pred, axis=0) if args.ensemble else pred
        p_b, r_b = det[None], ref[None]
        out: dict[str, float] = {}
        table = M.contingency_table(p_b, r_b, thresholds)
        for name, values in M.categorical_scores(table).items():
            out.update({f"{name}@{t:g}": float(v) for t, v in zip(thresholds, values)})
        f = M.fss(p_b, r_b, thresholds, scales)
        out.update({f"fss_{n}@{t:g}": float(f[i, j]) for i, t in enumerate(thresholds)
                    for j, n in enumerate(scales)})
        cat.update(p_b, r_b)
        fss_metric.update(p_b, r_b)
        if np.isfinite(det).all() and np.isfinite(ref).all():
            v = M.ralsd(det, ref)
            out["ralsd"] = float(v.mean())
            ralsd_metric.update(det, ref)
        if crps_metric is not None:
            e = pred[None]
            for k, v in M.pooled_crps(e, r_b, scales, "avg").items():
                out["crps" if k == 1 else f"crps_avgpool{k}"] = float(v[0])
            crps_metric.update(e, r_b)
        res.cases[case] = {"all": out}
    agg = cat.compute()
    agg.update(fss_metric.compute())
    agg.update(ralsd_metric.compute())
    if crps_metric is not None:
        agg.update(crps_metric.compute())
    res.aggregate["all"] = agg
    res.extra["contingency_tables"] = {
        str(k): {f"{t:g}": dict(zip(("hits", "misses", "false_alarms", "correct_negatives"), map(int, row)))
                 for t, row in zip(thresholds, tab)} for k, tab in cat.tables.items()}
    return res


def _image_layout(x: LoadedArray, spatial_dims: int | None) -> tuple[np.ndarray, int]:
    """(C, *spatial) array and spatial_dims for the image task."""
    data = x.data
    if x.kind == "geotiff":
        return data, 2
    if x.kind == "nifti":
        data, _ = _squeeze_spatial(x)
    sd = spatial_dims or min(data.ndim, 3)
    if data.ndim == sd:
        return data[None], sd
    if data.ndim == sd + 1:
        return data, sd
    raise ValueError(f"{x.path}: image of shape {x.data.shape} does not fit --spatial-dims {sd}")


def _eval_image(pairs, masks, args) -> _Results:
    data_range = _require_data_range(args)
    res = _Results(settings={
        "data_range": data_range, "nrmse_normalization": args.nrmse_norm, "spatial_dims": args.spatial_dims,
        "definitions": {
            "psnr": "10 log10(L^2/MSE) per image (inside --mask), L = data_range",
            "ssim": "Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, valid region, 2-D or 3-D window",
            "nrmse": f"RMSE / {args.nrmse_norm} of the reference",
            "suv_bias": "inside --mask: 100*(mean pred-mean ref)/mean ref and the same for max, percent",
            "enl": "mean^2/variance of linear intensity inside --mask",
            "aggregate": "mean over images of the per-image values",
        },
    })
    means: dict[str, MeanTracker] = {}

    def add(key: str, value: torch.Tensor) -> float:
        means.setdefault(key, MeanTracker()).add(value)
        return float(value[0])

    for case, lp, lr, lm in _iter_loaded(pairs, masks):
        check_geometry(lp, lr)
        p, sd = _image_layout(lp, args.spatial_dims)
        r, _ = _image_layout(lr, args.spatial_dims)
        mask = None
        if lm is not None:
            mask = check_mask_geometry(lm, lr, r.shape[-sd:])[None]
        pb, rb = p[None], r[None]
        out = {
            "psnr": add("psnr", M.psnr(pb, rb, data_range, mask)),
            "ssim": add("ssim", M.ssim(pb, rb, data_range, sd, mask)),
            "nrmse": add("nrmse", M.nrmse(pb, rb, args.nrmse_norm, mask)),
        }
        if mask is not None:
            bias = M.suv_bias(pb, rb, mask)
            out["suv_mean_bias_pct"] = add("suv_mean_bias_pct", bias["mean_bias_pct"])
            out["suv_max_bias_pct"] = add("suv_max_bias_pct", bias["max_bias_pct"])
        if args.enl:
            out["enl_pred"] = add("enl_pred", M.enl(pb, mask))
            out["enl_ref"] = add("enl_ref", M.enl(rb, mask))
        res.cases[case] = {"all": out}
    res.aggregate["all"] = {k: t.mean for k, t in means.items()}
    res.aggregate["all"]["n_images"] = float(len(res.cases))
    return res


def _eval_class(pairs, masks, args) -> _Results:
    num_classes = args.num_classes
    if num_classes is None:
        top = 0
        for _, p, r in pairs:
            for path in (p, r):
                d = load_array(path).data
                valid = d[d != args.ignore_index] if args.ignore_index is not None else d
                top = max(top, int(np.nanmax(valid)) if valid.size else 0)
        num_classes = max(top + 1, 2)
    res = _Results(settings={
        "num_classes": num_classes, "ignore_index": args.ignore_index,
        "definitions": {"overall_accuracy": "trace/N of the confusion matrix summed over the set",
                        "average_accuracy": "mean per-class recall (classes present in the reference)",
                        "kappa": "Cohen's kappa from the summed confusion matrix"},
    })
    agg = M.ClassificationMetric(num_classes, args.ignore_index)
    for case, lp, lr, lm in _iter_loaded(pairs, masks):
        check_geometry(lp, lr)
        p, r = lp.data.astype(np.float64), lr.data.astype(np.float64)
        if lm is not None:
            keep = check_mask_geometry(lm, lr, _squeeze_spatial(lr)[0].shape).reshape(r.shape)
            p, r = p[keep], r[keep]
        cm = M.confusion_matrix(p, r, num_classes, args.ignore_index)
        res.cases[case] = {"all": M.classification_scores(cm)}
        agg.update(p, r)
    res.aggregate["all"] = agg.compute()
    res.extra["confusion_matrix"] = agg.matrix.tolist()
    return res


_TASK_FNS: dict[str, Callable[..., _Results]] = {
    "seg": _eval_seg, "spectral": _eval_spectral, "forecast": _eval_forecast, "image": _eval_image,
    "class": _eval_class,
}


# -------------------------------------------------------------------------------------- output


def _json_value(v: Any) -> Any:
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    return v


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _csv_text(results: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case", "group", "metric", "value"])
    for group, metrics in results["aggregate"].items():
        for k, v in metrics.items():
            w.writerow(["ALL", group, k, repr(float(v))])
    for case, groups in results["cases"].items():
        for group, metrics in groups.items():
            for k, v in metrics.items():
                w.writerow([case, group, k, repr(float(v))])
    return buf.getvalue()


def _table(results: dict[str, Any]) -> str:
    groups = list(results["aggregate"])
    names: list[str] = []
    for g in groups:
        names += [k for k in results["aggregate"][g] if k not in names]
    width = max([len("metric")] + [len(n) for n in names])
    head = f"{'metric':<{width}}  " + "  ".join(f"{g:>12}" for g in groups)
    lines = [f"medrs-diff evaluate --task {results['task']}: {results['n_cases']} case(s)", head, "-" * len(head)]
    for n in names:
        vals = [results["aggregate"][g].get(n, float("nan")) for g in groups]
        lines.append(f"{n:<{width}}  " + "  ".join(f"{v:>12.6g}" for v in vals))
    return "\n".join(lines)


def _default_out(pred: Path) -> Path:
    candidate = pred.parent / f"{_stem(pred) if pred.is_file() else pred.name}_evaluation"
    try:
        candidate.mkdir(parents=True, exist_ok=True)
        return candidate
    except OSError:
        return Path("evaluation_out")


# ------------------------------------------------------------------------------------ public API


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` sub-command's arguments to ``parser``."""
    parser.add_argument("pred", type=Path, metavar="PRED", help="prediction file or folder")
    parser.add_argument("ref", type=Path, metavar="REF", help="reference file or folder (paired by name)")
    parser.add_argument("--task", required=True, choices=TASKS, help="which metric family to compute")
    parser.add_argument("--mask", type=Path, default=None,
                        help="mask file (all cases) or folder (paired by name): FOV for seg, SAM mask for "
                             "spectral, verification domain for forecast, body/lesion mask for image, "
                             "pixels to score for class")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for evaluation_<task>.csv/.json (default: <PRED>_evaluation beside PRED, "
                             "else ./evaluation_out)")
    g = parser.add_argument_group("seg")
    g.add_argument("--spacing", type=float, nargs="+", default=None,
                   help="voxel spacing in mm per axis, overriding the file header")
    g.add_argument("--labels", type=int, nargs="+", default=None, help="labels to score (default: all found)")
    g.add_argument("--brats", action="store_true", help="score BraTS regions WT/TC/ET instead of labels")
    g.add_argument("--et-label", type=int, default=4, choices=(3, 4), help="enhancing-tumour label (BraTS)")
    g.add_argument("--threshold", type=float, default=0.5, help="threshold for probability maps")
    g.add_argument("--tolerance", type=float, default=1.0, help="surface Dice tolerance in mm")
    g.add_argument("--empty-score", type=float, default=1.0,
                   help="Dice/IoU/surface Dice when prediction and reference are both empty ('nan' to skip)")
    g = parser.add_argument_group("spectral / image")
    g.add_argument("--data-range", default=None,
                   help="data range for PSNR/SSIM (required): a number, or ref_range / ref_max (image task)")
    g.add_argument("--resolution-ratio", type=float, default=1.0,
                   help="ERGAS h/l, high/low-resolution pixel-size ratio (0.25 for x4 SR)")
    g.add_argument("--channels-last", action="store_true", help=".npy band stacks are (H, W, C)")
    g.add_argument("--nrmse-norm", default="euclidean", choices=("euclidean", "min-max", "mean"),
                   help="NRMSE normaliser")
    g.add_argument("--spatial-dims", type=int, default=None, choices=(2, 3), help="2-D or 3-D SSIM")
    g.add_argument("--enl", action="store_true", help="also report the equivalent number of looks (SAR)")
    g = parser.add_argument_group("forecast")
    g.add_argument("--thresholds", type=float, nargs="+", default=None, help="event thresholds, increasing")
    g.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16],
                   help="max-pool sizes for CSI, FSS neighbourhoods, CRPS average-pool sizes")
    g.add_argument("--ensemble", action="store_true", help="PRED has a leading ensemble-member axis")
    g = parser.add_argument_group("class")
    g.add_argument("--num-classes", type=int, default=None, help="number of classes (default: max label + 1)")
    g.add_argument("--ignore-index", type=int, default=None, help="reference label to leave out")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate PRED against REF, print the table, write CSV + JSON; return the results dict.

    The dict holds ``task``, ``pred``, ``ref``, ``mask``, ``n_cases``, ``settings``, ``aggregate``
    (group → metric → value), ``cases`` (case → group → metric → value), task extras
    (contingency tables, confusion matrix) and the written ``csv`` / ``json`` paths.
    """
    if args.task not in _TASK_FNS:
        raise ValueError(f"--task must be one of {TASKS}, got {args.task!r}")
    pairs = find_pairs(args.pred, args.ref)
    masks = _find_masks(args.mask, [c for c, _, _ in pairs])
    with torch.no_grad():
        res = _TASK_FNS[args.task](pairs, masks, args)
    results: dict[str, Any] = {
        "task": args.task, "pred": str(args.pred), "ref": str(args.ref),
        "mask": None if args.mask is None else str(args.mask), "n_cases": len(res.cases),
        "settings": res.settings, "aggregate": res.aggregate, "cases": res.cases, **res.extra,
    }
    out = Path(args.out) if args.out is not None else _default_out(Path(args.pred))
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / f"evaluation_{args.task}.csv", out / f"evaluation_{args.task}.json"
    _atomic_write(csv_path, _csv_text(results))
    _atomic_write(json_path, json.dumps(_json_value(results), indent=2, default=str) + "\n")
    print(_table(results))
    print(f"wrote {csv_path} and {json_path}")
    results.update(csv=str(csv_path), json=str(json_path))
    return results
