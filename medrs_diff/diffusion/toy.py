"""Closed-form toy data for checking samplers: Gaussian mixtures with diagonal covariances.

For x0 ~ sum_k pi_k N(mu_k, diag(s_k^2)) every noisy marginal is a mixture too, so the exact noise
predictor is ``eps*(x_t, t) = -sqrt(1 - abar) grad log p_t(x_t)``; for a single Gaussian it is
``sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar)``. Used as the denoiser in the
engine's tests and in benchmarks of sampler accuracy against the known data distribution.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .schedules import Schedule


class GaussianMixture:
    """A mixture over flattened samples of ``shape`` (C, *spatial)."""

    def __init__(self, means: Tensor, stds: Tensor, weights: Tensor | None = None, shape: tuple[int, ...] = ()):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim == 1:
            self.means = self.means[None]
        k, d = self.means.shape
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(k, d).clone()
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum()
        self.shape = tuple(shape) if shape else (1, 1, d)
        if math.prod(self.shape) != d:
            raise ValueError(f"shape {self.shape} does not hold {d} dimensions")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def variance(self) -> Tensor:
        m = self.mean()
        second = (self.weights[:, None] * (self.stds**2 + self.means**2)).sum(0)
        return second - m**2

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[comp] + self.stds[comp] * z
        return x.float().reshape(n, *self.shape)

    def _responsibilities(self, x: Tensor, abar: Tensor) -> tuple[Tensor, Tensor]:
        """Per-component (log-weight posterior, marginal variance) at noise level abar, x (B, d)."""
        var = abar[:, None, None] * self.stds[None] ** 2 + (1 - abar[:, None, None])  # (B, K, d)
        diff = x[:, None, :] - abar.sqrt()[:, None, None] * self.means[None]
        logp = -0.5 * ((diff**2) / var + torch.log(2 * math.pi * var)).sum(-1) + torch.log(self.weights)[None]
        return torch.softmax(logp, dim=1), var

    def eps(self, x_t: Tensor, abar: Tensor) -> Tensor:
        """Exact noise prediction at x_t (B, ...) for per-sample alpha-bar ``abar`` (B,)."""
        b = x_t.shape[0]
        x = x_t.reshape(b, -1).double()
        abar = abar.double().to(x.device)
        resp, var = self._responsibilities(x, abar)
        diff = x[:, None, :] - abar.sqrt()[:, None, None] * self.means[None].to(x.device)
        score = -(resp[..., None] * diff / var).sum(1)
        return (-(1 - abar).sqrt()[:, None] * score).to(x_t.dtype).reshape(x_t.shape)

    def posterior_mean(self, x_t: Tensor, abar: Tensor) -> Tensor:
        """Exact E[x0 | x_t] for x_t = sqrt(abar) x0 + sqrt(1 - abar) eps (finite also at abar = 0)."""
        b = x_t.shape[0]
        x = x_t.reshape(b, -1).double()
        abar = abar.double().to(x.device)
        resp, var = self._responsibilities(x, abar)
        sa = abar.sqrt()[:, None, None]
        mu = self.means[None].to(x.device)
        comp = mu + sa * self.stds[None].to(x.device) ** 2 * (x[:, None, :] - sa * mu) / var
        return (resp[..., None] * comp).sum(1).to(x_t.dtype).reshape(x_t.shape)

    def denoiser(self, schedule: Schedule, prediction_type: str = "eps"):
        """``denoise(x_t, t)`` for training timesteps ``t`` of ``schedule``'s training chain."""
        from .process import target_of

        table = schedule.parent_alphas_cumprod

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            abar = table[t.cpu()].to(x_t.device)
            eps = self.eps(x_t, abar)
            if prediction_type == "eps":
                return eps
            a = abar.to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
            x0 = self.posterior_mean(x_t, abar)  # exact, finite at abar = 0 (zero terminal SNR)
            return target_of(x0, eps, a, prediction_type)

        return denoise

    def marginal(self, abar: float) -> GaussianMixture:
        """The distribution of x_t = sqrt(abar) x0 + sqrt(1 - abar) eps."""
        return GaussianMixture(
            self.means * math.sqrt(abar), (abar * self.stds**2 + 1 - abar).sqrt(), self.weights, self.shape
        )


def wasserstein_1d(a: Tensor, b: Tensor) -> Tensor:
    """Per-coordinate 1-D Wasserstein-1 distance between two equal-size sample sets (N, d)."""
    a = a.reshape(a.shape[0], -1).double().sort(0).values
    b = b.reshape(b.shape[0], -1).double().sort(0).values
    if a.shape != b.shape:
        raise ValueError("sample sets must have the same size")
    return (a - b).abs().mean(0)
