"""DDFM (Zhao et al., ICCV 2023): training-free fusion of two registered images inside DDIM sampling.

At every reverse step the sampler's clean estimate x0_hat is refined by ONE iteration of an EM
algorithm on a hierarchical Bayesian model of the fused image f, and the refined x0 re-enters the
update (eps is recomputed from it, :func:`~medrs_diff.diffusion.samplers.base.predict_with_hooks`).
With ``a`` the modality whose *intensities* f keeps (infrared, PET / SPECT / CT) and ``b`` the one
whose *gradients* it keeps (visible, MRI), write x = f - b, y = a - b. The fusion objective is

    min_x ||y - x||_1 + lambda ||grad x||_1        (f near a in intensity, near b in gradients)

and each L1 term is a Gaussian scale mixture (Laplace = Gaussian with an exponential variance):

    y_ij | x_ij, m_ij ~ N(x_ij, m_ij),  m_ij ~ Exp(gamma)          (intensity, Laplace)
    (D_d x)_ij | n_ij ~ N(0, n_ij),     n_ij ~ Exp(gamma_tv)       (gradients along axis d, TV)

**E-step** (:func:`laplace_e_step`): given a residual r, m | r is generalized inverse Gaussian with
E[1/m] = sqrt(2 gamma) / |r| and E[m] = |r| / sqrt(2 gamma) + 1 / (2 gamma); the rates are then
re-estimated as gamma = 1 / mean(E[m]) (the exponential's maximum-likelihood update), per sample.
**M-step** (:func:`m_step`): minimise the expected negative log-likelihood, the weighted quadratic
sum c (x - y)^2 + lambda sum_d e_d (D_d x)^2 (c = E[1/m], e_d = E[1/n_d]), by one sweep of
half-quadratic splitting around the diffusion estimate x_prior = x0_hat - b, penalty rho:

    u_d = rho D_d x_prior / (2 lambda e_d + rho)                    (per pixel)
    k   = argmin ||k - x_prior||^2 + sum_d ||D_d k - u_d||^2         (TV proximal step)
        = F^-1[ (F x_prior + sum_d conj(K_d) F u_d) / (1 + sum_d |K_d|^2) ]   (closed form, FFT)
    x   = (2 c y + rho k) / (2 c + 2 d + rho)                        (per pixel)

D_d are periodic forward differences (K_d their transfer functions), so the TV proximal step is an
exact division in the Fourier domain (:func:`fourier_tv_prox`). ``d`` is 0 in the bare objective.
Hyperparameters as published: lambda = 0.5, rho = 0.01, DDIM with 100 steps, eta = 0.

Two EM variants (``official_code``). ``True`` (the default): the published code's model (``EM_onestep``,
read, not copied), where the gradient weights are not EM-estimated and a second Laplace term pulls f toward b
in intensity (d = E[1/n] of x = f - b itself, clipped to d <= 2 c), so each pixel's refined x0 is a
residual-weighted blend of a and b and the prior's estimate decides the blend. Its M-step differs from the
sweep above: the TV proximal step acts on the residual, h = argmin ||h - (y - x_prior)||^2 + sum_d ||D_d h -
g_d||^2, whose gradient targets g_d = rho / (2 lambda + rho) * G_d h_prev come from the *previous* reverse step's
h (zero at the first; G_d h[i] = h[i] - h[i + 1], and h[n - 1] itself at the last index), and
x = (2 c y + rho (y - h)) / (2 c + 2 d + rho) (:func:`official_m_step`).
``False``: the bare objective above (d = 0, EM gradient weights). With the published lambda = 0.5 and
rho = 0.01 its M-step returns x = y almost exactly (c >> rho), i.e. f = a whatever the prior does (measured
on phantoms: MI(F, b) equals MI(a, b) to the last digit), which is why the code's model is the default
here; the paper's own equations could not be checked line by line (no licence, paper text unavailable
offline), see the DDFM note.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..process import check_spatial
from ..samplers.base import Hook, StepContext
from ..schedules import Schedule
from ._common import as_batch, check_same_image_shape

#: Published EM hyperparameters: weight of the gradient term and the half-quadratic-splitting penalty.
DDFM_LAMBDA = 0.5
DDFM_RHO = 0.01
#: Published sampler: DDIM respaced to 100 steps, deterministic.
DDFM_STEPS = 100
DDFM_ETA = 0.0
#: Guard of |r| in the E-step (E[1/m] = sqrt(2 gamma)/|r| is unbounded at r = 0).
EPS = 1e-3


def _spatial_axes(x: Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


def diff(x: Tensor, axis: int) -> Tensor:
    """Periodic forward difference along ``axis``: (D x)[i] = x[i + 1] - x[i] (wrapping around)."""
    return torch.roll(x, -1, dims=axis) - x


def diff_adjoint(u: Tensor, axis: int) -> Tensor:
    """D^T u: (D^T u)[i] = u[i - 1] - u[i] (periodic)."""
    return torch.roll(u, 1, dims=axis) - u


def difference_transfer(shape: tuple[int, ...], axis: int, device: torch.device | None = None) -> Tensor:
    """Transfer function K of the periodic forward difference along spatial ``axis`` (0-based) of an image
    of spatial ``shape``: F(D x) = K * F(x)."""
    n = shape[axis]
    k = torch.exp(2j * math.pi * torch.arange(n, dtype=torch.float64, device=device) / n) - 1
    view = [1] * len(shape)
    view[axis] = n
    return k.reshape(view)


def fourier_tv_prox(v: Tensor, u: list[Tensor]) -> Tensor:
    """Solve (I + sum_d D_d^T D_d) k = v + sum_d D_d^T u_d exactly by one division in the Fourier domain.

    ``v`` (B, C, *spatial); ``u`` one tensor like ``v`` per spatial axis (the target gradients).
    """
    axes = _spatial_axes(v)
    spatial = tuple(v.shape[2:])
    if len(u) != len(axes):
        raise ValueError(f"need one gradient field per spatial axis ({len(axes)}), got {len(u)}")
    num = torch.fft.fftn(v.double(), dim=axes)
    den = torch.ones(spatial, dtype=torch.float64, device=v.device)
    for d, ud in enumerate(u):
        k = difference_transfer(spatial, d, v.device)
        num = num + k.conj() * torch.fft.fftn(ud.double(), dim=axes)
        den = den + (k.abs() ** 2)
    return torch.fft.ifftn(num / den, dim=axes).real.to(v.dtype)


def laplace_e_step(residual: Tensor, rate: Tensor) -> tuple[Tensor, Tensor]:
    """E-step of r ~ N(0, m), m ~ Exp(rate): returns (E[1/m | r], E[m | r]).

    m | r is GIG(1/2, 2 rate, r^2): E[1/m] = sqrt(2 rate)/|r|, E[m] = |r|/sqrt(2 rate) + 1/(2 rate).
    ``rate`` broadcasts against ``residual`` (one per sample: shape (B, 1, ...)); |r| is floored at
    :data:`EPS` so a zero residual gives a large finite weight.
    """
    a = residual.abs().clamp(min=EPS)
    s = torch.sqrt(2 * rate)
    return s / a, a / s + 1 / (2 * rate)


def update_rate(expected_m: Tensor) -> Tensor:
    """Maximum-likelihood rate of Exp given E[m]: 1 / mean over each sample's pixels, shape (B, 1, ...)."""
    dims = tuple(range(1, expected_m.ndim))
    return 1.0 / expected_m.mean(dim=dims, keepdim=True)


