"""Classifier-free guidance: the w = 0 / 1 identities, one batched forward, the guided Gaussian's
closed form, the learned null condition and condition dropout."""

from __future__ import annotations

import math

import pytest
import torch
from _guidance_testlib import (
    SCHEDULE,
    gen,
    single_thread,  # noqa: F401 - autouse fixture
)
from torch import Tensor, nn

from medrs_diff.diffusion.guidance import NullCondition, cfg_denoiser, drop_condition, rescale_guidance
from medrs_diff.diffusion.samplers import ddim, ddpm, dpm_solver_pp


class ToyNet(nn.Module):
    """A small conditional network that records the batch size of every call."""

    def __init__(self, channels: int = 2, out_mult: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels * 2, channels * out_mult, 3, padding=1)
        self.batches: list[int] = []

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        self.batches.append(x.shape[0])
        return self.conv(torch.cat([x, cond], 1)) * (1 + t.float().reshape(-1, 1, 1, 1) / 1000)


def _inputs(b=3):
    x = torch.randn(b, 2, 4, 4, generator=gen(0))
    t = torch.tensor([10, 500, 999][:b])
    cond = torch.randn(b, 2, 4, 4, generator=gen(1))
    return x, t, cond


def test_w0_is_unconditional_w1_conditional_and_one_batched_forward():
    torch.manual_seed(0)
    net = ToyNet()
    null = NullCondition((2, 1, 1))
    x, t, cond = _inputs()
    with torch.no_grad():
        c = net(x, t, cond)
        u = net(x, t, null(cond))
        torch.testing.assert_close(cfg_denoiser(net, cond, null, 0.0)(x, t), u)
        torch.testing.assert_close(cfg_denoiser(net, cond, null, 1.0)(x, t), c)
        net.batches.clear()
        guided = cfg_denoiser(net, cond, null, 2.5)(x, t)
    assert net.batches == [6]  # both branches in a single forward of batch 2B
    torch.testing.assert_close(guided, u + 2.5 * (c - u), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("sampler", "kwargs"), [(ddpm, {"steps": 250}), (ddim, {"steps": 50}),
                                                 (dpm_solver_pp, {"steps": 20})])
def test_guided_gaussians_have_the_extrapolated_mean(sampler, kwargs):
    """Conditional model N(mu_c, s^2), unconditional N(0, s^2) (mean given by a learned null fixed at
    0): their exact noise predictions are linear in the mean, so guidance with weight w is exactly the
    noise predictor of N(w mu_c, s^2). Samples' mean within 5 MC standard errors of w mu_c plus 0.02
    for sampler discretisation; their std within 6% of s (ancestral steps lose about 3% at 250 steps)."""
    s = 0.5
    abar_table = SCHEDULE.alphas_cumprod

    def net(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        a = abar_table[t].to(x.dtype).reshape(-1, 1, 1, 1)
        mean = cond.reshape(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * mean) / (a * s**2 + 1 - a)

    n, w, mu_c = 4000, 3.0, 0.4
    null = NullCondition(1, init="zeros")
    cond = torch.full((n, 1), mu_c)
    den = cfg_denoiser(net, cond, null, w)
    with torch.no_grad():
        out = sampler(den, torch.randn((n, 1, 2, 2), generator=gen(2)), SCHEDULE, generator=gen(3), **kwargs)
    assert abs(float(out.mean()) - w * mu_c) < 5 * s / math.sqrt(out.numel()) + 0.02
    assert abs(float(out.std()) / s - 1) < 0.06


def test_learned_variance_keeps_the_conditional_variance_channels():
    torch.manual_seed(0)
    net = ToyNet(out_mult=2)
    null = NullCondition((2, 4, 4))
    x, t, cond = _inputs()
    with torch.no_grad():
        c, u = net(x, t, cond), net(x, t, null(cond))
        out = cfg_denoiser(net, cond, null, 4.0, learned_variance=True)(x, t)
    torch.testing.assert_close(out[:, :2], u[:, :2] + 4.0 * (c[:, :2] - u[:, :2]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 2:], c[:, 2:])


def test_guidance_rescale_matches_the_conditional_std():
    guided = torch.randn(3, 2, 4, 4, generator=gen(0)) * 5
    cond = torch.randn(3, 2, 4, 4, generator=gen(1))
    full = rescale_guidance(guided, cond, 1.0)
    torch.testing.assert_close(full.flatten(1).std(1), cond.flatten(1).std(1))
    torch.testing.assert_close(rescale_guidance(guided, cond, 0.0), guided)
    torch.testing.assert_close(rescale_guidance(guided, cond, 0.3), 0.3 * full + 0.7 * guided)


def test_dict_conditions_and_null_module_broadcast():
    def net(x, t, cond):
        return x + cond["image"] + cond["vector"].reshape(-1, 1, 1, 1)

    x, t, _ = _inputs()
    cond = {"image": torch.ones(3, 2, 4, 4), "vector": torch.full((3, 1), 2.0)}
    null = {"image": NullCondition((2, 1, 1), init="zeros"), "vector": torch.zeros(1, 1)}
    with torch.no_grad():
        out = cfg_denoiser(net, cond, null, 2.0)(x, t)
    torch.testing.assert_close(out, x + 2.0 * 3.0)


def test_drop_condition_rate_and_gradients():
    """Each sample is dropped with probability p: the dropped fraction of 20000 lies within 4.5
    binomial standard errors of p; dropped rows are the learned null, which receives gradients."""
    null = NullCondition(8)
    cond = torch.randn(20000, 8, generator=gen(0))
    out = drop_condition(cond, null, 0.2, generator=gen(1))
    dropped = ~(out == cond).all(1)
    assert abs(float(dropped.float().mean()) - 0.2) < 4.5 * math.sqrt(0.2 * 0.8 / 20000)
    torch.testing.assert_close(out[dropped], null.embedding.detach().expand(int(dropped.sum()), 8))
    out.sum().backward()
    torch.testing.assert_close(null.embedding.grad, torch.full((8,), float(dropped.sum())))
    assert torch.equal(drop_condition(cond, null, 0.0), cond)
    assert torch.equal(drop_condition(cond, null, 1.0), null(cond).detach())
    # Dict conditions drop together.
    d = drop_condition({"a": cond[:50], "b": cond[:50, :2]}, {"a": torch.zeros(1, 8), "b": torch.zeros(1, 2)}, 0.5,
                       generator=gen(2))
    assert torch.equal((d["a"] == 0).all(1), (d["b"] == 0).all(1))


def test_cfg_bad_input():
    x, t, cond = _inputs()
    net = ToyNet()
    with pytest.raises(ValueError, match="cannot stand in"):
        cfg_denoiser(net, cond, NullCondition((3, 1, 1)), 2.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        cfg_denoiser(net, cond, torch.zeros(1, 5), 2.0)
    with pytest.raises(ValueError, match="rescale"):
        cfg_denoiser(net, cond, torch.zeros(1, 2, 4, 4), 2.0, rescale=2.0)
    with pytest.raises(ValueError, match="same keys"):
        cfg_denoiser(net, {"a": cond}, {"b": torch.zeros(1, 2, 4, 4)}, 2.0)
    with pytest.raises(ValueError, match="must match"):
        cfg_denoiser(net, cond, torch.zeros(1, 2, 4, 4), 2.0)(x[:2], t[:2])
    with pytest.raises(ValueError, match="drop probability"):
        drop_condition(cond, torch.zeros(1, 2, 4, 4), 1.5)
    with pytest.raises(ValueError, match="init"):
        NullCondition(3, init="ones")
