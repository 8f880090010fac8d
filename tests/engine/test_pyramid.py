"""Pyramidal DDPM: coordinate channels, the multi-scale loss and coarse-to-fine sampling on an exact toy.

Toy: full-size images with i.i.d. N(MU, S^2) pixels. Area-downsampling by 1/r averages 1/r^2 pixels,
so at scale r the pixels are i.i.d. N(MU, (S r)^2); the exact denoiser below reads the scale channel
the wrapper appends and uses the engine's closed-form Gaussian predictor (toy.GaussianMixture) for
that scale's law."""

from __future__ import annotations

import math

import pytest
import torch

from medrs_diff.diffusion.process import DiffusionLoss
from medrs_diff.diffusion.pyramid import (
    CoordDenoiser,
    PyramidLoss,
    coord_channels,
    pyramid_sample,
    scaled_size,
    with_coords,
)
from medrs_diff.diffusion.samplers import ddim, ddpm
from medrs_diff.diffusion.schedules import make_schedule
from medrs_diff.diffusion.toy import GaussianMixture

MU, S = 0.3, 0.5
SCALES = (0.25, 0.5, 1.0)


def exact_net(schedule, seen: list | None = None):
    """net(x_with_coords, t): exact eps of per-pixel N(MU, (S * scale)^2), scale read from the input."""
    table = schedule.parent_alphas_cumprod

    def net(xc: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x, coords = xc[:, :-3], xc[:, -3:]
        scale = float(coords[0, -1, 0, 0])
        assert torch.equal(coords, coord_channels(x.shape[2:], scale, batch=x.shape[0], dtype=x.dtype))
        if seen is not None:
            seen.append((scale, tuple(xc.shape)))
        toy = GaussianMixture(torch.tensor([MU]), torch.tensor([S * scale]))
        n_pix = x[0].numel()
        abar = table[t.cpu()].repeat_interleave(n_pix)
        return toy.eps(x.reshape(-1, 1), abar).reshape(x.shape)

    return net


def test_coord_channels_exact_values():
    c = coord_channels((2, 4), 0.5, batch=3)
    assert c.shape == (3, 3, 2, 4)
    torch.testing.assert_close(c[0, 0], torch.tensor([[-0.5] * 4, [0.5] * 4]))
    torch.testing.assert_close(c[0, 1], torch.tensor([[-0.75, -0.25, 0.25, 0.75]] * 2))
    assert torch.equal(c[:, 2], torch.full((3, 2, 4), 0.5))
    c3 = coord_channels((2, 1, 2), 1.0)
    assert c3.shape == (1, 4, 2, 1, 2)
    torch.testing.assert_close(c3[0, 0, :, 0, 0], torch.tensor([-0.5, 0.5]))
    torch.testing.assert_close(c3[0, 1], torch.zeros(2, 1, 2))
    # a coarse pixel's coordinate is the mean of the fine pixels it covers (area downsampling)
    fine = coord_channels((8, 8), 1.0)[:, :2]
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(fine, 2), coord_channels((4, 4), 1.0)[:, :2])
    x = torch.randn(2, 1, 4, 4)
    xc = with_coords(x, 0.25)
    assert xc.shape == (2, 4, 4, 4) and torch.equal(xc[:, :1], x)


def test_bad_scales_and_sizes_raise():
    sched = make_schedule("linear", 100)
    with pytest.raises(ValueError, match="end at 1.0"):
        PyramidLoss(DiffusionLoss(sched), scales=(0.25, 0.5))
    with pytest.raises(ValueError, match="strictly increasing"):
        PyramidLoss(DiffusionLoss(sched), scales=(0.5, 0.25, 1.0))
    with pytest.raises(ValueError, match="not an integer size"):
        scaled_size((10, 10), 0.25)
    with pytest.raises(ValueError, match="t_starts"):
        pyramid_sample(ddpm, exact_net(sched), (1, 1, 8, 8), sched, scales=SCALES, t_starts=(50,))


def test_loss_at_each_scale_matches_closed_form():
    """MSE of the exact eps predictor at a fixed t is abar v / (abar v + 1 - abar), v = (S r)^2."""
    sched = make_schedule("linear", 1000)
    seen: list = []
    loss_fn = PyramidLoss(DiffusionLoss(sched), scales=SCALES)
    g = torch.Generator().manual_seed(0)
    x0 = MU + S * torch.randn(64, 1, 32, 32, generator=g)
    t = 300
    abar = float(sched.alphas_cumprod[t])
    for r in SCALES:
        seen.clear()
        loss, logs = loss_fn(exact_net(sched, seen), x0, scale=r, index=torch.full((64,), t), generator=g)
        side = int(32 * r)
        assert seen == [(r, (64, 4, side, side))]
        v = (S * r) ** 2
        expected = abar * v / (abar * v + 1 - abar)
        n = 64 * side * side
        assert abs(float(loss) - expected) < 5 * expected * math.sqrt(2 / n) + 1e-4, (r, float(loss), expected)
        assert float(logs["scale"]) == r
    # drawn scales cover the list and every call trains (finite loss, gradient reaches the net)
    net = torch.nn.Conv2d(4, 1, 3, padding=1)
    drawn = {loss_fn.draw_scale(g) for _ in range(50)}
    assert drawn == set(SCALES)
    loss, _ = loss_fn(lambda x, t: net(x), x0[:4], generator=g)
    loss.backward()
    assert torch.isfinite(loss) and net.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("sampler", [ddpm, ddim])
