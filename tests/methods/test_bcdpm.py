"""BC-DPM: the three condition switches, the diffusion-domain block against closed forms (weight 0 is the
plain sampler; with an exact Gaussian prior it shifts the output mean by the propagated amount), 2-D / 3-D,
the UNet regression baseline, bad arguments, and a learning test on PET phantoms at 1/20 dose."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest
import torch

from medrs_diff.diffusion.guidance import CorrelatedGaussian, block_lowpass
from medrs_diff.diffusion.samplers import ddim
from medrs_diff.diffusion.schedules import make_schedule
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.methods import BCDPM, METHODS, RegressionUNet

sys.path.insert(0, str(Path(__file__).parent))

TINY = dict(channels=(8, 16), attention_levels=(False, False), num_res_blocks=1, num_head_channels=8,
            norm_num_groups=8, timesteps=50)


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _copy(src: BCDPM, **kw) -> BCDPM:
    dst = BCDPM(**{**TINY, **kw})
    dst.load_state_dict(src.state_dict())
    return dst


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm_solver_pp"])
def test_block_with_weight_zero_is_the_plain_sampler(sampler):
    """``both`` with dd_weight 0 gives bit-identical samples to ``spatial`` (same net, same random stream)."""
    torch.manual_seed(0)
    spatial = BCDPM(condition="spatial", **TINY).eval()
    both0 = _copy(spatial, condition="both", dd_weight=0.0).eval()
    both = _copy(spatial, condition="both", dd_weight=1.0).eval()
    batch = {"cond": torch.rand(2, 1, 16, 16) * 2 - 1}
    run = lambda m: m.predict(batch, sampler=sampler, steps=5, generator=_gen(3))["prediction"]  # noqa: E731
    plain = run(spatial)
    torch.testing.assert_close(run(both0), plain, atol=0, rtol=0)
    assert (run(both) - plain).abs().max() > 1e-3  # the block does act when its weight is > 0


def test_condition_switches_build_the_right_net():
    assert BCDPM(condition="spatial", **TINY).unet.cond_channels == 1
    assert BCDPM(condition="both", **TINY).unet.cond_channels == 1
    diff = BCDPM(condition="diffusion", **TINY)
    assert diff.unet.cond_channels == 0 and diff.diffusion_domain and not diff.spatial
    # diffusion only, block replacing every band (weight 1): the last forward sample of the low dose is the
    # low dose itself, so that is the output; the low band alone pulls the output's block means toward it
    batch = {"cond": torch.rand(1, 1, 16, 16) * 0.4 - 0.2}
    full = _copy(diff, condition="diffusion", dd_band="all").eval()
    out = full.predict(batch, sampler="ddim", steps=4, generator=_gen(0))["prediction"]
    torch.testing.assert_close(out, batch["cond"], atol=1e-6, rtol=0)
    free = _copy(diff, condition="diffusion", dd_weight=0.0).eval()
    gap = lambda m: float((block_lowpass(m.predict(batch, sampler="ddim", steps=4, generator=_gen(0))[  # noqa: E731
        "prediction"], 4) - block_lowpass(batch["cond"], 4)).abs().mean())
    assert gap(diff.eval()) < 0.5 * gap(free)


def _exact_ddim_mean(prior: CorrelatedGaussian, sched, y: torch.Tensor, w: float, proj: torch.Tensor) -> torch.Tensor:
    """Mean of deterministic DDIM (eta 0) from x_T ~ N(0, I) with the exact denoiser of ``prior`` and the block
    x <- x + w P(sqrt(abar_prev) y + sqrt(1 - abar_prev) z - x) after each step: every step is affine, the
    block's noise z has mean 0, so the mean propagates through the affine maps (dense matrices)."""
    d = prior.dim
    mu, cov0 = prior.mean(), prior.covariance()
    eye = torch.eye(d, dtype=torch.float64)
    yv = y.reshape(-1).double()
    mean = torch.zeros(d, dtype=torch.float64)
    ac, prev = sched.alphas_cumprod, sched.alphas_cumprod_prev
    for i in range(len(sched) - 1, -1, -1):
        a, a_s = float(ac[i]), float(prev[i])
        g = math.sqrt(a) * cov0 @ torch.linalg.inv(a * cov0 + (1 - a) * eye)
        x0 = mu + g @ (mean - math.sqrt(a) * mu)
        eps = (mean - math.sqrt(a) * x0) / math.sqrt(1 - a)
        mean = math.sqrt(a_s) * x0 + math.sqrt(1 - a_s) * eps
        mean = mean + w * proj @ (math.sqrt(a_s) * yv - mean)
    return mean


