"""A correlated Gaussian image prior with an exact denoiser and exact linear-Gaussian posteriors.

Ground truth for the guidance methods: x0 ~ N(mu, Sigma) with Sigma = Q diag(s^2) Q^T, Q an
orthonormal basis (by default the separable DCT-II, with std falling with frequency, so neighbouring
pixels are correlated like in images). Since forward noise is isotropic, Q^T x_t is the noisy version
of a diagonal Gaussian and the exact denoiser is toy.GaussianMixture's rotated by Q. For y = H x + n,
n ~ N(0, sigma_y^2 I), the posterior is N(mu + K (y - H mu), Sigma - K H Sigma) with
K = Sigma H^T (H Sigma H^T + sigma_y^2 I)^+. Dense d x d matrices: for small images only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..process import check_prediction_type
from ..samplers.base import Denoiser
from ..schedules import Schedule
from ..toy import GaussianMixture


def dct_matrix(n: int) -> Tensor:
    """Orthonormal DCT-II matrix (float64); row k is the k-th cosine basis vector."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * (i + 0.5) * k / n) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c


class CorrelatedGaussian:
    """N(Q m, Q diag(s^2) Q^T) over images of ``shape`` (C, *spatial); Q's columns are basis images."""

    def __init__(self, basis: Tensor, coef_mean: Tensor, coef_std: Tensor, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)
        d = math.prod(self.shape)
        q = torch.as_tensor(basis, dtype=torch.float64)
        if q.shape != (d, d) or not torch.allclose(q.T @ q, torch.eye(d, dtype=torch.float64), atol=1e-8):
            raise ValueError(f"basis must be an orthogonal {d} x {d} matrix for images of shape {self.shape}")
        self.basis = q
        self.coef_mean = torch.as_tensor(coef_mean, dtype=torch.float64).expand(d).clone()
        self.coef_std = torch.as_tensor(coef_std, dtype=torch.float64).expand(d).clone()
        self.diagonal = GaussianMixture(self.coef_mean, self.coef_std, shape=(d,))

    @classmethod
    def smooth(cls, shape: tuple[int, ...], mean: float = 0.0, decay: float = 1.0) -> CorrelatedGaussian:
        """DCT basis over every axis of ``shape``; std (1 + |k|^2)^(-decay / 2) at frequency k.

        ``mean`` is the pixel mean (a constant image).
        """
        shape = tuple(shape)
        q = torch.ones(1, 1, dtype=torch.float64)
        freq2 = torch.zeros(1, dtype=torch.float64)
        for n in shape:
            q = torch.kron(q, dct_matrix(n))  # rows: basis vectors
            freq2 = (freq2[:, None] + torch.arange(n, dtype=torch.float64)[None, :] ** 2).reshape(-1)
        std = (1.0 + freq2) ** (-decay / 2)
        d = math.prod(shape)
        basis = q.T.contiguous()  # columns: basis images
        coef_mean = basis.T @ torch.full((d,), float(mean), dtype=torch.float64)
        return cls(basis, coef_mean, std, shape)

    @property
    def dim(self) -> int:
        return self.basis.shape[0]

    def mean(self) -> Tensor:
        """(d,) prior mean."""
        return self.basis @ self.coef_mean

    def covariance(self) -> Tensor:
        """(d, d) prior covariance."""
        return (self.basis * self.coef_std**2) @ self.basis.T

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = self.coef_mean + self.coef_std * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (z @ self.basis.T).float().reshape(n, *self.shape)

    def _rotate(self, x: Tensor, to_coef: bool) -> Tensor:
        q = self.basis.to(x.device, x.dtype)
        flat = x.reshape(x.shape[0], -1)
        return (flat @ q if to_coef else flat @ q.T).reshape(x.shape)

    def denoiser(self, schedule: Schedule, prediction_type: str = "eps") -> Denoiser:
        """The exact ``denoise(x_t, t)`` for training timesteps of ``schedule``'s chain.

        eps, x0 and v are all linear in (x0, eps), so each rotates with Q.
        """
        check_prediction_type(prediction_type)
        inner = self.diagonal.denoiser(schedule, prediction_type)

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            return self._rotate(inner(self._rotate(x_t, True), t), False)

        return denoise

    def posterior(
        self, operator: Callable[[Tensor], Tensor], y: Tensor, sigma_y: float
    ) -> tuple[Tensor, Tensor]:
        """(mean (d,), covariance (d, d)) of p(x | y) for one measurement y (1, ...) of a linear operator."""
        eye = torch.eye(self.dim, dtype=torch.float64).reshape(self.dim, *self.shape)
        with torch.no_grad():
            h = operator(eye).reshape(self.dim, -1).T.double()  # (m, d): column j is H e_j
            h0 = operator(torch.zeros(1, *self.shape, dtype=torch.float64)).reshape(-1)
        if h0.abs().max() > 1e-12:
            raise ValueError("the operator is not linear (H 0 != 0)")
        mu, cov = self.mean(), self.covariance()
        yv = y.reshape(-1).double()
        if yv.numel() != h.shape[0]:
            raise ValueError(f"y has {yv.numel()} entries but the operator produces {h.shape[0]}")
        s = h @ cov @ h.T + sigma_y**2 * torch.eye(h.shape[0], dtype=torch.float64)
        gain = cov @ h.T @ torch.linalg.pinv(s, hermitian=True)
        mean = mu + gain @ (yv - h @ mu)
        post = cov - gain @ h @ cov
        return mean, 0.5 * (post + post.T)
