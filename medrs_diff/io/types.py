"""What every reader returns: the array plus its geometry, in one type for every file format."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Geometry:
    """Where an array sits in the world, as far as its file format knows.

    ``affine`` (4x4 voxel -> RAS mm, NIfTI), ``header`` (the NIfTI header, kept for writing),
    ``crs`` / ``transform`` (GeoTIFF, NetCDF), ``spacing`` (physical size of a pixel / voxel along the
    spatial axes, in mm for medical images and map units for rasters), ``nodata`` (fill value),
    ``band_names`` (one per channel, when known), ``wavelengths`` (nm, hyperspectral), ``times``
    (sequences), ``layout`` (axis names of ``data``, e.g. ``("x", "y", "z")`` for NIfTI,
    ``("band", "y", "x")`` for rasters) and ``extra`` (format-specific metadata such as tags).
    """

    kind: str
    layout: tuple[str, ...] = ()
    affine: np.ndarray | None = None
    header: Any = None
    crs: Any = None
    transform: Any = None
    spacing: tuple[float, ...] | None = None
    nodata: float | None = None
    band_names: tuple[str | None, ...] | None = None
    wavelengths: tuple[float, ...] | None = None
    times: tuple[Any, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None or self.transform is not None

    @property
    def oriented(self) -> bool:
        return self.affine is not None


@dataclass
class ArrayFile:
    """An array read from disk (``data``, in the layout ``geometry.layout``) with its geometry."""

    path: Path
    data: np.ndarray
    geometry: Geometry

    @property
    def kind(self) -> str:
        return self.geometry.kind

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)
