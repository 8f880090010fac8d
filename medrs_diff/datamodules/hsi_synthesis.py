"""RGB -> hyperspectral pairs for HyperLDM: crops of one cube (or of procedural cubes) and their RGB rendering.

Real scene (``phantoms: 0``): ``root`` is one cube file (``.mat`` v5 / v7.3, ENVI ``.hdr``, ``.npy``, GeoTIFF;
read as (bands, H, W), Jasper Ridge / Samson unfolded in MATLAB column-major order) divided by ``max_value``
(None: the file's ``maxValue`` variable when it has one, else 1). The ``holdout`` fraction of the rows or columns
on ``holdout_side`` (at least ``patch_size``) is a **held-out spatial block** (validation / test tiles); training
crops come only from the rest minus a ``gap`` of pixels next to it. Default ``top``: the top strip of Jasper Ridge
and Samson holds every material in about the scene's proportions (reference abundances: Jasper top 32 rows tree /
water / dirt / road 0.36 / 0.26 / 0.26 / 0.12, whole scene 0.34 / 0.32 / 0.25 / 0.10), while the right strip of
Jasper Ridge has almost no water (0.01) and twice the scene's mean reflectance, an extrapolation test rather
than a held-out sample. The endmember library is the file's ``endmember_key`` variable (``endmembers: scene``,
put on the cube's scale by one global factor, or by one factor per endmember fitted against the file's reference
abundances ``abundance_key`` on the training pixels, :func:`~medrs_diff.data.hsi_synthesis.scene_library`) or
``num_endmembers`` pixels picked by ATGP on the training pixels (``endmembers: extract``).

Procedural (``phantoms`` > 0): cubes of ``phantom_size`` pixels and ``phantom_bands`` bands mixed from
``num_endmembers`` synthetic spectra (:func:`~medrs_diff.data.hsi_synthesis.mixed_cube`); the last quarter of them
validate; the library is the true spectra.

Items: ``image`` (bands, p, p) reflectance, ``cond`` (3, p, p) the bands ``rgb_bands`` of the same crop,
``endmembers`` (bands, K), ``case``. Training crops are random (seeded by ``(seed, epoch, index)``) with random
flips; validation crops are fixed tiles. ``scaling`` is ``none``: the model works in reflectance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.hsi_synthesis import (
    check_cube,
    extract_endmembers,
    mixed_cube,
    orient_endmembers,
    render_rgb,
    scene_library,
    synthetic_endmembers,
)
from ..data.seeding import EpochAware, crop_slices
from ..errors import ArgumentError, DataError
from .base import DictDataModule, ResumableDataLoader

__all__ = ["HOLDOUT_SIDES", "HyperspectralSynthesisDataModule", "holdout_regions", "load_synthesis_scene"]


def load_synthesis_scene(path: str | Path, key: str | None = "Y", max_value: float | None = None,
                         endmembers: str = "scene", endmember_key: str | None = "M", num_endmembers: int = 4,
                         train_mask: np.ndarray | None = None, abundance_key: str | None = None,
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(cube (bands, H, W) float32 reflectance, library (bands, K)) of a real scene (see the module notes);
    ``train_mask`` (H, W) limits the pixels the library is fitted or extracted on."""
    from ..data.hyperspectral import load_cube, read_array_file

    c = load_cube(path, key=key)
    variables = (c.geometry.extra.get("variables") if c.geometry is not None else None) or {}
    scale = float(variables.get("maxValue", 1.0)) if max_value is None else float(max_value)
    if not np.isfinite(scale) or scale <= 0:
        raise ArgumentError("max_value", f"must be a positive number, got {scale}", "give the cube's full-scale value")
    cube = check_cube(c.data / scale, path)
    if endmembers == "scene":
        if endmember_key is None:
            raise ArgumentError("endmember_key", "is null with endmembers: scene",
                                "name the file's endmember variable (Jasper Ridge: M, Samson: GT) or use extract")
        raw = read_array_file(path, key=endmember_key).data
        ab = None
        if abundance_key is not None:
            ab = np.asarray(read_array_file(path, key=abundance_key).data, np.float64)
            if ab.ndim != 3 or ab.shape[1:] != cube.shape[1:]:
                raise DataError(path, f"abundances '{abundance_key}' of shape {ab.shape} are not (K, {cube.shape[1]}, "
                                f"{cube.shape[2]})", "name the file's abundance maps, or set abundance_key: null")
        lib = scene_library(cube, orient_endmembers(raw, cube.shape[0], f"{path} [{endmember_key}]"), train_mask, ab)
    elif endmembers == "extract":
        lib = extract_endmembers(cube, num_endmembers, train_mask)
    else:
        raise ArgumentError("endmembers", f"unknown source {endmembers!r}", "use 'scene' or 'extract'")
    return cube, lib


