"""RGB -> HSI helpers: RGB rendering, the linear baseline (exact on affine data), ATGP endmember extraction,
the scene-library scale, procedural cubes, cube checks; the HyperLDM data module's held-out block; Jasper Ridge."""

from __future__ import annotations

import numpy as np
import pytest

from medrs_diff.data.hsi_synthesis import (
    LinearRGBToHSI,
    check_cube,
    extract_endmembers,
    mixed_cube,
    orient_endmembers,
    render_rgb,
    rgb_bands_for,
    scene_library,
    synthetic_endmembers,
)
from medrs_diff.datamodules import HyperspectralSynthesisDataModule
from medrs_diff.errors import ArgumentError, DataError


def test_render_rgb_from_band_indices_or_wavelengths():
    cube = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    np.testing.assert_array_equal(render_rgb(cube, [4, 2, 0]), cube[[4, 2, 0]])
    wl = [450.0, 500.0, 560.0, 600.0, 650.0]
    assert rgb_bands_for(wl) == [4, 2, 0]  # nearest to 640 / 550 / 460 nm
    np.testing.assert_array_equal(render_rgb(cube, wavelengths=wl), cube[[4, 2, 0]])
    with pytest.raises(ArgumentError, match="rgb_bands"):
        render_rgb(cube, [0, 1, 5])


def test_linear_baseline_recovers_an_affine_map_exactly():
    rng = np.random.default_rng(0)
    rgb = rng.random((3, 8, 9))
    w, b = rng.normal(size=(7, 3)), rng.normal(size=(7, 1))
    hsi = (w @ rgb.reshape(3, -1) + b).reshape(7, 8, 9)
    lin = LinearRGBToHSI().fit(rgb, hsi)
    np.testing.assert_allclose(lin.coef, np.concatenate([w, b], 1), atol=1e-9)
    np.testing.assert_allclose(lin.predict(rgb), hsi, atol=1e-5)
    mask = np.zeros((8, 9), bool)
    mask[:, :4] = True  # fitted on a subset of the pixels: still exact on the others
    np.testing.assert_allclose(LinearRGBToHSI().fit(rgb, hsi, mask).predict(rgb), hsi, atol=1e-5)


def test_atgp_extraction_finds_the_pure_pixels():
    lib = synthetic_endmembers(20, 4, 1)
    cube, ab = mixed_cube(lib, 24, 2, sharpness=3.0)  # mixed everywhere
    for k, (y, x) in enumerate([(1, 2), (5, 20), (17, 3), (22, 22)]):  # one pure pixel per endmember
        cube[:, y, x] = lib[:, k]
    found = extract_endmembers(cube, 4)
    # every true endmember is among the extracted spectra (order free)
    for k in range(4):
        assert min(np.abs(found - lib[:, k : k + 1]).max(0)) < 1e-6


def test_scene_library_puts_endmembers_on_the_cube_scale_and_orients_them():
    lib = synthetic_endmembers(16, 3, 0)
    cube, _ = mixed_cube(lib, 12, 0)
    np.testing.assert_allclose(scene_library(cube, 0.5 * lib), lib, rtol=1e-4)  # a global factor of 2 recovered
    assert orient_endmembers(lib.T, 16).shape == (16, 3) and orient_endmembers(lib[None], 16).shape == (16, 3)
    # endmembers each normalised to a maximum of 1 (Samson's file): one factor per endmember, from the abundances
    cube, ab = mixed_cube(lib, 12, 1)
    normalised = lib / lib.max(0, keepdims=True)
    np.testing.assert_allclose(scene_library(cube, normalised, abundances=ab), lib, rtol=1e-4, atol=1e-6)
    with pytest.raises(DataError, match="no axis of 17 bands"):
        orient_endmembers(lib, 17)


def test_mixed_cubes_are_the_linear_mixing_of_their_abundances():
    lib = synthetic_endmembers(10, 3, 0)
    cube, ab = mixed_cube(lib, 16, 5)
    np.testing.assert_allclose(ab.sum(0), 1.0, atol=1e-5)
    assert ab.min() >= 0
    np.testing.assert_allclose(cube, np.einsum("bk,khw->bhw", lib, ab), atol=1e-6)


