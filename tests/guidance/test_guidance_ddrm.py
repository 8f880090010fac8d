"""DDRM against closed forms: the exact output law of the chain and the exact Gaussian posterior."""

from __future__ import annotations

import math

import pytest
import torch
from _guidance_testlib import (
    SCHEDULE,
    ddrm_exact_moments,
    gen,
    moments,
    prior_and_denoiser,
    single_thread,  # noqa: F401 - autouse fixture
)

from medrs_diff.diffusion.guidance import (
    Colorization,
    CorrelatedGaussian,
    Denoising,
    GaussianDeblur,
    Inpainting,
    SuperResolution,
    ddrm,
)
from medrs_diff.diffusion.schedules import make_schedule

SHAPE = (1, 4, 4)
N = 4000


def _problem(name: str):
    prior, den = prior_and_denoiser(SHAPE)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :, :2] = 1
    op, sigma_y = {
        "inpaint": (Inpainting(mask), 0.0),
        "sr-noisy": (SuperResolution(SHAPE, 2), 0.1),
        "deblur": (GaussianDeblur(SHAPE, 0.8), 0.05),
    }[name]
    x_true = prior.sample(1, gen(1)) + 1.0  # an atypical image: the posterior is far from the prior
    y = op(x_true) + sigma_y * torch.randn(op(x_true).shape, generator=gen(5))
    return prior, den, op, sigma_y, y


@pytest.mark.parametrize("name", ["inpaint", "sr-noisy", "deblur"])
def test_ddrm_samples_follow_the_exact_law_of_the_chain(name):
    """With the exact (linear) Gaussian denoiser every DDRM step is affine plus Gaussian noise, so the
    output is Gaussian with moments we propagate densely. Sample means must lie within 4.5 Monte-Carlo
    standard errors (16 coordinates: a false alarm has probability < 1e-4) and sample stds within 8%
    (the std of a sample std from N = 4000 is about 1.1%)."""
    prior, den, op, sigma_y, y = _problem(name)
    exact_mean, exact_cov = ddrm_exact_moments(prior, op, y, sigma_y, SCHEDULE.respace(20, "linspace"))
    xs = ddrm(den, y.expand(N, *y.shape[1:]), op, SCHEDULE, sigma_y=sigma_y, generator=gen(2))
    mean, std = moments(xs)
    exact_std = exact_cov.diagonal().clamp_min(0).sqrt()
    free = exact_std > 1e-6
    z = (mean - exact_mean)[free] / (exact_std[free] / math.sqrt(N))
    assert z.abs().max() < 4.5
    assert ((std[free] / exact_std[free]) - 1).abs().max() < 0.08
    # Coordinates with no spread (noiselessly observed) are reproduced exactly.
    torch.testing.assert_close(mean[~free], exact_mean[~free].double(), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("name", "mean_bound", "spread"),
    [("inpaint", 1.05, (0.72, 0.86)), ("sr-noisy", 0.32, (0.68, 0.84)), ("deblur", 0.32, (0.58, 0.72))],
)
def test_ddrm_samples_are_close_to_the_exact_posterior(name, mean_bound, spread):
    """DDRM-20 (eta 0.85, eta_b 1) is an approximate posterior sampler. Its sample mean lies within
    ``mean_bound`` posterior stds of the posterior mean per pixel (the exact bias of the chain from
    the propagation above is 0.93 / 0.24 / 0.24, plus 4.5 MC standard errors = 0.07), while the prior
    mean is 1.8 / 3.3 / 5.5 posterior stds away; the rms error is well below the prior's. Its spread
    is ``spread`` times the posterior's (exact: 0.77-0.80 / 0.73-0.78 / 0.63-0.67, plus 8% for MC):
    DDRM's eta noise loses variance at 20 steps."""
    prior, den, op, sigma_y, y = _problem(name)
    post_mean, post_cov = prior.posterior(op, y, sigma_y)
    xs = ddrm(den, y.expand(N, *y.shape[1:]), op, SCHEDULE, sigma_y=sigma_y, generator=gen(12))
    mean, std = moments(xs)
    post_std = post_cov.diagonal().clamp_min(0).sqrt()
    free = post_std > 1e-4
    err = ((mean - post_mean) / post_std)[free]
    prior_err = ((prior.mean() - post_mean) / post_std)[free]
    assert err.abs().max() < mean_bound
    assert err.pow(2).mean().sqrt() < 0.6 * prior_err.pow(2).mean().sqrt()
    ratio = (std / post_std)[free]
    assert spread[0] < ratio.min() and ratio.max() < spread[1]
    # Noiselessly measured coordinates are met exactly.
    torch.testing.assert_close(mean[~free], post_mean[~free], atol=1e-4, rtol=0)


