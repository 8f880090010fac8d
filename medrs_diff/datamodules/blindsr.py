"""Blind super-resolution pairs made on the fly: HR crops x random degradations (BlindSRSNF's training data).

HR sources: ``root/*.tif`` GeoTIFFs (all with the same bands), else, when ``root`` holds none, the 10 m bands
of every BigEarthNet-S2 patch under ``bigearthnet_root`` (uint16 reflectance x 1e4, read in memory, nothing
written) or ``phantoms`` synthetic multispectral land-cover scenes (reflectance x 1e4, in memory). Sources are
split by name: the last ``val_fraction`` validate (held out by scene).

Each training item ``i`` of epoch ``e`` draws, from a generator seeded by ``(seed, e, i)``
(:meth:`~medrs_diff.data.seeding.EpochAware.item_rng`): a source, a degradation
(:func:`~medrs_diff.data.degradations.sample_degradation`: ``mode`` iso / aniso / mixed, sigma in
``sigma_range``, noise up to ``noise_max`` on the 8-bit scale; or the fixed named ``degradation`` of
:data:`~medrs_diff.data.degradations.TEST_GRID` for every item, e.g. ``bicubic``), a ``patch_size`` crop of
the source and one of another source, and their noise. HR crops are scaled to model space with ``scaling``
and degraded there (range 2, so noise level n has std 2 n / 255), the LR clipped to [-1, 1] (the 8-bit
saturation of the paper's data). Items: ``image`` (HR), ``cond`` (LR), ``cond_key`` (the crop of **another**
scene under the **same** degradation: the MoCo positive; another scene, so that content cannot identify the
positive), ``degradation`` (sigma_x, sigma_y, theta, noise) and ``case``. Validation items are fixed: every
validation source x every setting of ``val_settings`` x ``val_samples`` crops.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.degradations import TEST_GRID, Degradation, degrade, sample_degradation, setting
from ..data.scaling import Scaling, resolve
from ..data.seeding import EpochAware, crop_slices, item_seed
from ..errors import ArgumentError, DataError
from .base import DictDataModule, ResumableDataLoader, split_train_val

S2_10M = ("B04", "B03", "B02", "B08")
DEFAULT_VAL_SETTINGS = ("aniso_1.2_2.4_t0_n0", "aniso_3.6_2.4_t45_n10")


def land_cover_scene(size: int, bands: int, seed: int, n_regions: int = 12) -> np.ndarray:
    """A (bands, size, size) float32 multispectral phantom in reflectance x 1e4: Voronoi regions, each with
    its own spectrum, straight field edges and a smooth texture."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(0, size, (n_regions, 2))
    region = np.argmin((yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2, axis=-1)
    spectra = rng.uniform(0.03, 0.6, (n_regions, bands))
    texture = 1 + 0.1 * gaussian_filter(rng.standard_normal((size, size)), 1.5)
    img = spectra[region].transpose(2, 0, 1) * texture[None]
    return (np.clip(img, 0.0, 1.0) * 1e4).astype(np.float32)


def bigearthnet_scenes(root: str | Path, bands: Sequence[str] = S2_10M) -> tuple[list[np.ndarray], list[str]]:
    """The listed 10 m bands of every BigEarthNet-S2 patch under ``root``, stacked (C, H, W), float32 DN."""
    from ..io.geotiff import read_geotiff

    root = Path(root)
    s2 = root / "BigEarthNet-S2-Example" if (root / "BigEarthNet-S2-Example").is_dir() else root
    patches = sorted(p for p in s2.iterdir() if p.is_dir()) if s2.is_dir() else []
    if not patches:
        raise DataError(root, "holds no BigEarthNet-S2 patch folders", "point bigearthnet_root at bigearthnet_s1_s2/")
    ims = [np.stack([read_geotiff(p / f"{p.name}_{b}.tif", expected_bands=1).data[0] for b in bands])
           .astype(np.float32) for p in patches]
    return ims, [p.name for p in patches]


class DegradedCrops(EpochAware, Dataset):
    """Items of :class:`BlindSRDataModule` from in-memory HR ``images`` (C, H, W) in data units (see the module
    notes); ``settings``: fixed degradations (cycled when ``fixed``, else drawn), None: drawn by ``sample``."""

    def __init__(self, images: list[np.ndarray], names: list[str], *, patch: int, scale: int, length: int, seed: int,
                 scaling: Scaling, fixed: bool, settings: Sequence[Degradation] | None, sample: dict[str, Any]) -> None:
        self.images, self.names, self.patch, self.scale = images, names, patch, scale
        self.length, self.seed, self.scaling, self.fixed = int(length), int(seed), scaling, fixed
        self.settings, self.sample = list(settings) if settings else None, sample

    def __len__(self) -> int:
        return self.length

    def degradation(self, i: int, rng: np.random.Generator) -> Degradation:
        if self.settings is None:
            return sample_degradation(rng, self.scale, **self.sample)
        return self.settings[(i // len(self.images)) % len(self.settings) if self.fixed else
                             int(rng.integers(len(self.settings)))]

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = self.item_rng(i, self.fixed)
        j = i % len(self.images) if self.fixed else int(rng.integers(len(self.images)))
        img = self.images[j]
        deg = self.degradation(i, rng)
        n = len(self.images)
        other = self.images[(j + 1 + int(rng.integers(n - 1))) % n] if n > 1 else img  # another scene
        crops = []
        for src in (img, other):
            sl = crop_slices(rng, src.shape[1:], (self.patch, self.patch))
            crops.append(self.scaling.forward(torch.from_numpy(np.ascontiguousarray(src[:, sl[0], sl[1]]))).float())
        lrs = [degrade(c, deg, rng, data_range=2.0, low=-1.0).clamp(-1, 1) for c in crops]
        vec = torch.tensor([deg.sigma_x, deg.sigma_y if deg.sigma_y is not None else deg.sigma_x, deg.theta,
                            deg.noise], dtype=torch.float32)
        return {"image": crops[0], "cond": lrs[0], "cond_key": lrs[1], "degradation": vec, "case": self.names[j]}


class BlindSRDataModule(DictDataModule):
    """HR crops x random blur / downsampling / noise (/ JPEG), made on the fly (see the module notes)."""

    def __init__(
        self,
        root: str,
        scale: int = 4,
        bands: int | None = None,
        scaling: str = "reflectance",
        patch_size: int = 64,
        mode: str = "aniso",
        sigma_range: tuple[float, float] = (0.2, 4.0),
        noise_max: float = 25.0,
        downsample: str = "bicubic",
        jpeg_quality: int | None = None,
        degradation: str | None = None,
        val_settings: list[str] | None = None,
        val_samples: int = 1,
        samples_per_epoch: int = 256,
        val_fraction: float = 0.25,
        bigearthnet_root: str | None = None,
        bigearthnet_bands: list[str] | None = None,
        phantoms: int = 0,
        phantom_size: int = 96,
        phantom_bands: int = 3,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters(logger=False)
        if scale < 1 or patch_size < 1 or patch_size % scale:
            raise ArgumentError("patch_size", f"must be a positive multiple of scale {scale}, got {patch_size}",
                                f"use e.g. {16 * scale}")
        if samples_per_epoch < 1 or val_samples < 1:
            raise ArgumentError("samples_per_epoch / val_samples", "must be >= 1", "set them to 1 or more")
        names = list(val_settings) if val_settings is not None else list(DEFAULT_VAL_SETTINGS)
        self.val_settings = [setting(n, scale) for n in names]  # unknown names stop here
        self.fixed = [setting(degradation, scale)] if degradation is not None else None
        # check the sampling arguments once, now
        sample_degradation(np.random.default_rng(0), scale, mode, tuple(sigma_range), noise_max, downsample,
                           jpeg_quality)
        self.sample = dict(mode=mode, sigma_range=tuple(sigma_range), noise_max=float(noise_max),
                           downsample=downsample, jpeg_quality=jpeg_quality)
        self.root, self.scale, self.bands, self.scaling_name = Path(root), int(scale), bands, scaling
        self.patch, self.samples_per_epoch, self.val_samples = int(patch_size), samples_per_epoch, val_samples
        self.val_fraction = val_fraction
        self.bigearthnet_root = bigearthnet_root
        self.bigearthnet_bands = tuple(bigearthnet_bands) if bigearthnet_bands is not None else S2_10M
        self.phantoms, self.phantom_size, self.phantom_bands = int(phantoms), int(phantom_size), int(phantom_bands)

    def _sources(self) -> tuple[list[np.ndarray], list[str]]:
        files = sorted(p for p in self.root.glob("*.tif") if not p.name.startswith(".")) if self.root.is_dir() else []
        if not files and self.bigearthnet_root:
            return bigearthnet_scenes(self.bigearthnet_root, self.bigearthnet_bands)
        if not files and self.phantoms > 0:
            ims = [land_cover_scene(self.phantom_size, self.phantom_bands, item_seed(self.seed, 0, k))
                   for k in range(self.phantoms)]
            return ims, [f"phantom_{k:03d}" for k in range(self.phantoms)]
        if not files:
            raise DataError(self.root, "holds no HR .tif scenes", "put HR GeoTIFFs there, or set bigearthnet_root or "
                            "phantoms to use real Sentinel-2 patches or synthetic scenes")
        from ..io.geotiff import read_geotiff

        ims = []
        for f in files:
            a = read_geotiff(f, expected_bands=self.bands).data.astype(np.float32)
            if ims and a.shape[0] != ims[0].shape[0]:
                raise DataError(f, f"has {a.shape[0]} bands, {files[0].name} has {ims[0].shape[0]}",
                                "give every HR scene the same bands")
            if not np.isfinite(a).all():
                raise DataError(f, "holds NaN or inf pixels", "fill them (or crop them away) first")
            ims.append(a)
        return ims, [f.name for f in files]

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        ims, names = self._sources()
        small = [n for a, n in zip(ims, names) if min(a.shape[1:]) < self.patch]
        if small:
            raise ArgumentError("patch_size", f"{self.patch} exceeds the size of {small[0]}",
                                "use a smaller patch_size (a multiple of the scale)")
        idx = list(range(len(ims)))
        tr, va = split_train_val(idx, self.val_fraction, "HR scenes", self.root)
        scaling = resolve(self.scaling_name)
        pick = lambda ks: ([ims[k] for k in ks], [names[k] for k in ks])  # noqa: E731
        common = dict(patch=self.patch, scale=self.scale, scaling=scaling, sample=self.sample)
        self.train_dataset = DegradedCrops(*pick(tr), length=self.samples_per_epoch, seed=self.seed, fixed=False,
                                            settings=self.fixed, **common)
        n_val = len(va) * len(self.val_settings) * self.val_samples
        self.val_dataset = DegradedCrops(*pick(va), length=n_val, seed=self.seed + 1, fixed=True,
                                          settings=self.val_settings, **common)
        self.test_dataset = self.val_dataset

    def train_dataloader(self) -> ResumableDataLoader:
        loader = super().train_dataloader()
        self.train_dataset.follow(loader.sampler)  # degradations and crops follow the loader's epoch
        return loader


__all__ = ["TEST_GRID", "BlindSRDataModule", "DegradedCrops", "bigearthnet_scenes", "land_cover_scene"]
