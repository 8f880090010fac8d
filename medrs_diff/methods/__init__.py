"""Published methods, each a small composition of a net, a condition encoder and an engine config, plus the
discriminative baselines; all share the contract in :mod:`.base`."""

from .anoddpm import AnoDDPM
from .base import DiffusionMethod, IOSpec, Method
from .baselines import RegressionSR, SMPUNet
from .bcdpm import BCDPM
from .ddfm import DDFM
from .eiddpm import EIDDPM
from .medsegdiff import MedSegDiffV1
from .medsegdiff_v2 import MedSegDiffV2
from .regression_unet import RegressionUNet
from .retinal_dual import RetinalImageDDPM, RetinalMaskDDPM
from .sar_ddpm import SARDDPM
from .segdiff import SegDiff
from .spectraldiff import SpectralDiff
from .srdiff import SRDiff

#: Registered methods by short name (recipes and checkpoints may name them so).
METHODS: dict[str, type[Method]] = {
    "segdiff": SegDiff,
    "medsegdiff_v1": MedSegDiffV1,
    "medsegdiff_v2": MedSegDiffV2,
    "eiddpm": EIDDPM,
    "srdiff": SRDiff,
    "smp_unet": SMPUNet,
    "regression_sr": RegressionSR,
    "ddfm": DDFM,
    "anoddpm": AnoDDPM,
    "bcdpm": BCDPM,
    "regression_unet": RegressionUNet,
    "retinal_mask_ddpm": RetinalMaskDDPM,
    "retinal_image_ddpm": RetinalImageDDPM,
    "sar_ddpm": SARDDPM,
    "spectraldiff": SpectralDiff,
}

__all__ = [
    "BCDPM", "DDFM", "EIDDPM", "METHODS", "AnoDDPM", "DiffusionMethod", "IOSpec", "MedSegDiffV1", "MedSegDiffV2",
    "Method", "RegressionSR", "RegressionUNet", "RetinalImageDDPM", "RetinalMaskDDPM",
    "SARDDPM", "SMPUNet", "SRDiff", "SegDiff", "SpectralDiff",
]