def test_check_cube_names_nan_bands_and_band_mismatch():
    cube = np.ones((6, 4, 4), np.float32)
    cube[2, 1, 1] = np.nan
    cube[4] = np.inf
    with pytest.raises(DataError, match=r"2 band\(s\) \(0-based: 2, 4\)"):
        check_cube(cube, "scene.mat")
    with pytest.raises(DataError, match="has 6 bands but the model was trained on 5"):
        check_cube(np.ones((6, 4, 4)), "scene.mat", bands=5)


def test_data_module_procedural_items_and_held_out_cubes():
    dm = HyperspectralSynthesisDataModule("unused", num_endmembers=4, rgb_bands=[20, 10, 3], phantoms=4,
                                          phantom_size=32, phantom_bands=24, patch_size=16, samples_per_epoch=8)
    dm.setup("fit")
    item = dm.train_dataset[0]
    assert item["image"].shape == (24, 16, 16) and item["cond"].shape == (3, 16, 16)
    assert item["endmembers"].shape == (24, 4)
    np.testing.assert_array_equal(item["cond"].numpy(), item["image"].numpy()[[20, 10, 3]])
    assert {dm.val_dataset[i]["case"] for i in range(len(dm.val_dataset))} == {"phantom_003"}
    assert "phantom_003" not in {dm.train_dataset[i]["case"] for i in range(8)}
    with pytest.raises(ArgumentError, match="rgb_bands"):
        HyperspectralSynthesisDataModule("unused", rgb_bands=[1, 2])


def test_held_out_block_and_training_region_never_meet():
    from medrs_diff.datamodules.hsi_synthesis import holdout_regions

    assert holdout_regions(100, 90, "top", 0.3, 4, 16) == ((slice(34, 100), slice(0, 90)), (slice(0, 30), slice(0, 90)))
    assert holdout_regions(100, 90, "right", 0.1, 2, 16) == ((slice(0, 100), slice(0, 72)),
                                                             (slice(0, 100), slice(74, 90)))  # at least one patch
    for side in ("top", "bottom", "left", "right"):
        train, test = holdout_regions(50, 60, side, 0.25, 3, 8)
        a, b = np.zeros((50, 60), int), np.zeros((50, 60), int)
        a[train], b[test] = 1, 1
        assert not (a & b).any() and b.sum() >= 8 * 50 and a.sum() > 0
        # at least `gap` pixels between them (dilate the block by the gap)
        from scipy.ndimage import binary_dilation

        assert not (binary_dilation(b, iterations=3) & a.astype(bool)).any()
    with pytest.raises(ArgumentError, match="holdout_side"):
        holdout_regions(10, 10, "middle", 0.3, 0, 4)


def test_jasper_ridge_scene_library_and_held_out_block(shared_data):
    path = shared_data / "hyperspectral_unmixing" / "jasper_ridge_r198.mat"
    dm = HyperspectralSynthesisDataModule(str(path), rgb_bands=[32, 15, 5], patch_size=32, samples_per_epoch=4)
    dm.setup("fit")
    cube = dm.train_dataset.cubes[0]
    assert cube.shape == (198, 100, 100) and 1.0 < cube.max() < 1.1  # Y / maxValue (5000): 0 - 1.087
    # the file's M is on the cube's scale already: the fitted global factor is close to 1 (README: about 1.07)
    from scipy.io import loadmat

    m = loadmat(path)["M"]
    factor = float((dm.library * m).sum() / (m * m).sum())  # the least-squares ratio library / M
    assert 0.9 < factor < 1.2
    # default: the top 32 rows are held out, training keeps rows 36-99 (a 4-pixel gap)
    assert dm.val_dataset.regions[0] == (slice(0, 32), slice(0, 100))
    assert dm.train_dataset.regions[0] == (slice(36, 100), slice(0, 100))
    assert len(dm.val_dataset) == 3  # three 32 x 32 tiles of the held-out rows
