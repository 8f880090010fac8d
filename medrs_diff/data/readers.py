"""Back-compatible home of the single-file readers; they live in :mod:`medrs_diff.io` now.

Prefer ``medrs_diff.io.read(path)`` (any registered format, returns an ``ArrayFile``) or the format
modules ``medrs_diff.io.nifti`` / ``medrs_diff.io.geotiff``. Only the scaling readers remain here,
because they turn the stored record into a :class:`~medrs_diff.data.scaling.Scaling`.
"""

from __future__ import annotations

import os

from ..io.geotiff import (
    GeoRaster,
    check_bands,
    has_valid_data,
    open_geotiff,
    read_geotiff,
    read_geotiff_scaling_record,
    valid_mask,
)
from ..io.nifti import SCALING_TAG, NiftiVolume, load_nifti_image, read_nifti, read_nifti_scaling_record
from .scaling import Scaling

__all__ = ["SCALING_TAG", "GeoRaster", "NiftiVolume", "check_bands", "has_valid_data", "load_nifti_image",
           "open_geotiff", "read_geotiff", "read_geotiff_scaling", "read_nifti", "read_nifti_scaling", "valid_mask"]


def read_nifti_scaling(path: str | os.PathLike) -> Scaling | None:
    """The model-space scaling recorded by ``write_nifti``, or None."""
    record = read_nifti_scaling_record(path)
    return None if record is None else Scaling.from_dict(record)


def read_geotiff_scaling(path: str | os.PathLike) -> Scaling | None:
    """The model-space scaling recorded by ``write_geotiff``, or None."""
    record = read_geotiff_scaling_record(path)
    return None if record is None else Scaling.from_dict(record)
