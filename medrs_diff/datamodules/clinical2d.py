"""2-D clinical segmentation: fundus (DRIVE, HRF), dermoscopy (ISIC), endoscopy (Kvasir), optic disc / cup
(REFUGE) or any folder pair, from PNG / JPEG / TIFF / GIF / BMP files with masks read as explicit classes.

Layouts (``layout``; folders relative to ``root``, each overridable with ``image_dir`` / ``mask_dir`` /
``fov_dir``, file names with ``image_glob`` / ``mask_pattern`` / ``fov_pattern``). Every file, ``.tif``
included, is read by the io registry's 2-D image reader (:func:`medrs_diff.io.image2d.read_image2d`, Pillow):

- ``drive``: ``images/21_training.tif``, masks ``1st_manual/21_manual1.gif`` (pattern ``{id}_manual1``), FOV
  ``mask/21_training_mask.gif`` (``{id}_*mask``); point ``root`` at DRIVE's ``training/`` or ``test/``.
- ``hrf``: ``images/01_h.jpg`` (or ``.JPG``), masks ``manual1/01_h.tif`` (``{stem}``), FOV ``mask/01_h_mask.tif``
  (``{stem}_mask``, RGB with identical channels).
- ``isic``: ``images/ISIC_*.jpg`` (``image_glob``), masks ``masks/ISIC_*_segmentation.png``; no FOV.
- ``kvasir``: ``images/*.jpg``, masks ``masks/`` with the same stem (Kvasir-SEG masks are JPEG: warned); no FOV.
- ``refuge``: ``images/*.jpg``, masks in ``masks/`` or ``gts/`` with the same stem (``.bmp`` / ``.png``); no FOV.
- ``custom``: ``image_dir`` (default ``images``), ``mask_dir`` (``masks``), optional ``fov_dir``, with
  ``image_glob``, ``mask_pattern`` (``{stem}``) and ``fov_pattern`` (``{stem}_mask``).

Patterns are globs on the file *stem* with ``{stem}`` (the image's stem) and ``{id}`` (its leading digits, or
the stem); extensions match case-insensitively (HRF has ``.JPG``), so one stem must have one file per folder.
``image_glob`` filters image file names (case-insensitive). ``fov_dir: ""`` drops a layout's field of view.

Masks become class indices explicitly, never by guessing:

- binary (default): ``label = value > mask_threshold`` (127: {0, 255} 8-bit masks); a lossless mask must hold
  {0, 255} (or {0, 1} with ``mask_threshold: 0``); any other value stops ``setup`` naming the file.
- ``label_map`` {file value: class} (classes 0..K-1); ``label_values`` [v0, v1, ...] is the map to their
  sorted order (as in the NIfTI module); ``num_classes`` K means values {0..K-1}. REFUGE's default map is
  ``{255: 0, 128: 1, 0: 2}``: 0 background, 1 disc rim (disc minus cup), 2 cup (whole disc = classes >= 1).
- a JPEG mask (lossy) is thresholded (binary) or mapped to the nearest declared value, with a warning saying so.
- an RGB mask whose channels differ, a mask or FOV whose size differs from its image, a missing mask or FOV
  file: ``DataError`` at ``setup`` naming the file(s).

Items: ``image`` (C, H, W) float32, ``label`` (1, H, W) float32 class indices, ``fov`` (1, H, W) float32
{0, 1} when the layout has a field of view, ``case`` (the image file name). ``channels="rgb"`` gives 3
channels (grey files replicated), ``"grey"`` 1 (ITU-R 601 luma of RGB). Scaling is the one of
:mod:`medrs_diff.data.clinical2d`: 8-bit ``x / 127.5 - 1`` and 16-bit ``x / 32767.5 - 1``, so the image lies in
[-1, 1]; ``apply_fov`` sets pixels outside the field of view to -1. ``resize`` (H, W) resamples every case
(image bilinear with anti-aliasing, 8-bit images rounded to 8 bits like a resized PNG; masks nearest);
``patch_size`` draws one random training patch per item (after ``resize`` if both are set), from
``(seed, epoch, index)`` alone, so a mid-epoch resume draws the same patches; validation items are whole
(resized) images. ``samples_per_epoch`` sets the training epoch length (item ``i`` is case ``i % n``). The
labels are not cut to the field of view: evaluation masks with ``fov``.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data import keys as K
from ..data.seeding import EpochAware, crop_slices
from ..errors import ArgumentError, DataError
from .base import DictDataModule, ResumableDataLoader, split_train_val

#: Batch key of each item's case name (the image file name).
CASE = "case"
#: Batch key of the field-of-view mask (1 inside), present when the layout has one.
FOV = "fov"
#: Extensions read (case-insensitive), through :func:`medrs_diff.io.image2d.read_image2d`.
SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
#: REFUGE ground truth: 255 background, 128 optic disc (rim), 0 optic cup -> classes 0, 1, 2.
REFUGE_LABEL_MAP = {255: 0, 128: 1, 0: 2}
#: ``phantom_kind`` values (None: the layout's own kind); ``retina``: vessel trees of the retinal dual model.
PHANTOM_KINDS = ("fundus", "retina", "dermoscopy", "endoscopy", "disc_cup")


@dataclass(frozen=True)
class Layout:
    """Where a layout keeps its files (folders relative to the root; patterns on stems)."""

    image_dir: str
    mask_dirs: tuple[str, ...]  # the first that exists
    fov_dir: str | None
    image_glob: str = "*"
    mask_pattern: str = "{stem}"
    fov_pattern: str = "{stem}_mask"
    label_map: Mapping[int, int] | None = None
    phantom: str = "fundus"  # phantom_case kind
    phantom_names: tuple[str, str, str] = ("case{i:02d}", "{stem}", "{stem}_mask")  # image stem, mask, fov
    mask_ext: str = ".png"
    fov_ext: str = ".png"


LAYOUTS: dict[str, Layout] = {
    "drive": Layout("images", ("1st_manual",), "mask", "*", "{id}_manual1", "{id}_*mask",
                    phantom_names=("{n}_training", "{id}_manual1", "{id}_training_mask")),
    "hrf": Layout("images", ("manual1",), "mask", "*", "{stem}", "{stem}_mask",
                  phantom_names=("{i:02d}_h", "{stem}", "{stem}_mask"), mask_ext=".tif", fov_ext=".tif"),
    "isic": Layout("images", ("masks",), None, "ISIC_*.jpg", "{stem}_segmentation", phantom="dermoscopy",
                   phantom_names=("ISIC_{i:07d}", "{stem}_segmentation", "")),
    "kvasir": Layout("images", ("masks",), None, phantom="endoscopy", phantom_names=("polyp{i:03d}", "{stem}", "")),
    "refuge": Layout("images", ("masks", "gts"), None, label_map=REFUGE_LABEL_MAP, phantom="disc_cup",
                     phantom_names=("g{i:04d}", "{stem}", "")),
    "custom": Layout("images", ("masks",), None),
}


@dataclass(frozen=True)
class MaskRule:
    """How mask files become class indices: ``threshold`` (binary) or ``label_map`` {value: class}."""

    threshold: float | None = 127.0
    label_map: tuple[tuple[float, int], ...] | None = None
    origin: str = "binary masks, value > 127"

    @property
    def num_classes(self) -> int:
        return 2 if self.label_map is None else max(c for _, c in self.label_map) + 1

    @property
    def mapping(self) -> dict[float, int] | None:
        return None if self.label_map is None else dict(self.label_map)

    def spec(self) -> Any:
        """The :class:`~medrs_diff.data.validation.LabelSpec` an exact (lossless) mask file must satisfy."""
        from ..data.validation import LabelSpec

        if self.label_map is None:
            return LabelSpec((0.0, 1.0), mask_255=True, origin=self.origin)
        return LabelSpec(tuple(sorted(v for v, _ in self.label_map)), origin=self.origin)


def _fmt_map(m: Mapping[float, int]) -> str:
    return "{" + ", ".join(f"{float(k):g}: {int(v)}" for k, v in m.items()) + "}"


def mask_rule(mask_threshold: float | None, label_map: Mapping[Any, int] | None, label_values: Sequence[float] | None,
              num_classes: int | None, default_map: Mapping[int, int] | None = None) -> MaskRule:
    """Resolve the class arguments (one of ``mask_threshold``, ``label_map``, ``label_values``, ``num_classes``;
    none: the layout's map, else binary at 127) into a :class:`MaskRule`; ``ArgumentError`` when inconsistent."""
    from ..data.validation import label_spec

    given = [n for n, v in (("label_map", label_map), ("label_values", label_values)) if v is not None]
    if len(given) > 1:
        raise ArgumentError("label_map", "label_map and label_values both declare the mask values",
                            "give one: label_map {value: class}, or label_values [v0, v1, ...] (sorted order)")
    if given and mask_threshold is not None:
        raise ArgumentError("mask_threshold", f"applies to binary masks, but {given[0]} declares the classes",
                            "drop mask_threshold (JPEG masks then go to the nearest declared value)")
    if label_values is not None or (num_classes is not None and num_classes != 2 and label_map is None):
        spec = label_spec(label_values, num_classes, where="label_values" if label_values else "num_classes")
        label_map = {v: i for i, v in enumerate(spec.values)}
        origin = spec.origin if label_values is None else f"label_values {list(label_values)}"
    elif label_map is not None:
        origin = f"label_map {_fmt_map(label_map)}"
    elif default_map is not None and mask_threshold is None and num_classes is None:
        label_map, origin = default_map, f"the layout's label_map {_fmt_map(default_map)}"
    else:
        t = 127.0 if mask_threshold is None else float(mask_threshold)
        if not np.isfinite(t) or t < 0:
            raise ArgumentError("mask_threshold", f"must be a finite number >= 0, got {mask_threshold}",
                                "use 127 for {0, 255} masks or 0 for {0, 1} masks")
        return MaskRule(t, None, f"binary masks stored as {{0, 255}} or {{0, 1}}, read as value > mask_threshold={t:g}")
    try:
        pairs = tuple(sorted((float(k), int(v)) for k, v in label_map.items()))
    except (TypeError, ValueError) as exc:
        raise ArgumentError("label_map", f"must map numbers to class indices, got {label_map!r}",
                            "write it as {file value: class}, e.g. {255: 0, 128: 1, 0: 2}") from exc
    classes = sorted({c for _, c in pairs})
    if len(classes) < 2 or classes != list(range(len(classes))) or any(not np.isfinite(v) for v, _ in pairs):
        raise ArgumentError("label_map", f"classes must be 0..K-1 (K >= 2, each used) for finite values, got "
                            f"{_fmt_map(dict(pairs))}", "map the file values onto 0, 1, ..., K-1 (0 = background)")
    if num_classes is not None and num_classes != len(classes):
        raise ArgumentError("num_classes", f"num_classes={num_classes} disagrees with the {len(classes)} classes of "
                            f"{origin}", "give one of the two, or make them agree")
    return MaskRule(None, pairs, origin)


# ---------------------------------------------------------------------------------------- records
def _escape(s: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", s)


def _case_id(stem: str) -> str:
    m = re.match(r"^(\d+)", stem)
    return m.group(1) if m else stem


def _has_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _index(folder: Path, what: str) -> dict[str, list[Path]]:
    """Readable image files of ``folder`` by stem (hidden and half-written files skipped)."""
    if not folder.is_dir():
        raise DataError(folder, f"{what} folder does not exist", "check root and the layout's folders "
                        "(image_dir / mask_dir / fov_dir), or set `phantoms` to generate a synthetic dataset")
    out: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUFFIXES:
            out.setdefault(p.stem, []).append(p)
    return out


def _match(index: dict[str, list[Path]], pattern: str, image: Path, folder: Path, what: str) -> Path:
    stem = image.stem
    pat = pattern.format(stem=_escape(stem), id=_escape(_case_id(stem)))
    if _has_glob(pat):
        hits = [p for s, ps in index.items() if fnmatch.fnmatchcase(s, pat) for p in ps]
    else:
        hits = list(index.get(pat, []))
    if not hits:
        shown = pattern.format(stem=stem, id=_case_id(stem))
        raise DataError(folder / f"{shown}.*", f"{what} file of image {image.name} is missing (looked for "
                        f"{shown} with one of {', '.join(SUFFIXES)})", f"add it, or remove {image}")
    if len(hits) > 1:
        raise DataError(hits[0], f"{what} of image {image.name} is ambiguous: {hits[0].name} and {hits[1].name} "
                        "both match", "keep one file per case in the folder")
    return hits[0]


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header (no pixel data read)."""
    return image_header(path)[:2]


def image_header(path: Path) -> tuple[int, int, int | None]:
    """(H, W, bits per sample: 8, 16, or None for other modes) from the file header (no pixel data read)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            mode = im.mode
    except Exception as exc:
        raise DataError(path, f"cannot be read as an image ({type(exc).__name__}: {exc})",
                        "check that it is a complete, uncorrupted image file (re-export it)") from exc
    bits = 16 if mode.startswith("I;16") or mode == "I" else 8 if mode in ("1", "L", "P", "RGB", "RGBA", "LA") else None
    return int(h), int(w), bits


_SCANNED: dict[tuple, tuple[int, int]] = {}


def warn_lossy(path: Path, rule: MaskRule | None, what: str) -> None:
    """Say that a JPEG mask is thresholded (its values are not exact)."""
    how = ("values > 127 are inside" if rule is None else f"values > {rule.threshold:g} are foreground"
           if rule.label_map is None else f"each value goes to the nearest value of {rule.origin}")
    warnings.warn(f"{path}: {what} is a JPEG (lossy: its values carry compression noise), so it is thresholded: "
                  f"{how}. Save masks as PNG / TIFF to keep them exact", UserWarning, stacklevel=4)


def _scan_mask(path: Path, rule: MaskRule | None, what: str) -> tuple[int, int]:
    """Check one mask (``rule``) or FOV (``rule`` None) file; return its (H, W). Exact files are cached by path,
    modification time and size; a JPEG is thresholded and warned about every time."""
    from ..data.clinical2d import distinct_values, is_lossy, read_mask_plane
    from ..data.validation import FileStats, LabelSpec, check_label_values

    lossy = is_lossy(path)
    if lossy:
        warn_lossy(path, rule, what)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, rule, what)
    if key in _SCANNED:
        return _SCANNED[key]
    plane = read_mask_plane(path, what)
    if not lossy:
        spec = rule.spec() if rule is not None else LabelSpec((0.0, 1.0), mask_255=True,
                                                               origin="field-of-view masks: 0 outside, 1 or 255 inside")
        values = distinct_values(plane)
        stats = FileStats(str(path), tuple(plane.shape), str(plane.dtype), values=values, many_values=values is None)
        try:
            check_label_values(stats, spec)
        except DataError as exc:  # say which file of the case it is
            fix = exc.fix if rule is None else f"{exc.fix}; or map the file values with `label_map: {{value: class}}`"
            raise DataError(exc.path, exc.problem.replace("label map", what, 1), fix) from None
        if rule is not None and rule.label_map is None and stats.values and max(stats.values) <= rule.threshold:
            if max(stats.values) > 0:
                raise DataError(path, f"{what} holds {{0, {max(stats.values):g}}} but mask_threshold is "
                                f"{rule.threshold:g}: every pixel would be background",
                                "set mask_threshold: 0 for {0, 1} masks")
    size = (int(plane.shape[0]), int(plane.shape[1]))
    if len(_SCANNED) > 100_000:
        _SCANNED.clear()
    _SCANNED[key] = size
    return size


# ---------------------------------------------------------------------------------------- dataset
def _nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resampling of a (1, H, W) mask by indexing (``nearest-exact``: pixel centres)."""
    rows = ((torch.arange(size[0]) + 0.5) * (x.shape[-2] / size[0])).long().clamp_(max=x.shape[-2] - 1)
    cols = ((torch.arange(size[1]) + 0.5) * (x.shape[-1] / size[1])).long().clamp_(max=x.shape[-1] - 1)
    return x[:, rows[:, None], cols[None, :]]


class _Items(EpochAware, Dataset):
    """Cases as batch dicts; random patches from ``(seed, epoch, index)``."""

    def __init__(self, records: list[dict[str, str]], rule: MaskRule, *, channels: str,
                 resize: tuple[int, int] | None, patch: tuple[int, int] | None, seed: int, length: int | None = None,
                 apply_fov: bool = False, cache: bool = True, scaling: str = "dn8") -> None:
        self.records, self.rule, self.channels, self.scaling = records, rule, channels, scaling
        self.resize, self.patch, self.seed = resize, patch, int(seed)
        self.length = len(records) if length is None else int(length)
        self.apply_fov, self.cache = apply_fov, cache
        self._cache: dict[int, tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor | None]] = {}

    def __len__(self) -> int:
        return self.length

    def _image(self, path: str) -> tuple[torch.Tensor, Any]:
        """Raw values as float (C, H, W) in the requested channels, and their model-space scaling."""
        from ..data.scaling import digital_number
        from ..io.image2d import read_image2d

        arr = read_image2d(path).data
        if arr.dtype == np.uint8:
            bits = 8
        elif arr.dtype == np.uint16:
            bits = 16
        else:
            raise DataError(path, f"image has {arr.dtype} pixels, not 8- or 16-bit digital numbers",
                            "re-save it as an 8-bit (or 16-bit grey) PNG / TIFF")
        if f"dn{bits}" != self.scaling:
            raise DataError(path, f"is a {bits}-bit image but the data module declares scaling {self.scaling!r}",
                            f"set data.init_args.scaling: dn{bits} (inference maps inputs with the same scaling)")
        arr = np.require(arr, requirements="W") if bits == 8 else arr.astype(np.int32)  # torch needs writable
        x = torch.from_numpy(arr)  # native values (cached compactly)
        if self.channels == "rgb" and x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        elif self.channels == "grey" and x.shape[0] == 3:
            x = (x.float() * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
        return x, digital_number(bits)

    def _planes(self, j: int) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor | None]:
        """(image, its scaling, class indices, FOV) of case ``j``: the image resized and in model space with
        ``resize``, else its native values (scaled per item, after the patch is cut)."""
        from ..data.clinical2d import classes_from_plane, is_lossy, read_mask_plane

        if j in self._cache:
            return self._cache[j]
        rec = self.records[j]
        img, scaling = self._image(rec[K.IMAGE])
        lab = torch.from_numpy(classes_from_plane(read_mask_plane(rec[K.LABEL]), self.rule.threshold,
                                                  self.rule.mapping))[None]
        fov = None
        if FOV in rec:  # exact FOV files are {0, 1} or {0, 255}: inside is > 0; a JPEG one is thresholded at 127
            plane = read_mask_plane(rec[FOV], "field-of-view mask")
            fov = torch.from_numpy(plane > (127 if is_lossy(rec[FOV]) else 0))[None]
        if self.resize is not None:  # resample raw values, then scale (the scaling is affine, so it commutes)
            img = F.interpolate(img[None] if img.dtype == torch.uint8 else img[None].float(), self.resize,
                                mode="bilinear", antialias=True, align_corners=False)[0]  # 8-bit stays 8-bit
            img, scaling = scaling.forward(img.float()).float(), None
            lab = _nearest(lab, self.resize)
            fov = None if fov is None else _nearest(fov, self.resize)
        out = (img.contiguous(), scaling, lab.contiguous(), fov)
        if self.cache:
            self._cache[j] = out
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        j = i % len(self.records)
        img, scaling, lab, fov = self._planes(j)
        if self.patch is not None:
            sl = (slice(None), *crop_slices(self.item_rng(i), img.shape[-2:], self.patch))
            img, lab = img[sl], lab[sl]
            fov = None if fov is None else fov[sl]
        img = img.clone() if scaling is None else scaling.forward(img.float()).float()
        out: dict[str, Any] = {K.IMAGE: img, K.LABEL: lab.float()}
        if fov is not None:
            out[FOV] = fov.float()
            if self.apply_fov:
                out[K.IMAGE] = torch.where(fov, out[K.IMAGE], torch.full_like(out[K.IMAGE], -1.0))
        out[CASE] = Path(self.records[j][K.IMAGE]).name
        return out


def _pair(value: Sequence[int] | None, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    v = list(value)
    if len(v) != 2 or any(isinstance(x, bool) or int(x) != x or x < 1 for x in v):
        raise ArgumentError(name, f"must be two positive integers (H, W), got {value!r}", f"set {name}: [H, W]")
    return int(v[0]), int(v[1])


# ---------------------------------------------------------------------------------------- module
class Clinical2DSegmentationDataModule(DictDataModule):
    """2-D clinical images with label masks (and field-of-view masks) in a DRIVE / HRF / ISIC / Kvasir /
    REFUGE / custom folder layout; see the module notes for layouts, mask rules, scaling and item keys.

    ``setup`` scans every mask and FOV file once (cached by path, mtime and size) and stops on a bad one before
    any training. The last ``val_fraction`` of the cases (sorted by image file name) validate, or exactly the
    ``val_cases`` (file names or stems). ``phantoms`` N fills an empty ``root`` with N synthetic cases in the
    chosen layout (JPEG images, PNG / TIFF masks) first: the CI twin of a real dataset; ``phantom_kind``
    (``retina``: branching vessel trees in a circular FOV, ...) replaces the layout's own kind of phantom.
    """

    def __init__(
        self,
        root: str,
        layout: str = "custom",
        image_dir: str | None = None,
        mask_dir: str | None = None,
        fov_dir: str | None = None,
        image_glob: str | None = None,
        mask_pattern: str | None = None,
        fov_pattern: str | None = None,
        channels: str = "rgb",
        scaling: str = "dn8",
        resize: list[int] | None = None,
        patch_size: list[int] | None = None,
        samples_per_epoch: int | None = None,
        mask_threshold: float | None = None,
        label_map: dict[int, int] | None = None,
        label_values: list[float] | None = None,
        num_classes: int | None = None,
        apply_fov: bool = False,
        val_fraction: float = 0.25,
        val_cases: list[str] | None = None,
        check_files: bool = True,
        cache: bool = True,
        phantoms: int = 0,
        phantom_size: list[int] | None = None,
        phantom_seed: int = 0,
        phantom_kind: str | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters(logger=False)
        if layout not in LAYOUTS:
            raise ArgumentError("layout", f"unknown layout {layout!r}", f"choose one of {', '.join(LAYOUTS)}")
        if channels not in ("rgb", "grey"):
            raise ArgumentError("channels", f"unknown channels {channels!r}", "use 'rgb' (3) or 'grey' (1)")
        if scaling not in ("dn8", "dn16"):
            raise ArgumentError("scaling", f"unknown scaling {scaling!r} for 2-D clinical images",
                                "use dn8 (8-bit files, x / 127.5 - 1) or dn16 (16-bit files)")
        self.scaling = scaling
        base = LAYOUTS[layout]
        over: dict[str, Any] = {}
        if image_dir is not None:
            over["image_dir"] = image_dir
        if mask_dir is not None:
            over["mask_dirs"] = (mask_dir,)
        if fov_dir is not None:
            over["fov_dir"] = fov_dir or None
        for name, value in (("image_glob", image_glob), ("mask_pattern", mask_pattern), ("fov_pattern", fov_pattern)):
            if value is not None:
                over[name] = value
        self.layout_name, self.layout = layout, replace(base, **over)
        self.root = Path(root)
        self.channels = channels
        self.resize, self.patch_size = _pair(resize, "resize"), _pair(patch_size, "patch_size")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ArgumentError("samples_per_epoch", f"must be >= 1, got {samples_per_epoch}",
                                "set it to the number of training items per epoch, or null (one per case)")
        self.samples_per_epoch = samples_per_epoch
        self.rule = mask_rule(mask_threshold, label_map, label_values, num_classes, base.label_map)
        #: what exact mask files must hold (as in the NIfTI module)
        self.label_spec = self.rule.spec()
        self.apply_fov, self.val_fraction = apply_fov, val_fraction
        self.val_cases = None if val_cases is None else [str(c) for c in val_cases]
        self.check_files, self.cache = check_files, cache
        self.phantoms, self.phantom_seed = int(phantoms), phantom_seed
        self.phantom_size = _pair(phantom_size, "phantom_size") or (64, 64)
        if phantom_kind is not None and phantom_kind not in PHANTOM_KINDS:
            raise ArgumentError("phantom_kind", f"unknown phantom kind {phantom_kind!r}",
                                f"choose one of {', '.join(PHANTOM_KINDS)}, or null for the layout's own")
        self.phantom_kind = phantom_kind

    @property
    def num_classes(self) -> int:
        """Number of classes, background included (2 for binary masks)."""
        return self.rule.num_classes

    @property
    def label_values(self) -> tuple[float, ...]:
        """The declared file values of exact masks (binary: (0, 1), stored as {0, 1} or {0, 255})."""
        return tuple(self.label_spec.values)

    @property
    def has_fov(self) -> bool:
        return self.layout.fov_dir is not None

    def _mask_dir(self) -> Path:
        for d in self.layout.mask_dirs:
            if (self.root / d).is_dir():
                return self.root / d
        return self.root / self.layout.mask_dirs[0]

    # -------------------------------------------------------------------------------- phantoms
    def prepare_data(self) -> None:
        if not self.phantoms:
            return
        images = self.root / self.layout.image_dir
        if images.is_dir() and any(p.suffix.lower() in SUFFIXES for p in images.iterdir()):
            return
        if self.root.is_dir() and any(not p.name.startswith(".") for p in self.root.iterdir()):
            raise DataError(self.root, f"is not empty but holds no {self.layout_name!r} images in "
                            f"{self.layout.image_dir}/: phantoms are written only into an empty folder",
                            "point root at an empty (or new) folder, or drop `phantoms` to read the data there")
        self._write_phantoms()

    def _write_phantoms(self) -> None:
        from ..data.clinical2d import phantom_case, save_jpeg
        from ..io.image2d import write_image2d

        lay = self.layout
        stem_p, mask_p, fov_p = lay.phantom_names
        if self.layout_name == "custom":
            mask_p, fov_p = lay.mask_pattern, lay.fov_pattern
        for p in (mask_p, fov_p if lay.fov_dir else ""):
            if _has_glob(p):
                raise ArgumentError("phantoms", f"cannot name phantom files from the glob pattern {p!r}",
                                    "give mask_pattern / fov_pattern without * ? [ ], or use real data")
        inverse: dict[int, float] = {}
        if self.rule.label_map is not None:
            for v, c in self.rule.label_map:
                inverse.setdefault(c, v)
        wanted = self.phantom_kind or lay.phantom
        kind = wanted if self.rule.num_classes == (3 if wanted == "disc_cup" else 2) else None
        if kind is None:
            raise ArgumentError("phantoms", f"the {self.layout_name!r} phantoms have "
                                f"{3 if wanted == 'disc_cup' else 2} classes, the module declares "
                                f"{self.rule.num_classes}", "drop the class arguments for phantoms, or use real data")
        rng = np.random.default_rng(self.phantom_seed)
        for i in range(1, self.phantoms + 1):
            stem = stem_p.format(i=i, n=20 + i)
            if not fnmatch.fnmatch(f"{stem}.jpg".lower(), lay.image_glob.lower()):
                raise ArgumentError("phantoms", f"phantom image {stem}.jpg does not match image_glob "
                                    f"{lay.image_glob!r}", "widen image_glob (e.g. '*'), or use real data")
            rgb, classes, fov = phantom_case(kind, rng, self.phantom_size)
            save_jpeg(rgb, self.root / lay.image_dir / f"{stem}.jpg")
            if self.rule.label_map is None:
                values = classes.astype(np.uint8) * 255
            else:
                values = np.asarray([inverse[c] for c in range(self.rule.num_classes)])[classes].astype(np.uint8)
            names = {"stem": stem, "id": _case_id(stem)}
            out = self.root / lay.mask_dirs[0] / f"{mask_p.format(**names)}{lay.mask_ext}"
            out.parent.mkdir(parents=True, exist_ok=True)
            write_image2d(values, out)
            if lay.fov_dir:
                if fov is None:
                    fov = np.ones(classes.shape, bool)
                plane = fov.astype(np.uint8) * 255
                fov_out = self.root / lay.fov_dir / f"{fov_p.format(**names)}{lay.fov_ext}"
                fov_out.parent.mkdir(parents=True, exist_ok=True)
                write_image2d(np.stack([plane] * 3) if self.layout_name == "hrf" else plane, fov_out)

    # -------------------------------------------------------------------------------- records
    def records(self) -> list[dict[str, str]]:
        """``{image, label[, fov]}`` per case, sorted by image file name; a missing mask / FOV names the file."""
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder does not exist" if not self.root.exists() else
                            "is a file, not a dataset folder", "check data.init_args.root, or set `phantoms` to "
                            "generate a synthetic dataset there")
        lay = self.layout
        images = _index(self.root / lay.image_dir, "image")
        mask_dir = self._mask_dir()
        masks = _index(mask_dir, "mask")
        fov_dir = self.root / lay.fov_dir if lay.fov_dir else None
        fovs = _index(fov_dir, "field-of-view") if fov_dir is not None else {}
        glob = lay.image_glob.lower()
        out = []
        for stem, paths in sorted(images.items()):
            paths = [p for p in paths if fnmatch.fnmatch(p.name.lower(), glob)]
            if not paths:
                continue
            if len(paths) > 1:
                raise DataError(paths[0], f"two images share the stem {stem!r}: {paths[0].name}, {paths[1].name}",
                                "keep one image per case")
            img = paths[0]
            rec = {K.IMAGE: str(img), K.LABEL: str(_match(masks, lay.mask_pattern, img, mask_dir, "mask"))}
            if fov_dir is not None:
                rec[FOV] = str(_match(fovs, lay.fov_pattern, img, fov_dir, "field-of-view mask"))
            out.append(rec)
        if not out:
            raise DataError(self.root / lay.image_dir, f"holds no image matching {lay.image_glob!r} with one of "
                            f"{', '.join(SUFFIXES)}", "put the images there (or set image_dir / image_glob), or "
                            "set `phantoms` to generate a synthetic dataset")
        return sorted(out, key=lambda r: Path(r[K.IMAGE]).name)

    def check_records(self, records: list[dict[str, str]]) -> list[tuple[int, int]]:
        """Scan every mask and FOV (classes, channels, size against the image); return the image sizes."""
        sizes = []
        for rec in records:
            img = Path(rec[K.IMAGE])
            h, w, bits = image_header(img)
            hw = (h, w)
            if bits is not None and f"dn{bits}" != self.scaling:
                raise DataError(img, f"is a {bits}-bit image but the data module declares scaling {self.scaling!r}",
                                f"set data.init_args.scaling: dn{bits} (inference maps inputs with the same scaling)")
            for key, what, rule in ((K.LABEL, "mask", self.rule), (FOV, "field-of-view mask", None)):
                if key not in rec:
                    continue
                path = Path(rec[key])
                if self.check_files:
                    got = _scan_mask(path, rule, what)
                else:  # header sizes only (at your own risk); JPEG masks are still announced
                    got = image_size(path)
                    if path.suffix.lower() in (".jpg", ".jpeg"):
                        warn_lossy(path, rule, what)
                if got != hw:
                    raise DataError(path, f"{what} {path.name} is {got[0]}x{got[1]} (HxW) but its image "
                                    f"{img} is {hw[0]}x{hw[1]}", "export the mask at the image's size (the same "
                                    "pixel grid), or pair it with the right image")
            sizes.append(hw)
        return sizes

    def _split(self, records: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        if self.val_cases is None:
            return split_train_val(records, self.val_fraction, "image/mask cases", self.root)
        names = {Path(r[K.IMAGE]).name: r for r in records}
        names.update({Path(r[K.IMAGE]).stem: r for r in records})
        unknown = [c for c in self.val_cases if c not in names]
        if unknown:
            raise ArgumentError("val_cases", f"unknown case(s) {unknown[:3]} (cases are e.g. "
                                f"{sorted(names)[:3]})", "list image file names or stems found in the image folder")
        chosen = {id(names[c]) for c in self.val_cases}
        val = [r for r in records if id(r) in chosen]
        train = [r for r in records if id(r) not in chosen]
        if not train:
            raise ArgumentError("val_cases", "every case validates, none trains", "leave at least one case out")
        return train, val

    def _check_sizes(self, sizes: list[tuple[int, int]], records: list[dict[str, str]],
                     train_idx: set[int]) -> None:
        shape = self.resize
        for k, hw in enumerate(sizes):
            full = shape or hw
            if self.patch_size and k in train_idx and (self.patch_size[0] > full[0] or self.patch_size[1] > full[1]):
                raise ArgumentError(records[k][K.IMAGE], f"patch_size {list(self.patch_size)} exceeds the "
                                    f"{'resized ' if shape else ''}image size {full[0]}x{full[1]}",
                                    "use a smaller patch_size (or a larger resize)")
        if shape is None:
            for split, idx, bs in (("training", train_idx, 1 if self.patch_size else self.batch_size),
                                   ("validation", set(range(len(sizes))) - train_idx, self.val_batch_size)):
                got = {sizes[k] for k in idx}
                if bs > 1 and len(got) > 1:
                    a, b = sorted(got)[:2]
                    raise ArgumentError(split, f"images of different sizes ({a[0]}x{a[1]}, {b[0]}x{b[1]}) cannot "
                                        f"be batched (batch size {bs})", "set resize: [H, W] (or patch_size for "
                                        "training, or batch size 1)")

    def _items(self, records: list[dict[str, str]], train: bool) -> _Items:
        return _Items(records, self.rule, channels=self.channels, resize=self.resize,
                      patch=self.patch_size if train else None, seed=self.seed,
                      length=self.samples_per_epoch if train else None, apply_fov=self.apply_fov, cache=self.cache,
                      scaling=self.scaling)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()  # idempotent: a single-process run need not call it separately
        records = self.records()
        train, val = self._split(records)
        sizes = self.check_records(records)
        train_ids = {id(r) for r in train}
        self._check_sizes(sizes, records, {k for k, r in enumerate(records) if id(r) in train_ids})
        self.train_dataset = self._items(train, True)
        self.val_dataset = self._items(val, False)
        self.test_dataset = self.val_dataset

    def train_dataloader(self) -> ResumableDataLoader:
        loader = super().train_dataloader()
        # Items read the epoch from the loader's sampler (Lightning calls its set_epoch): a patch is a function
        # of (seed, epoch, index) alone.
        self.train_dataset.follow(loader.sampler)
        return loader
