"""Unsupervised anomaly detection data: train on healthy NIfTI images only, validate on lesion cases.

``root`` is the dataset folder. ``root/<healthy_dir>`` holds the healthy training images
``<case><image_suffix>.nii[.gz]`` (2-D slices, or 3-D volumes with ``slices: true``, drawn as random axial
slices after reorienting to RAS); no labels are read there. ``root/<lesion_dir>`` holds lesion cases
``<case>_image`` + ``<case>_label`` (any non-zero label value is lesion) that validate: the method's
validation metrics then include pixel AUROC / AUPRC. With ``lesion_dir: null`` the last ``val_fraction``
of the healthy cases validate instead (reconstruction error only) and are not trained on. Lesion volumes
with ``slices: true`` validate on axial slices that hold lesion. Both names may
be absolute paths. With ``phantoms`` set and no healthy image yet, brain phantoms are written first
(:func:`medrs_diff.data.brain_phantoms.make_brain_anomaly_phantoms`): ``phantoms`` healthy slices and
``val_phantoms`` lesion slices (other anatomies than the healthy ones).
"""

from __future__ import annotations

from pathlib import Path

from ..data import keys as K
from ..errors import ArgumentError, DataError
from .base import DictDataModule, ResumableDataLoader, split_train_val
from .nifti import CASE, _check_slices, _SegItems


class BrainAnomalyDataModule(DictDataModule):
    """Healthy images for training (``root/healthy_dir``), lesion cases with masks for validation
    (``root/lesion_dir``); see the module docstring."""

    def __init__(
        self,
        root: str,
        healthy_dir: str = "healthy",
        lesion_dir: str | None = "lesion",
        spatial_dims: int = 2,
        scaling: str = "zscore",
        patch_size: list[int] | None = None,
        val_fraction: float = 0.25,
        image_suffix: str = "_image",
        label_suffix: str = "_label",
        slices: bool = False,
        phantoms: int = 0,
        val_phantoms: int = 0,
        phantom_size: int = 32,
        phantom_seed: int = 0,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters(logger=False)
        if spatial_dims != 2 and not slices:
            raise ArgumentError("spatial_dims", f"AnoDDPM data are 2-D images, got spatial_dims={spatial_dims}",
                                "set spatial_dims: 2 (and slices: true for 3-D volumes)")
        if phantoms < 0 or val_phantoms < 0 or (phantoms and val_phantoms and lesion_dir is None):
            raise ArgumentError("val_phantoms", f"needs phantoms >= 0, val_phantoms >= 0 and a lesion_dir to write "
                                f"lesion phantoms to (got {phantoms}, {val_phantoms}, {lesion_dir!r})",
                                "set data.init_args.lesion_dir (e.g. lesion) or val_phantoms: 0")
        self.root = Path(root)
        self.healthy_root = self.root / healthy_dir
        self.val_root = self.root / lesion_dir if lesion_dir is not None else None
        self.spatial_dims, self.scaling, self.patch_size = spatial_dims, scaling, patch_size
        self.val_fraction = val_fraction
        self.image_suffix, self.label_suffix = image_suffix, label_suffix
        self.slices, _ = _check_slices(slices, spatial_dims, None)
        self.phantoms, self.val_phantoms = phantoms, val_phantoms
        self.phantom_size, self.phantom_seed = phantom_size, phantom_seed

    def prepare_data(self) -> None:
        if not self.phantoms or any(self.healthy_root.glob(f"*{self.image_suffix}.nii*")):
            return
        import shutil
        import tempfile

        from ..data.brain_phantoms import make_brain_anomaly_phantoms

        with tempfile.TemporaryDirectory() as tmp:
            recs = make_brain_anomaly_phantoms(tmp, n_healthy=self.phantoms, n_lesion=self.val_phantoms,
                                               size=self.phantom_size, seed=self.phantom_seed)
            self.healthy_root.mkdir(parents=True, exist_ok=True)
            for r in recs["healthy"]:
                shutil.move(r[K.IMAGE], self.healthy_root / Path(r[K.IMAGE]).name)
            if self.val_root is not None and recs["lesion"]:
                self.val_root.mkdir(parents=True, exist_ok=True)
                for r in recs["lesion"]:
                    for k in (K.IMAGE, K.LABEL):
                        shutil.move(r[k], self.val_root / Path(r[k]).name)

    def _images(self, folder: Path, what: str) -> list[Path]:
        if not folder.is_dir():
            raise DataError(folder, f"{what} folder does not exist", "check data.init_args.root / healthy_dir / "
                            "lesion_dir, or set `phantoms` to generate brain phantoms there")
        files = [p for p in sorted(folder.glob(f"*{self.image_suffix}.nii*")) if not p.name.startswith(".")]
        if not files:
            raise DataError(folder, f"holds no images named <case>{self.image_suffix}.nii[.gz]",
                            f"put the {what} images there (or set image_suffix)")
        return files

    def records(self) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """(healthy training records ``{image}``, validation records ``{image, label}`` or ``{image}``)."""
        healthy = [{K.IMAGE: str(p)} for p in self._images(self.healthy_root, "healthy training")]
        if self.val_root is None:
            return split_train_val(healthy, self.val_fraction, "healthy images", self.healthy_root)
        val = []
        for img in self._images(self.val_root, "lesion validation"):
            label = img.with_name(img.name.replace(self.image_suffix, self.label_suffix, 1))
            if not label.exists():
                raise DataError(img, f"has no lesion mask {label.name}", "add the mask (0 = healthy, 1 = lesion)")
            val.append({K.IMAGE: str(img), K.LABEL: str(label)})
        return healthy, val

    def _items(self, records: list[dict[str, str]], train: bool) -> _SegItems:
        from ..data.medical import medical_dataset, medical_transforms

        labels = (K.LABEL,) if records and K.LABEL in records[0] else ()
        transforms = medical_transforms(
            (K.IMAGE,), labels, scaling=self.scaling, orientation="RAS" if self.slices else None,
            patch_size=self.patch_size if (train or self.slices) else None, seed=self.seed, slices_2d=self.slices,
            # validation slices of lesion volumes hold lesion (a random slice is often lesion-free)
            empty_slice_fraction=0.0 if labels and self.slices else None,
        )
        base = medical_dataset(records, transforms, seed=self.seed)
        cases = [Path(r[K.IMAGE]).name for r in records]
        return _SegItems(base, (K.IMAGE, *labels), cases, binarize=labels)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        train, val = self.records()
        self.train_dataset = self._items(train, True)
        self.val_dataset = self._items(val, False)
        self.test_dataset = self.val_dataset

    def train_dataloader(self) -> ResumableDataLoader:
        loader = super().train_dataloader()
        self.train_dataset.follow(loader.sampler)
        return loader


__all__ = ["CASE", "BrainAnomalyDataModule"]
