"""Lightning data modules, one file per dataset family (TorchGeo's layout).

``base``: :class:`DictDataModule` (seeded, rank-aware, resumable loading that every module builds
on); ``nifti``: NIfTI segmentation pairs; ``clinical2d``: 2-D clinical images with masks (fundus,
dermoscopy, endoscopy, optic disc); ``geotiff``: GeoTIFF super-resolution pairs. Recipes name
them by class name (``data.class_path: NiftiSegmentationDataModule``); LightningCLI resolves the
short name among the subclasses of ``DictDataModule`` imported here.
"""

from .anomaly import BrainAnomalyDataModule
from .base import DictDataModule, ResumableDataLoader, ResumableSampler, seed_worker, split_train_val
from .clinical2d import Clinical2DSegmentationDataModule
from .fusion import NiftiFusionDataModule
from .geotiff import GeoTiffSRDataModule
from .hyperspectral import HyperspectralPatchDataModule
from .nifti import NiftiSegmentationDataModule
from .pet import PETDoseDataModule
from .speckle import SpeckleDataModule

__all__ = [
    "BrainAnomalyDataModule",
    "Clinical2DSegmentationDataModule",
    "DictDataModule",
    "GeoTiffSRDataModule",
    "HyperspectralPatchDataModule",
    "NiftiFusionDataModule",
    "NiftiSegmentationDataModule",
    "PETDoseDataModule",
    "ResumableDataLoader",
    "ResumableSampler",
    "SpeckleDataModule",
    "seed_worker",
    "split_train_val",
]
