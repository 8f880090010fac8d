"""Inference: blended sliding-window tiling (MONAI for arrays and volumes, strip-wise for GeoTIFF
scenes) and :class:`Predictor`, the one entry point the CLI, the quick start and notebooks call."""

from .predictor import Predictor, check_device, input_files, output_paths
from .tiling import (
    FALLBACK_WINDOW,
    MIN_WINDOW,
    WINDOW_MULTIPLE,
    blend_window,
    default_window,
    infer_geotiff,
    infer_image,
    infer_nifti,
    infer_volume,
    oriented_shape,
)

__all__ = [
    "FALLBACK_WINDOW",
    "MIN_WINDOW",
    "WINDOW_MULTIPLE",
    "Predictor",
    "blend_window",
    "check_device",
    "default_window",
    "infer_geotiff",
    "infer_image",
    "infer_nifti",
    "infer_volume",
    "input_files",
    "oriented_shape",
    "output_paths",
]
