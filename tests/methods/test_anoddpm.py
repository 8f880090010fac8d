"""AnoDDPM: noise type in the loss and in every reverse step, exact healing under an oracle denoiser,
lambda = 0, the thresholded mask, validation metrics and one clear error per bad argument."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medrs_diff.diffusion.noise import simplex_like
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.methods import METHODS, AnoDDPM
from medrs_diff.metrics.pixel import auroc

TINY = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, num_head_channels=16,
            norm_num_groups=8)
SIMPLEX = dict(octaves=6, persistence=0.8, frequency=2.0**-6)  # the paper's, in cycles per pixel


def tiny(**kw) -> AnoDDPM:
    torch.manual_seed(0)
    return AnoDDPM(**{**TINY, **kw}).eval()


def lag1_corr(x: torch.Tensor) -> float:
    """Mean correlation of horizontally adjacent pixels (about 0 for white noise, near 1 for simplex)."""
    a, b = x[..., :, :-1].flatten(1), x[..., :, 1:].flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())


class Oracle(nn.Module):
    """The exact eps predictor of a point-mass prior at ``x_star`` (every x_t comes from x0 = x_star)."""

    def __init__(self, x_star: torch.Tensor, abar: torch.Tensor) -> None:
        super().__init__()
        self.x_star, self.abar = x_star, abar

    def forward(self, x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        a = self.abar[t].reshape(-1, 1, 1, 1).to(x.dtype)
        return (x - a.sqrt() * self.x_star) / (1 - a).sqrt()


class Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return torch.zeros_like(x)


def test_registered_with_paper_defaults():
    assert METHODS["anoddpm"] is AnoDDPM
    m = AnoDDPM(**TINY)
    assert m.schedule.num_train_timesteps == 1000 and m.noise == "simplex" and m.lam == 250
    assert m.simplex_kwargs == {"octaves": 6, "persistence": 0.8, "frequency": 2.0**-6}
    assert m.error == "squared" and m.threshold is None and m.default_sampler == "ddpm"
    assert m.io_spec.outputs == ("anomaly_map", "reconstruction")
    assert m.io_spec.data_space == ("reconstruction",)


@pytest.mark.parametrize("noise", ["simplex", "gaussian"])
def test_loss_target_is_the_noise_type(noise):
    """With a zero net the eps-MSE equals mean(eps^2) of exactly the noise the loss drew, and x_t (x0 = 0)
    is smooth for simplex noise, white for Gaussian."""
    m = tiny(noise=noise)
    rec = Recorder()
    m.unet = rec
    x0 = torch.zeros(4, 1, 32, 32)
    loss, _ = m.loss({"image": x0}, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    torch.randint(0, 1000, (4,), generator=g)  # the loss draws the timesteps first
    eps = simplex_like(x0, g, **SIMPLEX) if noise == "simplex" else torch.randn(x0.shape, generator=g)
    assert torch.allclose(loss, eps.pow(2).mean(), atol=1e-6)
    corr = lag1_corr(rec.inputs[0])
    assert corr > 0.8 if noise == "simplex" else abs(corr) < 0.1


@pytest.mark.parametrize("noise", ["simplex", "gaussian"])
def test_every_reverse_step_draws_the_noise_type(noise):
    m = tiny(noise=noise, lam=20)
    drawn: list[torch.Tensor] = []
    original = m.draw_noise

    def spy(x, generator=None):
        out = original(x, generator)
        drawn.append(out)
        return out

    m.draw_noise = spy
    m.predict({"image": torch.zeros(2, 1, 32, 32)}, generator=torch.Generator().manual_seed(0))
    assert len(drawn) == 20  # the start x_lam and the lam - 1 ancestral steps with noise (none at the last)
    corr = sum(lag1_corr(d) for d in drawn) / len(drawn)
    assert corr > 0.8 if noise == "simplex" else abs(corr) < 0.1


@pytest.mark.parametrize("noise", ["simplex", "gaussian"])
@pytest.mark.parametrize("lam, steps", [(1, None), (50, None), (120, None), (250, 10)])
def test_oracle_denoiser_heals_the_lesion_exactly(noise, lam, steps):
    """Point-mass prior: the chain returns the healthy image, so the map is the squared lesion exactly."""
    m = tiny(noise=noise, lam=lam, sampling_steps=steps)
    g = torch.Generator().manual_seed(1)
    healthy = torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
    m.unet = Oracle(healthy, m.schedule.alphas_cumprod)
    lesion = torch.zeros_like(healthy)
    lesion[:, :, 10:16, 12:20] = 0.7
    out = m.predict({"image": healthy + lesion}, generator=g)
    assert torch.allclose(out["reconstruction"], healthy, atol=1e-4)
    assert torch.allclose(out["anomaly_map"], lesion**2, atol=1e-4)
    assert auroc(out["anomaly_map"], lesion > 0) == 1.0
    m.error = "l1"
    out = m.predict({"image": healthy + lesion}, generator=g)
    assert torch.allclose(out["anomaly_map"], lesion.abs(), atol=1e-4)


def test_lambda_zero_returns_the_input_and_a_zero_map():
    m = tiny()
    x = torch.rand(2, 1, 32, 32)
    out = m.predict({"image": x}, lam=0)
    assert torch.equal(out["reconstruction"], x) and torch.equal(out["anomaly_map"], torch.zeros_like(x))


def test_channel_mean_and_mask_threshold():
    m = tiny(in_channels=2, threshold=0.3)
    assert m.io_spec.outputs == ("anomaly_map", "reconstruction", "mask")
    assert m.io_spec.extra["label_outputs"] == ("mask",)
    x = torch.rand(1, 2, 32, 32)
    recon = torch.zeros_like(x)
    assert torch.allclose(m.anomaly_map(x, recon), (x**2).mean(1, keepdim=True))
    m.channel_mean = False
    assert torch.allclose(m.anomaly_map(x, recon), x**2)
    m.channel_mean = True
    out = m.predict({"image": x}, lam=0)  # map = 0 everywhere
    assert torch.equal(out["mask"], torch.zeros(1, 1, 32, 32))
    m.set_threshold(0.0)
    assert torch.equal(m.predict({"image": x}, lam=0)["mask"], torch.ones(1, 1, 32, 32))
    m.set_threshold(None)
    assert "mask" not in m.predict({"image": x}, lam=0) and "mask" not in m.io_spec.outputs


def test_validation_metrics_pool_the_batch():
    m = tiny()
    maps = torch.tensor([[0.1, 0.9], [0.4, 0.2]]).reshape(2, 1, 1, 2)
    label = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).reshape(2, 1, 1, 2)
    got = m.validation_metrics({"label": label}, {"anomaly_map": maps})
    # positives 0.9, 0.4 vs negatives 0.1, 0.2: every pair ranked right
    assert float(got["auroc"]) == 1.0 and float(got["auprc"]) == 1.0
    assert math.isclose(float(got["error"]), 0.4, rel_tol=1e-6)
    assert set(m.validation_metrics({}, {"anomaly_map": maps})) == {"error"}


@pytest.mark.parametrize("kwargs, where", [
    ({"lam": 0}, "lam"), ({"lam": 1001}, "lam"), ({"lam": 2.5}, "lam"), ({"lam": True}, "lam"),
    ({"noise": "perlin"}, "noise"), ({"error": "l2"}, "error"), ({"threshold": float("nan")}, "threshold"),
    ({"sampler": "euler"}, "sampler"), ({"n_samples": 0}, "n_samples"), ({"octaves": 0}, "octaves"),
])
def test_bad_arguments_are_refused_by_name(kwargs, where):
    with pytest.raises(ArgumentError) as err:
        AnoDDPM(**{**TINY, **kwargs})
    assert where in str(err.value) and "Fix:" in str(err.value)


def test_bad_calls_are_refused():
    m = tiny(lam=10)
    x = torch.rand(1, 1, 32, 32)
    with pytest.raises(ArgumentError, match="lam"):
        m.predict({"image": x}, lam=1001)
    with pytest.raises(ArgumentError, match="steps"):
        m.predict({"image": x}, steps=11)
    with pytest.raises(DataError, match="channel"):
        m.predict({"image": torch.rand(1, 3, 32, 32)})
    with pytest.raises(DataError, match="image"):
        m.loss({"label": x})
    with pytest.raises(ArgumentError, match="threshold"):
        m.set_threshold(float("inf"))
