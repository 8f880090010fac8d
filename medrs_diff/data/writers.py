"""Writers that keep geometry: NIfTI (affine + header), GeoTIFF (CRS, transform, nodata, band names),
2D images (PNG/TIFF/GIF/JPEG). Every write goes to a temporary name and is renamed when complete;
an output equal to an input is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import rasterio
import torch
from PIL import Image

from .atomic import atomic_output
from .errors import DataError
from .readers import SCALING_TAG, load_nifti_image, open_geotiff
from .scaling import Scaling

PathLike = str | os.PathLike


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def nifti_image(data: Any, affine: np.ndarray | None = None, *, header: Any = None,
                channel_first: bool = False, dtype: Any = None, scaling: Scaling | None = None,
                path_for_errors: PathLike | None = None) -> nib.Nifti1Image:
    """Build (not write) a NIfTI image; with ``header`` given its qform/sform are kept when the affine
    equals the header's own. ``scaling`` goes into a comment extension."""
    arr = _numpy(data)
    if channel_first:
        arr = np.moveaxis(arr, 0, -1) if arr.shape[0] > 1 else arr[0]
    if affine is None:
        raise DataError(path_for_errors, "no affine given", "pass `affine=` or `reference=` (a NIfTI on the same grid)")
    header = header.copy() if header is not None else None
    # nibabel keeps the header's qform/sform untouched when the affine equals the header's own affine
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = image_class(arr, np.asarray(affine, dtype=np.float64), header=header)
    if dtype is not None:
        img.set_data_dtype(dtype)
    elif header is not None and header.get_data_dtype() != arr.dtype:
        img.set_data_dtype(arr.dtype)
    if scaling is not None:
        exts = img.header.extensions
        for e in [e for e in exts if e.get_code() == 6 and e.get_content().startswith(SCALING_TAG.encode())]:
            exts.remove(e)
        exts.append(nib.nifti1.Nifti1Extension(6, f"{SCALING_TAG}={scaling.to_json()}".encode()))
    return img


def write_nifti(data: Any, out_path: PathLike, affine: np.ndarray | None = None, *,
                reference: PathLike | None = None, header: nib.Nifti1Header | nib.Nifti2Header | None = None,
                channel_first: bool = False, dtype: Any = None, scaling: Scaling | None = None,
                inputs: Iterable[PathLike] = ()) -> Path:
    """Write ``data`` as NIfTI with the affine and header of ``reference`` (or those given).

    ``data`` is in NIfTI order (spatial..., [channels]); with ``channel_first`` it is (C, spatial...)
    and the channels go to the 4th dimension. ``scaling`` is recorded in a comment extension.
    """
    inputs = list(inputs)
    if reference is not None:
        ref = load_nifti_image(reference)
        inputs.append(reference)
        header = ref.header if header is None else header
        affine = ref.affine if affine is None else affine
        shape = _numpy(data).shape[1:] if channel_first else _numpy(data).shape
        n = min(3, len(ref.shape))
        if tuple(ref.shape[:n]) != tuple(shape[:n]):
            raise DataError(reference, f"reference grid {ref.shape[:n]} differs from the data {tuple(shape[:n])}",
                            "write data on the reference's voxel grid or pass `affine=` instead")
    img = nifti_image(data, affine, header=header, channel_first=channel_first, dtype=dtype, scaling=scaling,
                      path_for_errors=out_path)
    with atomic_output(out_path, inputs) as tmp:
        nib.save(img, str(tmp))
    return Path(out_path)


def geotiff_profile(height: int, width: int, count: int, dtype: Any, crs: Any, transform: Any,
                    nodata: float | None = None) -> dict[str, Any]:
    """A tiled, compressed GTiff profile for ``rasterio.open(..., 'w', **profile)``."""
    profile: dict[str, Any] = dict(driver="GTiff", height=height, width=width, count=count,
                                   dtype=np.dtype(dtype).name, crs=crs, transform=transform, nodata=nodata,
                                   compress="deflate", BIGTIFF="IF_SAFER")
    if height >= 256 and width >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    return profile


def set_band_metadata(dst: rasterio.DatasetWriter, band_names: Sequence[str | None] | None,
                      scaling: Scaling | None, tags: Mapping[str, str] | None = None) -> None:
    """Band descriptions, the scaling record and extra tags on an open GeoTIFF writer."""
    if band_names is not None:
        if len(band_names) != dst.count:
            raise DataError(dst.name, f"{len(band_names)} band names for {dst.count} bands",
                            "give one name per output band")
        for i, name in enumerate(band_names, start=1):
            if name is not None:
                dst.set_band_description(i, name)
    extra = dict(tags or {})
    if scaling is not None:
        extra[SCALING_TAG] = scaling.to_json()
    if extra:
        dst.update_tags(**extra)


def write_geotiff(data: Any, out_path: PathLike, *, crs: Any = None, transform: Any = None,
                  nodata: float | None = None, band_names: Sequence[str | None] | None = None,
                  dtype: Any = None, reference: PathLike | None = None, scaling: Scaling | None = None,
                  tags: Mapping[str, str] | None = None, inputs: Iterable[PathLike] = ()) -> Path:
    """Write (C, H, W) or (H, W) ``data`` as GeoTIFF, taking CRS/transform/nodata/band names from
    ``reference`` unless given."""
    arr = _numpy(data)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError(out_path, f"data has shape {arr.shape}", "pass (C, H, W) or (H, W)")
    inputs = list(inputs)
    if reference is not None:
        inputs.append(reference)
        with open_geotiff(reference) as ref:
            if (ref.height, ref.width) != arr.shape[1:]:
                raise DataError(reference, f"reference is {ref.height}x{ref.width} but data is "
                                f"{arr.shape[1]}x{arr.shape[2]}", "write data on the reference grid")
            crs = ref.crs if crs is None else crs
            transform = ref.transform if transform is None else transform
            nodata = ref.nodata if nodata is None else nodata
            if band_names is None and ref.count == arr.shape[0]:
                band_names = ref.descriptions
    if transform is None:
        raise DataError(out_path, "no transform given", "pass `transform=` or `reference=`")
    dtype = np.dtype(dtype or arr.dtype)
    profile = geotiff_profile(arr.shape[1], arr.shape[2], arr.shape[0], dtype, crs, transform, nodata)
    with atomic_output(out_path, inputs) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(arr.astype(dtype, copy=False))
        set_band_metadata(dst, band_names, scaling, tags)
    return Path(out_path)


def write_image2d(data: Any, out_path: PathLike, inputs: Iterable[PathLike] = ()) -> Path:
    """Write a (C, H, W) / (H, W) uint8 or uint16 array as PNG / TIFF / GIF / JPEG (by extension)."""
    arr = _numpy(data)
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    if arr.dtype not in (np.uint8, np.uint16):
        raise DataError(out_path, f"2D image data has dtype {arr.dtype}", "convert to uint8 or uint16 first")
    with atomic_output(out_path, inputs) as tmp:
        Image.fromarray(arr).save(tmp, format=Image.registered_extensions().get(Path(out_path).suffix.lower()))
    return Path(out_path)
