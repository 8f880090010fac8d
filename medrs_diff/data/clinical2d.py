"""2D clinical images (fundus, dermoscopy, endoscopy, ultrasound, X-ray) as PNG / JPEG / TIFF / GIF
through MONAI's PIL reader, with their label masks and field-of-view masks (DRIVE layout: ``images/``,
``1st_manual/``, ``mask/``). RGB or grey, native resolution or resized (masks by nearest neighbour).

Arrays are (C, H, W) in the row/column order of the file (PILReader with ``reverse_indexing=False``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import PILReader
from monai.transforms import AsDiscreted, MapTransform, Resized
from PIL import Image

from . import keys as K
from .errors import DataError
from .medical import CheckedDataset, CheckGeometryd, DataPipeline, SafeLoadImaged, ScaleToModeld, validate_records
from .scaling import Scaling, ScalingSpec, digital_number

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")


def _to_rgb(im: Image.Image) -> Image.Image:
    return im if im.mode == "RGB" else im.convert("RGB")


def _to_grey(im: Image.Image) -> Image.Image:
    return im if im.mode in ("L", "I;16", "I", "F") else im.convert("L")


def _to_binary_source(im: Image.Image) -> Image.Image:
    return im if im.mode in ("L", "I;16", "I") else im.convert("L")


def auto_dn(x: torch.Tensor) -> Scaling:
    """8-bit range for uint8 images, 16-bit range otherwise."""
    return digital_number(8 if x.dtype == torch.uint8 or float(x.max()) <= 255 else 16)


class ApplyFOVd(MapTransform):
    """Set pixels outside the field of view (``fov_key`` == 0) to the model-space minimum -1."""

    def __init__(self, keys: Sequence[str], fov_key: str = K.MASK) -> None:
        super().__init__(keys)
        self.fov_key = fov_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        inside = d[self.fov_key] > 0
        for key in self.key_iterator(d):
            d[key] = torch.where(inside, d[key], torch.full_like(d[key], -1.0))
        return d


def clinical2d_transforms(
    image_key: str = K.IMAGE,
    mask_keys: Sequence[str] = (K.LABEL, K.MASK),
    *,
    channels: str = "rgb",
    scaling: ScalingSpec = auto_dn,
    spatial_size: Sequence[int] | None = None,
    apply_fov: bool = False,
) -> DataPipeline:
    """MONAI pipeline for 2D records such as ``{"image": "21_training.tif", "label": "21_manual1.gif",
    "mask": "21_training_mask.gif"}``.

    Args:
        image_key: the photograph / scan.
        mask_keys: binary masks (vessels, lesion, field of view), loaded as one channel and binarised (> 0).
        channels: ``"rgb"`` (3 channels), ``"grey"`` (1 channel; 16-bit kept) for the image.
        scaling: image scaling into model space (default: 8- or 16-bit full range onto [-1, 1]).
        spatial_size: resize to (H, W) (image bilinear with anti-aliasing, masks nearest); None = native.
        apply_fov: set image pixels outside the ``mask`` field of view to -1.
    """
    if channels not in ("rgb", "grey"):
        raise DataError(None, f"channels='{channels}'", "use 'rgb' or 'grey'")
    mask_keys = list(mask_keys)
    convert = _to_rgb if channels == "rgb" else _to_grey
    t: list[Any] = [
        SafeLoadImaged(image_key, reader=PILReader(reverse_indexing=False, converter=convert), image_only=True,
                   ensure_channel_first=True, dtype=None),
    ]
    if mask_keys:
        t += [SafeLoadImaged(mask_keys, reader=PILReader(reverse_indexing=False, converter=_to_binary_source),
                         image_only=True, ensure_channel_first=True, dtype=None),
              CheckGeometryd([image_key, *mask_keys], check_affine=False),
              AsDiscreted(mask_keys, threshold=0.5)]
    t.append(ScaleToModeld([image_key], scaling))
    if spatial_size is not None:
        t.append(Resized(image_key, tuple(spatial_size), mode="bilinear", anti_aliasing=True))
        if mask_keys:
            t.append(Resized(mask_keys, tuple(spatial_size), mode="nearest"))
    if apply_fov:
        t.append(ApplyFOVd([image_key], K.MASK))
    return DataPipeline(t)


def _case_id(name: str) -> str:
    m = re.match(r"^(\d+)", name)
    return m.group(1) if m else Path(name).stem


def _find(folder: Path, case: str, pattern: str) -> Path | None:
    hits = [p for p in sorted(folder.glob(pattern.format(id=case))) if p.suffix.lower() in IMAGE_SUFFIXES]
    return hits[0] if hits else None


def drive_records(root: str | os.PathLike, split: str = "training",
                  require_labels: bool = True) -> list[dict[str, str]]:
    """Records of the DRIVE layout: ``<root>/<split>/images/21_training.tif``,
    ``1st_manual/21_manual1.gif`` (vessels -> ``label``), ``mask/21_training_mask.gif`` (FOV -> ``mask``)."""
    base = Path(root) / split
    images = base / "images"
    if not images.is_dir():
        raise DataError(images, "folder does not exist", "point `root` at the DRIVE folder (holding training/, test/)")
    records = []
    for img in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        case = _case_id(img.name)
        rec = {K.IMAGE: str(img)}
        manual = _find(base / "1st_manual", case, "{id}_manual1.*")
        fov = _find(base / "mask", case, "{id}_*mask.*")
        if manual is None and require_labels:
            raise DataError(img, f"has no vessel mask {case}_manual1.* in {base / '1st_manual'}",
                            "add it, or pass require_labels=False")
        if fov is None:
            raise DataError(img, f"has no field-of-view mask {case}_*mask.* in {base / 'mask'}", "add it")
        if manual is not None:
            rec[K.LABEL] = str(manual)
        rec[K.MASK] = str(fov)
        records.append(rec)
    if not records:
        raise DataError(images, "holds no image", f"add images with one of the extensions {IMAGE_SUFFIXES}")
    return records


def folder_records(image_dir: str | os.PathLike, mask_dirs: Mapping[str, str | os.PathLike] | None = None,
                   suffixes: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """Pair images with masks of the same stem (minus a per-key suffix such as ``"_segmentation"``),
    e.g. ISIC: ``folder_records("ISIC_images", {"label": "ISIC_masks"}, {"label": "_segmentation"})``."""
    suffixes = dict(suffixes or {})
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DataError(image_dir, "image folder does not exist", "check the path")
    tables = {}
    for key, folder in (mask_dirs or {}).items():
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(folder, f"folder for '{key}' does not exist", "check the path")
        sfx = suffixes.get(key, "")
        tables[key] = {p.stem[: len(p.stem) - len(sfx)] if sfx and p.stem.endswith(sfx) else p.stem: p
                       for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    records = []
    for img in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        rec = {K.IMAGE: str(img)}
        for key, table in tables.items():
            if img.stem not in table:
                raise DataError(img, f"has no '{key}' mask named {img.stem}{suffixes.get(key, '')}.*",
                                "add it or remove the image")
            rec[key] = str(table[img.stem])
        records.append(rec)
    if not records:
        raise DataError(image_dir, "holds no image", f"add images with one of the extensions {IMAGE_SUFFIXES}")
    return records


def clinical2d_dataset(records: Sequence[Mapping[str, Any]], transforms: DataPipeline) -> CheckedDataset:
    """A MONAI Dataset over validated 2D records (every file must exist)."""
    return CheckedDataset(validate_records(records, check_geometry=False), transforms)