def _len(s: slice) -> int:
    return s.stop - s.start


#: sides a held-out block may sit on
HOLDOUT_SIDES = ("top", "bottom", "left", "right")


def holdout_regions(h: int, w: int, side: str, fraction: float, gap: int, patch: int
                    ) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(training region, held-out block) of an h x w scene: the block is the ``fraction`` of the rows (``top`` /
    ``bottom``) or columns (``left`` / ``right``) on ``side``, at least ``patch`` wide; training keeps the rest
    minus a ``gap`` of pixels next to the block."""
    if side not in HOLDOUT_SIDES:
        raise ArgumentError("holdout_side", f"unknown side {side!r}", f"use one of {', '.join(HOLDOUT_SIDES)}")
    n = h if side in ("top", "bottom") else w
    k = max(int(round(n * fraction)), patch)  # block size along the cut axis
    if side in ("top", "left"):
        block, rest = slice(0, k), slice(min(k + gap, n), n)
    else:
        block, rest = slice(n - k, n), slice(0, max(n - k - gap, 0))
    full = slice(0, w) if side in ("top", "bottom") else slice(0, h)
    if side in ("top", "bottom"):
        return (rest, full), (block, full)
    return (full, rest), (full, block)


class _Pairs(EpochAware, Dataset):
    def __init__(self, cubes: list[np.ndarray], names: list[str], library: np.ndarray, rgb_bands: list[int], *,
                 patch: int, length: int, seed: int, fixed: bool, regions: list[tuple[slice, slice]]) -> None:
        self.cubes, self.names, self.library = cubes, names, torch.from_numpy(library)
        self.rgb_bands, self.patch, self.length, self.seed, self.fixed = rgb_bands, patch, int(length), seed, fixed
        self.regions = regions
        self.tiles: list[tuple[int, int, int]] = []
        if fixed:  # non-overlapping tiles of every region
            for j, (ys, xs) in enumerate(regions):
                for y in range(ys.start, ys.stop - patch + 1, patch):
                    for x in range(xs.start, xs.stop - patch + 1, patch):
                        self.tiles.append((j, y, x))
            self.length = len(self.tiles)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        p = self.patch
        if self.fixed:
            j, y, x = self.tiles[i]
            crop = self.cubes[j][:, y:y + p, x:x + p]
        else:
            rng = self.item_rng(i)
            j = int(rng.integers(len(self.cubes)))
            ys, xs = self.regions[j]
            region = self.cubes[j][:, ys, xs]
            crop = region[(slice(None), *crop_slices(rng, region.shape[1:], (p, p)))]
            if rng.random() < 0.5:
                crop = crop[:, :, ::-1]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
        crop = np.ascontiguousarray(crop, dtype=np.float32)
        return {"image": torch.from_numpy(crop), "cond": torch.from_numpy(render_rgb(crop, self.rgb_bands)),
                "endmembers": self.library, "case": self.names[j]}


class HyperspectralSynthesisDataModule(DictDataModule):
    """RGB -> cube pairs of one scene with a held-out block, or of procedural cubes (see the module notes)."""

    def __init__(
        self,
        root: str,
        key: str | None = "Y",
        max_value: float | None = None,
        endmembers: str = "scene",
        endmember_key: str | None = "M",
        abundance_key: str | None = None,
        num_endmembers: int = 4,
        rgb_bands: list[int] | None = None,
        holdout: float = 0.32,
        holdout_side: str = "top",
        gap: int = 4,
        scaling: str = "none",
        patch_size: int = 32,
        samples_per_epoch: int = 256,
        phantoms: int = 0,
        phantom_size: int = 64,
        phantom_bands: int = 48,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters(logger=False)
        if rgb_bands is None or len(rgb_bands) != 3:
            raise ArgumentError("rgb_bands", f"must be 3 band indices (R, G, B), got {rgb_bands}",
                                "set data.init_args.rgb_bands, e.g. [32, 15, 5] for Jasper Ridge")
        if scaling != "none":
            raise ArgumentError("scaling", f"HyperLDM works in reflectance, got {scaling!r}", "use scaling: none")
        if not 0.0 < holdout < 1.0:
            raise ArgumentError("holdout", f"must lie in (0, 1), got {holdout}", "hold out e.g. 0.32 of the rows")
        if patch_size < 1 or samples_per_epoch < 1 or gap < 0:
            raise ArgumentError("patch_size / samples_per_epoch / gap", "must be >= 1 (gap >= 0)", "fix them")
        self.root, self.key, self.max_value, self.endmembers = Path(root), key, max_value, endmembers
        self.abundance_key = abundance_key
        self.endmember_key, self.k, self.rgb_bands = endmember_key, int(num_endmembers), [int(b) for b in rgb_bands]
        self.holdout_side = holdout_side
        if holdout_side not in HOLDOUT_SIDES:
            raise ArgumentError("holdout_side", f"unknown side {holdout_side!r}", f"use one of {HOLDOUT_SIDES}")
        self.holdout, self.gap, self.patch, self.samples_per_epoch = float(holdout), int(gap), int(patch_size), \
            int(samples_per_epoch)
        self.phantoms, self.phantom_size, self.phantom_bands = int(phantoms), int(phantom_size), int(phantom_bands)
        self.library: np.ndarray | None = None

    def _phantom_sources(self) -> tuple[list[np.ndarray], list[str], np.ndarray]:
        lib = synthetic_endmembers(self.phantom_bands, self.k, self.seed)
        cubes = [mixed_cube(lib, self.phantom_size, self.seed * 1000 + i)[0] for i in range(self.phantoms)]
        return cubes, [f"phantom_{i:03d}" for i in range(self.phantoms)], lib

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        p = self.patch
        common = dict(patch=p, seed=self.seed)
        if self.phantoms > 0:
            if self.phantoms < 2:
                raise ArgumentError("phantoms", f"needs at least 2 (train + held out), got {self.phantoms}",
                                    "set phantoms to 2 or more")
            if self.phantom_size < p:
                raise ArgumentError("patch_size", f"{p} exceeds phantom_size {self.phantom_size}", "use a smaller one")
            cubes, names, lib = self._phantom_sources()
            n_val = max(1, self.phantoms // 4)
            full = (slice(0, self.phantom_size), slice(0, self.phantom_size))
            tr, va = slice(0, self.phantoms - n_val), slice(self.phantoms - n_val, None)
            train = _Pairs(cubes[tr], names[tr], lib, self.rgb_bands, length=self.samples_per_epoch, fixed=False,
                           regions=[full] * len(cubes[tr]), **common)
            val = _Pairs(cubes[va], names[va], lib, self.rgb_bands, length=0, fixed=True,
                         regions=[full] * len(cubes[va]), **common)
        else:
            from ..data.hyperspectral import load_cube

            shape = load_cube(self.root, key=self.key).data.shape
            h, w = shape[1:]
            train_region, test_region = holdout_regions(h, w, self.holdout_side, self.holdout, self.gap, p)
            if min(_len(train_region[0]), _len(train_region[1]), _len(test_region[0]), _len(test_region[1])) < p:
                raise DataError(self.root, f"a {h}x{w} scene with holdout {self.holdout} and gap {self.gap} leaves "
                                f"no {p}x{p} crop on one side", "use a smaller patch_size or holdout")
            mask = np.zeros((h, w), bool)
            mask[train_region] = True
            cube, lib = load_synthesis_scene(self.root, self.key, self.max_value, self.endmembers, self.endmember_key,
                                             self.k, mask, self.abundance_key)
            name = self.root.name
            train = _Pairs([cube], [name], lib, self.rgb_bands, length=self.samples_per_epoch, fixed=False,
                           regions=[train_region], **common)
            val = _Pairs([cube], [name], lib, self.rgb_bands, length=0, fixed=True, regions=[test_region], **common)
        render_rgb(train.cubes[0][:, :1, :1], self.rgb_bands)  # band indices checked before any training
        self.library = lib
        self.train_dataset, self.val_dataset, self.test_dataset = train, val, val

    def train_dataloader(self) -> ResumableDataLoader:
        loader = super().train_dataloader()
        self.train_dataset.follow(loader.sampler)
        return loader
