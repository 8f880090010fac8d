"""SpeckleDataModule: clean x speckle pairs seeded by (seed, epoch, index), the dB speckle statistics, the
real Sentinel-2 grey source, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrs_diff.data.scaling import resolve
from medrs_diff.datamodules import SpeckleDataModule
from medrs_diff.errors import ArgumentError, DataError


def _dm(tmp_path, **kw):
    args = dict(root=str(tmp_path / "none"), phantoms=4, phantom_size=48, patch_size=32, samples_per_epoch=6,
                val_fraction=0.25, batch_size=2)
    dm = SpeckleDataModule(**{**args, **kw})
    dm.setup("fit")
    return dm


def test_items_are_seeded_by_seed_epoch_index(tmp_path):
    ds = _dm(tmp_path).train_dataset
    a = ds[3]
    assert a["image"].shape == a["cond"].shape == (1, 32, 32)
    torch.testing.assert_close(ds[3]["cond"], a["cond"], atol=0, rtol=0)
    assert not torch.equal(ds[4]["cond"], a["cond"])
    other = _dm(tmp_path, seed=1).train_dataset[3]
    assert not torch.equal(other["cond"], a["cond"])
    loader = _dm(tmp_path).train_dataloader()
    first = loader.dataset[3]["cond"]
    loader.sampler.set_epoch(1)  # Lightning advances the sampler each epoch: new crops and speckle
    assert not torch.equal(loader.dataset[3]["cond"], first)
    loader.sampler.set_epoch(0)
    torch.testing.assert_close(loader.dataset[3]["cond"], first, atol=0, rtol=0)
    val = _dm(tmp_path).val_dataset
    torch.testing.assert_close(val[0]["cond"], val[0]["cond"], atol=0, rtol=0)


def test_db_speckle_has_the_log_gamma_statistics(tmp_path):
    """In dB, single-look speckle adds 10 log10 g: mean -10 gamma_E / ln 10 = -2.507 dB, std 10 pi / (sqrt 6 ln 10)
    = 5.57 dB (closed forms of log Exp(1)); checked on unclipped pixels of bright phantoms."""
    dm = _dm(tmp_path, samples_per_epoch=64, scaling="none", floor_db=-60.0)
    diffs = []
    for i in range(64):
        it = dm.train_dataset[i]
        diffs.append((it["cond"] - it["image"]).flatten().numpy())
    d = np.concatenate(diffs)
    assert d.mean() == pytest.approx(-10 * np.euler_gamma / np.log(10), abs=0.1)
    assert d.std() == pytest.approx(10 * np.pi / (np.sqrt(6) * np.log(10)), rel=0.03)


def test_intensity_domain_multiplies(tmp_path):
    dm = _dm(tmp_path, domain="intensity", scaling="none", samples_per_epoch=64)
    ratios = np.concatenate([(dm.train_dataset[i]["cond"] / dm.train_dataset[i]["image"]).flatten().numpy()
                             for i in range(64)])
    assert ratios.min() >= 0 and ratios.mean() == pytest.approx(1.0, abs=0.02)
    assert ratios.mean() ** 2 / ratios.var() == pytest.approx(1.0, rel=0.05)  # ENL 1


def test_model_space_is_the_db_scaling(tmp_path):
    it = _dm(tmp_path).train_dataset[0]
    assert it["image"].min() >= -1 and it["cond"].max() <= 1
    back = resolve("db").inverse(it["image"])
    assert back.min() >= -25 - 1e-4 and back.max() <= 0 + 1e-4


def test_real_sentinel2_grey_source(tmp_path, shared_data):
    dm = SpeckleDataModule(root=str(tmp_path / "clean"), bigearthnet_root=str(shared_data / "bigearthnet_s1_s2"),
                           patch_size=64, samples_per_epoch=2, val_fraction=0.34, batch_size=2)
    dm.setup("fit")
    files = sorted((tmp_path / "clean").glob("*.tif"))
    assert len(files) >= 2
    from medrs_diff.io.geotiff import read_geotiff

    r = read_geotiff(files[0])
    assert r.geometry.crs is not None and 0 <= r.data.min() and r.data.max() <= 1
    assert dm.train_dataset[0]["cond"].shape == (1, 64, 64)


def test_refusals(tmp_path):
    with pytest.raises(ArgumentError, match="domain"):
        SpeckleDataModule(root=str(tmp_path), domain="log")
    with pytest.raises(ArgumentError, match="looks"):
        SpeckleDataModule(root=str(tmp_path), looks=0)
    with pytest.raises(DataError, match="no clean"):
        SpeckleDataModule(root=str(tmp_path)).setup("fit")
