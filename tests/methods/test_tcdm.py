"""TCDM: CTNG truncated start (t' = T is the plain chain), texture-consistency loss, bad input, learning at x8."""

import math

import pytest
import torch
import torch.nn.functional as F

from medrs_diff.data.scaling import digital_number, reflectance
from medrs_diff.diffusion.generators import randn
from medrs_diff.diffusion.samplers import SAMPLERS
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.inference import Predictor
from medrs_diff.methods import METHODS, TCDM, SRDiff
from medrs_diff.methods.tcdm import texture_consistency_loss
from medrs_diff.metrics import psnr

TINY = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, norm_num_groups=8,
            rrdb_blocks=2, rrdb_features=16, rrdb_growth=8)


def mosaic(n: int, g: torch.Generator, size: int = 64, cell: int = 16, scale: int = 8) -> torch.Tensor:
    """Piecewise-constant HR images whose edges fall on LR pixel borders (a function of the x``scale`` LR)."""
    v = torch.rand(n, 3, size // cell + 1, size // cell + 1, generator=g) * 1.6 - 0.8
    hr = F.interpolate(v, scale_factor=cell, mode="nearest")
    oy, ox = (scale * int(x) for x in torch.randint(0, cell // scale, (2,), generator=g))
    return hr[:, :, oy:oy + size, ox:ox + size]


def test_registered_and_factors():
    assert METHODS["tcdm"] is TCDM
    for s in (4, 8, 16):
        m = TCDM(scale=s, **TINY)
        assert m.io_spec.grid_factor == s
        out = m.predict({"cond": torch.rand(1, 3, 4, 4) * 0.5 - 0.5}, steps=2)
        assert out["prediction"].shape == (1, 3, 4 * s, 4 * s)
    with pytest.raises(ArgumentError, match="x2 / x4 / x8 / x16"):
        TCDM(scale=3, **TINY)
    with pytest.raises(ArgumentError, match="t_trunc"):
        TCDM(t_trunc=101, **TINY)


def test_texture_consistency_loss_closed_forms():
    hr = torch.rand(2, 3, 8, 8)
    assert float(texture_consistency_loss(hr.clone(), hr)) == 0.0
    # A constant offset: pixel term |c|, gradient term 0.
    assert math.isclose(float(texture_consistency_loss(hr + 0.25, hr)), 0.25, rel_tol=1e-5)
    # One interior impulse of height 1 on a 4 x 4 image: pixel 1/16; each direction's 4 x 3 differences hold
    # two unit jumps, 2/12, averaged over the two directions.
    z = torch.zeros(1, 1, 4, 4)
    sr = z.clone()
    sr[0, 0, 1, 2] = 1.0
    assert math.isclose(float(texture_consistency_loss(sr, z)), 1 / 16 + 2 / 12, rel_tol=1e-6)
    assert math.isclose(float(texture_consistency_loss(sr, z, gradient_weight=0.0)), 1 / 16, rel_tol=1e-6)


def test_full_chain_is_the_plain_chain():
    """t' = T starts from pure noise: the same samples as SRDiff's full ancestral chain with the same weights."""
    torch.manual_seed(0)
    t = TCDM(scale=4, t_trunc=100, **TINY).eval()
    s = SRDiff(scale=4, **TINY).eval()
    s.load_state_dict(t.state_dict())
    lr = torch.rand(2, 3, 4, 4) - 0.8
    a = t.predict({"cond": lr}, sampler="ddpm", steps=5, generator=torch.Generator().manual_seed(3))
    b = s.predict({"cond": lr}, sampler="ddpm", steps=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a["prediction"], b["prediction"])
    # and it is an explicit DDPM run from x_T ~ N(0, I), decoded over the bicubic base
    g = torch.Generator().manual_seed(3)
    f = t.condition(lr)
    x_T = randn((2, 3, 16, 16), g)
    res = SAMPLERS["ddpm"](lambda x, k: t.unet(x, k, features=f), x_T, t.schedule, steps=5, clip=True, generator=g)
    assert torch.allclose(a["prediction"], t.residual.decode(res, t.upsample(lr)).clamp(-1, 1), atol=1e-6)


def test_ctng_and_truncated_start_run_t_trunc_plus_one_steps():
    torch.manual_seed(0)
    m = TCDM(scale=8, t_trunc=10, **TINY).eval()
    lr = torch.rand(1, 3, 8, 8) - 0.8
    mean, x_t = m.ctng(lr, n_samples=64, generator=torch.Generator().manual_seed(0))
    abar = float(m.schedule.alphas_cumprod[m.trunc_index])
    x0_hat = m.residual.encode(m.sr_head(lr).clamp(-1, 1), m.upsample(lr))
    assert torch.allclose(mean[:1], math.sqrt(abar) * x0_hat, atol=1e-6)
    assert abs(float((x_t - mean).detach().std()) - math.sqrt(1 - abar)) < 0.01 * math.sqrt(1 - abar) + 1e-3
    calls = []
    m.unet.register_forward_hook(lambda *a: calls.append(1))
    m.predict({"cond": lr}, sampler="ddpm")
    assert len(calls) == 11  # t' = 10 .. 0, against 100 for the full chain
    with pytest.raises(ArgumentError, match="1..11 steps"):
        m.predict({"cond": lr}, steps=50)


def test_phases_and_texture_term():
    torch.manual_seed(0)
    m = TCDM(scale=8, pretrain_steps=1, **TINY).train()
    hr = mosaic(2, torch.Generator().manual_seed(0))
    batch = {"cond": F.avg_pool2d(hr, 8), "image": hr}
    _, logs = m.loss(batch)
    assert {"loss_ctng", "loss_tc"} <= set(logs)
    loss, logs = m.loss(batch)
    assert {"loss_simple", "loss_tc"} <= set(logs) and all(not p.requires_grad for p in m.sr_head.parameters())
    assert math.isclose(float(loss.detach()), float(logs["loss_simple"] + logs["loss_tc"]), rel_tol=1e-5)


def test_bad_input_one_clear_error_each():
    m = TCDM(scale=8, **TINY).eval()
    lr = torch.rand(1, 3, 8, 8) - 0.8
    with pytest.raises(ArgumentError, match="trained for x8, not x4"):
        m.predict({"cond": lr, "scale": 4})
    with pytest.raises(ArgumentError, match="trained for x8, not x4"):
        m.loss({"cond": lr, "image": torch.zeros(1, 3, 32, 32), "scale": torch.tensor([4])})
    with pytest.raises(DataError, match="smaller than the model's receptive field"):
        m.predict({"cond": lr[..., :2, :2]})
    # 16-bit DN (here Landsat-like 7000..20000): through an unclipped scaling the method refuses it, through the
    # 8-bit scaling the model was trained with the Predictor refuses the raw values before any compute
    dn16 = torch.randint(7000, 20000, (1, 3, 8, 8)).float()
    with pytest.raises(DataError, match="16-bit data"):
        m.predict({"cond": dn16 / 127.5 - 1})
    with pytest.raises(DataError, match=r"more than 8 bits \(e\.g\. 16-bit\)"):
        Predictor.from_method(m, scaling="dn8").predict_array(dn16[0], steps=1)
    # a saturated 8-bit tile (cloud at 255) is valid input
    m.predict({"cond": digital_number(8).forward(torch.full((1, 3, 8, 8), 255.0), channel_axis=1)}, steps=1)
    # real 8-bit and reflectance inputs pass
    m.predict({"cond": digital_number(8).forward(torch.randint(0, 256, (1, 3, 8, 8)).float(), channel_axis=1)},
              steps=1)
    m.predict({"cond": reflectance().forward(torch.randint(0, 4000, (1, 3, 8, 8)).float(), channel_axis=1)},
              steps=1)


@pytest.mark.slow
def test_tcdm_x8_beats_bicubic():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    m = TCDM(scale=8, pretrain_steps=150, t_trunc=10, **TINY)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.05, 1 - s / 260))
    for _ in range(260):
        hr = mosaic(8, g, size=32)
        loss, _ = m.loss({"cond": F.avg_pool2d(hr, 8), "image": hr}, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    m.eval()
    hr = mosaic(8, torch.Generator().manual_seed(123), size=32)
    out = m.predict({"cond": F.avg_pool2d(hr, 8)}, sampler="ddpm", generator=torch.Generator().manual_seed(0))
    sr, bicubic = float(psnr(out["prediction"], hr, 2.0).mean()), float(psnr(out["baseline"], hr, 2.0).mean())
    print(f"TCDM x8 PSNR {sr:.2f} dB vs bicubic {bicubic:.2f} dB")
    assert sr > bicubic + 1.0
