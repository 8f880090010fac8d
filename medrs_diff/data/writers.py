"""Back-compatible home of the writers; they live in :mod:`medrs_diff.io` now (NIfTI, GeoTIFF, 2-D
images), each atomic, refusing to overwrite an input and keeping geometry.

Prefer ``medrs_diff.io.write(path, data, geometry, inputs=...)`` or the format modules.
"""

from __future__ import annotations

import nibabel as nib  # noqa: F401  (kept so ``writers.nib`` stays patchable in tests)

from ..io.geotiff import geotiff_profile, set_band_metadata, write_geotiff
from ..io.image2d import write_image2d
from ..io.nifti import nifti_image, write_nifti

__all__ = ["geotiff_profile", "nifti_image", "set_band_metadata", "write_geotiff", "write_image2d", "write_nifti"]