def m_step(
    x_prior: Tensor,
    y: Tensor,
    c: Tensor,
    e: list[Tensor],
    lam: float,
    rho: float,
    d: Tensor | None = None,
) -> Tensor:
    """One half-quadratic-splitting sweep of the M-step (see the module docstring); returns x."""
    axes = _spatial_axes(x_prior)
    u = [rho * diff(x_prior, ax) / (2 * lam * e_d + rho) for ax, e_d in zip(axes, e, strict=True)]
    k = fourier_tv_prox(x_prior, u)
    den = 2 * c + rho + (2 * d if d is not None else 0.0)
    return (2 * c * y + rho * k) / den


def code_difference(h: Tensor, axis: int) -> Tensor:
    """The official code's difference of its TV targets along ``axis``: h[i] - h[i + 1], and h[n - 1] at the end."""
    nxt = torch.cat([h.narrow(axis, 1, h.shape[axis] - 1), torch.zeros_like(h.narrow(axis, 0, 1))], dim=axis)
    return h - nxt


def official_m_step(
    x_prior: Tensor, y: Tensor, c: Tensor, d: Tensor, lam: float, rho: float, state: EMState,
) -> Tensor:
    """The official code's M-step (see the module docstring); carries the TV targets in ``state``; returns x."""
    axes = _spatial_axes(x_prior)
    targets = state.tv_targets or [torch.zeros_like(x_prior) for _ in axes]
    h = fourier_tv_prox(y - x_prior, targets)
    state.tv_targets = [rho / (2 * lam + rho) * code_difference(h, ax) for ax in axes]
    return (2 * c * y + rho * (y - h)) / (2 * c + 2 * d + rho)


