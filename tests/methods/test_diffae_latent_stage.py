"""DiffAE with its latent DDIM (``latent: true``): the two training phases (autoencoder, then z_sem statistics,
then the latent DDIM on the frozen encoder's codes), sampled z_sem statistics against the training codes on
phantoms, the statistics' exact round trip through checkpoints and the EMA callback, and the refusals."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from medrs_diff.diffusion.diffae import sample_latent
from medrs_diff.errors import ArgumentError, CheckpointError
from medrs_diff.methods.diffae import DiffAE
from medrs_diff.train.checkpoint import load_method_from_checkpoint, method_config
from medrs_diff.train.ema import EMA

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from test_diffae import phantoms  # noqa: E402

TINY = dict(in_channels=1, z_dim=8, encoder_base=8, encoder_levels=3, base=16, t_dim=32, sampling_steps=10,
            latent=True, latent_hidden=64, latent_layers=4, latent_t_dim=32, latent_sampling_steps=200)
START, STATS, LATENT = 60, 10, 600


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    m = DiffAE(**TINY, latent_start_step=START, latent_stats_batches=STATS)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    warm = START + STATS
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 if k < warm else max(0.0, 1 - (k - warm) / LATENT))
    g = torch.Generator().manual_seed(1)
    m.train()
    record = {}
    for step in range(warm + LATENT):
        if step == START:
            record["encoder"] = [p.detach().clone() for p in m.encoder.parameters()]
        if step == warm:
            record["count"], record["ready_before"] = int(m.z_count), m.latent_ready
        x, _, _ = phantoms(32 if step < warm else 128, seed=1000 + step)
        loss, logs = m.loss({"image": x}, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    record["logs"] = logs
    return m.eval(), record


def test_phases_statistics_and_frozen_encoder(trained):
    m, rec = trained
    assert rec["count"] == STATS * 32 and int(m.z_count) == STATS * 32  # fixed after the statistics phase
    assert not rec["ready_before"] and m.latent_ready and int(m.latent_step) == START + STATS + LATENT
    assert all(torch.equal(a, b) for a, b in zip(rec["encoder"], m.encoder.parameters()))  # stage 2: frozen
    assert set(rec["logs"]) == {"latent_loss"} and float(rec["logs"]["latent_loss"]) < 0.3
    x, _, _ = phantoms(STATS * 32, seed=1000)  # not the same batches, but the same law: close statistics
    mean, std = m.z_stats()
    with torch.no_grad():
        z = m.encoder(x)
    assert ((z.mean(0) - mean).abs() / std).max() < 0.2 and ((z.std(0) / std) - 1).abs().max() < 0.2


def test_sampled_z_sem_statistics_match_the_training_codes(trained):
    m, _ = trained
    mean, std = m.z_stats()
    with torch.no_grad():
        z = (m.encoder(phantoms(2000, seed=7)[0]) - mean) / std
        s = sample_latent(m.latent_net, 2000, 8, m.latent_schedule, steps=200,
                          generator=torch.Generator().manual_seed(3))
    inliers = s.abs().max(1).values < 6  # a few DDIM draws stray far (documented); mean / std of the rest
    assert inliers.float().mean() > 0.98
    si = s[inliers]  # in training-std units: means within 0.15, stds within 20 %
    assert (si.mean(0) - z.mean(0)).abs().max() < 0.15 and (si.std(0) / z.std(0) - 1).abs().max() < 0.2
    # the codes are bimodal (dim / bright discs): the modes' weights per dimension agree too
    assert ((s > 0).float().mean(0) - (z > 0).float().mean(0)).abs().max() < 0.08


def test_sample_is_deterministic_per_generator_and_shaped(trained):
    m, _ = trained
    a = m.sample((2, 1, 16, 16), steps=3, latent_steps=20, generator=torch.Generator().manual_seed(4))
    b = m.sample((2, 1, 16, 16), steps=3, latent_steps=20, generator=torch.Generator().manual_seed(4))
    c = m.sample((2, 1, 16, 16), steps=3, latent_steps=20, generator=torch.Generator().manual_seed(5))
    assert a["prediction"].shape == (2, 1, 16, 16) and a["z_sem"].shape == (2, 8)
    assert torch.equal(a["prediction"], b["prediction"]) and not torch.allclose(a["z_sem"], c["z_sem"])
    with pytest.raises(ArgumentError, match="shape"):
        m.sample((2, 1, 15, 16))


def test_statistics_round_trip_through_checkpoint_and_ema(trained, tmp_path):
    m, _ = trained
    holder = nn.Module()
    holder.method = m
    ema = EMA(decay=0.5, warmup=False)
    ema.shadow = {k: v.detach().clone() for k, v in ema._tensors(m).items()}
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():  # new statistics and weights, then one EMA update
        m.z_moments_bits.copy_((m.z_moments_bits.view(torch.float64) * 1.5).view(torch.int64))
        m.z_count.add_(7)
        m.latent_net.layers[0].linear.weight.add_(1.0)
    ema.update(holder)
    assert torch.equal(ema.shadow["z_moments_bits"], m.z_moments_bits) and torch.equal(ema.shadow["z_count"],
                                                                                         m.z_count)
    w = "latent_net.layers[0].linear.weight".replace("[0]", ".0")
    assert torch.allclose(ema.shadow[w], before[w] + 0.5)  # floats are averaged, integer buffers copied
    path = tmp_path / "diffae.ckpt"
    torch.save({"state_dict": {f"method.{k}": v for k, v in before.items()},
                "hyper_parameters": {"method": method_config(m)},
                "callbacks": {"EMA": ema.state_dict()}}, path)
    for use_ema, want in ((False, before), (True, ema.shadow)):
        loaded = load_method_from_checkpoint(path, ema=use_ema)
        assert isinstance(loaded, DiffAE) and loaded.latent and loaded.latent_ready
        assert torch.equal(loaded.z_moments_bits, want["z_moments_bits"])
        assert int(loaded.z_count) == int(want["z_count"]) and int(loaded.latent_step) == int(want["latent_step"])
    m.load_state_dict(before)
    mean, std = m.z_stats()
    assert torch.equal(load_method_from_checkpoint(path, ema=False).z_stats()[0], mean)


def test_refusals():
    plain = DiffAE(in_channels=1, z_dim=4, encoder_base=4, encoder_levels=2, base=8, t_dim=16, timesteps=50)
    with pytest.raises(CheckpointError, match=r"without the latent DDIM \(latent: false\).*latent: true"):
        plain.sample((1, 1, 8, 8))
    fresh = DiffAE(**TINY, latent_start_step=5, latent_stats_batches=2)
    with pytest.raises(CheckpointError, match="never trained .* latent_start_step \\+ latent_stats_batches = 7"):
        fresh.sample((1, 1, 8, 8))
    with pytest.raises(ArgumentError, match="latent_stats_batches: must be an integer >= 2"):
        DiffAE(**TINY, latent_stats_batches=1)
    with pytest.raises(ArgumentError, match="latent_beta: must be a number in"):
        DiffAE(**TINY, latent_beta=0.0)
    with pytest.raises(ArgumentError, match="latent_loss"):
        DiffAE(**TINY, latent_loss="huber")
