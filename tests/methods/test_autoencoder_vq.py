"""The VQ-VAE first stage (autoencoder_vq): it reconstructs held-out phantoms with a used codebook, its decoder
quantises (encodings snap to codebook vectors), bad arguments are refused, and latent diffusion runs on it as on
the KL stage (checkpoint read once, recorded, rebuilt without the file)."""

from __future__ import annotations

import pytest
import torch
from test_latent_diffusion import UNET, phantoms, save_ae_checkpoint, train_autoencoder

from medrs_diff.errors import ArgumentError
from medrs_diff.methods import AutoencoderVQMethod, LatentDDPM
from medrs_diff.methods._latent import STAGE1_KEY
from medrs_diff.metrics import psnr
from medrs_diff.train.checkpoint import build_method, method_config

VQ = dict(channels=(8, 8), num_embeddings=16, embedding_dim=2)


def test_vq_autoencoder_reconstructs_held_out_phantoms_with_a_used_codebook():
    torch.manual_seed(0)
    train, test = phantoms(64, 0), phantoms(8, 1)
    m = AutoencoderVQMethod(channels=(32, 32), num_embeddings=256, embedding_dim=4)
    logs = train_autoencoder(m, train)
    assert float(logs["perplexity"]) > 20  # the EMA codebook spread over many codes (measured ~99)
    m.eval()
    used = torch.unique(m.codes(m.encode(test))).numel()
    recon = m.predict({"image": test})["prediction"]
    assert used >= 50, used  # measured 155 of 256 (decay 0.99 collapses to 1: the module notes)
    assert float(psnr(recon, test, data_range=2.0).mean()) >= 21.0  # measured 22.8 dB (this 2-core CPU)


def test_decoder_quantises_and_3d_works():
    torch.manual_seed(0)
    m = AutoencoderVQMethod(spatial_dims=3, **VQ).eval()
    x = torch.rand(2, 1, 8, 8, 8) * 2 - 1
    z = m.encode(x)
    assert z.shape == (2, 2, 2, 2, 2) and m.codes(z).shape == (2, 2, 2, 2)
    e = m.vqvae.quantizer.quantizer.embed(m.codes(z))  # the nearest codebook vectors, by hand
    d = ((z[:, :, None] - m.vqvae.quantizer.quantizer.embedding.weight.T[None, :, :, None, None, None]) ** 2).sum(1)
    assert torch.equal(m.codes(z), d.argmin(1))
    assert torch.allclose(m.decode(z), m.vqvae.decode(e))  # decode = quantise, then the decoder
    assert torch.allclose(m.decode(z + 1e-4 * torch.randn_like(z)), m.decode(z))  # snaps to the same codes
    before = m.vqvae.quantizer.quantizer.embedding.weight.clone()
    m.predict({"image": x})
    assert torch.equal(before, m.vqvae.quantizer.quantizer.embedding.weight)  # no codebook update outside training
    loss, logs = m.train().loss({"image": x})
    assert torch.isfinite(loss)
    assert float(loss.detach()) == pytest.approx(float(logs["l1"] + logs["commitment"]), rel=1e-6)


@pytest.mark.parametrize("kwargs,where", [
    (dict(num_embeddings=1), "num_embeddings"), (dict(embedding_dim=0), "embedding_dim"),
    (dict(commitment_cost=-1.0), "commitment_cost"), (dict(codebook_decay=1.0), "codebook_decay"),
    (dict(channels=()), "channels"), (dict(num_res_channels=(8,)), "num_res_channels"),
    (dict(spatial_dims=1), "spatial_dims"),
])
def test_bad_arguments_name_themselves(kwargs, where):
    with pytest.raises(ArgumentError, match=rf"^{where}: .*Fix: "):
        AutoencoderVQMethod(**{**VQ, **kwargs})


def test_latent_ddpm_runs_on_a_vq_checkpoint_and_rebuilds_without_it(tmp_path):
    torch.manual_seed(0)
    vq = AutoencoderVQMethod(**VQ).eval()
    path = tmp_path / "vq.ckpt"
    save_ae_checkpoint(vq, path, name="autoencoder_vq")
    m = LatentDDPM(autoencoder=str(path), **UNET)
    assert isinstance(m.ae, AutoencoderVQMethod)
    assert method_config(m)["init_args"]["autoencoder_config"][STAGE1_KEY] == "autoencoder_vq"  # recorded
    assert not any(p.requires_grad for p in m.ae.parameters())
    x = phantoms(3, 0)[:, :, :16, :16].contiguous()
    m.loss({"image": x}, torch.Generator().manual_seed(0))[0].backward()
    assert m.scale == pytest.approx(1.0 / float(vq.encode(x).detach().std()), rel=1e-6)  # encodings, unquantised
    out = m.eval().predict({"image": x}, sampler="ddim", steps=2, generator=torch.Generator().manual_seed(1))
    assert out["prediction"].shape == x.shape and torch.isfinite(out["prediction"]).all()
    path.unlink()
    again = build_method(method_config(m))
    again.load_state_dict(m.state_dict())
    assert isinstance(again.ae, AutoencoderVQMethod)
    back = again.eval().predict({"image": x}, sampler="ddim", steps=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(back["prediction"], out["prediction"])
    bad = {**method_config(m)["init_args"]["autoencoder_config"], STAGE1_KEY: "autoencoder_gan"}
    with pytest.raises(ArgumentError, match="autoencoder_config: names first stage 'autoencoder_gan'"):
        LatentDDPM(autoencoder_config=bad, **UNET)
