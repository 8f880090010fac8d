"""Data modules for the two end-to-end tasks: NIfTI segmentation (SegDiff) and GeoTIFF
super-resolution (SRDiff). Both build on the data layer (MONAI pipelines, TorchGeo datasets and
samplers) and on :class:`DictDataModule` for seeded, resumable, rank-aware loading. With ``phantoms``
set, an empty ``root`` is first filled with the matching synthetic phantoms (tests, quick start).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..data import keys as K
from ..data.errors import DataError
from .datamodule import DictDataModule

PathLike = str | os.PathLike


def _split(items: list, val_fraction: float, what: str, root: PathLike) -> tuple[list, list]:
    if len(items) < 2:
        raise DataError(root, f"found {len(items)} {what}; need at least 2 (one for training, one for validation)",
                        "add more cases or point `root` at the dataset folder")
    n_val = min(len(items) - 1, max(1, round(len(items) * val_fraction)))
    return items[:-n_val], items[-n_val:]


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
    images). The last ``val_fraction`` of the sorted cases validate.
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

            size = self.phantom_size or [32] * self.spatial_dims
            make_segmentation_phantoms(self.root, n=self.phantoms, size=size, spatial_dims=self.spatial_dims,
                                       seed=self.phantom_seed)

    def records(self) -> list[dict[str, str]]:
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
        train, val = _split(self.records(), self.val_fraction, "image/label pairs", self.root)
        keep = (K.IMAGE, K.LABEL)
        self.train_dataset = _PlainTensors(medical_dataset(train, self.transforms(True)), keep)
        self.val_dataset = _PlainTensors(medical_dataset(val, self.transforms(False)), keep)
        self.test_dataset = self.val_dataset


class _QueryDataset(Dataset):
    """A map-style view of a TorchGeo dataset over a fixed list of GeoSlice queries, so the resumable,
    rank-aware sampler of :class:`DictDataModule` can index it."""

    def __init__(self, geo: Any, queries: list, keep: Sequence[str]) -> None:
        self.geo, self.queries, self.keep = geo, queries, tuple(keep)

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.geo[self.queries[i]]
        return {k: item[k].float() for k in self.keep}


class GeoTiffSRDataModule(DictDataModule):
    """LR / HR GeoTIFF pairs: ``root/hr/*.tif`` and ``root/lr/*.tif`` on one CRS, the LR grid an integer
    multiple of the HR one (no resampling). Random HR patches of ``patch_size`` pixels (a multiple of
    the scale) are drawn with a seeded TorchGeo sampler; validation uses a grid over the last scenes.
    ``scaling`` maps DN to model space ("reflectance" for uint16 x 1e4 optical data). An empty ``root``
    is filled from ``bigearthnet_root`` (real Sentinel-2 10 m bands, LR = ``phantom_scale`` x block mean)
    or with ``phantoms`` synthetic pairs."""

    def __init__(
        self,
        root: str,
        bands: int | None = None,
        scaling: str = "reflectance",
        patch_size: int = 32,
        samples_per_epoch: int = 256,
        val_fraction: float = 0.25,
        phantoms: int = 0,
        phantom_size: int = 64,
        phantom_scale: int = 4,
        phantom_bands: int = 3,
        phantom_seed: int = 0,
        bigearthnet_root: str | None = None,
        bigearthnet_bands: list[str] | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters()
        self.root = Path(root)
        self.bigearthnet_root, self.bigearthnet_bands = bigearthnet_root, bigearthnet_bands
        self.bands, self.scaling, self.patch_size = bands, scaling, patch_size
        self.samples_per_epoch, self.val_fraction = samples_per_epoch, val_fraction
        self.phantoms, self.phantom_size, self.phantom_scale = phantoms, phantom_size, phantom_scale
        self.phantom_bands, self.phantom_seed = phantom_bands, phantom_seed

    def prepare_data(self) -> None:
        if any((self.root / "hr").glob("*.tif")):
            return
        if self.bigearthnet_root:
            from ..data.sr_pairs import S2_RGB, bigearthnet_sr_pairs

            bigearthnet_sr_pairs(self.bigearthnet_root, self.root, self.bigearthnet_bands or S2_RGB,
                                 scale=self.phantom_scale)
        elif self.phantoms:
            from ..data.synthetic import make_sr_pairs

            make_sr_pairs(self.root, n=self.phantoms, hr_size=self.phantom_size, scale=self.phantom_scale,
                          bands=self.phantom_bands, seed=self.phantom_seed)

    def _datasets(self, files_hr: list[Path], files_lr: list[Path]):
        from ..data.geo import SRPairDataset, raster_dataset

        kw = {"scaling": self.scaling, "expected_bands": self.bands}
        return SRPairDataset(raster_dataset([str(f) for f in files_hr], **kw),
                             raster_dataset([str(f) for f in files_lr], **kw))

    def setup(self, stage: str | None = None) -> None:
        from ..data.geo import grid_sampler, random_sampler

        self.prepare_data()
        hr_files = sorted((self.root / "hr").glob("*.tif"))
        lr_files = sorted((self.root / "lr").glob("*.tif"))
        if len(hr_files) != len(lr_files):
            raise DataError(self.root, f"{len(hr_files)} HR but {len(lr_files)} LR GeoTIFFs",
                            "give every HR scene its LR scene (hr/ and lr/ sorted alike)")
        pairs = list(zip(hr_files, lr_files))
        train, val = _split(pairs, self.val_fraction, "HR/LR scene pairs", self.root)
        keep = (K.COND, K.IMAGE)
        tr = self._datasets([p[0] for p in train], [p[1] for p in train])
        va = self._datasets([p[0] for p in val], [p[1] for p in val])
        queries = list(random_sampler(tr, self.patch_size, self.samples_per_epoch, seed=self.seed))
        self.train_dataset = _QueryDataset(tr, queries, keep)
        self.val_dataset = _QueryDataset(va, list(grid_sampler(va, self.patch_size)), keep)
        self.test_dataset = self.val_dataset
