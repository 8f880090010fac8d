"""Names of the keys in every batch dict, defined once for the whole project.

Conventions (what each key holds):

- ``IMAGE``: the image the model generates or reads, channel-first, model space (about [-1, 1]).
  For paired restoration / translation tasks it is the clean *target* (full-dose PET, HR, cloud-free).
- ``COND``: the conditioning input of a paired task (low-dose PET, LR, cloudy optical, speckled SAR,
  past radar frames), channel-first, model space.
- ``LABEL``: a segmentation or class label (integer label map, or multi-channel one-hot / regions).
- ``MASK``: where the data is valid: field of view, body mask, or geo pixels that are not nodata (1 = valid).
- ``SAR``: an auxiliary SAR companion (cloud removal), model space.
- ``CLOUD_MASK``: where clouds cover the optical image (1 = cloud).
- Metadata: ``AFFINE`` (4x4 voxel-to-world, NIfTI), ``SPACING``, ``CRS``, ``TRANSFORM`` (rasterio Affine),
  ``BOUNDS`` (TorchGeo GeoSlice), ``NODATA``, ``SCALING`` (record of the model-space scaling, see
  ``scaling.Scaling.to_dict``), ``PATH`` (source file), ``TIME`` (timestamps), ``BAND_NAMES``.
"""

from __future__ import annotations

IMAGE = "image"
COND = "cond"
LABEL = "label"
MASK = "mask"
SAR = "sar"
CLOUD_MASK = "cloud_mask"
#: per-date flags of time series (B, T): S1 present on that date; the date is real (not padding)
SAR_VALID = "sar_valid"
DATE_VALID = "date_valid"
#: an unlabelled patch beside a labelled one (SpectralDiff trains its diffusion model on these)
UNLABELLED = "unlabelled_image"

AFFINE = "affine"
SPACING = "spacing"
CRS = "crs"
TRANSFORM = "transform"
BOUNDS = "bounds"
NODATA = "nodata"
SCALING = "scaling"
PATH = "path"
TIME = "time"
BAND_NAMES = "band_names"

#: BraTS-like modality keys, stacked as channels in this order.
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")


def scaling_key(key: str) -> str:
    """Key under which the scaling record of ``key`` is stored (e.g. ``image_scaling``)."""
    return f"{key}_{SCALING}"
