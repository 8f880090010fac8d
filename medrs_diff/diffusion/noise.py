"""Noise types: Gaussian, multi-octave simplex (AnoDDPM) and gamma (DDGM).

Every generator draws on the reference tensor's device, takes a ``torch.Generator`` (or per-element
:class:`~.generators.SampleGenerators`) and gives each batch element its own field. Simplex noise is
computed in PyTorch (3-D simplex, Gustavson's formulation) with a per-sample permutation table, so it
is batched and runs on the GPU; a 2-D image takes a random z-slice of the 3-D field.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .generators import GeneratorLike, SampleGenerators, generator_device, on_cpu, rand, randn, rows_per_element
from .schedules import Schedule


def gaussian_like(x: Tensor, generator: GeneratorLike = None) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn on ``x``'s device."""
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


# -- simplex noise --------------------------------------------------------------------------------
_GRAD3 = torch.tensor(
    [[1, 1, 0], [-1, 1, 0], [1, -1, 0], [-1, -1, 0], [1, 0, 1], [-1, 0, 1],
     [1, 0, -1], [-1, 0, -1], [0, 1, 1], [0, -1, 1], [0, 1, -1], [0, -1, -1]],
    dtype=torch.float32,
)  # fmt: skip
_F3, _G3 = 1.0 / 3.0, 1.0 / 6.0


def _simplex3(p: Tensor, perm: Tensor) -> Tensor:
    """3-D simplex noise at points ``p`` (B, N, 3) with per-sample permutations ``perm`` (B, 512)."""
    grad3 = _GRAD3.to(p.device, p.dtype)
    s = p.sum(-1, keepdim=True) * _F3
    ijk = torch.floor(p + s)
    t = ijk.sum(-1, keepdim=True) * _G3
    x0 = p - (ijk - t)
    # Rank the coordinates to find the simplex's corner offsets.
    ge_xy = (x0[..., 0] >= x0[..., 1]).to(p.dtype)
    ge_yz = (x0[..., 1] >= x0[..., 2]).to(p.dtype)
    ge_xz = (x0[..., 0] >= x0[..., 2]).to(p.dtype)
    o1 = torch.stack(
        [ge_xy * ge_xz, (1 - ge_xy) * ge_yz, (1 - ge_xz) * (1 - ge_yz)], -1
    )
    o2 = torch.stack(
        [
            torch.clamp(ge_xy + ge_xz, max=1),
            torch.clamp((1 - ge_xy) + ge_yz, max=1),
            torch.clamp((1 - ge_xz) + (1 - ge_yz), max=1),
        ],
        -1,
    )
    offsets = [torch.zeros_like(o1), o1, o2, torch.ones_like(o1)]
    ii = ijk.long() & 255
    total = torch.zeros(p.shape[:-1], device=p.device, dtype=p.dtype)
    for k, off in enumerate(offsets):
        xk = x0 - off + k * _G3
        idx = ii + off.long()
        h = torch.gather(perm, 1, idx[..., 2])
        h = torch.gather(perm, 1, (idx[..., 1] + h) & 511)
        h = torch.gather(perm, 1, (idx[..., 0] + h) & 511) % 12
        g = grad3[h]
        tt = (0.6 - (xk**2).sum(-1)).clamp(min=0)
        total = total + tt**4 * (g * xk).sum(-1)
    return 32.0 * total


