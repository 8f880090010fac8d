"""Lightning data modules, one file per dataset family (TorchGeo's layout).

``base``: :class:`DictDataModule` (seeded, rank-aware, resumable loading that every module builds
on); ``nifti``: NIfTI segmentation pairs; ``clinical2d``: 2-D clinical images with masks (fundus,
dermoscopy, endoscopy, optic disc); ``geotiff``: GeoTIFF super-resolution pairs. Recipes name
them by class name (``data.class_path: NiftiSegmentationDataModule``); LightningCLI resolves the
short name among the subclasses of ``DictDataModule`` imported here.
"""

from .anomaly import BrainAnomalyDataModule
from .base import DictDataModule, ResumableDataLoader, ResumableSampler, seed_worker, split_train_val
from .blindsr import BlindSRDataModule
from .clinical2d import Clinical2DSegmentationDataModule
from .cloud import CloudSeriesDataModule
from .fusion import NiftiFusionDataModule
from .geotiff import GeoTiffSRDataModule
from .hsi_synthesis import HyperspectralSynthesisDataModule
from .hyperspectral import HyperspectralPatchDataModule
from .nifti import NiftiSegmentationDataModule
from .nowcast import NowcastDataModule
from .pet import PETDoseDataModule
from .speckle import SpeckleDataModule
from .translation import CloudPairDataModule, Sar2OptDataModule

__all__ = [
    "BlindSRDataModule",
    "BrainAnomalyDataModule",
    "Clinical2DSegmentationDataModule",
    "CloudPairDataModule",
    "CloudSeriesDataModule",
    "DictDataModule",
    "GeoTiffSRDataModule",
    "HyperspectralSynthesisDataModule",
    "HyperspectralPatchDataModule",
    "NiftiFusionDataModule",
    "NiftiSegmentationDataModule",
    "NowcastDataModule",
    "PETDoseDataModule",
    "ResumableDataLoader",
    "ResumableSampler",
    "Sar2OptDataModule",
    "SpeckleDataModule",
    "seed_worker",
    "split_train_val",
]