@pytest.mark.parametrize(("band", "weight", "factor"), [("all", 0.3, 1), ("low", 1.0, 2), ("low", 0.5, 2)])
def test_block_moves_the_mean_by_the_closed_form_amount(band, weight, factor):
    """Exact Gaussian prior of the engine's tests (4 x 4 images, DCT-correlated), DDIM 10 steps, the method's
    own block: the Monte-Carlo mean shift toward the low-dose image matches the propagated closed form
    within 5 standard errors, and the closed-form shift is not small."""
    shape = (1, 4, 4)
    sched_train = make_schedule("linear", 1000)
    prior = CorrelatedGaussian.smooth(shape, mean=0.3, decay=1.0)
    den = prior.denoiser(sched_train)
    y = prior.sample(1, _gen(5)) + 0.8  # a "low-dose" image off the prior mean
    method = BCDPM(condition="diffusion", dd_band=band, dd_weight=weight, dd_factor=factor, **TINY)
    n, steps = 4000, 10
    x_T = torch.randn((n, *shape), generator=_gen(1))
    out_plain = ddim(den, x_T, sched_train, steps=steps, eta=0.0, generator=_gen(2))
    out = ddim(den, x_T, sched_train, steps=steps, eta=0.0, hooks=[method.block(y)], generator=_gen(2))
    sched = sched_train.respace(steps)
    d = prior.dim
    eye = torch.eye(d, dtype=torch.float64)
    proj = eye if band == "all" else block_lowpass(eye.reshape(d, *shape).float(), factor).reshape(d, d).double().T
    want_plain = _exact_ddim_mean(prior, sched, y, 0.0, proj)
    want = _exact_ddim_mean(prior, sched, y, weight, proj)
    flat, flat_plain = out.reshape(n, -1).double(), out_plain.reshape(n, -1).double()
    se = (flat - flat_plain).std(0) / math.sqrt(n) + 1e-6
    shift_mc = (flat - flat_plain).mean(0)
    assert ((shift_mc - (want - want_plain)).abs() / se).max() < 5
    # plain DDIM from N(0, I) has the prior mean; the shift is toward y and large
    torch.testing.assert_close(flat_plain.mean(0), prior.mean(), atol=5 * float(flat_plain.std(0).max()) / n**0.5,
                               rtol=0)
    assert float((want - want_plain).abs().max()) > 0.1
    gap = lambda m: float(((proj @ (m - y.reshape(-1).double())) ** 2).sum())  # noqa: E731
    assert gap(want) < gap(want_plain)


@pytest.mark.parametrize("condition", ["spatial", "diffusion", "both"])
def test_predict_and_loss_in_2d_and_3d(condition):
    for dims, size in ((2, (16, 16)), (3, (8, 8, 8))):
        m = BCDPM(spatial_dims=dims, condition=condition, dd_factor=2, **TINY)
        fd = torch.rand(2, 1, *size) * 2 - 1
        ld = (fd + 0.2 * torch.randn_like(fd)).clamp(-1, 1)
        loss, logs = m.loss({"cond": ld, "image": fd}, generator=_gen(0))
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        out = m.eval().predict({"cond": ld}, sampler="ddim", steps=3, n_samples=2, generator=_gen(1))
        assert out["prediction"].shape == ld.shape and out["samples"].shape == (2, 2, 1, *size)
        assert out["prediction"].abs().max() <= 1 and (out["uncertainty"] >= 0).all()
    assert m.io_spec.data_space == ("prediction",) and m.io_spec.input_key == "cond"


def test_registered_and_bad_arguments():
    assert METHODS["bcdpm"] is BCDPM and METHODS["regression_unet"] is RegressionUNet
    with pytest.raises(ArgumentError, match="condition"):
        BCDPM(condition="ilvr")
    with pytest.raises(ArgumentError, match="dd_weight"):
        BCDPM(dd_weight=1.5)
    with pytest.raises(ArgumentError, match="dd_band"):
        BCDPM(dd_band="mid")
    m = BCDPM(**TINY)
    with pytest.raises(DataError, match="full-dose"):
        m.loss({"cond": torch.zeros(1, 1, 8, 8)})
    with pytest.raises(DataError, match="differ in shape"):
        m.loss({"cond": torch.zeros(1, 1, 8, 8), "image": torch.zeros(1, 1, 16, 16)})
    with pytest.raises(DataError, match="channel"):
        m.predict({"cond": torch.zeros(1, 2, 8, 8)})


