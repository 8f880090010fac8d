"""Domain metrics for medical imaging and remote sensing, each with its definition stated.

Every metric has a functional form (batched torch tensors or numpy arrays in, one value per image
or per set out) and a streaming class with ``update(...)``, ``compute() -> dict`` and ``reset()``
that keeps only sufficient statistics, so a whole test set streams through in bounded memory.
This package is a leaf: it imports torch / numpy / scipy / MONAI and nothing else of medrs_diff.
The input checks and the NaN-skipping running mean that the metrics share (``MeanTracker``,
``check_thresholds``, ``check_positive_ints``, ``check_spacing``, ``as_float``, ``as_binary``) are
public too, for callers such as :mod:`medrs_diff.evaluation` that stream per-case values.
"""

from ._common import (
    MeanTracker,
    StreamingMetric,
    as_binary,
    as_float,
    check_positive_ints,
    check_spacing,
    check_thresholds,
)
from .anomaly import anomaly_scores, auprc, select_threshold
from .brats import BRATS_REGIONS, BratsMetric, brats_regions, brats_scores
from .calibration import CalibrationMetric, expected_calibration_error
from .classification import ClassificationMetric, classification_scores, confusion_matrix
from .crps import CRPSMetric, crps, pooled_crps
from .forecast import CategoricalMetric, FSSMetric, categorical_scores, contingency_table, fss
from .image import ImageMetric, enl, nrmse, psnr, ssim, suv_bias
from .overlap import OverlapMetric, dice, iou
from .pixel import PixelMetric, auroc, pixel_scores
from .quality_index import q2n, uiqi
from .sar import enl_region, homogeneous_mask
from .spectral import SPECTRAL_KEYS, SpectralMetric, band_psnr, band_ssim, ergas, mrae, rmse, sam, spectral_scores
from .spectrum import RALSDMetric, radial_power_spectrum, ralsd
from .stochastic import StochasticSegMetric, generalized_energy_distance, hungarian_matched_iou
from .surface import SurfaceDistanceMetric, average_surface_distance, hd95, surface_dice, surface_distances

__all__ = [
    "MeanTracker", "StreamingMetric", "as_binary", "as_float", "check_positive_ints", "check_spacing",
    "check_thresholds",
    "anomaly_scores", "auprc", "select_threshold",
    "BRATS_REGIONS", "BratsMetric", "brats_regions", "brats_scores",
    "CalibrationMetric", "expected_calibration_error",
    "ClassificationMetric", "classification_scores", "confusion_matrix",
    "CRPSMetric", "crps", "pooled_crps",
    "enl_region", "homogeneous_mask",
    "CategoricalMetric", "FSSMetric", "categorical_scores", "contingency_table", "fss",
    "ImageMetric", "enl", "nrmse", "psnr", "ssim", "suv_bias",
    "OverlapMetric", "dice", "iou",
    "PixelMetric", "auroc", "pixel_scores",
    "q2n", "uiqi",
    "SPECTRAL_KEYS", "SpectralMetric", "band_psnr", "band_ssim", "ergas", "mrae", "rmse", "sam", "spectral_scores",
    "RALSDMetric", "radial_power_spectrum", "ralsd",
    "StochasticSegMetric", "generalized_energy_distance", "hungarian_matched_iou",
    "SurfaceDistanceMetric", "average_surface_distance", "hd95", "surface_dice", "surface_distances",
]
