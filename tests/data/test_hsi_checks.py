"""Hyperspectral bad-input checks: NaN bands, wavelength order, label-map size, band count, pixel order
(smoothness for non-square images, reference abundances for square ones), and the patch data module's split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrs_diff.data import hsi_checks as K
from medrs_diff.data.hsi_classes import mixed_cube, smooth_endmembers
from medrs_diff.datamodules import HyperspectralPatchDataModule
from medrs_diff.errors import ArgumentError, DataError


@pytest.fixture(scope="module")
def scene():
    return mixed_cube(smooth_endmembers(4, 16, seed=2), (30, 40), seed=1, noise=0.02)


def test_nan_bands_are_named(scene):
    cube = scene.cube.copy()
    cube[3, 5, 5] = np.nan
    cube[7] = np.inf
    with pytest.raises(DataError, match=r"2 of 16 bands hold NaN / inf values \(bands 3, 7"):
        K.check_finite_bands(cube, "c.mat")
    K.check_finite_bands(scene.cube)


def test_wavelengths_label_map_and_bands():
    K.check_wavelengths([400.0, 410.0, 420.0], 3)
    with pytest.raises(DataError, match=r"band 1: 420 nm, band 2: 410 nm"):
        K.check_wavelengths([400.0, 420.0, 410.0], 3)
    with pytest.raises(DataError, match="2 wavelengths for 3 bands"):
        K.check_wavelengths([400.0, 410.0], 3)
    with pytest.raises(DataError, match=r"transposed\?"):
        K.check_label_map(np.zeros((40, 30)), (16, 30, 40))
    with pytest.raises(DataError, match="has 12 bands but the model was trained on 16"):
        K.check_bands(12, 16, "cube.tif")


def test_pixel_order_from_smoothness(scene):
    flat_f = scene.cube.reshape(16, -1, order="F")  # MATLAB column-major
    assert K.pixel_order(flat_f, 30, 40)[0] == "F" and K.pixel_order(flat_f, 30, 40)[1] > 1.5
    np.testing.assert_array_equal(K.unfold_pixels(flat_f, 30, 40, "F"), scene.cube)
    with pytest.raises(DataError, match="stated pixel order looks wrong.*order='F'"):
        K.unfold_pixels(flat_f, 30, 40, "C", "scene.mat")
    flat_c = scene.cube.reshape(16, -1)
    assert K.pixel_order(flat_c, 30, 40)[0] == "C"


def test_square_scene_transpose_needs_the_reference_abundances():
    sq = mixed_cube(smooth_endmembers(3, 12, seed=3), (24, 24), seed=2, noise=0.01)
    assert K.check_abundance_alignment(sq.cube, sq.abundances, sq.endmembers) > 0.95
    with pytest.raises(DataError, match="column-major / row-major mix-up"):
        K.check_abundance_alignment(np.swapaxes(sq.cube, 1, 2), sq.abundances, sq.endmembers)


def test_patch_data_module_splits_and_items():
    dm = HyperspectralPatchDataModule(phantom=True, phantom_size=40, phantom_bands=8, phantom_classes=3,
                                      block_size=12, train_per_class=5, patch_size=5, val_pixels=10, context=2)
    dm.setup()
    tr, va = dm.train_dataset, dm.val_dataset
    assert len(tr.pixels) == 15 and len(va) == 10
    item = tr[0]
    assert item["image"].shape == (8, 9, 9) and item["unlabelled_image"].shape == (8, 5, 5)  # 5 + 2 x context 2
    assert 0 <= item["label"] < 3
    y, x = tr.pixels[0]
    centre = torch.from_numpy(2 * dm.scene.cube[:, y, x] - 1)  # unit scaling: [0, 1] -> [-1, 1]
    torch.testing.assert_close(tr._at(y, x)[:, 2, 2], centre.clamp(-1, 1))
    torch.testing.assert_close(tr._at(y, x, 2)[:, 4, 4], centre.clamp(-1, 1))
    # disjoint: no training patch shares a pixel with a test patch
    train_px = {tuple(p) for p in tr.pixels}
    for ty, tx in va.pixels:
        assert all(max(abs(ty - a), abs(tx - b)) >= 5 for a, b in train_px)
    with pytest.raises(DataError, match="no test pixel"):
        HyperspectralPatchDataModule(phantom=True, phantom_size=40, patch_size=9).setup()
    with pytest.raises(ArgumentError, match="data.split"):
        HyperspectralPatchDataModule(phantom=True, split="blocks")
