"""GeoTIFF super-resolution: LR / HR scene pairs on one CRS (SRDiff), patches drawn with TorchGeo samplers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..data import keys as K
from ..data.seeding import EpochAware, item_seed
from ..errors import DataError
from .base import DictDataModule, ResumableDataLoader, split_train_val
from .nifti import CASE


def _case_names(geo: Any, query: Any) -> str:
    """File name(s) of the HR scene(s) a query overlaps (``+``-joined), for messages that name a batch's files."""
    from shapely.geometry import box

    x, y = query[0], query[1]
    hits = geo.hr.index.cx[x.start : x.stop, y.start : y.stop]
    window = box(x.start, y.start, x.stop, y.stop)
    names = [Path(p).name for p, g in zip(hits.filepath, hits.geometry) if g.intersection(window).area > 0]
    return "+".join(dict.fromkeys(names)) or "?"


class _QueryDataset(EpochAware, Dataset):
    """A map-style view of a TorchGeo dataset over GeoSlice queries, so the resumable, rank-aware sampler of
    :class:`DictDataModule` can index it. ``queries`` is a fixed list (validation grid) or a function of the
    epoch (random training patches, drawn afresh each epoch), so item ``i`` is a function of (epoch, i)."""

    def __init__(self, geo: Any, queries: list | Callable[[int], list], length: int, keep: Sequence[str]) -> None:
        self.geo, self.keep, self.length = geo, tuple(keep), int(length)
        self._queries = queries
        self._drawn: tuple[int, list] | None = None  # (epoch, queries) of the last epoch asked for

    def __len__(self) -> int:
        return self.length

    def queries(self, epoch: int | None = None) -> list:
        """The queries of ``epoch`` (default: the current one)."""
        if not callable(self._queries):
            return self._queries
        epoch = self.current_epoch() if epoch is None else int(epoch)
        if self._drawn is None or self._drawn[0] != epoch:
            self._drawn = (epoch, list(self._queries(epoch)))
        return self._drawn[1]

    def __getitem__(self, i: int) -> dict[str, Any]:
        query = self.queries()[i]
        item = self.geo[query]
        out: dict[str, Any] = {k: item[k].float() for k in self.keep}
        out[CASE] = _case_names(self.geo, query)
        return out


