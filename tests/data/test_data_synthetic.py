"""Synthetic phantoms: deterministic from the seed, correct geometry, the stated physics."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
from scipy import ndimage

from medrs_diff.data import keys as K
from medrs_diff.data import synthetic as S


def _digests(records) -> list[str]:
    paths = [v for r in records for v in r.values() if isinstance(v, str) and Path(v).is_file()]
    out = []
    for p in paths:
        if p.endswith(".nii.gz"):
            out.append(hashlib.sha256(np.asarray(nib.load(p).dataobj).tobytes()).hexdigest())
        else:
            out.append(hashlib.sha256(Path(p).read_bytes()).hexdigest())
    return out


@pytest.mark.parametrize("make, kw", [
    (S.make_segmentation_phantoms, {"n": 2, "size": (16, 16)}),
    (S.make_sr_pairs, {"n": 1, "hr_size": 16, "scale": 2}),
    (S.make_cloud_pairs, {"n": 1, "size": 16}),
    (S.make_fundus_phantoms, {"n": 1, "size": 32}),
])
def test_same_seed_same_files_other_seed_other_files(tmp_path, make, kw):
    a = _digests(make(tmp_path / "a", seed=5, **kw))
    b = _digests(make(tmp_path / "b", seed=5, **kw))
    c = _digests(make(tmp_path / "c", seed=6, **kw))
    assert a == b and a != c


def test_segmentation_phantoms_mask_is_the_bright_ellipse(synth):
    for rec in synth["seg2d"] + synth["seg3d"]:
        img = nib.load(rec[K.IMAGE])
        lab = nib.load(rec[K.LABEL])
        np.testing.assert_array_equal(img.affine, lab.affine)
        x, m = img.get_fdata(), lab.get_fdata() > 0
        assert x.shape == m.shape and 0.02 < m.mean() < 0.5
        assert x[m].mean() == pytest.approx(0.8, abs=0.05) and x[~m].mean() == pytest.approx(0.2, abs=0.05)
    assert nib.load(synth["seg3d"][0][K.IMAGE]).shape == (24, 24, 20)


def test_sr_pairs_geometry_and_known_degradation(synth):
    rec = synth["sr"][0]
    with rasterio.open(rec[K.IMAGE]) as hr_src, rasterio.open(rec[K.COND]) as lr_src:
        hr, lr = hr_src.read().astype(np.float64) / 1e4, lr_src.read().astype(np.float64) / 1e4
        assert hr.shape == (4, 32, 32) and lr.shape == (4, 8, 8)
        assert hr_src.crs == lr_src.crs and hr_src.bounds == lr_src.bounds
        assert lr_src.res == (40.0, 40.0) and hr_src.res == (10.0, 10.0)
        assert hr_src.descriptions == ("B02", "B03", "B04", "B08") and hr_src.nodata == 0
    s = rec["scale"]
    expected = ndimage.gaussian_filter(hr, (0, rec["blur_sigma"], rec["blur_sigma"]), mode="reflect")
    expected = expected.reshape(4, 8, s, 8, s).mean(axis=(2, 4))
    resid = lr - expected
    assert abs(resid.mean()) < 0.002 and resid.std() == pytest.approx(0.005, rel=0.3)  # the stated noise


def test_speckle_is_multiplicative_gamma_with_unit_mean(synth):
    rec = synth["sar"][0]
    with rasterio.open(rec[K.IMAGE]) as c, rasterio.open(rec[K.COND]) as n:
        clean, noisy = 10 ** (c.read(1) / 10), 10 ** (n.read(1) / 10)
        assert c.crs == n.crs and c.transform == n.transform
    ratio = noisy / clean
    assert ratio.mean() == pytest.approx(1.0, abs=0.06) and ratio.std() == pytest.approx(1.0, abs=0.1)  # 1 look


def test_cloud_pairs_companions_share_the_grid(synth):
    rec = synth["cloud"][0]
    grids = []
    for key in (K.IMAGE, K.COND, K.SAR, K.CLOUD_MASK):
        with rasterio.open(rec[key]) as src:
            grids.append((src.crs, src.transform, src.width, src.height))
            if key == K.SAR:
                assert src.count == 2 and src.descriptions == ("VV", "VH")
    assert all(g == grids[0] for g in grids)
    with rasterio.open(rec[K.IMAGE]) as a, rasterio.open(rec[K.COND]) as b, rasterio.open(rec[K.CLOUD_MASK]) as m:
        clear, cloudy, mask = a.read().astype(float), b.read().astype(float), m.read(1) > 0
    assert 0.15 < mask.mean() < 0.6
    np.testing.assert_allclose(cloudy[:, ~mask].mean(), clear[:, ~mask].mean(), rtol=0.2)
    assert cloudy[:, mask].mean() > 1.5 * clear[:, mask].mean()


def test_brats_labels_are_nested_regions(synth):
    rec = synth["brats"][0]
    lab = np.asarray(nib.load(rec[K.LABEL]).dataobj)
    assert set(np.unique(lab)) == {0, 1, 2, 4}
    wt, tc, et = lab > 0, np.isin(lab, (1, 4)), lab == 4
    assert et.sum() < tc.sum() < wt.sum()
    flair = nib.load(rec["flair"]).get_fdata()
    assert flair[lab == 2].mean() > flair[(lab == 0) & (flair > 0)].mean()  # oedema bright on FLAIR


def test_fundus_phantoms_in_drive_layout(synth):
    rec = synth["fundus"][0]
    assert Path(rec[K.IMAGE]).parent.name == "images" and Path(rec[K.LABEL]).parent.name == "1st_manual"
    from PIL import Image

    img = np.asarray(Image.open(rec[K.IMAGE]))
    ves = np.asarray(Image.open(rec[K.LABEL])) > 0
    fov = np.asarray(Image.open(rec[K.MASK])) > 0
    assert img.shape == (64, 64, 3) and ves.any() and not (ves & ~fov).any()
    assert (img[~fov] == 0).all()
