"""GeoTIFF super-resolution: LR / HR scene pairs on one CRS (SRDiff), patches drawn with TorchGeo samplers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..data import keys as K
from ..errors import DataError
from .base import DictDataModule, split_train_val


class _QueryDataset(Dataset):
    """A map-style view of a TorchGeo dataset over a fixed list of GeoSlice queries, so the resumable,
    rank-aware sampler of :class:`DictDataModule` can index it."""

    def __init__(self, geo: Any, queries: list, keep: Sequence[str]) -> None:
        self.geo, self.queries, self.keep = geo, queries, tuple(keep)

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.geo[self.queries[i]]
        return {k: item[k].float() for k in self.keep}


class GeoTiffSRDataModule(DictDataModule):
    """LR / HR GeoTIFF pairs: ``root/hr/*.tif`` and ``root/lr/*.tif`` on one CRS, the LR grid an integer
    multiple of the HR one (no resampling). Random HR patches of ``patch_size`` pixels (a multiple of
    the scale) are drawn with a seeded TorchGeo sampler; validation uses a grid over the last scenes.
    ``scaling`` maps DN to model space ("reflectance" for uint16 x 1e4 optical data). An empty ``root``
    is filled from ``bigearthnet_root`` (real Sentinel-2 10 m bands, LR = ``phantom_scale`` x block mean)
    or with ``phantoms`` synthetic pairs."""

    def __init__(
        self,
        root: str,
        bands: int | None = None,
        scaling: str = "reflectance",
        patch_size: int = 32,
        samples_per_epoch: int = 256,
        val_fraction: float = 0.25,
        phantoms: int = 0,
        phantom_size: int = 64,
        phantom_scale: int = 4,
        phantom_bands: int = 3,
        phantom_seed: int = 0,
        bigearthnet_root: str | None = None,
        bigearthnet_bands: list[str] | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters()
        self.root = Path(root)
        self.bigearthnet_root, self.bigearthnet_bands = bigearthnet_root, bigearthnet_bands
        self.bands, self.scaling, self.patch_size = bands, scaling, patch_size
        self.samples_per_epoch, self.val_fraction = samples_per_epoch, val_fraction
        self.phantoms, self.phantom_size, self.phantom_scale = phantoms, phantom_size, phantom_scale
        self.phantom_bands, self.phantom_seed = phantom_bands, phantom_seed

    def prepare_data(self) -> None:
        if any((self.root / "hr").glob("*.tif")):
            return
        if self.bigearthnet_root:
            from ..data.sr_pairs import S2_RGB, bigearthnet_sr_pairs

            bands = self.bigearthnet_bands if self.bigearthnet_bands is not None else S2_RGB
            bigearthnet_sr_pairs(self.bigearthnet_root, self.root, bands, scale=self.phantom_scale)
        elif self.phantoms:
            from ..data.synthetic import make_sr_pairs

            make_sr_pairs(self.root, n=self.phantoms, hr_size=self.phantom_size, scale=self.phantom_scale,
                          bands=self.phantom_bands, seed=self.phantom_seed)

    def _datasets(self, files_hr: list[Path], files_lr: list[Path]):
        from ..data.geo import SRPairDataset, raster_dataset

        kw = {"scaling": self.scaling, "expected_bands": self.bands}
        return SRPairDataset(raster_dataset([str(f) for f in files_hr], **kw),
                             raster_dataset([str(f) for f in files_lr], **kw))

    def setup(self, stage: str | None = None) -> None:
        from ..data.geo import grid_sampler, random_sampler

        self.prepare_data()
        hr_files = sorted((self.root / "hr").glob("*.tif"))
        lr_files = sorted((self.root / "lr").glob("*.tif"))
        if len(hr_files) != len(lr_files):
            raise DataError(self.root, f"{len(hr_files)} HR but {len(lr_files)} LR GeoTIFFs",
                            "give every HR scene its LR scene (hr/ and lr/ sorted alike)")
        pairs = list(zip(hr_files, lr_files))
        train, val = split_train_val(pairs, self.val_fraction, "HR/LR scene pairs", self.root)
        keep = (K.COND, K.IMAGE)
        tr = self._datasets([p[0] for p in train], [p[1] for p in train])
        va = self._datasets([p[0] for p in val], [p[1] for p in val])
        queries = list(random_sampler(tr, self.patch_size, self.samples_per_epoch, seed=self.seed))
        self.train_dataset = _QueryDataset(tr, queries, keep)
        self.val_dataset = _QueryDataset(va, list(grid_sampler(va, self.patch_size)), keep)
        self.test_dataset = self.val_dataset
