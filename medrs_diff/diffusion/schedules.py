"""Noise schedules and respacing.

A :class:`Schedule` holds betas, alpha-bar and log-SNR for a (possibly respaced) chain together
with ``timesteps``: the original training timestep that the network sees at each index. Respacing
rebuilds ``beta_i = 1 - abar(tau_i) / abar(tau_{i-1})`` from the training alpha-bar, so a sampler
that walks a respaced schedule with the ordinary DDPM formulas is exact (unlike stepping to
``t - 1`` with the original betas, MONAI's known bug). Tables are float64 on the CPU; samplers read
Python floats from them (no host/device syncs) and training gathers from cached device copies.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Spacing = Literal["leading", "trailing", "linspace", "logsnr"]
SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid")
SPACINGS = ("leading", "trailing", "linspace", "logsnr")


class Schedule:
    """A discrete variance-preserving diffusion chain.

    ``alphas_cumprod[i]`` is alpha-bar at index ``i``; ``timesteps[i]`` is the training timestep
    that index corresponds to (identity for a training schedule). ``parent_alphas_cumprod`` is the
    training chain's alpha-bar, kept so a respaced schedule can be respaced or truncated again.
    """

    def __init__(
        self,
        alphas_cumprod: Tensor,
        timesteps: Tensor | None = None,
        parent_alphas_cumprod: Tensor | None = None,
    ) -> None:
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu().flatten()
        if ac.numel() < 1:
            raise ValueError("a schedule needs at least one step")
        if not torch.isfinite(ac).all():
            raise ValueError("alpha-bar contains NaN or inf")
        if (ac[:-1] > 1.0).any() or (ac[:-1] <= 0.0).any() or ac[-1] < 0.0 or ac[0] > 1.0:
            raise ValueError("alpha-bar must lie in (0, 1] (only the last value may be 0, zero terminal SNR)")
        if ac.numel() > 1 and not (ac[1:] < ac[:-1]).all():
            bad = int(torch.nonzero(ac[1:] >= ac[:-1])[0]) + 1
            raise ValueError(
                f"alpha-bar must be strictly decreasing; it is not at index {bad} "
                f"({float(ac[bad - 1]):.6g} -> {float(ac[bad]):.6g}); check the betas"
            )
        self.alphas_cumprod = ac
        n = ac.numel()
        self.timesteps = (
            torch.arange(n, dtype=torch.long) if timesteps is None else torch.as_tensor(timesteps).long().cpu()
        )
        if self.timesteps.numel() != n:
            raise ValueError("timesteps and alpha-bar must have the same length")
        self.parent_alphas_cumprod = ac if parent_alphas_cumprod is None else parent_alphas_cumprod
        prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        self.alphas_cumprod_prev = prev
        self.betas = 1.0 - ac / prev
        # q(x_{i-1} | x_i, x_0): variance and mean coefficients.
        self.posterior_variance = self.betas * (1.0 - prev) / (1.0 - ac).clamp_min(1e-20)
        # log of the posterior variance, clipped at index 0 where it is 0 (as in IDDPM).
        pv = self.posterior_variance.clone()
        if n > 1:
            pv[0] = pv[1]
        self.posterior_log_variance_clipped = torch.log(pv.clamp_min(1e-20))
        self.posterior_mean_coef_x0 = self.betas * prev.sqrt() / (1.0 - ac).clamp_min(1e-20)
        self.posterior_mean_coef_xt = (1.0 - prev) * (1.0 - self.betas).sqrt() / (1.0 - ac).clamp_min(1e-20)
        with torch.no_grad():
            self.log_snr = torch.log(ac) - torch.log1p(-ac.clamp_max(1 - 1e-16))
        self._device_cache: dict[tuple[str, str, torch.dtype], Tensor] = {}
        #: few-step chains fitted after training, kind -> steps -> chain (samplers ``bddm`` / ``masked``)
        self.learned: dict[str, dict[int, Schedule]] = {}

    # -- basic facts ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.alphas_cumprod.numel()

    @property
    def num_train_timesteps(self) -> int:
        return self.parent_alphas_cumprod.numel()

    @property
    def zero_terminal_snr(self) -> bool:
        return bool(self.alphas_cumprod[-1] == 0.0)

    def __repr__(self) -> str:
        return (
            f"Schedule(steps={len(self)}, train_steps={self.num_train_timesteps}, "
            f"abar=[{float(self.alphas_cumprod[0]):.4g} .. {float(self.alphas_cumprod[-1]):.4g}])"
        )

    # -- device tables --------------------------------------------------------------------------
    def table(self, name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
        """A named table (``betas``, ``alphas_cumprod``, ``log_snr``, ...) cached on ``device``."""
        key = (name, str(device), dtype)
        if key not in self._device_cache:
            self._device_cache[key] = getattr(self, name).to(device=device, dtype=dtype)
        return self._device_cache[key]

    def gather(self, name: str, index: Tensor, ndim: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Per-sample values of table ``name`` at integer ``index`` (B,), shaped (B, 1, ..., 1)."""
        values = self.table(name, index.device, dtype)[index]
        return values.reshape(-1, *([1] * (ndim - 1)))

    # -- respacing -------------------------------------------------------------------------------
    def respace(self, steps: int, spacing: Spacing = "linspace") -> Schedule:
        """A schedule of ``steps`` indices chosen from this one, betas rebuilt from alpha-bar."""
        n = len(self)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if steps > n:
            raise ValueError(f"cannot sample with {steps} steps: the schedule has only {n} (training) steps")
        idx = logsnr_indices(self.log_snr, steps) if spacing == "logsnr" else spaced_indices(n, steps, spacing)
        return Schedule(self.alphas_cumprod[idx], self.timesteps[idx], self.parent_alphas_cumprod)

    def truncate(self, last_index: int) -> Schedule:
        """The first ``last_index + 1`` indices: a chain that starts at ``timesteps[last_index]``."""
        if not 0 <= last_index < len(self):
            raise ValueError(f"start index {last_index} outside the schedule's 0..{len(self) - 1}")
        k = last_index + 1
        return Schedule(self.alphas_cumprod[:k], self.timesteps[:k], self.parent_alphas_cumprod)

    def index_of_timestep(self, t: int) -> int:
        """Index whose training timestep is the largest one <= ``t``."""
        hits = torch.nonzero(self.timesteps <= t)
        if hits.numel() == 0:
            raise ValueError(f"timestep {t} lies before the schedule's first timestep {int(self.timesteps[0])}")
        return int(hits[-1])


