"""Forward process, prediction-type conversions and training losses.

Prediction types: ``eps`` (noise), ``x0`` (clean sample) and ``v = sqrt(abar) eps - sqrt(1-abar) x0``
(Salimans & Ho). Conversions are exact. Losses: the simple loss (MSE or L1) with optional min-SNR-gamma
weighting, and the IDDPM hybrid ``L_simple + lambda * L_vlb`` for a network that also outputs the
interpolation weight of its log-variance (2C output channels; the mean is detached inside L_vlb).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .noise import gaussian_like
from .schedules import Schedule

PredictionType = Literal["eps", "x0", "v"]
VarianceType = Literal["fixed_small", "fixed_large", "learned"]
PREDICTION_TYPES = ("eps", "x0", "v")
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned")


def check_spatial(x: Tensor, name: str = "x") -> None:
    """Raise unless ``x`` is a (B, C, H, W) or (B, C, D, H, W) tensor."""
    if not isinstance(x, Tensor) or x.ndim not in (4, 5):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"{name} must be a 4-D (B, C, H, W) or 5-D (B, C, D, H, W) tensor, got shape {shape}; "
            "add the batch and channel axes (e.g. x[None, None])"
        )


def check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {prediction_type!r}; choose one of {PREDICTION_TYPES}")


def check_variance_type(variance: str) -> None:
    if variance not in VARIANCE_TYPES:
        raise ValueError(f"unknown variance mode {variance!r}; choose one of {VARIANCE_TYPES}")


def split_output(out: Tensor, channels: int, variance: str) -> tuple[Tensor, Tensor | None]:
    """Split a network output into (prediction, variance interpolation values or None).

    A learned-variance network emits 2C channels (prediction, then v in [-1, 1]); otherwise C.
    """
    check_variance_type(variance)
    expected = 2 * channels if variance == "learned" else channels
    if out.shape[1] != expected:
        raise ValueError(
            f"the network returned {out.shape[1]} channels but variance={variance!r} with {channels} data "
            f"channel(s) needs {expected}; set out_channels={expected} or change the variance mode"
        )
    if variance == "learned":
        return out[:, :channels], out[:, channels:]
    return out, None


# -- forward process -----------------------------------------------------------------------------
def q_sample(schedule: Schedule, x0: Tensor, index: Tensor, noise: Tensor) -> Tensor:
    """Sample q(x_t | x_0) = N(sqrt(abar) x_0, (1 - abar) I) at per-sample schedule indices."""
    abar = schedule.gather("alphas_cumprod", index, x0.ndim)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def q_sample_at(x0: Tensor, abar: float, noise: Tensor) -> Tensor:
    """q(x_t | x_0) for one alpha-bar value (a Python float)."""
    return math.sqrt(abar) * x0 + math.sqrt(1.0 - abar) * noise


# -- prediction-type conversions (abar broadcastable or a float) -----------------------------------
def _sqrt(a: Tensor | float) -> Tensor | float:
    return a.sqrt() if isinstance(a, Tensor) else math.sqrt(a)


def to_x0_eps(pred: Tensor, x_t: Tensor, abar: Tensor | float, prediction_type: str) -> tuple[Tensor, Tensor]:
    """Return (x0, eps) implied by a network prediction at x_t."""
    sa, sb = _sqrt(abar), _sqrt(1 - abar)
    if prediction_type == "eps":
        return (x_t - sb * pred) / sa, pred
    if prediction_type == "x0":
        return pred, (x_t - sa * pred) / sb
    if prediction_type == "v":
        return sa * x_t - sb * pred, sb * x_t + sa * pred
    check_prediction_type(prediction_type)
    raise AssertionError  # pragma: no cover


def eps_from_x0(x0: Tensor, x_t: Tensor, abar: Tensor | float) -> Tensor:
    return (x_t - _sqrt(abar) * x0) / _sqrt(1 - abar)


def target_of(x0: Tensor, eps: Tensor, abar: Tensor | float, prediction_type: str) -> Tensor:
    """The regression target of a prediction type for a given clean sample and noise."""
    if prediction_type == "eps":
        return eps
    if prediction_type == "x0":
        return x0
    if prediction_type == "v":
        return _sqrt(abar) * eps - _sqrt(1 - abar) * x0
    check_prediction_type(prediction_type)
    raise AssertionError  # pragma: no cover


def convert_prediction(
    pred: Tensor, x_t: Tensor, abar: Tensor | float, source: str, target: str
) -> Tensor:
    """Convert a prediction from one type to another at the same (x_t, abar)."""
    x0, eps = to_x0_eps(pred, x_t, abar, source)
    return target_of(x0, eps, abar, target)


def min_snr_weight(snr: Tensor, gamma: float, prediction_type: str) -> Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023) expressed for each prediction type."""
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "eps":
        return clipped / snr
    if prediction_type == "x0":
        return clipped
    if prediction_type == "v":
        return clipped / (snr + 1)
    check_prediction_type(prediction_type)
    raise AssertionError  # pragma: no cover


