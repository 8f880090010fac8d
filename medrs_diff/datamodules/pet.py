"""Low-dose / full-dose PET pairs for BC-DPM and its baselines, the low dose simulated on the fly.

``root`` holds full-dose PET: NIfTI files (``.nii`` / ``.nii.gz``, units from a JSON sidecar or
``source_units``), single DICOM files or DICOM series folders (Modality PT, Bq/mL). Each is read once
with :func:`medrs_diff.data.pet.read_pet` in ``units`` (body-weight SUV by default; a missing weight /
dose stops unless ``units: bqml``); NIfTI volumes are reoriented to RAS, as ``infer`` does. Items are
random patches (3-D) or random crops of random axial slices (2-D, the last array axis), drawn from
``(seed, epoch, index)``; the low dose is simulated on every item by counts thinning at ``dose_fraction``
with ``counts_per_unit`` counts per voxel per unit
(:func:`medrs_diff.data.pet.simulate_low_dose`, never Gaussian noise). ``scaling`` maps units to model
space (``"pet"``: SUV [0, 10] onto [-1, 1], fixed, so quantification transfers between scans;
``"pet:<max>"`` another upper end: a volume with values above the range is warned about, naming the file).
``val_fraction: 0`` validates on fixed crops of the training files (a root with a single file). An
empty ``root`` is filled with ``phantoms`` synthetic phantoms in SUV (:mod:`medrs_diff.data.pet_phantoms`).

Items: ``image`` (full dose), ``cond`` (low dose), ``mask`` (body mask), each (1, *patch) float32 in model
space (the mask 0 / 1), and ``case`` (the file name).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.pet import COUNTS_PER_UNIT, body_mask, check_dose_fraction, read_pet, simulate_low_dose
from ..data.scaling import resolve
from ..data.seeding import EpochAware, crop_slices
from ..errors import ArgumentError, DataError
from .base import DictDataModule, ResumableDataLoader, split_train_val

SUFFIXES = (".nii", ".nii.gz", ".dcm")


def pet_files(root: Path) -> list[Path]:
    """Full-dose PET inputs under ``root``: NIfTI / DICOM files and folders of DICOM slices (sorted)."""
    out = []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.name.lower().endswith(SUFFIXES):
            out.append(p)
        elif p.is_dir() and any(q.suffix.lower() == ".dcm" for q in p.iterdir()):
            out.append(p)
    return out


def write_pet_phantoms(root: Path, n: int, size: Sequence[int], seed: int = 0) -> list[Path]:
    """``n`` phantom volumes ``(x, y, z)`` in SUV as ``pet_XXX.nii.gz`` with a sidecar ``{"Units": "SUV"}``;
    a 2-D ``size`` writes (x, y, 1) slices."""
    from ..data.pet_phantoms import pet_phantom
    from ..io.nifti import write_nifti

    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        ph = pet_phantom(tuple(size), seed=seed * 1000 + i)
        vol = ph.image[..., None] if len(size) == 2 else np.moveaxis(ph.image, 0, -1)  # z last
        path = root / f"pet_{i:03d}.nii.gz"
        write_nifti(vol, path, np.eye(4))
        (root / f"pet_{i:03d}.json").write_text(json.dumps({"Units": "SUV", "phantom_seed": seed * 1000 + i}))
        paths.append(path)
    return paths


class _PETPairs(EpochAware, Dataset):
    def __init__(self, volumes: list[np.ndarray], masks: list[np.ndarray], names: list[str], *, spatial_dims: int,
                 patch: tuple[int, ...], length: int, seed: int, dose_fraction: float, counts_per_unit: float,
                 thin_mode: str, scaling: Any, fixed: bool) -> None:
        self.volumes, self.masks, self.names = volumes, masks, names
        self.spatial_dims, self.patch, self.length, self.seed = spatial_dims, patch, int(length), int(seed)
        self.dose_fraction, self.counts, self.thin_mode = dose_fraction, counts_per_unit, thin_mode
        self.scaling, self.fixed = scaling, fixed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = self.item_rng(i, self.fixed)
        j = i % len(self.volumes) if self.fixed else int(rng.integers(len(self.volumes)))
        vol, m = self.volumes[j], self.masks[j]
        if self.spatial_dims == 2:
            z = int(rng.integers(vol.shape[-1])) if not self.fixed else vol.shape[-1] // 2
            vol, m = vol[..., z], m[..., z]
        sl = crop_slices(rng, vol.shape, self.patch)
        fd = vol[sl]
        ld = simulate_low_dose(fd, self.dose_fraction, self.counts, rng, self.thin_mode)
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]  # noqa: E731
        return {"image": self.scaling.forward(as_t(fd)), "cond": self.scaling.forward(as_t(ld)),
                "mask": as_t(m[sl]), "case": self.names[j]}


class PETDoseDataModule(DictDataModule):
    """Full-dose PET files with low-dose versions simulated on the fly (see the module notes)."""

    def __init__(
        self,
        root: str,
        spatial_dims: int = 2,
        patch_size: int | Sequence[int] = 64,
        dose_fraction: float = 0.05,
        counts_per_unit: float = COUNTS_PER_UNIT,
        thin_mode: str = "thin",
        units: str = "suv",
        source_units: str | None = None,
        scaling: str = "pet",
        samples_per_epoch: int = 256,
        val_samples: int = 4,
        val_fraction: float = 0.25,
        phantoms: int = 0,
        phantom_size: Sequence[int] = (64, 64),
        slices: bool | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters(logger=False)
        if spatial_dims not in (2, 3):
            raise ArgumentError("spatial_dims", f"must be 2 or 3, got {spatial_dims}", "use 2 (slices) or 3 (patches)")
        patch = (patch_size,) * spatial_dims if isinstance(patch_size, int) else tuple(int(p) for p in patch_size)
        if len(patch) != spatial_dims or min(patch) < 1:
            raise ArgumentError("patch_size", f"{patch_size!r} is not {spatial_dims} positive sizes",
                                f"give one size or {spatial_dims} sizes")
        check_dose_fraction(dose_fraction)
        if counts_per_unit <= 0:
            raise ArgumentError("counts_per_unit", f"must be > 0, got {counts_per_unit}", "use e.g. 50")
        if samples_per_epoch < 1 or val_samples < 1:
            raise ArgumentError("samples_per_epoch / val_samples", "must be >= 1", "set them to 1 or more")
        self.root, self.spatial_dims, self.patch = Path(root), spatial_dims, patch
        self.dose_fraction, self.counts_per_unit = float(dose_fraction), float(counts_per_unit)
        self.thin_mode = thin_mode
        self.units, self.source_units, self.scaling_name = units, source_units, scaling
        self.samples_per_epoch, self.val_samples, self.val_fraction = samples_per_epoch, val_samples, val_fraction
        self.phantoms, self.phantom_size = phantoms, tuple(phantom_size)
        self.slices = spatial_dims == 2 if slices is None else bool(slices)

    def _load(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        pet = read_pet(path, self.units, source_units=self.source_units)
        vol = pet.data
        if pet.geometry.kind == "dicom":
            vol = np.transpose(vol, (2, 1, 0))  # (z, y, x) -> (x, y, z), the NIfTI order
        elif vol.ndim == 3 and pet.geometry.affine is not None:
            vol = to_ras(vol, pet.geometry.affine)  # as inference reorients NIfTI volumes (infer_nifti)
        if vol.ndim == 2:
            vol = vol[..., None]
        if vol.ndim != 3:
            raise DataError(path, f"is not a single PET volume (shape {vol.shape})", "pass one 3-D volume per file")
        if any(h < p for h, p in zip(vol.shape, self.patch)):
            raise DataError(path, f"is smaller ({vol.shape}) than the patch size {self.patch}",
                            "use a smaller data.init_args.patch_size")
        return vol, body_mask(vol)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        if not self.root.exists() or not any(self.root.iterdir()):
            if self.phantoms < 2:
                raise DataError(self.root, "is empty or missing and no phantoms were asked for",
                                "point data.init_args.root at full-dose PET files or set phantoms: 8")
            write_pet_phantoms(self.root, self.phantoms, self.phantom_size, self.seed)
        files = pet_files(self.root)
        if self.val_fraction == 0:  # explicit: validate on fixed crops of the training volumes (one-file roots)
            if not files:
                raise DataError(self.root, "holds no PET files (.nii, .nii.gz, .dcm or DICOM series folders)",
                                "point data.init_args.root at full-dose PET")
            train, val = files, files
        else:
            train, val = split_train_val(files, self.val_fraction, "PET volumes", self.root)
        scaling = resolve(self.scaling_name)
        common = dict(spatial_dims=self.spatial_dims, patch=self.patch, dose_fraction=self.dose_fraction,
                      counts_per_unit=self.counts_per_unit, thin_mode=self.thin_mode, scaling=scaling)

        def build(paths: list[Path], length: int, seed: int, fixed: bool) -> _PETPairs:
            loaded = [self._load(p) for p in paths]
            for path, (vol, _) in zip(paths, loaded, strict=True):
                warn_clipped(path, vol, scaling, self.scaling_name)
            return _PETPairs([v for v, _ in loaded], [m for _, m in loaded], [p.name for p in paths],
                             length=length, seed=seed, fixed=fixed, **common)

        self.train_dataset = build(train, self.samples_per_epoch, self.seed, False)
        self.val_dataset = build(val, self.val_samples * len(val), self.seed + 1, True)

    def train_dataloader(self) -> ResumableDataLoader:
        loader = super().train_dataloader()
        # items read the epoch from the loader's sampler (Lightning calls its set_epoch): each epoch draws new
        # crops and new low-dose noise, still a function of (seed, epoch, index) alone
        self.train_dataset.follow(loader.sampler)
        return loader


def to_ras(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``volume`` (x, y, z) stored with ``affine`` reoriented to RAS (axis permutations and flips only)."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    return np.ascontiguousarray(apply_orientation(volume, ornt_transform(io_orientation(affine),
                                                                          axcodes2ornt("RAS"))))


def warn_clipped(path: Path, volume: np.ndarray, scaling: Any, name: str) -> None:
    """Warn, naming the file and the fix, when ``scaling`` clips values of a full-dose ``volume`` (lesions or
    organs above the scaling's upper end would be flattened to it in training)."""
    hi = getattr(scaling, "clip_max", None)
    if hi is None:
        return
    hi = float(np.max(hi))
    n = int((volume > hi).sum())
    if n:
        top = float(volume.max())
        warnings.warn(f"{path}: {n} voxels ({n / volume.size:.3%}) above {hi:g} (max {top:.1f}) are clipped to {hi:g} "
                      f"by scaling {name!r}. Fix: set data.init_args.scaling to 'pet:{math.ceil(top)}' to keep them",
                      stacklevel=3)