def spaced_indices(n: int, steps: int, spacing: Spacing = "trailing") -> Tensor:
    """Ascending indices of ``steps`` points out of ``n`` for the named spacing (diffusers' rules).

    ``leading`` (``arange(steps) * (n // steps)``) never reaches n-1 and is kept for comparison
    with older code; ``trailing`` always includes n-1 (use it with zero terminal SNR).
    """
    if spacing == "leading":
        idx = torch.arange(steps, dtype=torch.long) * (n // steps)
    elif spacing == "trailing":
        idx = torch.round(torch.arange(n, 0, -n / steps, dtype=torch.float64)).long().flip(0) - 1
    elif spacing == "linspace":
        idx = torch.linspace(0, n - 1, steps, dtype=torch.float64).round().long()
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}")
    idx = torch.unique(idx.clamp(0, n - 1))
    if idx.numel() != steps:
        raise ValueError(f"{spacing} spacing cannot pick {steps} distinct steps out of {n}")
    return idx


def logsnr_indices(log_snr: Tensor, steps: int) -> Tensor:
    """Indices whose log-SNR is closest to a uniform grid between the chain's ends (DPM-Solver's
    'logSNR' spacing: better than time-uniform for low-variance data, e.g. small images or masks)."""
    n = log_snr.numel()
    lam = log_snr.clamp(min=-30.0)
    grid = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64)
    idx = torch.searchsorted(-lam.contiguous(), -grid.contiguous()).clamp(0, n - 1)
    idx = torch.unique(idx)
    if idx.numel() < steps:  # fill duplicates with the nearest unused indices, keeping both ends
        free = torch.tensor([i for i in range(n) if i not in set(idx.tolist())], dtype=torch.long)
        extra = free[torch.linspace(0, free.numel() - 1, steps - idx.numel()).round().long()]
        idx = torch.unique(torch.cat([idx, extra]))
    return idx


# -- named schedules ------------------------------------------------------------------------------
def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02, scale: bool = True) -> Tensor:
    """DDPM's linear betas; with ``scale`` (IDDPM's rule) the ends are multiplied by 1000 / T so a
    short chain (e.g. SegDiff's T = 100) still ends near pure noise; betas are capped at 0.999."""
    s = 1000.0 / num_steps if scale else 1.0
    return torch.linspace(beta_start * s, beta_end * s, num_steps, dtype=torch.float64).clamp(max=0.999)


def scaled_linear_betas(num_steps: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Latent-diffusion schedule: linear in sqrt(beta)."""
    return torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_steps, dtype=torch.float64) ** 2


def cosine_alphas_cumprod(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """IDDPM cosine: abar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), beta <= max_beta."""
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, 0)


def sigmoid_alphas_cumprod(
    num_steps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0, max_beta: float = 0.999
) -> Tensor:
    """Sigmoid schedule (Jabri et al. 2022): abar follows a shifted, rescaled sigmoid."""
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    v_start, v_end = torch.sigmoid(torch.tensor(start / tau)), torch.sigmoid(torch.tensor(end / tau))
    f = (-torch.sigmoid((t * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    betas = (1 - f[1:] / f[:-1]).clamp(min=0.0, max=max_beta)
    return torch.cumprod(1 - betas, 0)


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Lin et al. 2024: shift and scale sqrt(abar) so the last step has SNR 0, the first unchanged."""
    a = alphas_cumprod.to(torch.float64).sqrt()
    a0, a_last = a[0].clone(), a[-1].clone()
    a = (a - a_last) * a0 / (a0 - a_last)
    return a**2


def make_schedule(
    name: str = "linear", num_steps: int = 1000, *, zero_terminal_snr: bool = False, **kwargs: float
) -> Schedule:
    """Build a training schedule by name: linear, scaled_linear, cosine or sigmoid."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if name == "linear":
        ac = torch.cumprod(1 - linear_betas(num_steps, **kwargs), 0)
    elif name == "scaled_linear":
        ac = torch.cumprod(1 - scaled_linear_betas(num_steps, **kwargs), 0)
    elif name == "cosine":
        ac = cosine_alphas_cumprod(num_steps, **kwargs)
    elif name == "sigmoid":
        ac = sigmoid_alphas_cumprod(num_steps, **kwargs)
    else:
        raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
    if zero_terminal_snr:
        ac = rescale_zero_terminal_snr(ac)
    return Schedule(ac)


def schedule_from_betas(betas: Tensor) -> Schedule:
    """A training schedule from explicit betas (each in (0, 1])."""
    b = torch.as_tensor(betas, dtype=torch.float64)
    if ((b <= 0) | (b > 1)).any():
        raise ValueError("betas must lie in (0, 1]")
    return Schedule(torch.cumprod(1 - b, 0))