# -- Gaussian KL terms of the variational bound ---------------------------------------------------
def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_nll(x: Tensor, mean: Tensor, log_scale: Tensor, bin_width: float = 2.0 / 255) -> Tensor:
    """-log of the mass of N(mean, exp(log_scale)^2) on the bin around x (data in [-1, 1])."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv_std * (centered + bin_width / 2))
    cdf_min = _std_normal_cdf(inv_std * (centered - bin_width / 2))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return -log_probs


def learned_log_variance(schedule: Schedule, index: Tensor, v: Tensor) -> Tensor:
    """IDDPM: log Sigma = frac log(beta) + (1 - frac) log(beta_tilde), frac = (v + 1) / 2."""
    min_log = schedule.gather("posterior_log_variance_clipped", index, v.ndim)
    max_log = torch.log(schedule.gather("betas", index, v.ndim))
    frac = (v + 1) / 2
    return frac * max_log + (1 - frac) * min_log


def vlb_terms(
    schedule: Schedule, x0: Tensor, x_t: Tensor, index: Tensor, x0_pred: Tensor, log_var: Tensor
) -> Tensor:
    """Per-sample L_vlb term (bits per dimension): KL for t > 0, decoder NLL at t = 0."""
    ndim = x0.ndim
    c0 = schedule.gather("posterior_mean_coef_x0", index, ndim)
    ct = schedule.gather("posterior_mean_coef_xt", index, ndim)
    true_mean = c0 * x0 + ct * x_t
    true_logvar = schedule.gather("posterior_log_variance_clipped", index, ndim)
    model_mean = c0 * x0_pred + ct * x_t
    dims = tuple(range(1, ndim))
    kl = normal_kl(true_mean, true_logvar, model_mean, log_var).mean(dim=dims) / math.log(2.0)
    nll = discretized_gaussian_nll(x0, model_mean, 0.5 * log_var).mean(dim=dims) / math.log(2.0)
    return torch.where(index == 0, nll, kl)


# -- residual diffusion ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Residual:
    """Diffuse ``(x - base) * scale`` instead of x (SRDiff: HR - upsample(LR); RDDM-style restoration)."""

    scale: float = 1.0

    def encode(self, x: Tensor, base: Tensor) -> Tensor:
        if x.shape != base.shape:
            raise ValueError(f"residual target {tuple(x.shape)} and base {tuple(base.shape)} differ in shape")
        return (x - base) * self.scale

    def decode(self, r: Tensor, base: Tensor) -> Tensor:
        return r / self.scale + base


# -- the training loss ----------------------------------------------------------------------------
NoiseFn = Callable[[Tensor, Tensor, torch.Generator | None], Tensor]


@dataclass
class DiffusionLoss:
    """Training objective for one diffusion chain.

    ``__call__(model, x0, **cond)`` draws per-sample timesteps and noise, runs
    ``model(x_t, t, **cond)`` and returns (loss, logs). ``noise_fn(x0, index, generator)`` replaces
    Gaussian noise (simplex or gamma noise, see :mod:`noise`).
    """

    schedule: Schedule
    prediction_type: PredictionType = "eps"
    variance: VarianceType = "fixed_small"
    loss_type: Literal["mse", "l1"] = "mse"
    min_snr_gamma: float | None = None
    vlb_weight: float = 0.001
    noise_fn: NoiseFn | None = None

    def __post_init__(self) -> None:
        check_prediction_type(self.prediction_type)
        check_variance_type(self.variance)
        if self.loss_type not in ("mse", "l1"):
            raise ValueError(f"unknown loss type {self.loss_type!r}; choose 'mse' or 'l1'")
        if self.schedule.zero_terminal_snr and self.prediction_type == "eps":
            raise ValueError("zero terminal SNR needs prediction_type 'v' or 'x0' (eps cannot recover x0 at SNR 0)")

    def sample_index(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(0, len(self.schedule), (batch,), device=device, generator=generator)

    def noise(self, x0: Tensor, index: Tensor, generator: torch.Generator | None) -> Tensor:
        if self.noise_fn is None:
            return gaussian_like(x0, generator)
        return self.noise_fn(x0, index, generator)

    def __call__(
        self,
        model: Callable[..., Tensor],
        x0: Tensor,
        *,
        index: Tensor | None = None,
        generator: torch.Generator | None = None,
        **model_kwargs,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        check_spatial(x0, "x0")
        if index is None:
            index = self.sample_index(x0.shape[0], x0.device, generator)
        eps = self.noise(x0, index, generator)
        x_t = q_sample(self.schedule, x0, index, eps)
        t_model = self.schedule.table("timesteps", x0.device, torch.long)[index]
        out = model(x_t, t_model, **model_kwargs)
        pred, v = split_output(out, x0.shape[1], self.variance)
        abar = self.schedule.gather("alphas_cumprod", index, x0.ndim, dtype=pred.dtype)
        target = target_of(x0, eps, abar, self.prediction_type)
        err = (pred - target).abs() if self.loss_type == "l1" else (pred - target) ** 2
        per_sample = err.flatten(1).mean(1)
        if self.min_snr_gamma is not None:
            snr = torch.exp(self.schedule.gather("log_snr", index, 1, dtype=pred.dtype)).flatten()
            per_sample = per_sample * min_snr_weight(snr, self.min_snr_gamma, self.prediction_type)
        logs = {"loss_simple": per_sample.mean().detach()}
        loss = per_sample.mean()
        if v is not None:
            # Stop-gradient on the mean: L_vlb trains only the variance (IDDPM).
            x0_pred, _ = to_x0_eps(pred.detach(), x_t, abar, self.prediction_type)
            log_var = learned_log_variance(self.schedule, index, v)
            vlb = vlb_terms(self.schedule, x0, x_t, index, x0_pred, log_var)
            vlb = vlb * (len(self.schedule) / 1000.0)
            logs["loss_vlb"] = vlb.mean().detach()
            loss = loss + self.vlb_weight * vlb.mean()
        return loss, logs
