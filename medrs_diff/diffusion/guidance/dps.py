"""DPS (Chung et al. 2023): diffusion posterior sampling by the likelihood gradient through the denoiser.

After the sampler's step x'_{t-1}, DPS moves against the gradient of the measurement residual of the
predicted clean sample, differentiated through the network:

    x_{t-1} = x'_{t-1} - zeta' grad_{x_t} ||y - A(x0_hat(x_t))||.

Since grad ||r|| = grad ||r||^2 / (2 ||r||), this is the paper's step zeta_t = zeta' / ||r|| on the
squared residual (zeta' absorbing the 2), and it is what the official code does. The norm is taken
per sample. ``A`` is any differentiable callable (B, C, *spatial) -> measurement, linear or not (the
operators of :mod:`.operators` qualify). The Gaussian likelihood uses the plain residual; the
Poisson likelihood weights it by Lambda = diag(1 / (2 y)) (the paper's shot-noise approximation),
so y must be non-negative counts or intensities.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from ..samplers.base import Hook, StepContext
from ..schedules import Schedule
from ._common import as_batch

Likelihood = Literal["gaussian", "poisson"]


class DPS(Hook):
    """Hook for any sampler (sets ``needs_grad``): ``scale`` is zeta' (paper: ~0.3 for 4x SR and
    Gaussian deblurring at 1000 steps, ~1 for inpainting). ``y`` has batch B or 1."""

    needs_grad = True

    def __init__(
        self,
        y: Tensor,
        operator: Callable[[Tensor], Tensor],
        scale: float = 1.0,
        likelihood: Likelihood = "gaussian",
        poisson_floor: float = 1e-3,
    ) -> None:
        if not isinstance(y, Tensor) or y.ndim < 1:
            raise ValueError("DPS measurement y must be a tensor with a batch axis")
        if not callable(operator):
            raise ValueError("DPS operator must be a differentiable callable x -> A(x)")
        if likelihood not in ("gaussian", "poisson"):
            raise ValueError(f"unknown likelihood {likelihood!r}; choose 'gaussian' or 'poisson'")
        if likelihood == "poisson" and (y < 0).any():
            raise ValueError("a Poisson likelihood needs non-negative measurements y; shift them or use 'gaussian'")
        if not scale >= 0:
            raise ValueError(f"DPS scale must be >= 0, got {scale}")
        self.y = y
        self.operator = operator
        self.scale = float(scale)
        self.likelihood = likelihood
        self.poisson_floor = float(poisson_floor)

    def begin(self, x_T: Tensor, schedule: Schedule) -> None:
        with torch.no_grad():
            out = self.operator(x_T)
        if not isinstance(out, Tensor) or out.shape[1:] != self.y.shape[1:]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the operator maps the sample {tuple(x_T.shape)} to {got} but y has shape {tuple(self.y.shape)}; "
                "build the operator for this image size or reshape y to A(x)'s shape"
            )
        as_batch(self.y, x_T.shape[0], "y")

    def residual_norm(self, x0: Tensor) -> Tensor:
        """Per-sample ||y - A(x0)|| (Lambda-weighted for the Poisson likelihood), shape (B,)."""
        y = self.y.to(x0.device, x0.dtype)
        r = y - self.operator(x0)
        if self.likelihood == "poisson":
            r = r / (2 * y.clamp_min(self.poisson_floor)).sqrt()
        return r.flatten(1).norm(dim=1)

    def after_step(self, ctx: StepContext, x_prev: Tensor) -> Tensor:
        if self.scale == 0.0:
            return x_prev
        if not ctx.x_t.requires_grad:
            raise ValueError("DPS needs x_t with gradients; run it in a sampler that honours Hook.needs_grad")
        with torch.enable_grad():
            norm = self.residual_norm(ctx.x0)
            grad = None
            if norm.requires_grad:
                (grad,) = torch.autograd.grad(norm.sum(), ctx.x_t, retain_graph=True, allow_unused=True)
        if grad is None:
            raise ValueError("the predicted x0 does not depend on x_t through autograd; use a differentiable denoiser")
        return x_prev - self.scale * grad.to(x_prev.dtype)