class GeoTiffSRDataModule(DictDataModule):
    """LR / HR GeoTIFF pairs: ``root/hr/*.tif`` and ``root/lr/*.tif`` on one CRS, the LR grid an integer
    multiple of the HR one (no resampling); the sorted files pair up and each pair must cover the same
    ground. Each epoch draws ``samples_per_epoch`` random HR patches of ``patch_size`` pixels (a multiple
    of the scale) with a TorchGeo sampler seeded from ``(seed, epoch)``; validation uses a grid over the
    last scenes. ``scaling`` maps DN to model space ("reflectance" for uint16 x 1e4 optical data).
    ``setup`` refuses non-finite pixels that are not the file's nodata (scanned once, cached by path, mtime
    and size; ``check_files=False`` skips it). Items carry ``case``, the HR file name. An empty ``root``
    is filled from ``bigearthnet_root`` (real Sentinel-2 10 m bands, LR = ``phantom_scale`` x block mean)
    or with ``phantoms`` synthetic pairs, or from the nodata-free ``hr_tile`` px tiles of one scene ``hr_raster``
    (e.g. a Landsat RGB GeoTIFF; LR = ``phantom_scale`` x block mean)."""

    def __init__(
        self,
        root: str,
        bands: int | None = None,
        scaling: str = "reflectance",
        patch_size: int = 32,
        samples_per_epoch: int = 256,
        val_fraction: float = 0.25,
        check_files: bool = True,
        phantoms: int = 0,
        phantom_size: int = 64,
        phantom_scale: int = 4,
        phantom_bands: int = 3,
        phantom_seed: int = 0,
        bigearthnet_root: str | None = None,
        bigearthnet_bands: list[str] | None = None,
        hr_raster: str | None = None,
        hr_tile: int = 120,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters(logger=False)
        self.root = Path(root)
        self.bigearthnet_root, self.bigearthnet_bands = bigearthnet_root, bigearthnet_bands
        self.hr_raster, self.hr_tile = hr_raster, hr_tile
        self.bands, self.scaling, self.patch_size = bands, scaling, patch_size
        self.samples_per_epoch, self.val_fraction = samples_per_epoch, val_fraction
        self.check_files = check_files
        self.phantoms, self.phantom_size, self.phantom_scale = phantoms, phantom_size, phantom_scale
        self.phantom_bands, self.phantom_seed = phantom_bands, phantom_seed

    def prepare_data(self) -> None:
        if any((self.root / "hr").glob("*.tif")):
            return
        if self.bigearthnet_root:
            from ..data.sr_pairs import S2_RGB, bigearthnet_sr_pairs

            bands = self.bigearthnet_bands if self.bigearthnet_bands is not None else S2_RGB
            bigearthnet_sr_pairs(self.bigearthnet_root, self.root, bands, scale=self.phantom_scale)
        elif self.hr_raster:
            from ..data.sr_pairs import raster_sr_pairs

            raster_sr_pairs(self.hr_raster, self.root, tile=self.hr_tile, scale=self.phantom_scale)
        elif self.phantoms:
            from ..data.synthetic import make_sr_pairs

            make_sr_pairs(self.root, n=self.phantoms, hr_size=self.phantom_size, scale=self.phantom_scale,
                          bands=self.phantom_bands, seed=self.phantom_seed)

    def _datasets(self, files_hr: list[Path], files_lr: list[Path]):
        from ..data.geo import SRPairDataset, raster_dataset

        kw = {"scaling": self.scaling, "expected_bands": self.bands}
        return SRPairDataset(raster_dataset([str(f) for f in files_hr], **kw),
                             raster_dataset([str(f) for f in files_lr], **kw))

    def _files(self, sub: str) -> list[Path]:
        folder = self.root / sub
        if not folder.is_dir():
            raise DataError(folder, f"folder of the {sub.upper()} scenes does not exist",
                            "put the HR GeoTIFFs in <root>/hr/ and their LR versions in <root>/lr/, or set "
                            "`phantoms` / `bigearthnet_root` to generate pairs")
        return sorted(p for p in folder.glob("*.tif") if not p.name.startswith("."))

    def pairs(self) -> list[tuple[Path, Path]]:
        """The sorted (HR, LR) file pairs, each checked (from the headers) to cover the same ground."""
        from ..io.geotiff import open_geotiff

        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder does not exist" if not self.root.exists() else
                            "is a file, not a dataset folder", "check data.init_args.root, or set `phantoms` / "
                            "`bigearthnet_root` to generate pairs there")
        hr_files, lr_files = self._files("hr"), self._files("lr")
        if not hr_files:
            raise DataError(self.root / "hr", "holds no .tif scenes", "put the HR GeoTIFFs there")
        if len(hr_files) != len(lr_files):
            raise DataError(self.root, f"{len(hr_files)} HR but {len(lr_files)} LR GeoTIFFs",
                            "give every HR scene its LR scene (hr/ and lr/ sorted alike)")
        for hr, lr in zip(hr_files, lr_files):
            with open_geotiff(hr) as a, open_geotiff(lr) as b:
                tol = max(abs(b.transform.a), abs(b.transform.e))  # one LR pixel
                if any(abs(u - v) > tol + 1e-6 for u, v in zip(a.bounds, b.bounds)):
                    raise DataError(lr, f"(paired by sorted name with {hr.name}) covers {tuple(b.bounds)}, not the "
                                    f"HR scene's {tuple(a.bounds)}", "name the files so that hr/ and lr/ sort "
                                    "alike (e.g. the same file name in both), and give each HR scene its own LR")
        return list(zip(hr_files, lr_files))

    def setup(self, stage: str | None = None) -> None:
        from ..data.geo import grid_sampler, random_sampler
        from ..data.validation import validate_geotiff_files

        self.prepare_data()
        pairs = self.pairs()
        train, val = split_train_val(pairs, self.val_fraction, "HR/LR scene pairs", self.root)
        if self.check_files:
            validate_geotiff_files([p for pair in pairs for p in pair], "scene")
        keep = (K.COND, K.IMAGE)
        tr = self._datasets([p[0] for p in train], [p[1] for p in train])
        va = self._datasets([p[0] for p in val], [p[1] for p in val])
        random_sampler(tr, self.patch_size, 1)  # DataError now if no scene fits the patch
        size, n, seed = self.patch_size, self.samples_per_epoch, self.seed

        def draw(epoch: int) -> list:
            return list(random_sampler(tr, size, n, seed=item_seed(seed, epoch, 0)))

        self.train_dataset = _QueryDataset(tr, draw, n, keep)
        grid = list(grid_sampler(va, self.patch_size))
        self.val_dataset = _QueryDataset(va, grid, len(grid), keep)
        self.test_dataset = self.val_dataset

    def train_dataloader(self) -> ResumableDataLoader:
        loader = super().train_dataloader()
        self.train_dataset.follow(loader.sampler)  # the epoch of the random patches is the sampler's
        return loader
