"""File formats: one registry from file type to reader and writer; every reader returns the array
and its geometry (:class:`ArrayFile`), every writer is atomic and keeps that geometry.

Built-in formats (see ``registered_formats()``): NIfTI, GeoTIFF, 2-D clinical images (PNG / JPEG /
TIFF / GIF / BMP), NumPy ``.npy``, hyperspectral cubes (``.mat`` v5 and v7.3, ENVI ``.hdr``),
HDF5 / NetCDF sequences and DICOM (read, with pydicom installed).
"""

# Built-in formats: each module registers itself (imported after the registry, never by it).
from . import cube, dicom, geotiff, image2d, nifti, numpy_file, sequence  # noqa: F401
from .atomic import (
    atomic_output,
    atomic_outputs,
    atomic_save,
    atomic_write_bytes,
    atomic_write_text,
    check_folder_writable,
    check_output_path,
    clean_stale_temporaries,
    is_stale_temporary,
    is_temporary,
)
from .geometry import check_same_grid
from .registry import (
    FileFormat,
    check_writable,
    format_for,
    is_readable_input,
    known_suffixes,
    list_inputs,
    read,
    register,
    registered_formats,
    stem_of,
    suffix_of,
    write,
)
from .types import ArrayFile, Geometry

__all__ = [
    "ArrayFile",
    "FileFormat",
    "Geometry",
    "atomic_output",
    "atomic_outputs",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_folder_writable",
    "check_output_path",
    "check_same_grid",
    "check_writable",
    "clean_stale_temporaries",
    "format_for",
    "is_readable_input",
    "is_stale_temporary",
    "is_temporary",
    "known_suffixes",
    "list_inputs",
    "read",
    "register",
    "registered_formats",
    "stem_of",
    "suffix_of",
    "write",
]