def simplex_noise(
    shape: tuple[int, ...],
    *,
    octaves: int = 6,
    persistence: float = 0.8,
    frequency: float = 2.0**-6,
    generator: GeneratorLike = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Multi-octave simplex noise for (B, C, H, W) or (B, C, D, H, W), zero mean and unit variance
    per sample. Octave ``o`` has amplitude ``persistence**o`` and frequency ``frequency * 2**o``
    cycles per pixel (AnoDDPM: 6 octaves, persistence 0.8, start frequency 2^-6)."""
    if len(shape) not in (4, 5):
        raise ValueError(f"simplex noise needs a 4-D or 5-D shape, got {shape}")
    if octaves < 1:
        raise ValueError("octaves must be >= 1")
    b, c, *spatial = shape
    gen_device = generator_device(generator)
    # Per-sample-and-channel permutation tables and random offsets: independent fields (drawn per
    # sample, so per-element generators give each sample its own field whatever the batch).
    n = b * c
    perm = torch.argsort(rand((b, c, 256), generator, device=gen_device).reshape(n, 256), dim=1)
    perm = torch.cat([perm, perm], 1).to(device)
    offset = (rand((b, c, 1, 3), generator, device=gen_device).reshape(n, 1, 3) * 1024.0).to(device, dtype)
    axes = [torch.arange(s, device=device, dtype=dtype) for s in spatial]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(spatial))
    if len(spatial) == 2:
        grid = torch.cat([grid, torch.zeros_like(grid[:, :1])], -1)
    grid = grid[None].expand(n, -1, -1)
    out = torch.zeros(n, grid.shape[1], device=device, dtype=dtype)
    for o in range(octaves):
        f = frequency * 2.0**o
        out = out + persistence**o * _simplex3(grid * f + offset, perm)
    out = out - out.mean(1, keepdim=True)
    out = out / out.std(1, keepdim=True).clamp_min(1e-12)
    return out.reshape(shape)


def simplex_like(x: Tensor, generator: GeneratorLike = None, **kwargs) -> Tensor:
    """Simplex noise shaped like ``x`` on its device (see :func:`simplex_noise`)."""
    return simplex_noise(tuple(x.shape), generator=generator, device=x.device, dtype=x.dtype, **kwargs)


# -- gamma noise ----------------------------------------------------------------------------------
class GammaNoise:
    """Centred gamma noise of Denoising Diffusion Gamma Models (Nachmani et al. 2021).

    Step t adds ``g_t - k_t theta_t`` with ``g_t ~ Gamma(k_t, theta_t)``, ``theta_t = sqrt(abar_t)
    theta_0`` and ``k_t = beta_t / (abar_t theta_0^2)``, so its variance is ``beta_t``. The shared
    scale makes the sum closed-form: ``x_t = sqrt(abar_t) x_0 + (gbar_t - kbar_t theta_t)`` with
    ``gbar_t ~ Gamma(kbar_t, theta_t)``, ``kbar_t = sum k_i``, whose variance is ``1 - abar_t``.
    Samples returned here are divided by their standard deviation (unit variance, zero mean), so
    they drop into the Gaussian formulas as ``eps``.
    """

    def __init__(self, schedule: Schedule, theta_0: float = 0.001) -> None:
        if theta_0 <= 0:
            raise ValueError("theta_0 must be positive")
        ac = schedule.alphas_cumprod
        if schedule.zero_terminal_snr:
            raise ValueError("gamma noise needs abar_t > 0 at every step")
        self.schedule = schedule
        self.theta = ac.sqrt() * theta_0
        self.k = schedule.betas / (ac * theta_0**2)
        self.k_bar = torch.cumsum(self.k, 0)

    def _centred(self, k: Tensor, theta: Tensor, generator: GeneratorLike) -> Tensor:
        """Draw Gamma(k, theta) on the CPU (float64), centre it and divide by its std."""
        generator = on_cpu(generator)
        if isinstance(generator, SampleGenerators):  # rows j, j + m, ... from generator j
            m = len(generator)
            rows_per_element(k.shape[0], generator)
            sample = torch.empty_like(k)
            for j, g in enumerate(generator):
                sample[j::m] = torch._standard_gamma(k[j::m].contiguous(), generator=g)
        else:
            sample = torch._standard_gamma(k, generator=generator)
        return (sample - k) / k.sqrt()

    def marginal_like(self, x: Tensor, index: Tensor, generator: GeneratorLike = None) -> Tensor:
        """Unit-variance noise eps such that sqrt(abar) x0 + sqrt(1 - abar) eps is the DDGM x_t."""
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        k = self.k_bar[index.cpu()].reshape(shape).expand(x.shape).contiguous()
        theta = self.theta[index.cpu()].reshape(shape)
        return self._centred(k, theta, generator).to(x.device, x.dtype)

    def step_like(self, x: Tensor, index: int, generator: GeneratorLike = None) -> Tensor:
        """Unit-variance noise for one reverse step at schedule index ``index``."""
        k = torch.full(x.shape, float(self.k[index]), dtype=torch.float64)
        theta = self.theta[index].reshape(1)
        return self._centred(k, theta, generator).to(x.device, x.dtype)

    def __call__(self, x0: Tensor, index: Tensor, generator: GeneratorLike = None) -> Tensor:
        return self.marginal_like(x0, index, generator)


def simplex_noise_fn(**kwargs):
    """A ``noise_fn(x0, index, generator)`` for :class:`~medrs_diff.diffusion.process.DiffusionLoss`."""

    def fn(x0: Tensor, index: Tensor, generator: GeneratorLike = None) -> Tensor:
        return simplex_like(x0, generator, **kwargs)

    return fn


__all__ = ["gaussian_like", "simplex_noise", "simplex_like", "simplex_noise_fn", "GammaNoise"]
