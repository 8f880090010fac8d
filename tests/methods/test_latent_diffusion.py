"""Latent diffusion: the autoencoder_kl stage reconstructs phantoms, latent_ddpm samples decode to the image shape,
the latent scaling factor is estimated once and lives in the checkpoint, and bad autoencoder files are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrs_diff.data.brain_phantoms import brain_slice
from medrs_diff.errors import CheckpointError
from medrs_diff.methods import AutoencoderKLMethod, LatentDDPM
from medrs_diff.metrics import psnr
from medrs_diff.train.checkpoint import build_method, method_config

AE = dict(channels=(8, 8), attention_levels=(False, False), latent_channels=2, norm_num_groups=4)
UNET = dict(channels=(8, 16), attention_levels=(False, False), num_head_channels=8, norm_num_groups=4, timesteps=50)


def phantoms(n: int, seed: int) -> torch.Tensor:
    """``n`` noise-free 32 x 32 brain phantoms, each min-max scaled to [-1, 1], (n, 1, 32, 32)."""
    a = np.stack([brain_slice(32, seed * 1000 + i, noise=0.0)[0] for i in range(n)]).astype(np.float32)
    x = torch.from_numpy(a)[:, None]
    lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo) * 2 - 1


def save_ae_checkpoint(ae: AutoencoderKLMethod, path, name: str = "autoencoder_kl") -> None:
    """A checkpoint in the layout `medrs-diff fit` writes (method record + Lightning state dict)."""
    torch.save({"medrs_diff": {"method": method_config(ae), "method_name": name},
                "state_dict": {f"method.{k}": v for k, v in ae.state_dict().items()}}, path)


def train_autoencoder(m, train: torch.Tensor, steps: int = 500) -> dict:
    """``steps`` Adam steps (one-cycle, peak 5e-3) on batches of 8 drawn from ``train``; the last step's logs."""
    opt = torch.optim.Adam(m.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss, logs = m.loss({"image": train[torch.randint(0, len(train), (8,), generator=g)]}, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return logs


def test_autoencoder_reconstructs_held_out_phantoms_above_30_db():
    torch.manual_seed(0)
    train, test = phantoms(64, 0), phantoms(8, 1)
    m = AutoencoderKLMethod(channels=(32, 32), attention_levels=(False, False), latent_channels=4, norm_num_groups=8)
    logs = train_autoencoder(m, train)
    assert float(logs["kl"]) > 0  # the KL term is computed (and small-weighted)
    recon = m.eval().predict({"image": test})["prediction"]
    assert recon.shape == test.shape
    assert float(psnr(recon, test, data_range=2.0).mean()) >= 30.0  # measured 32.5 dB (this 2-core CPU)


def test_autoencoder_kl_works_in_3d_and_its_loss_is_l1_plus_weighted_kl():
    torch.manual_seed(0)
    m = AutoencoderKLMethod(spatial_dims=3, kl_weight=0.25, **AE)
    x = torch.rand(2, 1, 8, 8, 8) * 2 - 1
    assert m.encode(x, sample=False).shape == (2, 2, 4, 4, 4)
    assert m.eval().predict({"image": x})["prediction"].shape == x.shape
    loss, logs = m.loss({"image": x}, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(float(logs["l1"]) + 0.25 * float(logs["kl"]), rel=1e-6)
    with torch.no_grad():
        mu, sigma = m.posterior(x)  # closed-form KL of N(mu, sigma^2) to N(0, 1), summed per sample
        kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma),
                                               torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1).mean()
    assert float(logs["kl"]) == pytest.approx(float(kl), rel=1e-4)


def test_latent_sampling_decodes_to_the_image_shape(tmp_path):
    torch.manual_seed(0)
    ae = AutoencoderKLMethod(**AE)
    save_ae_checkpoint(ae, tmp_path / "ae.ckpt")
    m = LatentDDPM(autoencoder=str(tmp_path / "ae.ckpt"), **UNET)
    assert all(torch.equal(a, b) for a, b in zip(m.ae.state_dict().values(), ae.state_dict().values(), strict=True))
    assert not any(p.requires_grad for p in m.ae.parameters())  # frozen
    x = phantoms(3, 0)[:, :, :16, :16].contiguous()
    m.loss({"image": x}, torch.Generator().manual_seed(0))[0].backward()
    assert all(p.grad is None for p in m.ae.parameters()) and all(p.grad is not None for p in m.unet.parameters())
    out = m.eval().predict({"image": x}, sampler="ddim", steps=3, n_samples=2, generator=torch.Generator())
    assert out["prediction"].shape == x.shape and out["samples"].shape == (3, 2, 1, 16, 16)
    assert torch.isfinite(out["prediction"]).all()
    m.train()
    assert not m.ae.training and m.unet.training  # the frozen autoencoder stays in eval mode


def test_scaling_factor_is_estimated_once_and_restored_from_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    ae = AutoencoderKLMethod(**AE)
    path = tmp_path / "ae.ckpt"
    save_ae_checkpoint(ae, path)
    m = LatentDDPM(autoencoder=str(path), **UNET)
    assert m.scale is None
    x = phantoms(4, 0)[:, :, :16, :16].contiguous()
    with pytest.raises(CheckpointError, match="never estimated"):
        m.predict({"image": x}, steps=2)
    m.loss({"image": x}, torch.Generator().manual_seed(3))
    z = ae.encode(x, torch.Generator().manual_seed(3))  # the same posterior sample as the first batch
    want = 1.0 / float(z.std())
    assert m.scale == pytest.approx(want, rel=1e-6)
    m.loss({"image": x * 0.1}, torch.Generator().manual_seed(4))  # a later batch does not re-estimate
    assert m.scale == pytest.approx(want, rel=1e-6)
    # integer buffer: the EMA callback copies it (it averages floating buffers, which would blend in the unset 0)
    assert not m.scale_bits.is_floating_point()
    # a checkpoint rebuilds without the autoencoder file (its architecture is recorded) and restores the factor
    path.unlink()
    again = build_method(method_config(m))
    assert again.scale is None
    again.load_state_dict(m.state_dict())
    assert again.scale == m.scale
    assert all(torch.equal(a, b) for a, b in zip(again.ae.state_dict().values(), ae.state_dict().values(),
                                                 strict=True))
    assert LatentDDPM(autoencoder_config=AE, scale_factor=0.5, **UNET).scale == 0.5  # a fixed factor


def test_bad_autoencoder_checkpoints_are_refused(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(CheckpointError, match=r"nope\.ckpt: the autoencoder checkpoint does not exist\. Fix: pass"):
        LatentDDPM(autoencoder=str(missing), **UNET)
    other = tmp_path / "seg.ckpt"
    save_ae_checkpoint(AutoencoderKLMethod(**AE), other, name="segdiff")
    other_cfg = torch.load(other, weights_only=True)
    other_cfg["medrs_diff"]["method"]["class_path"] = "medrs_diff.methods.segdiff.SegDiff"
    torch.save(other_cfg, other)
    with pytest.raises(CheckpointError,
                       match=r"seg\.ckpt: holds 'segdiff', not an autoencoder_kl / autoencoder_vq model\. Fix"):
        LatentDDPM(autoencoder=str(other), **UNET)
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.ckpt: is not a PyTorch checkpoint .*Fix: pass the last\.ckpt"):
        LatentDDPM(autoencoder=str(junk), **UNET)
    nan = tmp_path / "nan.ckpt"
    ae = AutoencoderKLMethod(**AE)
    with torch.no_grad():
        next(ae.parameters()).fill_(float("nan"))
    save_ae_checkpoint(ae, nan)
    with pytest.raises(CheckpointError, match="non-finite"):
        LatentDDPM(autoencoder=str(nan), **UNET)