def test_ddrm_bias_vanishes_with_more_steps():
    """DDRM's inpainting bias comes from 20 coarse steps: with 1000 steps the exact law of the chain
    is within 0.2 posterior stds of the posterior mean (0.17 measured), from 0.93 at 20 steps."""
    prior, den, op, sigma_y, y = _problem("inpaint")
    post_mean, post_cov = prior.posterior(op, y, sigma_y)
    post_std = post_cov.diagonal().clamp_min(0).sqrt()
    free = post_std > 1e-4
    errs = []
    for steps in (20, 1000):
        exact_mean, _ = ddrm_exact_moments(prior, op, y, sigma_y, SCHEDULE.respace(steps, "linspace"))
        errs.append(float(((exact_mean - post_mean) / post_std)[free].abs().max()))
    assert errs[1] < 0.2 < errs[0]


@pytest.mark.parametrize("shape", [(1, 4, 4), (2, 2, 4, 4)])
@pytest.mark.parametrize("kind", ["inpaint", "sr"])
def test_noiseless_measurements_are_met_in_2d_and_3d(shape, kind):
    prior = CorrelatedGaussian.smooth(shape, mean=0.1)
    den = prior.denoiser(SCHEDULE)
    if kind == "sr":
        op = SuperResolution(shape, 2)
    else:
        op = Inpainting((torch.rand(1, *shape, generator=gen(3)) > 0.5).float())
    x = prior.sample(6, gen(4))
    y = op(x)
    out = ddrm(den, y, op, SCHEDULE, sigma_y=0.0, generator=gen(5))
    assert out.shape == x.shape
    torch.testing.assert_close(op(out), y, atol=1e-4, rtol=0)


def test_colorization_and_denoising_run_and_fit():
    prior = CorrelatedGaussian.smooth((3, 4, 4), mean=0.0)
    den = prior.denoiser(SCHEDULE)
    x = prior.sample(8, gen(0))
    op = Colorization((3, 4, 4))
    out = ddrm(den, op(x), op, SCHEDULE, sigma_y=0.0, generator=gen(1))
    torch.testing.assert_close(op(out), op(x), atol=1e-4, rtol=0)
    # Denoising at sigma_y: the result is much closer to the clean image than the measurement.
    op = Denoising((3, 4, 4))
    y = x + 0.3 * torch.randn(x.shape, generator=gen(2))
    out = ddrm(den, y, op, SCHEDULE, sigma_y=0.3, eta=0.0, generator=gen(3))
    assert (out - x).pow(2).mean() < 0.7 * (y - x).pow(2).mean()


def test_ddrm_is_reproducible_and_runs_hooks():
    prior, den, op, sigma_y, y = _problem("inpaint")
    a = ddrm(den, y.expand(3, *y.shape[1:]), op, SCHEDULE, sigma_y=0.0, generator=gen(7))
    b = ddrm(den, y.expand(3, *y.shape[1:]), op, SCHEDULE, sigma_y=0.0, generator=gen(7))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    from medrs_diff.diffusion.samplers import Hook

    class Count(Hook):
        calls = 0

        def on_x0(self, ctx):
            Count.calls += 1
            return ctx.x0

    ddrm(den, y, op, SCHEDULE, sigma_y=0.0, steps=7, hooks=[Count()], generator=gen(7))
    assert Count.calls == 7


def test_ddrm_bad_input():
    prior, den, op, sigma_y, y = _problem("inpaint")
    with pytest.raises(ValueError, match="produces measurements"):
        ddrm(den, torch.zeros(1, 1, 2, 2), op, SCHEDULE, sigma_y=0.0)
    with pytest.raises(ValueError, match="sigma_y"):
        ddrm(den, y, op, SCHEDULE, sigma_y=-1.0)
    with pytest.raises(ValueError, match="eta"):
        ddrm(den, y, op, SCHEDULE, sigma_y=0.0, eta=1.5)
    with pytest.raises(ValueError, match="LinearOperator"):
        ddrm(den, y, lambda x: x, SCHEDULE, sigma_y=0.0)
    with pytest.raises(ValueError, match="zero-terminal"):
        ddrm(den, y, op, make_schedule("linear", 1000, zero_terminal_snr=True), sigma_y=0.0, prediction_type="v")
    with pytest.raises(ValueError, match="batch"):
        ddrm(den, torch.zeros(3, 1, 4, 4), Inpainting(torch.ones(2, 1, 4, 4)), SCHEDULE, sigma_y=0.0)
