"""Clean grey images x simulated SAR speckle, drawn on the fly (SAR-DDPM training data).

Clean sources (the paper trains on clean optical grey images): ``root/*.tif`` single-band GeoTIFFs of
clean reflectance-like intensity in [0, 1]; an empty ``root`` is filled from ``bigearthnet_root``
(real Sentinel-2 patches: the mean of B04, B03, B02 reflectance, DN / 1e4, written as float32 GeoTIFFs)
or, with ``phantoms`` > 0, held in memory as synthetic land-cover phantoms (piecewise-constant fields
with smooth texture). Each clean image is taken as **intensity** ``I`` and converted to ``domain``:

- ``db`` (default): ``10 log10 I`` (floored at ``floor_db``), speckled additively by ``10 log10 g``.
  Why the default: Sentinel-1 GRD products (the shared pyroSAR scene) are delivered in dB, so the model
  despeckles in the product's units and ``infer`` writes dB on the input's grid; the log turns the
  multiplicative speckle into additive, signal-independent noise, the DDPM's own noise model.
- ``intensity``: ``I * g``; ``amplitude``: ``sqrt(I * g)`` (the paper's amplitude convention).

``g ~ Gamma(looks, 1/looks)`` (:mod:`medrs_diff.data.speckle`; ``looks = 1``: single look). ``scaling``
maps the domain's units to model space (``db``: -25..0 dB onto [-1, 1], clipped; for ``intensity`` /
``amplitude`` pick a fixed scaling of their range, e.g. ``none`` keeps [0, 1] as it is). Items (random crops, seeded by
``(seed, epoch, index)``): ``image`` (clean), ``cond`` (speckled), (1, p, p) float32 in model space, and
``case`` (the source name). Validation uses fixed crops and fixed speckle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.scaling import resolve
from ..data.seeding import EpochAware, crop_slices, item_seed
from ..data.speckle import add_speckle, check_domain, check_looks, from_intensity
from ..errors import ArgumentError, DataError
from .base import DictDataModule, ResumableDataLoader, split_train_val

S2_GREY = ("B04", "B03", "B02")


def land_cover_phantom(size: int, seed: int, n_regions: int = 10) -> np.ndarray:
    """A (size, size) clean intensity phantom in [0.01, 1]: Voronoi regions of constant reflectance with a
    smooth multiplicative texture (fields, roads-free land cover), float32."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(0, size, (n_regions, 2))
    d = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    values = rng.uniform(0.03, 0.8, n_regions)
    img = values[np.argmin(d, axis=-1)]
    texture = 1 + 0.15 * gaussian_filter(rng.standard_normal((size, size)), size / 16)
    return np.clip(img * texture, 0.01, 1.0).astype(np.float32)


def bigearthnet_grey(root: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the mean of B04, B03, B02 reflectance (DN / 1e4, clipped to [0, 1]) of every BigEarthNet-S2 patch
    under ``root`` as a float32 GeoTIFF ``out_dir/<patch>.tif`` on the patch's grid."""
    from ..io.geotiff import read_geotiff, write_geotiff

    root, out_dir = Path(root), Path(out_dir)
    s2 = root / "BigEarthNet-S2-Example" if (root / "BigEarthNet-S2-Example").is_dir() else root
    patches = sorted(p for p in s2.iterdir() if p.is_dir()) if s2.is_dir() else []
    if not patches:
        raise DataError(root, "holds no BigEarthNet-S2 patch folders", "point bigearthnet_root at bigearthnet_s1_s2/")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for patch in patches:
        bands = [read_geotiff(patch / f"{patch.name}_{b}.tif", expected_bands=1) for b in S2_GREY]
        grey = np.clip(np.mean([b.data[0].astype(np.float64) for b in bands], axis=0) / 1e4, 0.0, 1.0)
        path = out_dir / f"{patch.name}.tif"
        write_geotiff(grey[None].astype(np.float32), path, crs=bands[0].geometry.crs,
                      transform=bands[0].geometry.transform)
        paths.append(path)
    return paths


class _SpeckledCrops(EpochAware, Dataset):
    def __init__(self, images: list[np.ndarray], names: list[str], *, patch: int, length: int, seed: int,
                 looks: float, domain: str, floor_db: float, scaling: Any, fixed: bool) -> None:
        self.images, self.names, self.patch, self.length, self.seed = images, names, patch, int(length), int(seed)
        self.looks, self.domain, self.floor_db, self.scaling, self.fixed = looks, domain, floor_db, scaling, fixed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = self.item_rng(i, self.fixed)
        j = i % len(self.images) if self.fixed else int(rng.integers(len(self.images)))
        img = self.images[j]
        crop = img[crop_slices(rng, img.shape, (self.patch, self.patch))].astype(np.float64)
        if self.domain == "db":
            crop = np.maximum(crop, 10 ** (self.floor_db / 10))
        clean = from_intensity(crop, self.domain, self.floor_db)
        noisy = add_speckle(clean, self.looks, self.domain, rng)
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]  # noqa: E731
        return {"image": self.scaling.forward(as_t(clean)), "cond": self.scaling.forward(as_t(noisy)),
                "case": self.names[j]}


