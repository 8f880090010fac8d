"""Multi-modal cases at inference: the modality files of one case found, checked and stacked as channels.

A model trained on several co-registered modalities per case (``NiftiSegmentationDataModule(modalities=
[...], layout=...)``, e.g. BraTS t1n / t1c / t2w / t2f) reads them as the channels of one image, in the
recorded order. ``infer --input`` may then name

- a BraTS case folder ``<case>/<case>-<m>.nii.gz`` (one case),
- a folder of such case folders, or
- a flat folder of ``<case>_<m>.nii.gz`` files (the ``flat`` layout; labels and other files are ignored).

The recorded layout is tried first, then the other one. Every modality of a found case must exist
(else one error naming the missing file) and all must share one grid (shape and affine, else one error
naming the mismatching file). :func:`stack_case` reads them into one ``X x Y x Z x C`` volume on the
first modality's grid; outputs are named ``<case>.nii.gz``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io.geometry import compare_grids
from ..io.nifti import NiftiVolume, load_nifti_image, read_nifti
from ..io.types import Geometry

__all__ = ["LAYOUTS", "ModalityCase", "case_grid", "find_cases", "stack_case"]

PathLike = str | os.PathLike
LAYOUTS = ("flat", "brats")
_SUFFIXES = (".nii.gz", ".nii")
#: Affine tolerance (mm) between the modalities of a case, as in training (``geometry_atol``).
GRID_ATOL = 1e-3


@dataclass(frozen=True)
class ModalityCase:
    """One case: its name, where it lies and its file per modality (in the model's channel order)."""

    name: str
    folder: Path
    files: tuple[tuple[str, Path], ...]

    @property
    def output_name(self) -> str:
        """The outputs' file name (``<case>.nii.gz``); also the case name hashed into per-window seeds."""
        return f"{self.name}.nii.gz"

    @property
    def paths(self) -> list[Path]:
        """The modality files, in channel order."""
        return [p for _, p in self.files]

    @property
    def modalities(self) -> list[str]:
        return [m for m, _ in self.files]

    def __str__(self) -> str:
        return f"{self.folder / self.name} [{', '.join(self.modalities)}]"


def _visible(p: Path) -> bool:
    """Not hidden (temporary files of interrupted writes, ``.tmp-*``, are hidden too)."""
    return not p.name.startswith(".")


def _existing(stem: Path) -> Path:
    """``<stem>.nii.gz``, or ``<stem>.nii`` when only that exists (the ``.nii.gz`` name when neither does)."""
    gz = stem.with_name(stem.name + ".nii.gz")
    plain = stem.with_name(stem.name + ".nii")
    return plain if not gz.exists() and plain.exists() else gz


def _tagged(folder: Path, sep: str, modalities: Sequence[str]) -> dict[str, set[str]]:
    """Case names of ``folder``'s files named ``<case><sep><m>.nii[.gz]``, with the modalities found."""
    found: dict[str, set[str]] = {}
    pattern = re.compile(rf"^(.+){re.escape(sep)}({'|'.join(re.escape(m) for m in modalities)})\.nii(\.gz)?$")
    for f in folder.iterdir():
        if not f.is_file() or not _visible(f):
            continue
        m = pattern.match(f.name)
        if m:
            found.setdefault(m.group(1), set()).add(m.group(2))
    return found


def _case(name: str, folder: Path, sep: str, modalities: Sequence[str]) -> ModalityCase:
    files = tuple((m, _existing(folder / f"{name}{sep}{m}")) for m in modalities)
    for m, p in files:
        if not p.is_file():
            raise DataError(p, f"case {name} has no {m} modality file",
                            f"add it, or remove the case (every case needs {', '.join(modalities)}, named "
                            f"{name}{sep}<modality>.nii.gz)")
    return ModalityCase(name, folder, files)


def _brats_cases(folder: Path, modalities: Sequence[str]) -> list[ModalityCase]:
    if folder.name in _tagged(folder, "-", modalities):  # the folder is one case
        return [_case(folder.name, folder, "-", modalities)]
    cases = []
    for sub in sorted(d for d in folder.iterdir() if d.is_dir() and _visible(d)):
        if sub.name in _tagged(sub, "-", modalities):
            cases.append(_case(sub.name, sub, "-", modalities))
    return cases


def _flat_cases(folder: Path, modalities: Sequence[str]) -> list[ModalityCase]:
    return [_case(name, folder, "_", modalities) for name in sorted(_tagged(folder, "_", modalities))]


def find_cases(path: PathLike, modalities: Sequence[str], layout: str = "flat") -> list[ModalityCase] | None:
    """The multi-modal cases under ``path`` (see the module doc), or None when ``path`` is a file or a
    folder holding no file named after a modality (then its files are read as they are, e.g. 4-D NIfTI
    with the modalities as channels). A case missing a modality is refused, naming the missing file."""
    if layout not in LAYOUTS:
        raise DataError(None, f"unknown layout {layout!r}", f"choose one of {', '.join(LAYOUTS)}")
    p = Path(path)
    if not p.is_dir():
        return None
    finders = {"brats": _brats_cases, "flat": _flat_cases}
    for name in (layout, *[x for x in LAYOUTS if x != layout]):
        cases = finders[name](p, modalities)
        if cases:
            return cases
    return None


def case_grid(case: ModalityCase) -> tuple[tuple[int, ...], np.ndarray]:
    """The case's stored spatial shape (3 axes) and affine, from the headers; refuses a modality file
    with channels of its own or on another grid than the first modality (naming the file)."""
    ref_path = case.paths[0]
    ref_shape: tuple[int, ...] | None = None
    ref_affine = None
    for m, p in case.files:
        img = load_nifti_image(p)
        shape = tuple(int(n) for n in img.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) not in (2, 3):
            raise DataError(p, f"modality {m} has shape {shape}, not one image of 2 or 3 spatial axes",
                            "store each modality as its own 3-D NIfTI (X x Y x Z, one channel)")
        shape = shape + (1,) * (3 - len(shape))
        if ref_shape is None:
            ref_shape, ref_affine = shape, img.affine
            continue
        compare_grids(p, ref_path, shape=shape, ref_shape=ref_shape, affine=img.affine, ref_affine=ref_affine,
                      atol=GRID_ATOL, shape_label="spatial shape")
    assert ref_shape is not None and ref_affine is not None
    return ref_shape, np.asarray(ref_affine)


def stack_case(case: ModalityCase) -> NiftiVolume:
    """The case as one in-memory ``X x Y x Z x C`` volume (channels in modality order), with the first
    modality's affine and header (so outputs land on the modalities' grid)."""
    shape, _ = case_grid(case)
    volumes = [read_nifti(p) for p in case.paths]
    channels = [v.data.reshape(shape) for v in volumes]
    g = volumes[0].geometry
    geometry = Geometry(kind=g.kind, layout=("x", "y", "z", "c"), affine=g.affine, header=g.header,
                        spacing=g.spacing, extra=dict(g.extra))
    return NiftiVolume(case.folder / case.output_name, np.stack(channels, axis=-1).astype(np.float32, copy=False),
                       geometry)