def test_regression_unet_baseline_learns_identity_residual():
    """Residual form: zero last layer -> the prediction is the input; L1 / L2 losses as stated."""
    m = RegressionUNet(channels=(8, 16), num_res_units=1, loss="l2")
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    y = torch.rand(2, 1, 16, 16) * 2 - 1
    loss, _ = m.loss({"cond": x, "image": y})
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(m(x), y))
    with torch.no_grad():
        for p in m.net.parameters():
            p.zero_()
    torch.testing.assert_close(m.predict({"cond": x})["prediction"], x)
    with pytest.raises(ArgumentError, match="loss"):
        RegressionUNet(loss="huber")


@pytest.mark.slow
def test_bcdpm_learns_to_restore_phantom_pet_at_one_twentieth_dose(tmp_path):
    """Tiny BC-DPM (both conditions), 32 x 32 phantoms, 300 steps: PSNR inside the body mask (model space,
    data range 2 = SUV range 10) beats the 1/20-dose input by >= 3 dB (measured 22.07 -> 27.32 dB, 16-22 s)."""
    from _learning import fit

    from medrs_diff.datamodules.pet import PETDoseDataModule
    from medrs_diff.metrics import psnr

    start = time.perf_counter()
    torch.manual_seed(0)
    dm = PETDoseDataModule(str(tmp_path / "pet"), phantoms=12, phantom_size=(32, 32), patch_size=32,
                           samples_per_epoch=2400, val_samples=4, val_fraction=0.25, batch_size=8,
                           dose_fraction=0.05)
    dm.setup("fit")
    m = BCDPM(condition="both", channels=(16, 32), attention_levels=(False, False), num_res_blocks=1,
              num_head_channels=16, norm_num_groups=8, timesteps=100)
    fit(m, dm, 300, 2e-3)
    batch = next(iter(torch.utils.data.DataLoader(dm.val_dataset, batch_size=12)))
    out = m.predict(batch, sampler="ddpm", steps=100, generator=_gen(0))
    mask = batch["mask"] > 0
    low = float(psnr(batch["cond"], batch["image"], data_range=2.0, mask=mask).mean())
    restored = float(psnr(out["prediction"], batch["image"], data_range=2.0, mask=mask).mean())
    print(f"BC-DPM 1/20 dose: low dose {low:.2f} dB, restored {restored:.2f} dB, "
          f"{time.perf_counter() - start:.0f} s")
    assert restored >= low + 3.0


def test_infer_writes_suv_on_the_input_grid(tmp_path):
    """Through the Predictor with the recipes' ``pet`` scaling (SUV [0, 10]): a diffusion-only BC-DPM whose
    block replaces every band returns the low dose itself, so the written NIfTI must equal the input in SUV
    (to float32 rounding), on its affine and shape; a 2-D model runs a (x, y, 1) NIfTI slice."""
    import nibabel as nib
    import numpy as np

    from medrs_diff.inference import Predictor
    from medrs_diff.io.nifti import write_nifti

    low = np.clip(np.random.default_rng(0).gamma(2.0, 1.0, (32, 32, 1)), 0, 9.5).astype(np.float32)
    affine = np.diag([4.0, 4.0, 5.0, 1.0])
    affine[:3, 3] = [-60.0, 10.0, 3.0]
    (tmp_path / "in").mkdir()
    write_nifti(low, tmp_path / "in" / "case.nii.gz", affine)
    m = BCDPM(condition="diffusion", dd_band="all", **TINY)
    p = Predictor.from_method(m, scaling="pet", patch_size=(32, 32), slice_wise=True)
    p.predict_files(tmp_path / "in", tmp_path / "out", sampler="ddim", steps=3)
    out = nib.load(tmp_path / "out" / "case.nii.gz")
    assert out.shape == (32, 32, 1) and np.allclose(out.affine, affine)
    np.testing.assert_allclose(out.get_fdata(), low, atol=1e-5)


def test_infer_refuses_a_bqml_dicom_for_an_suv_model(shared_data, tmp_path):
    from medrs_diff.inference import Predictor

    pytest.importorskip("pydicom")
    p = Predictor.from_method(BCDPM(**TINY), scaling="pet", patch_size=(32, 32))
    with pytest.raises(DataError, match="Bq/mL, but this model works in SUV"):
        p.predict_files(shared_data / "pet_tcia_slice" / "1.dcm", tmp_path / "out.npy", steps=2)
