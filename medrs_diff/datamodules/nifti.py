"""NIfTI segmentation: image + mask volume pairs (SegDiff), 2-D or 3-D, through MONAI dictionary transforms."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..data import keys as K
from ..errors import DataError
from .base import DictDataModule, split_train_val


class _PlainTensors(Dataset):
    """Wrap a MONAI dataset: MetaTensors become plain tensors (cheap collation), labels float."""

    def __init__(self, base: Dataset, keep: Sequence[str]) -> None:
        self.base, self.keep = base, tuple(keep)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.base[i]
        if isinstance(item, list):  # several patches per volume: take the first (one sample per index)
            item = item[0]
        return {k: torch.as_tensor(item[k]).as_subclass(torch.Tensor).float() for k in self.keep}


class NiftiSegmentationDataModule(DictDataModule):
    """Image + mask NIfTI pairs in ``root``: ``<case>_image.nii.gz`` with ``<case>_label.nii.gz``.

    ``scaling`` maps intensities to model space ("ct", "mri", "zscore", "pet" or "none"; phantoms use
    "zscore"); 3-D volumes are reoriented to RAS; ``patch_size`` draws random patches (or crops 2-D
    images). The last ``val_fraction`` of the sorted cases validate. With ``phantoms`` set, an empty
    ``root`` is first filled with that many synthetic phantoms (tests, quick start).
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
        phantoms: int = 0,
        phantom_size: list[int] | None = None,
        phantom_seed: int = 0,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters()
        self.root = Path(root)
        self.spatial_dims, self.scaling, self.patch_size = spatial_dims, scaling, patch_size
        self.val_fraction = val_fraction
        self.image_suffix, self.label_suffix = image_suffix, label_suffix
        self.phantoms, self.phantom_size, self.phantom_seed = phantoms, phantom_size, phantom_seed

    def prepare_data(self) -> None:
        if self.phantoms and not any(self.root.glob(f"*{self.image_suffix}.nii*")):
            from ..data.synthetic import make_segmentation_phantoms

            size = self.phantom_size if self.phantom_size is not None else [32] * self.spatial_dims
            make_segmentation_phantoms(self.root, n=self.phantoms, size=size, spatial_dims=self.spatial_dims,
                                       seed=self.phantom_seed)

    def records(self) -> list[dict[str, str]]:
        """The sorted ``{image, label}`` file pairs in ``root``."""
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder does not exist", "create it or set `phantoms` to generate one")
        out = []
        for img in sorted(self.root.glob(f"*{self.image_suffix}.nii*")):
            label = img.with_name(img.name.replace(self.image_suffix, self.label_suffix, 1))
            if not label.exists():
                raise DataError(img, f"has no label file {label.name}", "add the mask or remove the image")
            out.append({K.IMAGE: str(img), K.LABEL: str(label)})
        return out

    def transforms(self, train: bool):
        from ..data.medical import medical_transforms

        return medical_transforms(
            (K.IMAGE,), (K.LABEL,), scaling=self.scaling,
            orientation="RAS" if self.spatial_dims == 3 else None,
            patch_size=self.patch_size if train else None, seed=self.seed,
        )

    def setup(self, stage: str | None = None) -> None:
        from ..data.medical import medical_dataset

        self.prepare_data()  # idempotent: a single-process run need not call it separately
        train, val = split_train_val(self.records(), self.val_fraction, "image/label pairs", self.root)
        keep = (K.IMAGE, K.LABEL)
        self.train_dataset = _PlainTensors(medical_dataset(train, self.transforms(True)), keep)
        self.val_dataset = _PlainTensors(medical_dataset(val, self.transforms(False)), keep)
        self.test_dataset = self.val_dataset
