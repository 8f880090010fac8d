"""BlindSRDataModule: LR made on the fly from HR crops, a pure function of (seed, epoch, index); the MoCo
positive shares the degradation; fixed validation items; argument checks."""

import numpy as np
import pytest
import torch

from medrs_diff.data.degradations import degrade, setting
from medrs_diff.datamodules import BlindSRDataModule
from medrs_diff.errors import ArgumentError


def _dm(tmp_path, **kw):
    args = dict(phantoms=4, phantom_size=48, patch_size=32, batch_size=2, samples_per_epoch=6, seed=3)
    dm = BlindSRDataModule(str(tmp_path / "none"), **{**args, **kw})
    dm.setup()
    return dm


def test_items_follow_seed_epoch_and_index(tmp_path):
    dm = _dm(tmp_path)
    ds = dm.train_dataset
    a = ds[2]
    assert a["image"].shape == (3, 32, 32) and a["cond"].shape == a["cond_key"].shape == (3, 8, 8)
    assert float(a["cond"].abs().max()) <= 1.0 and a["degradation"].shape == (4,)
    b = _dm(tmp_path).train_dataset[2]  # a fresh module, same seed: the same item
    assert all(torch.equal(a[k], b[k]) for k in ("image", "cond", "cond_key", "degradation"))
    ds.set_epoch(1)
    c = ds[2]
    assert not torch.equal(a["cond"], c["cond"]) and not torch.equal(a["degradation"], c["degradation"])
    ds.set_epoch(0)
    assert torch.equal(ds[2]["cond"], a["cond"])  # back to epoch 0: the same draw again
    # the loader's sampler drives the epoch (as Lightning advances it)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    assert ds.current_epoch() == 1


def test_fixed_degradation_is_the_pipeline_and_the_positive_shares_it(tmp_path):
    dm = _dm(tmp_path, degradation="aniso_3.6_2.4_t45_n0")
    item = dm.train_dataset[0]
    want = degrade(item["image"], setting("aniso_3.6_2.4_t45_n0", 4), data_range=2.0, low=-1.0).clamp(-1, 1)
    assert torch.allclose(item["cond"], want, atol=1e-6)  # noise-free: LR = blur + bicubic x4 of the HR crop
    assert item["degradation"].tolist() == pytest.approx([3.6, 2.4, 45.0, 0.0])

def test_the_positive_is_another_scene_under_the_same_degradation(tmp_path, monkeypatch):
    import medrs_diff.datamodules.blindsr as mod

    calls = []

    def spy(hr, deg, rng=None, data_range=1.0, low=0.0):
        calls.append((hr.clone(), deg))
        return degrade(hr, deg, rng, data_range, low)

    monkeypatch.setattr(mod, "degrade", spy)
    ds = _dm(tmp_path, noise_max=25.0).train_dataset
    for i in range(4):
        calls.clear()
        it = ds[i]
        (hr_a, deg_a), (hr_b, deg_b) = calls
        assert deg_a == deg_b and deg_a.noise > 0  # one random degradation for the LR and its positive
        assert torch.equal(hr_a, it["image"]) and not torch.equal(hr_b, hr_a)


def test_validation_items_are_fixed_and_cover_the_settings(tmp_path):
    dm = _dm(tmp_path, val_settings=["bicubic", "aniso_1.2_2.4_t0_n5"], val_fraction=0.5)
    va = dm.val_dataset
    assert len(va) == 2 * 2  # 2 held-out phantoms x 2 settings
    first = [va[i]["cond"] for i in range(len(va))]
    va.set_epoch(5)
    assert all(torch.equal(first[i], va[i]["cond"]) for i in range(len(va)))
    got = {tuple(round(v, 4) for v in va[i]["degradation"].tolist()) for i in range(len(va))}
    assert got == {(0.0, 0.0, 0.0, 0.0), (1.2, 2.4, 0.0, 5.0)}


def test_bad_arguments(tmp_path):
    with pytest.raises(ArgumentError, match="patch_size: must be a positive multiple of scale 4"):
        BlindSRDataModule(str(tmp_path), patch_size=30)
    with pytest.raises(ArgumentError, match="unknown setting 'blurry'"):
        BlindSRDataModule(str(tmp_path), val_settings=["blurry"])
    with pytest.raises(ArgumentError, match="unknown degradation mode"):
        BlindSRDataModule(str(tmp_path), mode="motion")
    with pytest.raises(ArgumentError, match="patch_size: 64 exceeds"):
        _dm(tmp_path, patch_size=64)
    assert np.isfinite(_dm(tmp_path).train_dataset[0]["cond"].numpy()).all()
