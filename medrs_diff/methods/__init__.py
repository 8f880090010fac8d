"""Published methods, each a small composition of a net, a condition encoder and an engine config, plus the
discriminative baselines; all share the contract in :mod:`.base`."""

from .anoddpm import AnoDDPM
from .autoencoder_kl import AutoencoderKLMethod
from .autoencoder_vq import AutoencoderVQMethod
from .base import DiffusionMethod, IOSpec, Method
from .baselines import RegressionSR, SMPUNet
from .bcdpm import BCDPM
from .blindsrsnf import BlindSRSNF
from .cloud_baselines import CloudRegressionUNet
from .ddbm import DDBM
from .ddfm import DDFM
from .diffae import DiffAE
from .eiddpm import EIDDPM
from .hyperldm import HyperLDM
from .latent_ddpm import LatentDDPM
from .latent_method import LatentMethod
from .medsegdiff import MedSegDiffV1
from .medsegdiff_v2 import MedSegDiffV2
from .nowcast_diffusion import NowcastDiffusion
from .regression_unet import RegressionUNet
from .retinal_dual import RetinalImageDDPM, RetinalMaskDDPM
from .sar_ddpm import SARDDPM
from .segdiff import SegDiff
from .seqdm import SeqDM
from .spectraldiff import SpectralDiff
from .srdiff import SRDiff
from .tcdm import TCDM

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
    "blindsrsnf": BlindSRSNF,
    "seqdm": SeqDM,
    "cloud_regression_unet": CloudRegressionUNet,
    "nowcast_diffusion": NowcastDiffusion,
    "hyperldm": HyperLDM,
    "tcdm": TCDM,
    "spectraldiff": SpectralDiff,
    "diffae": DiffAE,
    "autoencoder_kl": AutoencoderKLMethod,
    "autoencoder_vq": AutoencoderVQMethod,
    "latent_ddpm": LatentDDPM,
    "ddbm": DDBM,
    "latent": LatentMethod,
}

__all__ = ["DiffusionMethod", "IOSpec", "METHODS", "Method", *sorted({m.__name__ for m in METHODS.values()})]