class SpeckleDataModule(DictDataModule):
    """Clean grey images with speckle simulated on every item (see the module notes)."""

    def __init__(
        self,
        root: str,
        domain: str = "db",
        looks: float = 1.0,
        scaling: str = "db",
        floor_db: float = -25.0,
        patch_size: int = 64,
        samples_per_epoch: int = 256,
        val_samples: int = 2,
        val_fraction: float = 0.25,
        bigearthnet_root: str | None = None,
        phantoms: int = 0,
        phantom_size: int = 64,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters(logger=False)
        check_domain(domain)
        self.looks = check_looks(looks)
        if patch_size < 1 or samples_per_epoch < 1 or val_samples < 1:
            raise ArgumentError("patch_size / samples_per_epoch / val_samples", "must be >= 1", "set them to 1 or more")
        if not np.isfinite(floor_db):
            raise ArgumentError("floor_db", f"must be finite, got {floor_db}", "use e.g. -25 (the db scaling's floor)")
        self.root, self.domain, self.scaling_name, self.floor_db = Path(root), domain, scaling, float(floor_db)
        self.patch, self.samples_per_epoch, self.val_samples = int(patch_size), samples_per_epoch, val_samples
        self.val_fraction, self.bigearthnet_root = val_fraction, bigearthnet_root
        self.phantoms, self.phantom_size = int(phantoms), int(phantom_size)

    def _sources(self) -> tuple[list[np.ndarray], list[str]]:
        if self.phantoms > 0 and (not self.root.exists() or not any(self.root.glob("*.tif"))):
            ims = [land_cover_phantom(self.phantom_size, item_seed(self.seed, 0, k)) for k in range(self.phantoms)]
            return ims, [f"phantom_{k:03d}" for k in range(self.phantoms)]
        if not any(self.root.glob("*.tif")) and self.bigearthnet_root:
            bigearthnet_grey(self.bigearthnet_root, self.root)
        files = sorted(p for p in self.root.glob("*.tif") if not p.name.startswith("."))
        if not files:
            raise DataError(self.root, "holds no clean .tif images", "put single-band clean GeoTIFFs there, or set "
                            "bigearthnet_root or phantoms to generate them")
        from ..io.geotiff import read_geotiff

        ims = []
        for f in files:
            a = read_geotiff(f, expected_bands=1).data[0].astype(np.float32)
            if not np.isfinite(a).all() or a.min() < 0:
                raise DataError(f, "holds negative or non-finite pixels", "give clean intensity in [0, 1] "
                                "(e.g. reflectance), nodata filled")
            if min(a.shape) < self.patch:
                raise DataError(f, f"is smaller {a.shape} than patch_size {self.patch}", "use a smaller patch_size")
            ims.append(a)
        return ims, [f.name for f in files]

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        ims, names = self._sources()
        if min(min(a.shape) for a in ims) < self.patch:
            raise ArgumentError("patch_size", f"{self.patch} exceeds the clean images' size", "use a smaller one")
        idx = list(range(len(ims)))
        tr, va = (idx, idx) if self.val_fraction == 0 else split_train_val(idx, self.val_fraction, "clean images",
                                                                            self.root)
        common = dict(patch=self.patch, looks=self.looks, domain=self.domain, floor_db=self.floor_db,
                      scaling=resolve(self.scaling_name))
        pick = lambda ks: ([ims[k] for k in ks], [names[k] for k in ks])  # noqa: E731
        self.train_dataset = _SpeckledCrops(*pick(tr), length=self.samples_per_epoch, seed=self.seed, fixed=False,
                                            **common)
        self.val_dataset = _SpeckledCrops(*pick(va), length=self.val_samples * len(va), seed=self.seed + 1,
                                          fixed=True, **common)
        self.test_dataset = self.val_dataset

    def train_dataloader(self) -> ResumableDataLoader:
        loader = super().train_dataloader()
        # Items read the epoch from the loader's sampler (Lightning calls its set_epoch): crop and speckle are a
        # function of (seed, epoch, index) alone.
        self.train_dataset.follow(loader.sampler)
        return loader
