"""The data modules on tiny phantoms: splits, batch shapes and keys, clear errors, and the old import paths."""

from __future__ import annotations

import pytest
import torch

from medrs_diff.datamodules import (
    DictDataModule,
    GeoTiffSRDataModule,
    NiftiSegmentationDataModule,
    split_train_val,
)
from medrs_diff.errors import ArgumentError, DataError


def test_split_keeps_order_and_validates_at_least_one():
    assert split_train_val(list(range(8)), 0.25, "cases", "root") == ([0, 1, 2, 3, 4, 5], [6, 7])
    assert split_train_val([0, 1], 0.1, "cases", "root") == ([0], [1])
    assert split_train_val([0, 1, 2], 0.9, "cases", "root") == ([0], [1, 2])  # one always trains
    with pytest.raises(DataError, match=r"root: found 1 cases; need at least 2 .*\. Fix: "):
        split_train_val([0], 0.25, "cases", "root")
    with pytest.raises(ArgumentError, match=r"val_fraction must lie in \(0, 1\), got 1.0"):
        split_train_val([0, 1, 2], 1.0, "cases", "root")


def test_loader_arguments_are_checked_not_replaced():
    with pytest.raises(ArgumentError, match="batch_size must be >= 1, got 0"):
        DictDataModule(batch_size=0)
    with pytest.raises(ArgumentError, match="val_batch_size must be >= 1, got 0"):
        DictDataModule(val_batch_size=0)
    with pytest.raises(ArgumentError, match="num_workers must be >= 0"):
        DictDataModule(num_workers=-1)
    assert DictDataModule(batch_size=4).val_batch_size == 4
    assert DictDataModule(batch_size=4, val_batch_size=1).val_batch_size == 1


def test_nifti_segmentation_module_on_phantoms(tmp_path):
    dm = NiftiSegmentationDataModule(str(tmp_path / "seg"), phantoms=5, phantom_size=[24, 20], batch_size=2,
                                     val_fraction=0.4)
    dm.setup("fit")
    assert len(dm.train_dataset) == 3 and len(dm.val_dataset) == 2
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label", "case"} and batch["image"].shape == (2, 1, 24, 20)
    assert all(isinstance(c, str) and c.endswith("_image.nii.gz") for c in batch["case"])
    assert batch["label"].dtype == torch.float32 and set(batch["label"].unique().tolist()) <= {0.0, 1.0}
    # z-score scaling puts each image at mean ~0
    assert abs(float(dm.val_dataset[0]["image"].mean())) < 1e-3
    (tmp_path / "seg" / sorted(p.name for p in (tmp_path / "seg").glob("*_label.nii.gz"))[0]).unlink()
    with pytest.raises(DataError, match="has no label file"):
        dm.records()
    with pytest.raises(DataError, match="dataset folder does not exist"):
        NiftiSegmentationDataModule(str(tmp_path / "missing")).setup("fit")


def test_geotiff_sr_module_on_phantoms(tmp_path):
    dm = GeoTiffSRDataModule(str(tmp_path / "sr"), phantoms=3, phantom_size=32, phantom_scale=4, phantom_bands=2,
                             patch_size=16, samples_per_epoch=5, val_fraction=0.34, batch_size=2)
    dm.setup("fit")
    assert len(dm.train_dataset) == 5 and len(dm.val_dataset) == 4  # a 2 x 2 grid of 16-pixel HR patches
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 2, 16, 16) and batch["cond"].shape == (2, 2, 4, 4)
    assert float(batch["image"].abs().max()) <= 1.0 + 1e-6
    next((tmp_path / "sr" / "lr").glob("*.tif")).unlink()
    with pytest.raises(DataError, match="3 HR but 2 LR GeoTIFFs"):
        dm.setup("fit")


def test_old_train_exports_still_reach_the_moved_classes():
    import medrs_diff.train as train
    from medrs_diff.datamodules import base

    assert train.DictDataModule is DictDataModule and train.ResumableSampler is base.ResumableSampler
    with pytest.raises(AttributeError, match="no attribute 'NiftiSegmentationDataModule'"):
        _ = train.NiftiSegmentationDataModule


def test_every_data_module_is_exported_so_recipes_can_name_it_by_class_name():
    """LightningCLI resolves ``class_path: X`` only among imported subclasses: each module file must be
    imported (and exported) by ``medrs_diff.datamodules``."""
    import importlib
    import inspect
    from pathlib import Path

    import medrs_diff.datamodules as pkg

    found = set()
    for path in sorted(Path(pkg.__file__).parent.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        module = importlib.import_module(f"medrs_diff.datamodules.{path.stem}")
        found |= {name for name, obj in vars(module).items()
                  if inspect.isclass(obj) and issubclass(obj, DictDataModule) and obj.__module__ == module.__name__
                  and not name.startswith("_")}  # private bases are not named by recipes
    assert {"DictDataModule", "NiftiSegmentationDataModule", "GeoTiffSRDataModule"} <= found
    assert found <= set(pkg.__all__), sorted(found - set(pkg.__all__))