def test_coarse_to_fine_matches_target(sampler):
    """Every scale's output has the per-pixel law of that scale (all 1000 steps: few-step discretisation
    error would dominate for the small coarse variance); the full-size std is exact up to the re-noising
    mismatch ~ abar(600) (1 - r^2) S^2, well under the 4 % tolerance."""
    sched = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(1)
    outs = pyramid_sample(sampler, exact_net(sched), (256, 1, 16, 16), sched, scales=SCALES,
                          t_starts=(600, 600), generator=g, steps=None, return_all=True)
    assert [tuple(o.shape) for o in outs] == [(256, 1, 4, 4), (256, 1, 8, 8), (256, 1, 16, 16)]
    for r, out in zip(SCALES, outs, strict=True):
        per_sample = out.flatten(1).mean(1)  # honest standard error under spatial correlation
        se = float(per_sample.std()) / math.sqrt(out.shape[0])
        assert abs(float(out.mean()) - MU) < 4 * se + 1e-3, (r, float(out.mean()))
        std = float(out.std())
        assert abs(std - S * r) < 0.04 * S * r, (r, std, S * r)


def test_renoising_happens():
    """Without re-noising (t_k = 0) the full-size output keeps the upsampled coarse law (too small std)."""
    sched = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(2)
    out = pyramid_sample(ddim, exact_net(sched), (128, 1, 16, 16), sched, scales=SCALES,
                         t_starts=(0, 0), generator=g, steps=50)
    assert float(out.std()) < 0.5 * S


def test_seeded_reproducibility():
    sched = make_schedule("linear", 200)
    net = exact_net(sched)

    def run(seed):
        return pyramid_sample(ddpm, net, (2, 1, 8, 8), sched, scales=(0.5, 1.0), t_starts=(100,),
                              generator=torch.Generator().manual_seed(seed), steps=20)

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert isinstance(CoordDenoiser(net, 1.0)(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long)),
                      torch.Tensor)


class PixelMLP(torch.nn.Module):
    """A per-pixel (1x1 conv) net: it can place the ramp only through the coordinate channels."""

    def __init__(self, use_coords: bool) -> None:
        super().__init__()
        self.use_coords = use_coords
        self.f = torch.nn.Sequential(torch.nn.Conv2d(5, 64, 1), torch.nn.SiLU(), torch.nn.Conv2d(64, 64, 1),
                                     torch.nn.SiLU(), torch.nn.Conv2d(64, 1, 1))

    def forward(self, xc: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x, c = xc[:, :1], xc[:, 1:]
        c = c if self.use_coords else torch.zeros_like(c)
        tt = (t.float() / 1000).reshape(-1, 1, 1, 1).expand_as(x)
        return self.f(torch.cat([x, c, tt], 1))


def test_learns_ramp_across_scales_and_needs_coordinates():
    """Train one net on a horizontal ramp at scales 1/4, 1/2, 1 (area-downsampled ramps are the ramp
    at the coarse pixel centres); coarse-to-fine DDIM then draws the ramp. Ablation: zeroed coordinates
    (the paper's finding that the positional encoding is essential) cannot."""
    sched = make_schedule("cosine", 1000)
    ramp = 0.8 * coord_channels((16, 16), 1.0)[:, 1:2]
    rmse = {}
    for use in (True, False):
        torch.manual_seed(0)
        net = PixelMLP(use)
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        loss_fn = PyramidLoss(DiffusionLoss(sched, prediction_type="v"), scales=SCALES)
        g = torch.Generator().manual_seed(0)
        for _ in range(400):
            loss, _ = loss_fn(net, ramp.expand(16, 1, 16, 16), generator=g)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out = pyramid_sample(ddim, net, (8, 1, 16, 16), sched, scales=SCALES, t_starts=(500, 500),
                                 generator=torch.Generator().manual_seed(1), steps=50, prediction_type="v")
        assert out.shape == (8, 1, 16, 16) and torch.isfinite(out).all()
        rmse[use] = float(((out - ramp) ** 2).mean().sqrt())
    assert rmse[True] < 0.15, rmse  # measured 0.08 (ramp std 0.46)
    assert rmse[False] > 0.3, rmse  # measured 0.61
