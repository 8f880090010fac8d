"""``process: rddm`` of SRDiff and SAR-DDPM (RDDM, Liu et al. CVPR 2024): the net's channels, the loss's inputs and
targets (zero for the exact residual / noise), the sampler (an exact residual predictor restores exactly, through
cycle spinning too), the checkpoint round trip and the refusals. The default stays each paper's DDPM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medrs_diff.errors import ArgumentError
from medrs_diff.methods import SARDDPM, SRDiff
from medrs_diff.train.checkpoint import build_method, method_config

SR_TINY = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, norm_num_groups=8,
               rrdb_blocks=2, rrdb_features=16, rrdb_growth=8, timesteps=50)
SAR_TINY = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, num_head_channels=16,
                norm_num_groups=8, timesteps=50)


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def sr(**kw) -> SRDiff:
    return SRDiff(in_channels=3, scale=4, pretrain_steps=0, **SR_TINY, **{"process": "rddm", "sampler": "ddim", **kw})


def sar(**kw) -> SARDDPM:
    return SARDDPM(**SAR_TINY, **{"process": "rddm", "learn_sigma": False, "sampler": "ddim", "cycle_shifts": 2,
                                  **kw})


def clean_of(x_in: torch.Tensor) -> torch.Tensor:
    """A pointwise 'clean image' of the input (commutes with the circular shifts of cycle spinning)."""
    return 0.6 * torch.tanh(2 * x_in) - 0.1


class Oracle(nn.Module):
    """The exact RDDM net for I_0 = clean_of(I_in): residual I_in - I_0 and the noise implied by x_t."""

    def __init__(self, schedule, channels: int) -> None:
        super().__init__()
        self.schedule, self.c, self.size_multiple = schedule, channels, 4
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x_t, t, cond=None, features=None):
        self.seen.append((x_t, cond))
        x0 = clean_of(cond)
        res = cond - x0
        a = self.schedule.alphas_cumsum.float()[t].view(-1, 1, 1, 1)
        b = self.schedule.betas2_cumsum.float()[t].sqrt().view(-1, 1, 1, 1)
        return torch.cat([res, (x_t - x0 - a * res) / b], 1)


class Shifted(nn.Module):
    def __init__(self, net, shift: float) -> None:
        super().__init__()
        self.net, self.shift, self.size_multiple = net, shift, 4

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs) + self.shift


def test_default_is_the_paper_ddpm_and_rddm_doubles_the_outputs():
    assert SRDiff(in_channels=3, **SR_TINY).process == "ddpm" and SARDDPM(**SAR_TINY).process == "ddpm"
    d, r = SRDiff(in_channels=3, **SR_TINY), sr()
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([3])
    feats = torch.zeros(1, 16, 32, 32)
    assert d.unet(x, t, features=feats).shape[1] == 3
    assert r.unet(x, t, cond=x, features=feats).shape[1] == 6  # residual + noise, I_in concatenated
    s = sar()
    assert s.unet(torch.randn(1, 1, 32, 32), t, cond=torch.randn(1, 1, 32, 32)).shape[1] == 2
    # the paper's restoration schedule: residual weights sum to 1, noise variances to sum_scale
    assert float(r.rddm_schedule.alphas_cumsum[-1]) == pytest.approx(1.0)
    assert float(r.rddm_schedule.betas2_cumsum[-1]) == pytest.approx(0.01)
    assert r.rddm_objective.objective == "res_noise" and r.rddm_objective.loss_type == "l1"


@pytest.mark.parametrize("kind", ["srdiff", "sar"])
def test_loss_is_zero_for_the_exact_residual_and_noise(kind):
    """The net is fed I_t = I_0 + abar (I_in - I_0) + betabar eps with I_in the up-sampled LR (SRDiff) or the
    speckled image (SAR): the oracle built from that I_in gets zero L1; a shifted output gets its shift."""
    g = torch.Generator().manual_seed(0)
    if kind == "srdiff":
        m = sr()
        lr = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
        x_in = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
        batch = {"cond": lr, "image": clean_of(x_in)}
    else:
        m = sar()
        x_in = torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
        batch = {"cond": x_in, "image": clean_of(x_in)}
    m.unet = Oracle(m.rddm_schedule, batch["image"].shape[1])
    loss, logs = m.train().loss(batch, generator=g)
    assert float(loss) < 1e-5 and {"loss_res", "loss_noise"} <= set(logs)
    assert torch.equal(m.unet.seen[-1][1], x_in)
    m.unet = Shifted(m.unet, 0.25)  # every output off by 0.25: L1 = 0.25
    assert float(m.loss(batch, generator=g)[0]) == pytest.approx(0.25, abs=1e-5)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("steps", [1, 5, None])
def test_exact_net_restores_exactly(sampler, steps):
    """RDDM's sampler started at I_in + betabar_T eps with the exact net lands on I_0 (eta 0 and 1, any steps;
    SAR through 2 x 2 cycle spinning, SRDiff with 2 samples: zero uncertainty)."""
    g = torch.Generator().manual_seed(1)
    m = sr().eval()
    m.unet = Oracle(m.rddm_schedule, 3)
    lr = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    out = m.predict({"cond": lr}, sampler=sampler, steps=steps, n_samples=2, generator=g)
    want = clean_of(F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False))
    assert torch.allclose(out["prediction"], want, atol=1e-5)
    assert float(out["uncertainty"].max()) < 1e-8 and out["samples"].shape == (2, 2, 3, 32, 32)
    if steps is None:  # null: the paper's 10 steps, the first at T (trailing spacing)
        assert len(m.unet.seen) == 10
    first = m.unet.seen[0][0]  # x_T = I_in + betabar_T eps, betabar_T^2 = sum_scale = 0.01
    assert float((first - m.unet.seen[0][1]).std()) == pytest.approx(0.1, rel=0.05)
    s = sar().eval()
    s.unet = Oracle(s.rddm_schedule, 1)
    speckled = torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
    got = s.predict({"cond": speckled}, sampler=sampler, steps=steps, generator=g)["prediction"]
    assert torch.allclose(got, clean_of(speckled), atol=1e-5)


@pytest.mark.parametrize("kind", ["srdiff", "sar"])
def test_checkpoint_round_trip(kind):
    m = (sr() if kind == "srdiff" else sar()).eval()
    cfg = method_config(m)
    assert cfg["init_args"]["process"] == "rddm" and cfg["init_args"]["sum_scale"] == 0.01
    m2 = build_method(cfg).eval()
    m2.load_state_dict(m.state_dict())
    assert m2.process == "rddm" and m2.unet.cond_channels == m.unet.cond_channels
    x = torch.rand(1, 3, 8, 8) if kind == "srdiff" else torch.rand(1, 1, 32, 32)
    a = m.predict({"cond": x}, steps=3, generator=torch.Generator().manual_seed(0))["prediction"]
    b = m2.predict({"cond": x}, steps=3, generator=torch.Generator().manual_seed(0))["prediction"]
    assert torch.equal(a, b)
    c = m2.predict({"cond": x}, sampler="ddpm", steps=3, generator=torch.Generator().manual_seed(1))["prediction"]
    assert not torch.equal(a, c)  # another seed (eta 1) draws another sample


def test_refusals_name_the_argument():
    cases = [
        (lambda: sr(process="rdm"), "process"),
        (lambda: sr(sampler="dpm_solver_pp"), "sampler"),
        (lambda: sr(sum_scale=0.0), "sum_scale"),
        (lambda: sr(sum_scale=2.0), "sum_scale"),
        (lambda: sr(rddm_alpha="linear"), "rddm_alpha"),
        (lambda: sr(rddm_beta2="cosine"), "rddm_beta2"),
        (lambda: sr(sampling_steps=0), "sampling_steps"),
        (lambda: sr(sampling_steps=51), "sampling_steps"),
        (lambda: sr(res_rescale=5.0), "res_rescale"),  # not used by RDDM: refused, not ignored
        (lambda: sar(learn_sigma=True), "learn_sigma"),
        (lambda: sar(sampler="unipc"), "sampler"),
        (lambda: sr().eval().predict({"cond": torch.rand(1, 3, 8, 8)}, sampler="dpm_solver_pp"), "sampler"),
        (lambda: sr().eval().predict({"cond": torch.rand(1, 3, 8, 8)}, steps=51), "steps"),
        (lambda: sr().eval().predict({"cond": torch.rand(1, 3, 8, 8)}, n_samples=0), "n_samples"),
        (lambda: sar().eval().predict({"cond": torch.rand(1, 1, 32, 32)}, sampler="unipc"), "sampler"),
    ]
    for make, where in cases:
        with pytest.raises(ArgumentError, match=rf"^{where}: .*Fix: "):
            make()


def test_no_learned_schedule_is_fitted_to_an_rddm_chain():
    """BDDM / step masks assume a plain DDPM chain: diffusion_pair refuses ``process: rddm`` with one line."""
    lr, hr = torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 32, 32)
    with pytest.raises(ArgumentError, match="process: rddm"):
        sr().diffusion_pair({"cond": lr, "image": hr})
    with pytest.raises(ArgumentError, match="process: rddm"):
        sar().diffusion_pair({"cond": torch.zeros(1, 1, 16, 16), "image": torch.zeros(1, 1, 16, 16)})
