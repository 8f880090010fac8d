"""Inference: blended sliding-window tiling (MONAI for arrays and volumes, strip-wise for GeoTIFF
scenes) and :class:`Predictor`, the one entry point the CLI, the quick start and notebooks call; 2-D
models over 3-D volumes slice by slice (:func:`slice_window_fn`) and multi-modal cases (:mod:`.cases`)."""

from .cases import ModalityCase, find_cases, stack_case
from .predictor import Predictor, check_device, input_files, output_paths
from .tiling import (
    FALLBACK_WINDOW,
    MIN_WINDOW,
    WINDOW_MULTIPLE,
    ChannelwiseScaling,
    blend_window,
    decode_votes,
    default_window,
    infer_geotiff,
    infer_image,
    infer_nifti,
    infer_volume,
    label_dtype,
    oriented_shape,
    slice_window_fn,
    vote_window_fn,
)

__all__ = [
    "FALLBACK_WINDOW",
    "MIN_WINDOW",
    "WINDOW_MULTIPLE",
    "ChannelwiseScaling",
    "ModalityCase",
    "Predictor",
    "blend_window",
    "check_device",
    "decode_votes",
    "default_window",
    "find_cases",
    "infer_geotiff",
    "infer_image",
    "infer_nifti",
    "infer_volume",
    "input_files",
    "label_dtype",
    "oriented_shape",
    "output_paths",
    "slice_window_fn",
    "stack_case",
    "vote_window_fn",
]
