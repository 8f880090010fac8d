"""DiffAE's latent DDIM (Preechakul et al. 2022): the MLP-with-skips denoiser, trained with the paper's L1 eps
loss on the official constant-beta schedule, learns a known Gaussian latent law: its eps is close to the
closed-form eps, and DDIM samples from it match the closed-form mean / covariance (and the samples the
exact eps gives from the same noise)."""

from __future__ import annotations

import pytest
import torch

from medrs_diff.diffusion.diffae import diffae_sample, latent_loss, sample_latent
from medrs_diff.diffusion.process import DiffusionLoss
from medrs_diff.diffusion.schedules import make_schedule, schedule_from_betas
from medrs_diff.nets.diffae import DiffAEDenoiser, LatentMLP

D = 4
MEAN = torch.tensor([0.5, -1.0, 0.0, 0.3])
CHOL = torch.tensor([[1.0, 0, 0, 0], [0.6, 0.8, 0, 0], [0, 0.3, 0.5, 0], [-0.4, 0, 0.2, 0.7]])
COV = CHOL @ CHOL.T


@pytest.fixture(scope="module")
def sched():
    return schedule_from_betas(torch.full((1000,), 0.008, dtype=torch.float64))


def exact_eps(sched):
    """eps*(z_t) = sigma_t (abar C + sigma_t^2 I)^-1 (z_t - sqrt(abar) m) for z0 ~ N(m, C)."""
    ac = sched.alphas_cumprod

    def den(z, t):
        zf = z.flatten(1).double()
        ab = ac[t].double()
        out = torch.empty_like(zf)
        for a in ab.unique():
            rows = ab == a
            k = a * COV.double() + (1 - a) * torch.eye(D, dtype=torch.float64)
            out[rows] = (1 - a).sqrt() * torch.linalg.solve(k, (zf[rows] - a.sqrt() * MEAN.double()).T).T
        return out.to(z.dtype).reshape(z.shape)

    return den


@pytest.fixture(scope="module")
def trained(sched):
    torch.manual_seed(0)
    net = LatentMLP(D, hidden=64, layers=4, t_dim=32)
    objective = DiffusionLoss(sched, loss_type="l1")  # the paper's L1 on eps
    steps = 1200
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    lr = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        z = MEAN + torch.randn(256, D, generator=g) @ CHOL.T
        loss, _ = latent_loss(objective, net, z, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr.step()
    return net.eval()


def test_learned_eps_is_close_to_the_closed_form(trained, sched):
    g = torch.Generator().manual_seed(5)
    z0 = MEAN + torch.randn(4096, D, generator=g) @ CHOL.T
    idx = torch.randint(0, 1000, (4096,), generator=g)
    ab = sched.alphas_cumprod.float()[idx][:, None]
    z_t = (ab.sqrt() * z0 + (1 - ab).sqrt() * torch.randn(4096, D, generator=g))[:, :, None, None]
    with torch.no_grad():
        got = trained(z_t, idx)
    want = exact_eps(sched)(z_t, idx)
    rel = float(((got - want) ** 2).sum() / (want**2).sum())
    assert rel < 0.02, rel


def test_latent_samples_match_the_closed_form_mean_and_covariance(trained, sched):
    n = 4000
    with torch.no_grad():
        got = sample_latent(trained, n, D, sched, steps=200, generator=torch.Generator().manual_seed(2))
        ref = sample_latent(exact_eps(sched), n, D, sched, steps=200, generator=torch.Generator().manual_seed(2))
    # the exact eps with this sampler reaches the closed form (Monte Carlo + DDIM discretisation error)
    assert (ref.mean(0) - MEAN).abs().max() < 0.08 and (torch.cov(ref.T) - COV).abs().max() < 0.1
    # the learned denoiser reproduces it from the same noise, and so the closed form
    assert (got.mean(0) - ref.mean(0)).abs().max() < 0.08, (got.mean(0), ref.mean(0))
    assert (torch.cov(got.T) - torch.cov(ref.T)).abs().max() < 0.1, torch.cov(got.T)
    assert (got.mean(0) - MEAN).abs().max() < 0.12 and (torch.cov(got.T) - COV).abs().max() < 0.15


def test_diffae_sample_unnormalises_and_decodes(trained, sched):
    torch.manual_seed(3)
    dec = DiffAEDenoiser(1, z_dim=D, base=8, t_dim=16).eval()
    mean, std = torch.tensor([10.0, -5.0, 0.0, 2.0]), torch.tensor([0.1, 2.0, 1.0, 3.0])
    g = torch.Generator().manual_seed(4)
    x, z = diffae_sample(trained, dec, (3, 1, 8, 8), make_schedule("linear", 100), sched, mean, std, steps=5,
                         latent_steps=20, generator=g)
    zn = sample_latent(trained, 3, D, sched, steps=20, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(z, zn * std + mean, atol=1e-5) and x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="std > 0"):
        diffae_sample(trained, dec, (3, 1, 8, 8), make_schedule("linear", 100), sched, mean, -std)
    with pytest.raises(ValueError, match="LatentMLP: needs"):
        trained(torch.zeros(2, D + 1), torch.zeros(2, dtype=torch.long))