class EMState:
    """Per-sample hyperparameters carried across the reverse steps (rates of the exponentials; 1 at the start)."""

    def __init__(self, batch: int, ndim: int, device: torch.device, dtype: torch.dtype) -> None:
        shape = (batch,) + (1,) * (ndim - 1)
        self.gamma = torch.ones(shape, device=device, dtype=dtype)  # intensity term
        self.gamma_tv = torch.ones(shape, device=device, dtype=dtype)  # gradient term
        self.gamma_b = torch.ones(shape, device=device, dtype=dtype)  # official code's term toward b
        self.tv_targets: list[Tensor] | None = None  # official code: gradient targets from the previous step's h


def em_one_step(
    x0_hat: Tensor,
    a: Tensor,
    b: Tensor,
    state: EMState,
    lam: float = DDFM_LAMBDA,
    rho: float = DDFM_RHO,
    official_code: bool = True,
) -> Tensor:
    """One EM iteration refining the diffusion estimate ``x0_hat`` of the fused image; updates ``state``."""
    y = a - b
    x_prior = x0_hat - b
    c, em = laplace_e_step(y - x_prior, state.gamma)
    state.gamma = update_rate(em)
    if official_code:
        d, dm = laplace_e_step(x_prior, state.gamma_b)
        d = torch.minimum(d, 2 * c)
        state.gamma_b = update_rate(dm)
        return b + official_m_step(x_prior, y, c, d, lam, rho, state)
    e, ems = [], []
    for ax in _spatial_axes(x_prior):
        e_d, m_d = laplace_e_step(diff(x_prior, ax), state.gamma_tv)
        e.append(e_d)
        ems.append(m_d)
    state.gamma_tv = update_rate(torch.cat(ems, dim=1))
    return b + m_step(x_prior, y, c, e, lam, rho)


class DDFMFusion(Hook):
    """Sampler hook: refine every step's x0 by one DDFM EM iteration toward ``a`` (intensity) and ``b`` (gradients).

    ``a`` and ``b`` are (B or 1, C, *spatial) in the model's space (e.g. [-1, 1]), registered on the
    sample's grid. ``weight`` blends the refined x0 with the network's (1: DDFM; 0: plain sampling,
    returned unchanged); ``enabled=False`` is the same as weight 0. ``clip`` clamps the refined x0 to
    [-1, 1] (the range of the prior's training data). Use with :func:`~medrs_diff.diffusion.samplers.ddim`
    at :data:`DDFM_STEPS` steps and eta :data:`DDFM_ETA`.
    """

    def __init__(
        self,
        a: Tensor,
        b: Tensor,
        lam: float = DDFM_LAMBDA,
        rho: float = DDFM_RHO,
        weight: float = 1.0,
        official_code: bool = True,
        clip: bool = True,
        enabled: bool = True,
    ) -> None:
        check_spatial(a, "modality a")
        check_spatial(b, "modality b")
        if a.shape != b.shape:
            raise ValueError(
                f"modality a has shape {tuple(a.shape)} but modality b {tuple(b.shape)}; "
                "the two inputs must be registered on one grid (resample one onto the other first)"
            )
        for name, v in (("lam", lam), ("rho", rho)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        if rho == 0:
            raise ValueError("rho must be > 0 (the half-quadratic-splitting penalty); the paper uses 0.01")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must lie in [0, 1], got {weight}")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise ValueError("modality a or b has NaN / inf values; fill or mask them before fusing")
        self.a, self.b = a, b
        self.lam, self.rho, self.weight = float(lam), float(rho), float(weight)
        self.official_code = official_code
        self.clip = clip
        self.enabled = enabled
        self.state: EMState | None = None

    def begin(self, x_T: Tensor, schedule: Schedule) -> None:
        check_same_image_shape(x_T, self.a, "modality a")
        self.state = EMState(x_T.shape[0], x_T.ndim, x_T.device, x_T.dtype)

    def on_x0(self, ctx: StepContext) -> Tensor:
        if not self.enabled or self.weight == 0.0:
            return ctx.x0
        if self.state is None:
            raise RuntimeError("DDFMFusion.begin was not called; pass the hook to a sampler's hooks=[...]")
        x0 = ctx.x0.detach()
        batch = x0.shape[0]
        a = as_batch(self.a.to(x0.device, x0.dtype), batch, "modality a")
        b = as_batch(self.b.to(x0.device, x0.dtype), batch, "modality b")
        with torch.no_grad():
            fused = em_one_step(x0, a, b, self.state, self.lam, self.rho, self.official_code)
            if self.clip:
                fused = fused.clamp(-1.0, 1.0)
            return x0 + self.weight * (fused - x0)
