"""Brain phantoms and the anomaly data module: deterministic anatomy, lesions with masks, healthy-only training."""

from __future__ import annotations

import numpy as np
import pytest

from medrs_diff.data.brain_phantoms import brain_phantom_arrays, brain_slice, insert_lesions
from medrs_diff.datamodules import BrainAnomalyDataModule
from medrs_diff.errors import ArgumentError, DataError


def test_phantoms_are_deterministic_and_vary():
    a, _ = brain_phantom_arrays(3, 32, seed=0)
    b, _ = brain_phantom_arrays(3, 32, seed=0)
    assert np.array_equal(a, b)
    assert not np.allclose(a[0], a[1])  # shape variation between cases


@pytest.mark.parametrize("kind, sign", [("hyper", 1.0), ("hypo", -1.0)])
def test_lesions_change_only_their_region(kind, sign):
    img, brain = brain_slice(64, seed=3)
    out, mask = insert_lesions(img, brain, seed=1, kind=kind, contrast=0.4)
    m = mask.astype(bool)
    assert 4 < m.sum() < 0.2 * brain.sum() and not (m & ~brain).any()
    diff = out - img
    assert np.all(sign * diff[m] > 0.2)  # the mask is where the soft weight exceeds 0.5
    assert np.abs(diff[~brain]).max() == 0.0


def test_data_module_trains_on_healthy_images_only(tmp_path):
    dm = BrainAnomalyDataModule(str(tmp_path / "d"), phantoms=6, val_phantoms=3, phantom_size=32, batch_size=2)
    dm.setup("fit")
    assert len(dm.train_dataset) == 6 and len(dm.val_dataset) == 3
    item = dm.train_dataset[0]
    assert "label" not in item and item["image"].shape == (1, 32, 32)
    assert abs(float(item["image"].mean())) < 1e-4 and abs(float(item["image"].std(unbiased=False)) - 1) < 1e-3
    val = dm.val_dataset[0]
    assert val["label"].shape == (1, 32, 32) and set(val["label"].unique().tolist()) == {0.0, 1.0}
    assert all(n.startswith("healthy_") for n in dm.train_dataset.cases)
    # without a lesion folder the last healthy cases validate (and are not trained on)
    dm2 = BrainAnomalyDataModule(str(tmp_path / "d"), lesion_dir=None, val_fraction=0.34)
    dm2.setup("fit")
    assert len(dm2.train_dataset) == 4 and len(dm2.val_dataset) == 2
    assert "label" not in dm2.val_dataset[0]


def test_data_module_refusals(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        BrainAnomalyDataModule(str(tmp_path / "none")).setup("fit")
    dm = BrainAnomalyDataModule(str(tmp_path / "d"), phantoms=2, val_phantoms=2, phantom_size=32)
    dm.setup("fit")
    next((tmp_path / "d" / "lesion").glob("*_label.nii.gz")).unlink()
    with pytest.raises(DataError, match="lesion mask"):
        BrainAnomalyDataModule(str(tmp_path / "d")).setup("fit")
    with pytest.raises(ArgumentError, match="lesion_dir"):
        BrainAnomalyDataModule(str(tmp_path / "e"), lesion_dir=None, phantoms=2, val_phantoms=2)


def test_lesion_volumes_validate_on_slices_that_hold_lesion(tmp_path):
    from medrs_diff.io.nifti import write_nifti

    rng = np.random.default_rng(0)
    for i in range(2):
        write_nifti(rng.normal(size=(16, 16, 12)).astype(np.float32), tmp_path / "healthy" / f"h{i}_image.nii.gz",
                    np.eye(4))
    for i in range(2):
        lab = np.zeros((16, 16, 12), np.uint8)
        lab[4:8, 4:8, 9 + i] = 1  # lesion in one slice of twelve
        write_nifti(rng.normal(size=(16, 16, 12)).astype(np.float32), tmp_path / "lesion" / f"l{i}_image.nii.gz",
                    np.eye(4))
        write_nifti(lab, tmp_path / "lesion" / f"l{i}_label.nii.gz", np.eye(4))
    dm = BrainAnomalyDataModule(str(tmp_path), slices=True, spatial_dims=2, patch_size=[16, 16], batch_size=1)
    dm.setup("fit")
    for epoch in range(4):
        dm.val_dataset.set_epoch(epoch)
        for j in range(len(dm.val_dataset)):
            item = dm.val_dataset[j]
            assert item["label"].shape == (1, 16, 16) and float(item["label"].sum()) == 16.0
    assert dm.train_dataset[0]["image"].shape == (1, 16, 16)
