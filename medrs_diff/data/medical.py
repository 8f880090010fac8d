"""NIfTI pipelines on MONAI dictionary transforms.

Load -> check that paired/stacked inputs share one grid -> orient (RAS) -> resample to a spacing ->
scale intensities into model space per modality (CT window, MRI percentiles / z-score, PET fixed SUV)
-> crop/pad -> random 3D patches or 2D slices. Records are dicts of file paths, e.g.
``{"image": "ct.nii.gz", "label": "seg.nii.gz"}``, ``{"t1": ..., "t1ce": ..., "t2": ..., "flair": ...,
"label": ...}`` (stacked as channels of ``image``) or ``{"cond": "low_dose.nii.gz", "image": "full.nii.gz"}``.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import (
    Compose,
    ConcatItemsd,
    ConvertToMultiChannelBasedOnBratsClassesd,
    DeleteItemsd,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandCropByPosNegLabeld,
    Randomizable,
    RandSpatialCropd,
    RandSpatialCropSamplesd,
    ResizeWithPadOrCropd,
    Spacingd,
    SpatialPadd,
    SqueezeDimd,
)

from ..io.geometry import compare_grids
from ..io.nifti import load_nifti_image
from . import keys as K
from .errors import DataError, require_file
from .scaling import ScalingSpec, resolve
from .seeding import EpochAware, seed_transforms

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _filename(x: Any, fallback: Hashable) -> str:
    meta = getattr(x, "meta", None) or {}
    return str(meta.get("filename_or_obj", fallback))


def check_grids(paths: Mapping[str, str | os.PathLike], atol: float = 1e-3) -> None:
    """Check from the headers alone that NIfTI files share shape and affine (within ``atol`` mm).

    Cheap (no voxel data is read); raises ``DataError`` naming the disagreeing file.
    """
    items = list(paths.items())
    if len(items) < 2:
        return
    ref_key, ref_path = items[0]
    ref = load_nifti_image(ref_path)
    for _, path in items[1:]:
        img = load_nifti_image(path)
        _compare_grid(path, ref_path, tuple(img.shape[:3]), tuple(ref.shape[:3]), img.affine, ref.affine, atol)


#: Ways out named in grid-mismatch errors of paired / stacked medical inputs.
GRID_HINTS = {"affine": "raise `geometry_atol` if the difference is only rounding"}


def _compare_grid(path: Any, ref_path: Any, shape: tuple, ref_shape: tuple, affine: Any, ref_affine: Any,
                  atol: float) -> None:
    compare_grids(path, ref_path, shape=shape, ref_shape=ref_shape, affine=affine, ref_affine=ref_affine,
                  atol=atol, shape_label="spatial shape", hints=GRID_HINTS)


class CheckGeometryd(MapTransform):
    """Raise ``DataError`` unless all ``keys`` share spatial shape and (``check_affine``) affine within ``atol``."""

    def __init__(self, keys: Sequence[str], atol: float = 1e-3, check_affine: bool = True,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.atol = atol if check_affine else float("inf")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        present = [k for k in self.key_iterator(d)]
        if len(present) < 2:
            return d
        ref = d[present[0]]
        for key in present[1:]:
            x = d[key]
            _compare_grid(_filename(x, key), _filename(ref, present[0]), tuple(x.shape[1:]), tuple(ref.shape[1:]),
                          x.affine, ref.affine, self.atol)
        return d


class ScaleToModeld(MapTransform):
    """Scale each key into model space with a :class:`~medrs_diff.data.scaling.Scaling` and record it.

    The record lands under ``<key>_scaling`` so predictions can be mapped back to raw units. NaN voxels
    are set to the image minimum first (a network never sees NaN); an all-NaN image is an error.
    """

    def __init__(self, keys: Sequence[str], scaling: ScalingSpec, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaling = scaling

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            x = x if x.is_floating_point() else x.float()
            finite = torch.isfinite(x)
            if not bool(finite.any()):
                raise DataError(_filename(x, key), "has no finite voxel (all NaN or Inf)",
                                "re-export the image; it holds no data")
            if not bool(finite.all()):
                x = torch.where(finite, x, x[finite].min())
            s = resolve(self.scaling, x)
            d[key] = s.forward(x)
            d[K.scaling_key(str(key))] = s.to_dict()
        return d


class RandAxialSliced(Randomizable, MapTransform):
    """Keep one axial slice (last axis) of every key: a slice without foreground in ``label_key`` with
    probability ``empty_fraction`` (when the volume has one), else a slice with foreground (when it has
    one); ``empty_fraction=None`` draws any slice uniformly. The slice axis is kept (size 1)."""

    def __init__(self, keys: Sequence[str], label_key: str | None = None, empty_fraction: float | None = None) -> None:
        MapTransform.__init__(self, keys)
        self.label_key, self.empty_fraction = label_key, empty_fraction
        self._z = 0

    def randomize(self, label: Any, depth: int) -> None:
        if self.empty_fraction is None or label is None:
            self._z = int(self.R.randint(depth))
            return
        lab = torch.as_tensor(label)
        has_fg = (lab > 0).reshape(-1, depth).any(0).cpu().numpy()
        empty, filled = np.flatnonzero(~has_fg), np.flatnonzero(has_fg)
        want_empty = self.R.rand() < self.empty_fraction
        pool = empty if (want_empty and empty.size) or not filled.size else filled
        self._z = int(pool[self.R.randint(pool.size)])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        depth = int(d[keys[0]].shape[-1])
        self.randomize(d.get(self.label_key) if self.label_key else None, depth)
        for key in keys:
            d[key] = d[key][..., self._z : self._z + 1]
        return d


class CheckPatchSized(MapTransform):
    """Raise ``DataError`` if a requested patch is larger than the (resampled) image."""

    def __init__(self, keys: Sequence[str], patch_size: Sequence[int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.patch_size = tuple(int(p) for p in patch_size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            shape = tuple(d[key].shape[1:])
            if any(p > 0 and p > s for p, s in zip(self.patch_size, shape)):
                raise DataError(_filename(d[key], key), f"patch {self.patch_size} is larger than the image {shape} "
                                "(after resampling)", "use a smaller `patch_size`, or set `pad_to_patch=True`")
        return d


class DataPipeline(Compose):
    """MONAI Compose that surfaces a ``DataError`` raised inside any transform as itself (MONAI wraps
    transform errors in ``RuntimeError("applying transform ...")``), and does not log data statistics."""

    def __init__(self, transforms: Sequence[Any], **kwargs: Any) -> None:
        kwargs.setdefault("log_stats", False)
        super().__init__(list(transforms), **kwargs)

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(input_, *args, **kwargs)
        except RuntimeError as exc:
            err: BaseException | None = exc
            while err is not None and not isinstance(err, DataError):
                err = err.__cause__
            if err is None:
                raise
            raise DataError(err.path, err.problem, err.fix) from None


class SafeLoadImaged(LoadImaged):
    """``LoadImaged`` that raises ``DataError`` naming the missing or unreadable file."""

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            require_file(d[key], f"'{key}' file")
        try:
            return super().__call__(d, reader)
        except Exception as exc:
            bad = None
            for key in self.key_iterator(d):
                try:
                    self._loader(d[key], reader)
                except Exception:
                    bad = d[key]
                    break
            raise DataError(bad, f"cannot be read as an image ({type(exc).__name__}: {exc})",
                            "check that it is a complete, uncorrupted image file (re-export it)") from exc


class CheckedDataset(EpochAware, Dataset):
    """MONAI Dataset whose items raise ``DataError`` directly (not wrapped in RuntimeError).

    With ``seed`` set, the random transforms are reseeded before each item from ``(seed, epoch, index)``
    (:func:`~medrs_diff.data.seeding.item_seed`), so an item's patch depends neither on the items loaded
    before it nor on the worker, and a mid-epoch resume that skips items draws the same patches.
    ``set_epoch`` / ``follow(sampler)`` give the epoch.
    """

    def __init__(self, data: Sequence[Any], transform: Any = None, seed: int | None = None) -> None:
        super().__init__(data, transform)
        self.seed = seed

    def _transform(self, index: int) -> Any:
        item = self.data[index]
        if self.transform is None:
            return item
        if self.seed is not None:
            seed_transforms(self.transform, self.seed, self.current_epoch(), index)
        return self.transform(item)


def medical_transforms(
    image_keys: Sequence[str] = (K.IMAGE,),
    label_keys: Sequence[str] = (),
    *,
    scaling: ScalingSpec | Mapping[str, ScalingSpec] = "ct",
    stack: Sequence[str] | None = None,
    orientation: str | None = "RAS",
    spacing: Sequence[float] | None = None,
    spatial_size: Sequence[int] | None = None,
    patch_size: Sequence[int] | None = None,
    num_patches: int = 1,
    pos_fraction: float | None = None,
    slices_2d: bool = False,
    empty_slice_fraction: float | None = None,
    pad_to_patch: bool = False,
    brats_regions: bool = False,
    geometry_atol: float = 1e-3,
    seed: int | None = None,
) -> DataPipeline:
    """Build the MONAI pipeline for NIfTI records.

    Args:
        image_keys: intensity images (e.g. ``("image",)``, ``("cond", "image")`` for low/full-dose pairs,
            or the modality keys ``("t1", "t1ce", "t2", "flair")``).
        label_keys: label maps (resampled by nearest neighbour, never scaled).
        scaling: one spec for all images, or a mapping key -> spec: a ``Scaling``, ``"ct"`` (HU window
            L40/W400), ``"mri"`` (0.5-99.5 percentiles), ``"zscore"``, ``"pet"`` (SUV 0-10), ``"none"``.
        stack: image keys concatenated (in this order) as the channels of ``image``, after per-key scaling.
        orientation: axis codes to reorient to (``None`` keeps the stored order).
        spacing: target voxel spacing in mm (``None`` keeps the native spacing).
        spatial_size: centre crop / pad every item to this size (images padded with -1, labels with 0).
        patch_size: random patch size (3D), or the in-plane size of 2D slices; ``-1`` keeps a full axis.
        num_patches: patches (or slices) drawn per volume; > 1 returns a list of dicts.
        pos_fraction: if set (with a label), patches are centred on foreground with this probability.
        slices_2d: draw random axial slices (last axis after orientation) instead of 3D patches.
        empty_slice_fraction: with ``slices_2d`` and a label, the share of slices drawn without foreground
            (:class:`RandAxialSliced`; None: any slice).
        pad_to_patch: pad images smaller than the patch instead of raising ``DataError``.
        brats_regions: turn a BraTS label (1 NCR, 2 ED, 4 ET) into 3 channels TC, WT, ET.
        geometry_atol: affine tolerance (mm) for paired / stacked inputs.
        seed: seed for the random crops.
    """
    image_keys, label_keys = list(image_keys), list(label_keys)
    all_keys = image_keys + label_keys
    t: list[Any] = [
        SafeLoadImaged(all_keys, reader="NibabelReader", image_only=True, ensure_channel_first=True),
        CheckGeometryd(all_keys, atol=geometry_atol),
    ]
    if orientation:
        t.append(Orientationd(all_keys, axcodes=orientation, labels=None))
    if spacing is not None:
        t.append(Spacingd(all_keys, pixdim=tuple(spacing), mode=["bilinear"] * len(image_keys)
                          + ["nearest"] * len(label_keys)))
    specs = scaling if isinstance(scaling, Mapping) else {k: scaling for k in image_keys}
    missing = [k for k in image_keys if k not in specs]
    if missing:
        raise DataError(None, f"no scaling given for image keys {missing}", "add them to the `scaling` mapping")
    t += [ScaleToModeld([k], specs[k]) for k in image_keys]
    out_images = image_keys
    if stack:
        t += [ConcatItemsd(list(stack), K.IMAGE, dim=0), DeleteItemsd([k for k in stack if k != K.IMAGE])]
        out_images = [K.IMAGE] + [k for k in image_keys if k not in stack and k != K.IMAGE]
    if brats_regions:
        if not label_keys:
            raise DataError(None, "brats_regions needs a label key", "pass `label_keys=('label',)`")
        t.append(ConvertToMultiChannelBasedOnBratsClassesd(label_keys))
    out_keys = out_images + label_keys
    if spatial_size is not None:
        t.append(ResizeWithPadOrCropd(out_images, spatial_size, value=-1.0))
        if label_keys:
            t.append(ResizeWithPadOrCropd(label_keys, spatial_size))
    if empty_slice_fraction is not None and (not slices_2d or pos_fraction is not None):
        raise DataError(None, "empty_slice_fraction applies to slices_2d without pos_fraction",
                        "give one of empty_slice_fraction (slices) and pos_fraction (patches)")
    if slices_2d and pos_fraction is None:
        t.append(RandAxialSliced(out_keys, label_keys[0] if label_keys else None, empty_slice_fraction))
    if patch_size is not None or slices_2d:
        roi = list(patch_size) if patch_size is not None else [-1, -1]
        if slices_2d:
            roi = roi[:2] + [1]
        if pad_to_patch:
            t.append(SpatialPadd(out_images, roi, value=-1.0))
            if label_keys:
                t.append(SpatialPadd(label_keys, roi))
        t.append(CheckPatchSized(out_keys, roi))
        if pos_fraction is not None and label_keys:
            t.append(RandCropByPosNegLabeld(out_keys, label_keys[0], roi, pos=pos_fraction,
                                            neg=1.0 - pos_fraction, num_samples=num_patches, allow_smaller=False))
        elif num_patches > 1:
            t.append(RandSpatialCropSamplesd(out_keys, roi, num_samples=num_patches, random_size=False))
        else:
            t.append(RandSpatialCropd(out_keys, roi, random_size=False))
        if slices_2d:
            t.append(SqueezeDimd(out_keys, dim=-1))
    pipeline = DataPipeline(t)
    if seed is not None:
        pipeline.set_random_state(seed=seed)
    return pipeline


FILE_SUFFIXES = (".nii", ".gz", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp", ".mha", ".nrrd")


def _looks_like_file(value: Any) -> bool:
    return isinstance(value, str | os.PathLike) and Path(value).suffix.lower() in FILE_SUFFIXES


def validate_records(records: Sequence[Mapping[str, Any]], file_keys: Sequence[str] | None = None,
                     check_geometry: bool = True, atol: float = 1e-3) -> list[dict[str, Any]]:
    """Check that every file of every record exists and (from headers) that they share one grid.

    ``file_keys`` default: entries whose value has an image file extension (other entries, such as a
    subject id, pass through).
    """
    out = []
    for rec in records:
        keys = file_keys or [k for k, v in rec.items() if _looks_like_file(v)]
        for k in keys:
            if k not in rec:
                raise DataError(None, f"record {dict(rec)} has no '{k}' entry", f"add the '{k}' file to each record")
            require_file(rec[k], f"'{k}' file")
        if check_geometry:
            check_grids({k: rec[k] for k in keys}, atol)
        out.append({k: str(v) if isinstance(v, Path) else v for k, v in rec.items()})
    return out


def medical_dataset(records: Sequence[Mapping[str, Any]], transforms: Compose,
                    file_keys: Sequence[str] | None = None, check_geometry: bool = True,
                    seed: int | None = None) -> CheckedDataset:
    """A MONAI Dataset over validated NIfTI records (missing files and grid mismatches fail up front).

    ``seed``: random transforms are reseeded per item from ``(seed, epoch, index)`` (see :class:`CheckedDataset`).
    """
    return CheckedDataset(validate_records(records, file_keys, check_geometry), transforms, seed=seed)


def _stem(p: Path) -> str:
    name = p.name
    for suf in NIFTI_SUFFIXES[::-1]:
        if name.endswith(suf):
            return name[: -len(suf)]
    return p.stem


def pair_folders(folders: Mapping[str, str | os.PathLike], suffixes: Mapping[str, str] | None = None,
                 pattern: str = "*.nii*") -> list[dict[str, str]]:
    """Pair files of several folders by name, e.g. ``{"image": "imagesTr", "label": "labelsTr"}``.

    ``suffixes`` strips a per-key ending from the stem before matching (e.g. ``{"label": "_seg"}``).
    A case that lacks one of the files raises ``DataError`` naming it.
    """
    suffixes = dict(suffixes or {})
    tables: dict[str, dict[str, Path]] = {}
    for key, folder in folders.items():
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(folder, f"folder for '{key}' does not exist", "check the dataset layout")
        table = {}
        for p in sorted(folder.glob(pattern)):
            stem = _stem(p)
            if suffixes.get(key) and stem.endswith(suffixes[key]):
                stem = stem[: -len(suffixes[key])]
            table[stem] = p
        if not table:
            raise DataError(folder, f"no files matching '{pattern}'", "check the folder and the pattern")
        tables[key] = table
    first_key, first = next(iter(tables.items()))
    records = []
    for stem, path in first.items():
        rec = {first_key: str(path)}
        for key, table in tables.items():
            if key == first_key:
                continue
            if stem not in table:
                raise DataError(path, f"has no matching '{key}' file in {folders[key]}",
                                f"add {stem}{suffixes.get(key, '')}.nii.gz there or remove this case")
            rec[key] = str(table[stem])
        records.append(rec)
    return records
