"""Sampler-side conditioning: per-step hooks that any engine sampler accepts, plus the samplers that
replace the update rule (RePaint's resampling loop, DDRM) and classifier-free guidance.

Hooks (``hooks=[...]`` of ddpm, ddim, dpm_solver_pp, analytic_dpm, repaint, ddrm):
:class:`ILVR`, :class:`KnownRegion` (RePaint's replacement), :class:`DPS`, :class:`DataConsistency`,
:class:`DDFMFusion` (DDFM's one-EM-step fusion).
Samplers: :func:`repaint`, :func:`ddrm`. Denoiser wrapper: :func:`cfg_denoiser`.
"""

from ._common import block_lowpass
from .cfg import NullCondition, cfg_denoiser, drop_condition, rescale_guidance
from .consistency import DataConsistency
from .ddfm import DDFMFusion
from .ddrm import ddrm
from .dps import DPS
from .gaussian import CorrelatedGaussian
from .ilvr import ILVR
from .operators import Colorization, Denoising, GaussianDeblur, Inpainting, LinearOperator, SuperResolution
from .repaint import KnownRegion, repaint, repaint_schedule

__all__ = [
    "DPS",
    "ILVR",
    "Colorization",
    "CorrelatedGaussian",
    "DDFMFusion",
    "DataConsistency",
    "Denoising",
    "GaussianDeblur",
    "Inpainting",
    "KnownRegion",
    "LinearOperator",
    "NullCondition",
    "SuperResolution",
    "block_lowpass",
    "cfg_denoiser",
    "ddrm",
    "drop_condition",
    "repaint",
    "repaint_schedule",
    "rescale_guidance",
]
