"""NIfTI segmentation: image + mask volume pairs (SegDiff), 2-D or 3-D, through MONAI dictionary transforms."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..data import keys as K
from ..data.seeding import EpochAware
from ..errors import ArgumentError, DataError
from .base import DictDataModule, ResumableDataLoader, split_train_val

#: Batch key holding each item's case name (the image file name, a str; a list of str once collated).
CASE = "case"


class _SegItems(EpochAware, Dataset):
    """Wrap a MONAI dataset: MetaTensors become plain float tensors (cheap collation), plus the case name.

    ``set_epoch`` / ``follow`` reach the wrapped dataset, which reseeds its random transforms per
    ``(seed, epoch, index)``; ``binarize`` reads validated {0, 255} masks as {0, 1}.
    """

    def __init__(self, base: Any, keep: Sequence[str], cases: Sequence[str], binarize: Sequence[str] = (),
                 label_values: Sequence[float] | None = None) -> None:
        self.base, self.keep, self.cases, self.binarize = base, tuple(keep), list(cases), tuple(binarize)
        #: declared label values in class order: a label v becomes its index (None: labels are indices)
        self.label_values = None if label_values is None else torch.tensor([float(v) for v in label_values])

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.base.set_epoch(epoch)

    def follow(self, source: Any) -> None:
        super().follow(source)
        self.base.follow(source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.base[i]
        if isinstance(item, list):  # several patches per volume: take the first (one sample per index)
            item = item[0]
        out: dict[str, Any] = {k: torch.as_tensor(item[k]).as_subclass(torch.Tensor).float() for k in self.keep}
        for k in self.binarize:
            out[k] = (out[k] > 0).float()
        if self.label_values is not None and K.LABEL in out:
            # exact values: their index (contiguous: bucketize warns on, and copies, a strided slice)
            out[K.LABEL] = torch.bucketize(out[K.LABEL].contiguous(), self.label_values).float()
        out[CASE] = self.cases[i]
        return out


class NiftiSegmentationDataModule(DictDataModule):
    """Image + mask NIfTI pairs in ``root``: ``<case>_image.nii.gz`` with ``<case>_label.nii.gz``.

    ``scaling`` maps intensities to model space ("ct", "mri", "zscore", "pet" or "none"; phantoms use
    "zscore"); 3-D volumes are reoriented to RAS; ``patch_size`` draws random patches (or crops 2-D
    images), reseeded per ``(seed, epoch, index)`` so a patch does not depend on the items loaded before
    it (exact mid-epoch resume). The last ``val_fraction`` of the sorted cases validate. With ``phantoms``
    set, an empty ``root`` is first filled with that many synthetic phantoms (tests, quick start).

    ``setup`` first scans every file once (cached by path, mtime and size): images and labels must be
    finite, and labels must hold only the declared classes: binary ``{0, 1}`` by default (``{0, 255}``
    too with ``mask_255``, read as ``{0, 1}``), ``num_classes`` K for ``{0, ..., K-1}``, or explicit
    ``label_values``. ``check_files=False`` skips the scan (at your own risk). Items carry ``case``, the
    image file name. Declared ``label_values`` that are not ``0 .. K-1`` (BraTS ``{0, 1, 2, 4}``) reach
    the method as class indices in their sorted order (``4`` -> ``3``).

    Multi-modal cases: ``modalities`` (e.g. ``["t1n", "t1c", "t2w", "t2f"]``) are stacked, in that order, as
    the channels of ``image`` after per-modality scaling; ``layout`` says where they are: ``"flat"``
    (``<case>_<modality>.nii.gz`` and ``<case><label_suffix>.nii.gz`` in ``root``) or ``"brats"`` (BraTS
    2023: ``<case>/<case>-<modality>.nii.gz`` and ``<case>/<case>-seg.nii.gz``). A missing modality and a
    modality on another grid than its label are refused at setup, naming the file.

    Volumes through 2-D models: ``slices=True`` (with ``spatial_dims=2``) reads 3-D volumes, reorients them
    to RAS and draws axial slices (``patch_size`` is the in-plane size, ``[-1, -1]`` or None the whole
    slice); ``empty_slice_fraction`` sets the share of slices drawn without foreground (None: uniform).
    """

    def __init__(
        self,
        root: str,
        spatial_dims: int = 2,
        scaling: str = "zscore",
        patch_size: list[int] | None = None,
        val_fraction: float = 0.25,
        image_suffix: str = "_image",
        label_suffix: str = "_label",
        label_values: list[float] | None = None,
        num_classes: int | None = None,
        mask_255: bool = False,
        check_files: bool = True,
        modalities: list[str] | None = None,
        layout: str = "flat",
        slices: bool = False,
        empty_slice_fraction: float | None = None,
        phantoms: int = 0,
        phantom_size: list[int] | None = None,
        phantom_seed: int = 0,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        from ..data.validation import label_spec

        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters(logger=False)
        self.root = Path(root)
        self.spatial_dims, self.scaling, self.patch_size = spatial_dims, scaling, patch_size
        self.val_fraction = val_fraction
        self.image_suffix, self.label_suffix = image_suffix, label_suffix
        self.label_spec = label_spec(label_values, num_classes, mask_255, where=type(self).__name__)
        self.check_files = check_files
        self.modalities, self.layout = _check_modalities(modalities, layout)
        self.slices, self.empty_slice_fraction = _check_slices(slices, spatial_dims, empty_slice_fraction)
        self.phantoms, self.phantom_size, self.phantom_seed = phantoms, phantom_size, phantom_seed

    def prepare_data(self) -> None:
        tag = f"_{self.modalities[0]}" if self.modalities else self.image_suffix
        if not self.phantoms or any(self.root.glob(f"*{tag}.nii*")):
            return
        from ..data.synthetic import make_brats_phantoms, make_segmentation_phantoms

        dims = 3 if self.slices else self.spatial_dims
        size = self.phantom_size if self.phantom_size is not None else [32] * dims
        if self.modalities:  # BraTS-like four-modality volumes, labels {0, 1, 2, 4}, flat layout
            brats_like = set(self.modalities) <= set(K.BRATS_MODALITIES) and self.label_suffix == "_seg"
            if self.layout != "flat" or not brats_like:
                raise ArgumentError("phantoms", "multi-modal phantoms are BraTS-like flat cases <case>_<m>.nii.gz, "
                                    f"m in {list(K.BRATS_MODALITIES)}, with <case>_seg.nii.gz labels",
                                    "use layout: flat, label_suffix: _seg and those modalities, or real data")
            make_brats_phantoms(self.root, n=self.phantoms, size=size, seed=self.phantom_seed)
            return
        make_segmentation_phantoms(self.root, n=self.phantoms, size=size, spatial_dims=dims, seed=self.phantom_seed)

    def records(self) -> list[dict[str, str]]:
        """The sorted ``{image, label}`` file pairs in ``root`` (``{<modality>..., label}`` with ``modalities``)."""
        if not self.root.exists():
            raise DataError(self.root, "dataset folder does not exist",
                            "check data.init_args.root, or set `phantoms` to generate synthetic cases there")
        if not self.root.is_dir():
            raise DataError(self.root, "is a file, not a dataset folder", "point data.init_args.root at the folder "
                            f"of <case>{self.image_suffix}.nii.gz / <case>{self.label_suffix}.nii.gz pairs")
        if self.modalities:
            return modality_records(self.root, self.modalities, self.layout, self.label_suffix)
        out = []
        for img in sorted(self.root.glob(f"*{self.image_suffix}.nii*")):
            if img.name.startswith("."):  # hidden and half-written (.tmp-*) files are not cases
                continue
            label = img.with_name(img.name.replace(self.image_suffix, self.label_suffix, 1))
            if not label.exists():
                raise DataError(img, f"has no label file {label.name}", "add the mask or remove the image")
            out.append({K.IMAGE: str(img), K.LABEL: str(label)})
        if not out:
            raise DataError(self.root, f"holds no image files named <case>{self.image_suffix}.nii[.gz]",
                            f"put <case>{self.image_suffix}.nii.gz / <case>{self.label_suffix}.nii.gz pairs there "
                            "(or set image_suffix / label_suffix), or set `phantoms` to generate synthetic cases")
        return out

    def transforms(self, train: bool):
        from ..data.medical import medical_transforms

        images = self.image_keys
        return medical_transforms(
            images, (K.LABEL,), scaling=self.scaling, stack=images if self.modalities else None,
            orientation="RAS" if self.spatial_dims == 3 or self.slices else None,
            patch_size=self.patch_size if (train or self.slices) else None, seed=self.seed,
            slices_2d=self.slices, empty_slice_fraction=self.empty_slice_fraction,
        )

    @property
    def image_keys(self) -> tuple[str, ...]:
        """The record keys of the intensity images: the modalities, or ``image``."""
        return tuple(self.modalities) if self.modalities else (K.IMAGE,)

    def _items(self, records: list[dict[str, str]], train: bool) -> _SegItems:
        from ..data.medical import medical_dataset

        base = medical_dataset(records, self.transforms(train), seed=self.seed)
        binarize = (K.LABEL,) if self.label_spec.mask_255 else ()
        values = self.label_spec.values
        remap = None if values == tuple(float(i) for i in range(len(values))) else values
        cases = [r.get(CASE) or Path(r[K.IMAGE]).name for r in records]
        return _SegItems(base, (K.IMAGE, K.LABEL), cases, binarize, remap)

    def setup(self, stage: str | None = None) -> None:
        from ..data.validation import validate_segmentation_files

        self.prepare_data()  # idempotent: a single-process run need not call it separately
        records = self.records()
        train, val = split_train_val(records, self.val_fraction, "image/label pairs", self.root)
        self.train_dataset = self._items(train, True)  # checks files and grids (headers) first
        self.val_dataset = self._items(val, False)
        if self.check_files:
            validate_segmentation_files(records, self.image_keys, (K.LABEL,), self.label_spec)
        self.test_dataset = self.val_dataset

    def train_dataloader(self) -> ResumableDataLoader:
        loader = super().train_dataloader()
        # Items read the epoch from the loader's sampler (Lightning calls its set_epoch), so an item's random
        # patch is a function of (seed, epoch, index) alone.
        self.train_dataset.follow(loader.sampler)
        return loader


LAYOUTS = ("flat", "brats")


def _check_modalities(modalities: Sequence[str] | None, layout: str) -> tuple[list[str] | None, str]:
    if layout not in LAYOUTS:
        raise ArgumentError("layout", f"unknown layout {layout!r}", f"choose one of {', '.join(LAYOUTS)}")
    if modalities is None:
        return None, layout
    mods = [str(m) for m in modalities]
    if not mods or len(set(mods)) != len(mods) or any(not m or "/" in m for m in mods):
        raise ArgumentError("modalities", f"must be distinct non-empty names, got {list(modalities)!r}",
                            'list the file tags, e.g. ["t1n", "t1c", "t2w", "t2f"]')
    clash = {K.LABEL, K.IMAGE, CASE} & set(mods)
    if clash:
        raise ArgumentError("modalities", f"{sorted(clash)} are reserved batch keys", "rename the modality tags")
    return mods, layout


def _check_slices(slices: bool, spatial_dims: int, fraction: float | None) -> tuple[bool, float | None]:
    if slices and spatial_dims != 2:
        raise ArgumentError("slices", f"draws 2-D slices for a 2-D model, but spatial_dims is {spatial_dims}",
                            "set spatial_dims: 2 (or slices: false for a 3-D model)")
    if fraction is not None:
        if not slices:
            raise ArgumentError("empty_slice_fraction", "applies only with slices: true", "set slices: true")
        if not 0.0 <= float(fraction) <= 1.0:
            raise ArgumentError("empty_slice_fraction", f"must lie in [0, 1], got {fraction}",
                                "give the share of slices without foreground, e.g. 0.1")
    return bool(slices), None if fraction is None else float(fraction)


def _modality_paths(root: Path, case: str, modalities: Sequence[str], layout: str,
                    label_suffix: str) -> dict[str, Path]:
    if layout == "brats":
        folder = root / case
        paths = {m: folder / f"{case}-{m}.nii.gz" for m in modalities}
        paths[K.LABEL] = folder / f"{case}-seg.nii.gz"
    else:
        paths = {m: root / f"{case}_{m}.nii.gz" for m in modalities}
        paths[K.LABEL] = root / f"{case}{label_suffix}.nii.gz"
    for key, p in paths.items():
        if not p.exists() and p.with_suffix("").exists():  # .nii next to the expected .nii.gz
            paths[key] = p.with_suffix("")
    return paths


def modality_records(root: Path, modalities: Sequence[str], layout: str = "flat",
                     label_suffix: str = "_label") -> list[dict[str, str]]:
    """``{<modality>: path, ..., label: path, case: name}`` per case of a multi-modal folder (see
    :class:`NiftiSegmentationDataModule`); a case missing a modality or its label is refused by name."""
    first = modalities[0]
    if layout == "brats":
        cases = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        what = f"<case>/<case>-{first}.nii.gz"
    else:
        cases = sorted({f.name[: f.name.index(f"_{first}.nii")] for f in root.glob(f"*_{first}.nii*")
                        if not f.name.startswith(".")})
        what = f"<case>_{first}.nii.gz"
    out = []
    for case in cases:
        paths = _modality_paths(root, case, modalities, layout, label_suffix)
        if layout == "brats" and not any(p.exists() for p in paths.values()):
            continue  # a folder that is not a case
        missing = [k for k, p in paths.items() if not p.exists()]
        if missing:
            kind = "label" if missing == [K.LABEL] else f"modality {', '.join(m for m in missing if m != K.LABEL)}"
            raise DataError(paths[missing[0]], f"case {case} has no {kind} file",
                            f"add it, or remove the case (every case needs {', '.join(modalities)} and a label)")
        rec = {k: str(p) for k, p in paths.items()}
        rec[CASE] = case
        out.append(rec)
    if not out:
        raise DataError(root, f"holds no multi-modal case ({what})",
                        f"put the cases there in the {layout!r} layout, or check `modalities` / `layout`")
    return out
