"""Vessel-tree phantoms: deterministic per seed, connected trees inside a circular FOV, calibre tapering, dark
vessels on the rendering, and a readable HRF-layout dataset through the clinical 2-D data module."""

import numpy as np
import pytest
from skimage.measure import label as cc_label

from medrs_diff.data.retina_phantoms import FOV_RADIUS, circular_fov, retina_case, vessel_tree


def test_circular_fov_is_the_centred_disc():
    fov = circular_fov(9, 9, radius=2 / 9)  # radius 2 px about the centre (4, 4)
    yy, xx = np.mgrid[0:9, 0:9]
    assert np.array_equal(fov, (yy - 4) ** 2 + (xx - 4) ** 2 <= 4)
    assert fov.sum() == 13  # lattice points within distance 2
    with pytest.raises(ValueError, match="radius"):
        circular_fov(9, 9, 0)


def test_cases_are_a_pure_function_of_the_seed():
    a, b, c = retina_case(3, (48, 48)), retina_case(3, (48, 48)), retina_case(4, (48, 48))
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.vessels, b.vessels)
    assert not np.array_equal(a.vessels, c.vessels)
    assert a.rgb.dtype == np.uint8 and a.rgb.shape == (48, 48, 3) and a.vessels.dtype == bool


@pytest.mark.parametrize("size", [(32, 32), (64, 96)])
def test_trees_are_connected_inside_the_fov(size):
    for seed in range(6):
        case = retina_case(seed, size)
        v = case.vessels
        assert np.array_equal(case.fov, circular_fov(*size, FOV_RADIUS))
        assert not (v & ~case.fov).any()  # cut to the field of view
        assert 0.03 < v[case.fov].mean() < 0.3  # a plausible vessel density
        labels = cc_label(v, connectivity=2)
        assert np.bincount(labels.ravel())[1:].max() >= 0.8 * v.sum()  # one tree (8-connected)
        assert (case.rgb[~case.fov] == 0).all()  # black outside the FOV


def test_calibre_tapers_from_the_disc():
    rng = np.random.default_rng(0)
    vessels, calibre, disc = vessel_tree(rng, (256, 256), width=8.0)
    yy, xx = np.nonzero(vessels)
    dist = np.hypot(yy - disc[0], xx - disc[1])
    cal = calibre[yy, xx]
    near, far = cal[dist < 25].mean(), cal[dist > 80].mean()
    assert cal.max() <= 8.0 and near > 1.8 * far  # trunks thick at the disc, thin at the periphery
    assert np.corrcoef(dist, cal)[0, 1] < -0.3


def test_vessels_are_darker_than_the_background():
    for seed in range(4):
        case = retina_case(seed, (64, 64))
        grey = case.rgb.astype(float).mean(-1)
        back = case.fov & ~case.vessels
        assert grey[case.vessels].mean() < grey[back].mean() - 15


def test_the_clinical_module_writes_and_reads_retina_phantoms(tmp_path):
    from medrs_diff.datamodules.clinical2d import Clinical2DSegmentationDataModule
    from medrs_diff.errors import ArgumentError

    dm = Clinical2DSegmentationDataModule(str(tmp_path / "ret"), layout="hrf", phantoms=3, phantom_size=[48, 48],
                                          phantom_kind="retina", val_fraction=0.34, batch_size=2)
    dm.prepare_data()
    dm.setup("fit")
    item = dm.train_dataset[0]
    assert item["image"].shape == (3, 48, 48) and item["label"].shape == (1, 48, 48)
    rng = np.random.default_rng(0)  # the module draws case 1 from its seed's generator
    ref = retina_case(rng, (48, 48))
    assert np.array_equal(item["label"][0].numpy() > 0.5, ref.vessels)
    assert np.array_equal(item["fov"][0].numpy() > 0.5, ref.fov)
    with pytest.raises(ArgumentError, match="phantom_kind: unknown phantom kind 'tree'"):
        Clinical2DSegmentationDataModule(str(tmp_path / "x"), layout="hrf", phantoms=1, phantom_kind="tree")
