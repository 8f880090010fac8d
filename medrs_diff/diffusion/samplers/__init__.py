"""Samplers: plain functions ``sample(denoise, x_T, schedule, *, hooks=(), generator=None, ...)``."""

from .analytic_dpm import AnalyticGamma, analytic_dpm, analytic_variances, estimate_gamma
from .base import Denoiser, Hook, Model, StepContext
from .ddim import ddim, ddim_invert, ddim_step
from .ddpm import ddpm, ddpm_step
from .dpm_solver_pp import dpm_solver_pp
from .paradigms import ParadigmsResult, paradigms
from .truncated import sample_from_estimate, truncated_start

SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "dpm_solver_pp": dpm_solver_pp}

__all__ = [
    "AnalyticGamma",
    "Denoiser",
    "Hook",
    "Model",
    "ParadigmsResult",
    "SAMPLERS",
    "StepContext",
    "analytic_dpm",
    "analytic_variances",
    "ddim",
    "ddim_invert",
    "ddim_step",
    "ddpm",
    "ddpm_step",
    "dpm_solver_pp",
    "estimate_gamma",
    "paradigms",
    "sample_from_estimate",
    "truncated_start",
]
