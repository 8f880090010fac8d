"""2D clinical images (fundus, dermoscopy, endoscopy, ultrasound, X-ray) as PNG / JPEG / TIFF / GIF
through MONAI's PIL reader, with their label masks and field-of-view masks (DRIVE layout: ``images/``,
``1st_manual/``, ``mask/``). RGB or grey, native resolution or resized (masks by nearest neighbour).

Arrays are (C, H, W) in the row/column order of the file (PILReader with ``reverse_indexing=False``).

Also here, for :class:`~medrs_diff.datamodules.clinical2d.Clinical2DSegmentationDataModule`: mask planes
read through the io registry (``read_mask_plane``: grey, or RGB with identical channels), their class
indices (``classes_from_plane``: explicit threshold or ``{value: class}`` map), and synthetic cases
(``phantom_case``: fundus vessels on a disc field of view, dermoscopy / endoscopy blobs, optic disc / cup).
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
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


# ------------------------------------------------------------------------------ masks -> class indices
#: lossy formats: their masks carry compression noise, so they are thresholded (with a warning), never checked
LOSSY_SUFFIXES = (".jpg", ".jpeg")
#: a lossy (JPEG) RGB mask counts as grey when its channels differ by at most this much
LOSSY_CHANNEL_TOLERANCE = 24


def is_lossy(path: str | os.PathLike) -> bool:
    """True for JPEG files (lossy compression: a mask's values are not exact)."""
    return Path(path).suffix.lower() in LOSSY_SUFFIXES


def read_mask_plane(path: str | os.PathLike, what: str = "mask") -> np.ndarray:
    """One (H, W) plane of a mask file, read with the io registry's 2-D image reader (PNG / JPEG / TIFF / GIF /
    BMP). A grey file is taken as it is; an RGB(A) file must have identical channels (HRF's RGB field-of-view
    masks; a JPEG may differ by compression noise up to ``LOSSY_CHANNEL_TOLERANCE``), else ``DataError``."""
    from ..io.image2d import read_image2d

    arr = read_image2d(path).data
    if arr.shape[0] == 1:
        return arr[0]
    lossy = is_lossy(path)
    if not lossy and np.array_equal(arr[0], arr[1]) and np.array_equal(arr[0], arr[2]):
        return arr[0]
    colour = arr[:3].astype(np.int32)
    spread = int(np.abs(colour - colour[:1]).max()) if colour.size else 0
    if spread > (LOSSY_CHANNEL_TOLERANCE if lossy else 0):
        raise DataError(path, f"{what} is an RGB image whose channels differ (by up to {spread}): a colour mask "
                        "has no class values", "save it as a single-channel grey mask whose values are the classes "
                        "(RGB masks are accepted only when the three channels are identical)")
    return np.rint(colour.mean(axis=0)).astype(arr.dtype)


def distinct_values(plane: np.ndarray) -> tuple[float, ...] | None:
    """Sorted distinct values of a mask plane (None when there are more than 256: not a mask)."""
    if plane.dtype in (np.uint8, np.uint16):  # mark the values seen: one pass, no sort, no int64 copy
        seen = np.zeros(256 if plane.dtype == np.uint8 else 65536, bool)
        seen[plane.ravel()] = True
        vals = np.flatnonzero(seen)
    else:
        vals = np.unique(plane)
    return None if vals.size > 256 else tuple(float(v) for v in vals)


def classes_from_plane(plane: np.ndarray, threshold: float | None = None,
                       label_map: Mapping[float, int] | None = None) -> np.ndarray:
    """Class indices (uint8, H x W) of a mask plane: ``plane > threshold`` for binary masks, or each value's
    class in ``label_map`` {file value: class}; values not in the map go to the nearest declared value (what a
    lossy JPEG mask needs; exact masks are checked beforehand)."""
    if label_map is None:
        if threshold is None:
            raise ValueError("give a threshold or a label_map")
        return (plane > threshold).astype(np.uint8)
    keys = np.asarray(sorted(label_map), dtype=np.float64)
    classes = np.asarray([label_map[k] for k in sorted(label_map)], dtype=np.uint8)
    x = plane.astype(np.float64)
    idx = np.clip(np.searchsorted(keys, x), 1, len(keys) - 1) if len(keys) > 1 else np.zeros(x.shape, np.int64)
    if len(keys) > 1:
        idx = np.where(np.abs(x - keys[idx - 1]) <= np.abs(keys[idx] - x), idx - 1, idx)
    return classes[idx]


# ------------------------------------------------------------------------------ phantoms (CI twins)
def _fundus(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fundus-like RGB (H, W, 3) float in [0, 1], vessel lines (bool) and the disc-shaped field of view."""
    from scipy import ndimage
    from skimage.draw import line

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    rad = np.hypot((yy - cy) / (0.55 * h), (xx - cx) / (0.5 * w))  # HRF-like: clipped at top and bottom, ~0.84
    fov = rad <= 1.0
    disc = (cy + rng.uniform(-0.05, 0.05) * h, cx + rng.choice([-1, 1]) * 0.22 * w)
    step = max(2.0, min(h, w) / 14)
    vessels = np.zeros((h, w), bool)
    stack = [(disc[0], disc[1], a, 3) for a in rng.uniform(0, 2 * np.pi, 5)]
    while stack:
        y, x, ang, level = stack.pop()
        for _ in range(int(rng.integers(5, 9))):
            ang += rng.normal(0, 0.3)
            ny, nx = y + np.sin(ang) * step, x + np.cos(ang) * step
            rr, cc = line(int(round(y)), int(round(x)), int(round(ny)), int(round(nx)))
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            vessels[rr[ok], cc[ok]] = True
            y, x = ny, nx
        if level > 1:
            stack += [(y, x, ang + t + rng.normal(0, 0.2), level - 1) for t in (-0.7, 0.7)]
    if min(h, w) >= 96:
        vessels = ndimage.binary_dilation(vessels)
    vessels &= fov
    shade = 1.0 - 0.4 * rad**2
    glow = np.exp(-((yy - disc[0]) ** 2 + (xx - disc[1]) ** 2) / (2 * (0.06 * min(h, w)) ** 2))
    rgb = np.stack([0.8 * shade + 0.2 * glow, 0.35 * shade + 0.5 * glow, 0.12 * shade + 0.3 * glow], -1)
    rgb = np.where(vessels[..., None], rgb * np.array([0.65, 0.4, 0.55]), rgb)
    rgb = ndimage.gaussian_filter(rgb, (0.6, 0.6, 0)) + 0.015 * rng.standard_normal(rgb.shape)
    return np.where(fov[..., None], np.clip(rgb, 0, 1), 0.0), vessels, fov


def _blob(rng: np.random.Generator, h: int, w: int, skin: Sequence[float],
          lesion: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """A smooth-edged blob (lesion, polyp) on a shaded background: RGB float [0, 1] and the blob (bool)."""
    from scipy import ndimage

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65)
    ry, rx = h * rng.uniform(0.15, 0.3), w * rng.uniform(0.15, 0.3)
    wobble = ndimage.gaussian_filter(rng.standard_normal((h, w)), min(h, w) / 10)
    wobble /= np.abs(wobble).max() + 1e-9
    inside = np.hypot((yy - cy) / ry, (xx - cx) / rx) + 0.25 * wobble <= 1.0
    shade = 1.0 - 0.25 * np.hypot((yy - h / 2) / h, (xx - w / 2) / w)
    rgb = np.asarray(skin)[None, None] * shade[..., None]
    rgb = np.where(inside[..., None], np.asarray(lesion)[None, None] * shade[..., None], rgb)
    rgb = ndimage.gaussian_filter(rgb, (0.8, 0.8, 0)) + 0.02 * rng.standard_normal(rgb.shape)
    return np.clip(rgb, 0, 1), inside


def phantom_case(kind: str, rng: np.random.Generator, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray | None]:
    """One synthetic case: RGB uint8 (H, W, 3), class indices uint8 (H, W) and the field of view (bool or None).

    ``kind``: ``"fundus"`` (vessel lines on a disc field of view, classes {0, 1}), ``"dermoscopy"`` (a dark
    lesion on skin), ``"endoscopy"`` (a red polyp on mucosa), ``"disc_cup"`` (fundus with an optic disc whose
    rim is class 1 and cup class 2), ``"retina"`` (branching vessel trees with calibre tapering on a rendered
    fundus in a circular field of view, :func:`medrs_diff.data.retina_phantoms.retina_case`).
    """
    h, w = int(size[0]), int(size[1])
    fov = None
    if kind == "fundus":
        rgb, fg, fov = _fundus(rng, h, w)
        classes = fg.astype(np.uint8)
    elif kind == "dermoscopy":
        rgb, fg = _blob(rng, h, w, (0.85, 0.65, 0.55), (0.35, 0.2, 0.12))
        classes = fg.astype(np.uint8)
    elif kind == "endoscopy":
        rgb, fg = _blob(rng, h, w, (0.8, 0.45, 0.4), (0.6, 0.15, 0.15))
        classes = fg.astype(np.uint8)
    elif kind == "retina":  # branching, tapering vessel trees in a circular FOV (medrs_diff.data.retina_phantoms)
        from .retina_phantoms import retina_case

        case = retina_case(rng, (h, w))
        return case.rgb, case.vessels.astype(np.uint8), case.fov
    elif kind == "disc_cup":
        rgb, _, _ = _fundus(rng, h, w)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        cy, cx, r = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6), min(h, w) * rng.uniform(0.15, 0.22)
        d = np.hypot(yy - cy, xx - cx)
        cup = d <= r * rng.uniform(0.4, 0.65)
        classes = np.where(cup, 2, np.where(d <= r, 1, 0)).astype(np.uint8)
        rgb = np.where((classes == 1)[..., None], 0.5 * rgb + 0.5 * np.array([1.0, 0.85, 0.5]), rgb)
        rgb = np.where((classes == 2)[..., None], 0.3 * rgb + 0.7 * np.array([1.0, 0.97, 0.85]), rgb)
    else:
        raise ValueError(f"unknown phantom kind {kind!r}")
    return np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8), classes, fov


def save_jpeg(rgb: np.ndarray, path: str | os.PathLike, quality: int = 95) -> Path:
    """Write an (H, W, 3) uint8 array as a JPEG photograph (the usual format of clinical 2-D images; lossy,
    so only for images, never for masks), creating the folder."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(p, format="JPEG", quality=quality)
    return p
