"""NIfTI segmentation: image + mask volume pairs (SegDiff), 2-D or 3-D, through MONAI dictionary transforms."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..data import keys as K
from ..data.seeding import EpochAware
from ..errors import DataError
from .base import DictDataModule, ResumableDataLoader, split_train_val

#: Batch key holding each item's case name (the image file name, a str; a list of str once collated).
CASE = "case"


class _SegItems(EpochAware, Dataset):
    """Wrap a MONAI dataset: MetaTensors become plain float tensors (cheap collation), plus the case name.

    ``set_epoch`` / ``follow`` reach the wrapped dataset, which reseeds its random transforms per
    ``(seed, epoch, index)``; ``binarize`` reads validated {0, 255} masks as {0, 1}.
    """

    def __init__(self, base: Any, keep: Sequence[str], cases: Sequence[str], binarize: Sequence[str] = ()) -> None:
        self.base, self.keep, self.cases, self.binarize = base, tuple(keep), list(cases), tuple(binarize)

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
    image file name.
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
        self.save_hyperparameters()
        self.root = Path(root)
        self.spatial_dims, self.scaling, self.patch_size = spatial_dims, scaling, patch_size
        self.val_fraction = val_fraction
        self.image_suffix, self.label_suffix = image_suffix, label_suffix
        self.label_spec = label_spec(label_values, num_classes, mask_255, where=type(self).__name__)
        self.check_files = check_files
        self.phantoms, self.phantom_size, self.phantom_seed = phantoms, phantom_size, phantom_seed

    def prepare_data(self) -> None:
        if self.phantoms and not any(self.root.glob(f"*{self.image_suffix}.nii*")):
            from ..data.synthetic import make_segmentation_phantoms

            size = self.phantom_size if self.phantom_size is not None else [32] * self.spatial_dims
            make_segmentation_phantoms(self.root, n=self.phantoms, size=size, spatial_dims=self.spatial_dims,
                                       seed=self.phantom_seed)

    def records(self) -> list[dict[str, str]]:
        """The sorted ``{image, label}`` file pairs in ``root``."""
        if not self.root.exists():
            raise DataError(self.root, "dataset folder does not exist",
                            "check data.init_args.root, or set `phantoms` to generate synthetic cases there")
        if not self.root.is_dir():
            raise DataError(self.root, "is a file, not a dataset folder", "point data.init_args.root at the folder "
                            f"of <case>{self.image_suffix}.nii.gz / <case>{self.label_suffix}.nii.gz pairs")
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

        return medical_transforms(
            (K.IMAGE,), (K.LABEL,), scaling=self.scaling,
            orientation="RAS" if self.spatial_dims == 3 else None,
            patch_size=self.patch_size if train else None, seed=self.seed,
        )

    def _items(self, records: list[dict[str, str]], train: bool) -> _SegItems:
        from ..data.medical import medical_dataset

        base = medical_dataset(records, self.transforms(train), seed=self.seed)
        binarize = (K.LABEL,) if self.label_spec.mask_255 else ()
        return _SegItems(base, (K.IMAGE, K.LABEL), [Path(r[K.IMAGE]).name for r in records], binarize)

    def setup(self, stage: str | None = None) -> None:
        from ..data.validation import validate_segmentation_files

        self.prepare_data()  # idempotent: a single-process run need not call it separately
        records = self.records()
        train, val = split_train_val(records, self.val_fraction, "image/label pairs", self.root)
        self.train_dataset = self._items(train, True)  # checks files and grids (headers) first
        self.val_dataset = self._items(val, False)
        if self.check_files:
            validate_segmentation_files(records, (K.IMAGE,), (K.LABEL,), self.label_spec)
        self.test_dataset = self.val_dataset

    def train_dataloader(self) -> ResumableDataLoader:
        loader = super().train_dataloader()
        # Items read the epoch from the loader's sampler (Lightning calls its set_epoch), so an item's random
        # patch is a function of (seed, epoch, index) alone.
        self.train_dataset.follow(loader.sampler)
        return loader
