"""Multi-modal NIfTI cases (BraTS) stacked as channels, BraTS labels as class indices, and axial slices of
volumes for 2-D models (issue 12)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medrs_diff.datamodules import NiftiSegmentationDataModule
from medrs_diff.errors import ArgumentError, DataError

MODS = ["t1", "t1ce", "t2", "flair"]
BRATS = dict(modalities=MODS, label_suffix="_seg", label_values=[0, 1, 2, 4], scaling="mri")


def _module(root: Path, **kw) -> NiftiSegmentationDataModule:
    args = dict(BRATS, phantoms=3, phantom_size=[24, 24, 16], val_fraction=0.34, batch_size=2)
    args.update(kw)
    return NiftiSegmentationDataModule(str(root), **args)


def test_four_modalities_stack_as_channels_and_brats_labels_become_indices(tmp_path):
    dm = _module(tmp_path / "b", spatial_dims=3, patch_size=[16, 16, 16])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 4, 16, 16, 16) and batch["label"].shape == (2, 1, 16, 16, 16)
    assert set(batch["label"].unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert batch["case"] == ["brats_000", "brats_001"]
    # channel order is the modalities' order: t1ce (index 1) is brightest in the enhancing rim (label 4 -> 3)
    full = dm.val_dataset[0]
    rim = full["label"][0] == 3
    assert rim.any() and full["image"][1][rim].mean() > full["image"][0][rim].mean()


def test_slices_of_volumes_for_a_2d_model_with_an_empty_slice_fraction(tmp_path):
    dm = _module(tmp_path / "b", spatial_dims=2, slices=True, patch_size=[24, 24], empty_slice_fraction=0.0)
    dm.setup("fit")
    items = [dm.train_dataset[i % len(dm.train_dataset)] for i in range(6)]
    assert all(it["image"].shape == (4, 24, 24) and it["label"].shape == (1, 24, 24) for it in items)
    assert all(bool((it["label"] > 0).any()) for it in items)  # fraction 0: every slice shows tumour
    empty = _module(tmp_path / "b", spatial_dims=2, slices=True, patch_size=[24, 24], empty_slice_fraction=1.0)
    empty.setup("fit")
    assert not any(bool((empty.train_dataset[i]["label"] > 0).any()) for i in range(len(empty.train_dataset)))
    with pytest.raises(ArgumentError, match="slices: draws 2-D slices for a 2-D model"):
        _module(tmp_path / "b", spatial_dims=3, slices=True)
    with pytest.raises(ArgumentError, match="empty_slice_fraction: must lie in"):
        _module(tmp_path / "b", slices=True, empty_slice_fraction=1.5)


def test_missing_modality_and_grid_mismatch_name_the_file(tmp_path):
    dm = _module(tmp_path / "b", spatial_dims=3, patch_size=[16, 16, 16])
    dm.prepare_data()
    (tmp_path / "b" / "brats_001_t2.nii.gz").unlink()
    with pytest.raises(DataError, match=r"brats_001_t2\.nii\.gz: case brats_001 has no modality t2 file"):
        dm.setup("fit")
    dm = _module(tmp_path / "c", spatial_dims=3, patch_size=[16, 16, 16])
    dm.prepare_data()
    f = tmp_path / "c" / "brats_002_flair.nii.gz"
    img = nib.load(f)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([1.0, 1.0, 2.0, 1.0])), f)
    with pytest.raises(DataError, match=r"brats_002"):
        dm.setup("fit")


def test_brats_folder_layout(tmp_path):
    root = tmp_path / "brats"
    mods = ["t1n", "t1c", "t2w", "t2f"]
    for case in ("BraTS-GLI-00000-000", "BraTS-GLI-00001-000"):
        (root / case).mkdir(parents=True)
        for i, m in enumerate(mods):
            nib.save(nib.Nifti1Image(np.full((8, 8, 4), float(i + 1), np.float32), np.eye(4)),
                     root / case / f"{case}-{m}.nii.gz")
        seg = np.zeros((8, 8, 4), np.uint8)
        seg[2:5, 2:5, 1:3] = 3
        nib.save(nib.Nifti1Image(seg, np.eye(4)), root / case / f"{case}-seg.nii.gz")
    (root / "notes").mkdir()  # not a case
    dm = NiftiSegmentationDataModule(str(root), spatial_dims=3, modalities=mods, layout="brats",
                                     num_classes=4, scaling="none", val_fraction=0.5)
    recs = dm.records()
    assert [r["case"] for r in recs] == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    dm.setup("fit")
    item = dm.train_dataset[0]
    assert item["image"].shape == (4, 8, 8, 4)
    assert torch.allclose(item["image"].mean((1, 2, 3)), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert item["case"] == "BraTS-GLI-00000-000"
    with pytest.raises(ArgumentError, match="unknown layout"):
        NiftiSegmentationDataModule(str(root), modalities=mods, layout="nnunet")
    with pytest.raises(ArgumentError, match="reserved batch keys"):
        NiftiSegmentationDataModule(str(root), modalities=["label", "t1"])
