"""NIfTI (``.nii``, ``.nii.gz``): data in stored voxel order (x, y, z[, c]), affine and header kept exactly.

``read_nifti`` returns a :class:`NiftiVolume` (an :class:`~medrs_diff.io.types.ArrayFile` with
``affine`` / ``header`` shortcuts); ``write_nifti`` writes atomically with the affine and header of a
reference (or those given) and can record the model-space scaling in a comment header extension
(``MEDRS_SCALING=<json>``), read back by :func:`read_nifti_scaling`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import DataError, require_file
from . import registry
from .atomic import atomic_output
from .records import SCALING_TAG, scaling_json
from .types import ArrayFile, Geometry

PathLike = str | os.PathLike

#: NIfTI extension code for comments (the scaling record lives in one).
_COMMENT_CODE = 6
#: NIfTI datatype codes of packed colour voxels (RGB24, RGBA32), which are not numeric arrays.
_COLOUR_CODES = {128: "RGB24", 2304: "RGBA32"}


class NiftiVolume(ArrayFile):
    """A NIfTI image in stored voxel order: ``data`` (x, y, z[, c]) with ``affine`` and ``header``."""

    @property
    def affine(self) -> np.ndarray:
        return self.geometry.affine

    @property
    def header(self) -> nib.Nifti1Header:
        return self.geometry.header


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def load_nifti_image(path: PathLike) -> nib.Nifti1Image:
    """Open a NIfTI (header only, data stays on disk); ``DataError`` if missing or not NIfTI."""
    p = require_file(path, "NIfTI file")
    try:
        img = nib.load(str(p))
    except Exception as exc:  # nibabel raises several types (ImageFileError, OSError, EOFError...)
        raise DataError(p, f"cannot be read as NIfTI ({type(exc).__name__}: {exc})",
                        "check that it is a complete .nii / .nii.gz file (re-export or re-download it)") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(p, f"is a {type(img).__name__}, not NIfTI", "convert it to .nii.gz first")
    code = int(img.header["datatype"])
    if code in _COLOUR_CODES:
        raise DataError(p, f"stores packed {_COLOUR_CODES[code]} colour voxels, not numbers ({_COLOUR_CODES[code]} "
                        "NIfTI)", "convert it to a 4-D float NIfTI with the colours as 3 (or 4) channels on the 4th "
                        "axis (X x Y x Z x 3; a 2-D image X x Y x 1 x 3), e.g. nibabel: "
                        "np.stack([d['R'], d['G'], d['B']], -1).astype('float32') of d = np.asanyarray(img.dataobj)")
    return img


def _scaling_record(header: Any) -> dict[str, Any] | None:
    for ext in header.extensions:
        content = ext.get_content()
        if ext.get_code() == _COMMENT_CODE and content.startswith(SCALING_TAG.encode()):
            return json.loads(content[len(SCALING_TAG) + 1 :].decode())
    return None


def nifti_geometry(img: nib.Nifti1Image | nib.Nifti2Image) -> Geometry:
    """Geometry of an opened NIfTI: affine, a copy of the header, spacing (zooms), layout, scaling record."""
    ndim = len(img.shape)
    layout = ("x", "y", "z", "c", "c2", "c3", "c4")[:ndim]
    zooms = tuple(float(z) for z in img.header.get_zooms()[: min(3, ndim)])
    header = img.header.copy()
    extra: dict[str, Any] = {"nifti_version": 2 if isinstance(img, nib.Nifti2Image) else 1,
                             "stored_dtype": str(img.get_data_dtype())}
    record = _scaling_record(header)
    if record is not None:
        extra["scaling"] = record
    return Geometry(kind="nifti", layout=layout, affine=img.affine.copy(), header=header, spacing=zooms,
                    extra=extra)


def read_nifti(path: PathLike, dtype: Any = np.float32) -> NiftiVolume:
    """Read a NIfTI file into memory, keeping affine and header exactly.

    ``dtype=None`` keeps the stored type (after the header's ``scl_slope`` / ``scl_inter``, as nibabel does).
    """
    img = load_nifti_image(path)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32) if dtype is not None else img.dataobj)
    except Exception as exc:
        raise DataError(path, f"voxel data cannot be read ({type(exc).__name__}: {exc})",
                        "the file is truncated or corrupt: re-export or re-download it") from exc
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return NiftiVolume(Path(path), data, nifti_geometry(img))


def read_nifti_scaling_record(path: PathLike) -> dict[str, Any] | None:
    """The scaling record (a plain dict) written by ``write_nifti``, or None."""
    return _scaling_record(load_nifti_image(path).header)


def nifti_image(data: Any, affine: np.ndarray | None = None, *, header: Any = None,
                channel_first: bool = False, dtype: Any = None, scaling: Any = None,
                path_for_errors: PathLike | None = None) -> nib.Nifti1Image:
    """Build (not write) a NIfTI image; with ``header`` given its qform/sform are kept when the affine
    equals the header's own. ``scaling`` (a ``Scaling``, record dict or JSON) goes into a comment extension."""
    arr = _numpy(data)
    if channel_first:
        arr = np.moveaxis(arr, 0, -1) if arr.shape[0] > 1 else arr[0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
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
        tag = SCALING_TAG.encode()
        for e in [e for e in exts if e.get_code() == _COMMENT_CODE and e.get_content().startswith(tag)]:
            exts.remove(e)
        exts.append(nib.nifti1.Nifti1Extension(_COMMENT_CODE, f"{SCALING_TAG}={scaling_json(scaling)}".encode()))
    return img


def write_nifti(data: Any, out_path: PathLike, affine: np.ndarray | None = None, *,
                reference: PathLike | None = None, header: nib.Nifti1Header | nib.Nifti2Header | None = None,
                channel_first: bool = False, dtype: Any = None, scaling: Any = None,
                inputs: Iterable[PathLike] = ()) -> Path:
    """Write ``data`` as NIfTI with the affine and header of ``reference`` (or those given), atomically.

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


def _write(path: PathLike, data: np.ndarray, geometry: Geometry | None, *, inputs: Iterable[PathLike] = (),
           **kwargs: Any) -> Path:
    """Registry writer: the geometry's affine, header and scaling record are kept."""
    g = geometry or Geometry("nifti")
    if g.affine is None and "reference" not in kwargs and "affine" not in kwargs:
        raise DataError(path, "NIfTI output needs an affine but the geometry has none",
                        "pass the geometry of a NIfTI input (or `affine=` / `reference=`)")
    kwargs.setdefault("affine", g.affine)
    if g.kind == "nifti":
        kwargs.setdefault("header", g.header)
        if g.extra.get("scaling") is not None:
            kwargs.setdefault("scaling", g.extra["scaling"])
    return write_nifti(data, path, inputs=inputs, **kwargs)


registry.register(registry.FileFormat(
    name="nifti", suffixes=(".nii", ".nii.gz"), reader=read_nifti, writer=_write,
    description="NIfTI-1/2 volume, (x, y, z[, c]) in stored voxel order, affine + header kept",
    requires="nibabel"))
