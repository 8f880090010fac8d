"""Samplers: plain functions ``sample(denoise, x_T, schedule, *, hooks=(), generator=None, ...)``.

:data:`SAMPLERS` (in :mod:`.registry`) is the one registry of the samplers with their metadata;
call any of them the same way through its :class:`SamplerSpec`.
"""

from .analytic_dpm import AnalyticGamma, analytic_dpm, analytic_variances, estimate_gamma
from .base import Denoiser, Hook, Model, StepContext
from .ddim import ddim, ddim_invert, ddim_step
from .ddpm import ddpm, ddpm_step
from .dpm_solver_pp import dpm_solver_pp
from .gddim import DiagonalDiffusion, gddim, gddim_diagonal, gddim_eta
from .learned import attach_chain, attach_state, chains_state, fitted_steps, learned_chain
from .paradigms import ParadigmsResult, paradigms
from .registry import SAMPLERS, SamplerSpec, check_sampler, get_sampler, register_sampler, sampler_names
from .truncated import sample_from_estimate, truncated_start

__all__ = [
    "SAMPLERS",
    "AnalyticGamma",
    "DiagonalDiffusion",
    "Denoiser",
    "Hook",
    "Model",
    "ParadigmsResult",
    "SamplerSpec",
    "StepContext",
    "analytic_dpm",
    "analytic_variances",
    "attach_chain",
    "attach_state",
    "chains_state",
    "check_sampler",
    "ddim",
    "ddim_invert",
    "ddim_step",
    "ddpm",
    "ddpm_step",
    "dpm_solver_pp",
    "estimate_gamma",
    "fitted_steps",
    "gddim",
    "gddim_diagonal",
    "gddim_eta",
    "get_sampler",
    "learned_chain",
    "paradigms",
    "register_sampler",
    "sample_from_estimate",
    "sampler_names",
    "truncated_start",
]
