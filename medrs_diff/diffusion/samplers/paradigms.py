"""ParaDiGMS (Shih et al. 2023): parallel Picard iterations over a window of sampler steps.

All noise is drawn up front in the order the sequential sampler draws it. Each round evaluates
the network on a window of ``window`` steps in one batch and rebuilds the window's states by a
cumulative sum of drifts and noises; the window slides past every leading state whose change is
below ``tolerance`` (squared error per dimension relative to the step's noise variance, as in the
paper). The result equals the sequential sampler's within the tolerance, in fewer sequential rounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..generators import GeneratorLike
from ..process import to_x0_eps
from ..schedules import Schedule, Spacing
from .base import Denoiser, Hook, Model, prepare, randn_like
from .ddim import ddim_sigma
from .ddpm import posterior_mean, step_log_variance


@dataclass
class ParadigmsResult:
    sample: Tensor
    rounds: int  # sequential (batched) model calls
    nfe: int  # network evaluations per sample


def paradigms(
    denoise: Denoiser,
    x_T: Tensor,
    schedule: Schedule,
    *,
    steps: int | None = None,
    spacing: Spacing = "linspace",
    base: str = "ddpm",
    eta: float = 0.0,
    window: int = 16,
    tolerance: float = 0.1,
    max_rounds: int | None = None,
    prediction_type: str = "eps",
    variance: str = "fixed_small",
    clip: bool | tuple[float, float] = False,
    hooks: tuple[Hook, ...] = (),
    generator: GeneratorLike = None,
    progress: bool | Callable = False,
) -> ParadigmsResult:
    """Parallel sampling that reproduces ``ddpm`` (``base='ddpm'``) or ``ddim`` with ``eta``."""
    if hooks:
        raise ValueError("paradigms does not run per-step hooks (they act sequentially); use ddpm/ddim with hooks")
    if base not in ("ddpm", "ddim"):
        raise ValueError(f"base sampler must be 'ddpm' or 'ddim', got {base!r}")
    if window < 1 or tolerance <= 0:
        raise ValueError("window must be >= 1 and tolerance > 0")
    sched = prepare(x_T, schedule, steps, spacing)
    model = Model(denoise, sched, prediction_type, variance if base == "ddpm" else "fixed_small", clip)
    n = len(sched)
    indices = list(range(n - 1, -1, -1))  # position k runs schedule index indices[k]
    stds = []
    for idx in indices:
        if base == "ddpm":
            std = 0.0 if idx == 0 or variance == "learned" else math.exp(0.5 * step_log_variance(model, idx, None))
        else:
            std = ddim_sigma(float(sched.alphas_cumprod[idx]), float(sched.alphas_cumprod_prev[idx]), eta)
        stds.append(std)
    if base == "ddpm" and variance == "learned":
        raise ValueError("paradigms supports fixed variances only")
    # Noise in the sequential sampler's order (one draw per step that adds noise).
    noise = torch.zeros((n, *x_T.shape), device=x_T.device, dtype=x_T.dtype)
    for k in range(n):
        if stds[k] > 0:
            noise[k] = randn_like(x_T, generator) * stds[k]
    traj = x_T[None].repeat(n + 1, *([1] * x_T.ndim))  # traj[k] = state before position k
    begin, rounds, nfe = 0, 0, 0
    d = x_T[0].numel()
    bsz = x_T.shape[0]
    limit = max_rounds if max_rounds is not None else 4 * n
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="paradigms", leave=False)
    while begin < n:
        end = min(begin + window, n)
        p = end - begin
        xs = traj[begin:end]  # (p, B, ...)
        flat = xs.reshape(p * bsz, *x_T.shape[1:])
        t_model = torch.cat([model.timestep(x_T, indices[k]) for k in range(begin, end)])
        with torch.no_grad():
            pred, _ = model.raw(flat, t_model)
            abar = torch.tensor([float(sched.alphas_cumprod[indices[k]]) for k in range(begin, end)],
                                device=x_T.device, dtype=x_T.dtype).repeat_interleave(bsz)
            abar = abar.reshape(-1, *([1] * (x_T.ndim - 1)))
            x0, eps = to_x0_eps(pred, flat, abar, prediction_type)
            if clip:
                lo, hi = (-1.0, 1.0) if clip is True else clip
                x0 = x0.clamp(lo, hi)
                eps = (flat - abar.sqrt() * x0) / (1 - abar).sqrt()
            x0 = x0.reshape(p, *x_T.shape)
            eps = eps.reshape(p, *x_T.shape)
            drifts = []
            for j, k in enumerate(range(begin, end)):
                idx = indices[k]
                if base == "ddpm":
                    mean = posterior_mean(sched, idx, x0[j], xs[j])
                else:
                    a_s = float(sched.alphas_cumprod_prev[idx])
                    sig = stds[k]
                    mean = math.sqrt(a_s) * x0[j] + math.sqrt(max(0.0, 1 - a_s - sig**2)) * eps[j]
                drifts.append(mean - xs[j])
            inc = torch.stack(drifts) + noise[begin:end]
            new = traj[begin][None] + torch.cumsum(inc, 0)  # states begin+1 .. end
            err = (new - traj[begin + 1 : end + 1]).pow(2).flatten(2).sum(2) / d  # (p, B)
            var = torch.tensor([max(stds[k], 1e-4) ** 2 for k in range(begin, end)], device=x_T.device)
            ratio = (err / var[:, None].to(err.dtype)).amax(1)  # worst sample per position
            traj[begin + 1 : end + 1] = new
        rounds += 1
        nfe += p
        bad = torch.nonzero(ratio > tolerance**2)
        first_bad = int(bad[0]) if bad.numel() else p
        advance = min(first_bad + 1, p)
        # States past the window start from the newest estimate.
        if end < n:
            traj[end + 1 :] = traj[end][None]
        begin += advance
        if bar is not None:
            bar.update(advance)
        if rounds > limit:
            raise RuntimeError(f"paradigms did not converge in {limit} rounds; raise tolerance or window")
    if bar is not None:
        bar.close()
    return ParadigmsResult(traj[n], rounds, nfe)
