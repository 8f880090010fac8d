"""DDFM method: the prior's training images, fusion through predict and infer (multi-modal cases), refusals,
and the phantom behaviour test (slow)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from _learning import fit

from medrs_diff.data.fusion_phantoms import fusion_phantom_pair, make_fusion_phantoms
from medrs_diff.datamodules import NiftiFusionDataModule
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.inference import Predictor
from medrs_diff.methods import DDFM, METHODS
from medrs_diff.metrics.fusion import mutual_information

TINY = dict(channels=(8, 16), attention_levels=(False, False), num_res_blocks=1, num_head_channels=8,
            norm_num_groups=8, timesteps=50, sampling_steps=5)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return DDFM(**TINY).eval()


def test_registered_and_declares_its_io(tiny):
    assert METHODS["ddfm"] is DDFM
    spec = tiny.io_spec
    assert spec.inputs == {"image": 2} and spec.outputs == ("prediction", "uncertainty") and spec.data_space == ()


def test_prior_trains_on_the_chosen_channels(tiny):
    img = torch.arange(2 * 2 * 8 * 8, dtype=torch.float32).reshape(2, 2, 8, 8)
    torch.testing.assert_close(tiny.prior_images(img), img[:, 1:2])
    both = DDFM(**TINY, prior_channels=None)
    torch.testing.assert_close(both.prior_images(img), img.reshape(4, 1, 8, 8))
    loss, logs = tiny.loss({"image": img / img.max()}, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny.unet.parameters())


def test_predict_fuses_into_unit_range(tiny):
    a, b = fusion_phantom_pair(16, seed=1)
    img = torch.from_numpy(np.stack([a, b]))[None] * 2 - 1
    out = tiny.predict({"image": img}, generator=torch.Generator().manual_seed(0), n_samples=2)
    f = out["prediction"]
    assert f.shape == (1, 1, 16, 16) and out["uncertainty"].shape == f.shape
    assert torch.isfinite(f).all() and f.min() >= 0 and f.max() <= 1
    again = tiny.predict({"image": img}, generator=torch.Generator().manual_seed(0), n_samples=2)["prediction"]
    assert torch.equal(f, again)


def test_refusals(tiny):
    with pytest.raises(DataError, match="2 input channel"):
        tiny.predict({"image": torch.zeros(1, 1, 16, 16)})
    with pytest.raises(DataError, match="NaN"):
        tiny.predict({"image": torch.full((1, 2, 16, 16), float("nan"))})
    with pytest.raises(ArgumentError, match="prior_channels"):
        DDFM(**TINY, prior_channels=[2])
    with pytest.raises(ArgumentError, match="rho"):
        DDFM(**TINY, rho=0.0)
    with pytest.raises(ArgumentError, match="intensity_channel"):
        DDFM(**TINY, intensity_channel=3)


def test_infer_writes_the_fused_case_on_the_pairs_grid(tiny, tmp_path):
    root = tmp_path / "pairs"
    make_fusion_phantoms(root, n=2, size=16, modalities=("pet", "mri"))
    p = Predictor.from_method(tiny, scaling="mri", modalities=("pet", "mri"), layout="flat")
    written = p.predict_files(root, tmp_path / "out", steps=3, seed=0)
    assert len(written) == 2
    out = nib.load(tmp_path / "out" / "fusion_000.nii.gz")
    src = nib.load(root / "fusion_000_mri.nii.gz")
    assert out.shape[:2] == src.shape[:2]
    np.testing.assert_allclose(out.affine, src.affine)
    data = np.asarray(out.dataobj)
    assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1


def test_infer_refuses_pairs_on_different_grids_before_any_compute(tiny, tmp_path):
    root = tmp_path / "pairs"
    make_fusion_phantoms(root, n=1, size=16, modalities=("pet", "mri"))
    img = nib.load(root / "fusion_000_mri.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((20, 16), np.float32), img.affine), root / "fusion_000_mri.nii.gz")
    calls = []
    tiny.unet.register_forward_hook(lambda *args: calls.append(1))
    p = Predictor.from_method(tiny, scaling="mri", modalities=("pet", "mri"), layout="flat")
    with pytest.raises(DataError, match="fusion_000"):
        p.predict_files(root, tmp_path / "out", steps=3, seed=0)
    assert not calls


def test_fusion_data_module_pairs_and_prior_only(tmp_path):
    dm = NiftiFusionDataModule(str(tmp_path / "ph"), phantoms=4, phantom_size=[16, 16], batch_size=2)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 2, 16, 16) and dm.hparams["modalities"] == ["pet", "mri"]
    solo = NiftiFusionDataModule(str(tmp_path / "ph"), prior_modality="mri", batch_size=2)
    solo.setup()
    img = next(iter(solo.train_dataloader()))["image"]
    assert img.shape[1] == 2 and torch.equal(img[:, 0], img[:, 1])
    (tmp_path / "ph" / "fusion_000_mri.nii.gz").unlink()
    with pytest.raises(DataError, match="fusion_000"):
        NiftiFusionDataModule(str(tmp_path / "ph")).setup()
    with pytest.raises(DataError, match="two modalities"):
        NiftiFusionDataModule(str(tmp_path / "ph"), modalities=["a", "b", "c"])


@pytest.mark.slow
def test_ddfm_shares_more_with_each_source_than_the_other_source_does(tmp_path, one_thread):
    """A tiny prior trained briefly on the MRI-like phantoms; DDFM (DDIM 100 steps + EM) fuses held-out pairs.
    MI with 32 bins (32 x 32 images: 256 bins leave the joint histogram nearly empty)."""
    torch.manual_seed(0)
    dm = NiftiFusionDataModule(str(tmp_path / "ph"), phantoms=24, phantom_size=[32, 32], batch_size=16,
                               val_batch_size=6)
    m = DDFM(channels=(16, 32, 32), attention_levels=(False,) * 3, num_res_blocks=1, num_head_channels=16,
             norm_num_groups=8)
    fit(m, dm, 300, 2e-3, ema_decay=0.99)
    batch = next(iter(dm.val_dataloader()))
    f = m.predict(batch, generator=torch.Generator().manual_seed(0))["prediction"][:, 0]
    src = (batch["image"] + 1) / 2
    scores = np.array([[mutual_information(f[i], src[i, 0], 32), mutual_information(src[i, 1], src[i, 0], 32),
                        mutual_information(f[i], src[i, 1], 32)] for i in range(f.shape[0])]).mean(0)
    print(f"MI(F,A) {scores[0]:.3f} > MI(B,A) {scores[1]:.3f}; MI(F,B) {scores[2]:.3f} > MI(A,B) {scores[1]:.3f}")
    assert scores[0] > scores[1]
    assert scores[2] > scores[1]


def test_colour_input_is_fused_on_luminance_and_keeps_its_chroma(tiny):
    from medrs_diff.data.colour import rgb_to_ycbcr

    g = torch.Generator().manual_seed(2)
    colour = torch.rand(1, 3, 16, 16, generator=g) * 0.4 + 0.3  # in gamut after a change of Y
    grey = torch.rand(1, 1, 16, 16, generator=g)
    out = tiny.fuse_colour(colour, grey, generator=torch.Generator().manual_seed(0))
    y = rgb_to_ycbcr(colour)[:, :1]
    fused_y = tiny.predict({"image": torch.cat([y, grey], 1) * 2 - 1},
                           generator=torch.Generator().manual_seed(0))["prediction"]
    ycc = rgb_to_ycbcr(out)
    inside = ((out > 0) & (out < 1)).all(1, keepdim=True)  # pixels the final clip to [0, 1] left alone
    assert inside.float().mean() > 0.5
    torch.testing.assert_close(ycc[:, :1][inside], fused_y[inside], atol=1e-5, rtol=0)
    for ch in (1, 2):
        torch.testing.assert_close(ycc[:, ch : ch + 1][inside], rgb_to_ycbcr(colour)[:, ch : ch + 1][inside],
                                   atol=1e-5, rtol=0)
