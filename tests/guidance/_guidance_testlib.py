"""Shared ground truth for the guidance tests: a correlated Gaussian prior, its exact denoiser,
sample moments and the exact output distribution of DDRM on a linear-Gaussian problem."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from medrs_diff.diffusion.guidance import CorrelatedGaussian
from medrs_diff.diffusion.guidance.operators import LinearOperator
from medrs_diff.diffusion.schedules import Schedule, make_schedule

SCHEDULE = make_schedule("linear", 1000)


@pytest.fixture(autouse=True)
def single_thread():
    """These tests run thousands of tiny ops; on a shared 2-core machine intra-op threads only spin
    (measured 30-100x slower), so each test runs single-threaded and restores the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def prior_and_denoiser(shape=(1, 4, 4), mean: float = 0.3):
    prior = CorrelatedGaussian.smooth(shape, mean=mean, decay=1.0)
    return prior, prior.denoiser(SCHEDULE)


def moments(xs: Tensor) -> tuple[Tensor, Tensor]:
    """Per-coordinate sample mean and std (float64) of (N, ...) samples."""
    flat = xs.reshape(xs.shape[0], -1).double()
    return flat.mean(0), flat.std(0)


def dense(fn, d: int, shape: tuple[int, ...]) -> Tensor:
    """Dense matrix of a linear map fn acting on (B, *shape): column j is fn(e_j)."""
    eye = torch.eye(d, dtype=torch.float64).reshape(d, *shape)
    return fn(eye).reshape(d, -1).T


def ddrm_exact_moments(
    prior: CorrelatedGaussian,
    op: LinearOperator,
    y: Tensor,
    sigma_y: float,
    sched: Schedule,
    eta: float = 0.85,
    eta_b: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Mean and covariance of DDRM's output for a Gaussian prior with its exact (linear) denoiser.

    Every DDRM step is affine in x_t plus independent Gaussian noise, so the output is Gaussian; this
    propagates its moments with dense matrices (paper's update rules, written independently of the
    matrix-free sampler).
    """
    d = prior.dim
    vmat = dense(op.V, d, (d,))
    s = op.singulars(y.double())[0].double()
    ut_y = op.Ut(y.double())[0]
    meas = s > 0
    ybar = torch.where(meas, ut_y / torch.where(meas, s, 1.0), 0.0)
    level = torch.where(meas, sigma_y / torch.where(meas, s, 1.0), math.inf)
    mu, cov0 = prior.mean(), prior.covariance()
    eye = torch.eye(d, dtype=torch.float64)
    ac, prev = sched.alphas_cumprod, sched.alphas_cumprod_prev
    n = len(sched)
    a_T = float(ac[-1])
    sig_T = math.sqrt((1 - a_T) / a_T)
    from_y = meas & (level < sig_T)
    m0 = torch.where(from_y, ybar, 0.0)
    v0 = torch.where(from_y, sig_T**2 - torch.where(from_y, level, 0.0) ** 2, sig_T**2)
    mean = math.sqrt(a_T) * vmat @ m0
    cov = a_T * (vmat * v0) @ vmat.T
    c = math.sqrt(1 - eta**2)
    for i in range(n - 1, -1, -1):
        a, a_s = float(ac[i]), float(prev[i])
        sig_s = 0.0 if a_s >= 1 else math.sqrt((1 - a_s) / a_s)
        # Exact denoiser: x0_hat = mu + G (x - sqrt(a) mu), eps = (x - sqrt(a) x0_hat) / sqrt(1 - a).
        g = math.sqrt(a) * cov0 @ torch.linalg.inv(a * cov0 + (1 - a) * eye)
        p0, c0 = g, mu - math.sqrt(a) * g @ mu
        pe, ce = (eye - math.sqrt(a) * p0) / math.sqrt(1 - a), -math.sqrt(a) * c0 / math.sqrt(1 - a)
        quiet = meas & (sig_s < level)
        loud = meas & ~quiet
        alpha = torch.ones(d, dtype=torch.float64)
        beta = torch.full((d,), c * sig_s, dtype=torch.float64)
        gamma = torch.zeros(d, dtype=torch.float64)
        std = torch.full((d,), eta * sig_s, dtype=torch.float64)
        w = torch.where(quiet, c * sig_s / torch.where(quiet, level, 1.0), 0.0)
        alpha = torch.where(quiet, 1 - w, alpha)
        beta = torch.where(quiet | loud, 0.0, beta)
        gamma = torch.where(quiet, w * ybar, gamma)
        alpha = torch.where(loud, 1 - eta_b, alpha)
        gamma = torch.where(loud, eta_b * ybar, gamma)
        std = torch.where(loud, (sig_s**2 - (eta_b * torch.where(loud, level, 0.0)) ** 2).clamp_min(0).sqrt(), std)
        t = math.sqrt(a_s) * vmat @ (alpha[:, None] * (vmat.T @ p0) + beta[:, None] * (vmat.T @ pe))
        off = math.sqrt(a_s) * vmat @ (alpha * (vmat.T @ c0) + beta * (vmat.T @ ce) + gamma)
        mean = t @ mean + off
        cov = t @ cov @ t.T + a_s * (vmat * std**2) @ vmat.T
    return mean, cov
