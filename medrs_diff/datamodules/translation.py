"""Paired translation data modules (DDBM): Sentinel-1 -> Sentinel-2 (BigEarthNet) and cloudy -> clear S2 (SEN12MS-CR).

Items: ``cond`` (C_in, p, p) and ``image`` (C_out, p, p) in model space, ``case`` (scene name) and the two
scaling records. Each scene is read once in raw units (:mod:`medrs_diff.data.translation`) and mapped to
model space by the named scalings the module records as ``scaling`` (input) and ``target_scaling``
(output), the names ``medrs-diff infer`` reads back from the checkpoint, so a GeoTIFF in the same units is
mapped exactly as in training.

Splits are by scene (never by crop): ``test_scenes`` are indices into the sorted scene list held out for
validation / test (whole scenes, centre-cropped to ``eval_size`` when set); the others train, as random
``patch_size`` crops with random flips and 90-degree turns (seeded by ``(seed, epoch, index)``). With no
test scene, validation uses fixed crops of the training scenes.

- :class:`Sar2OptDataModule`: S1 VV, VH (dB) -> S2 10 m bands (DN); ``root`` a ``bigearthnet_s1_s2``
  folder, or ``phantoms`` synthetic scenes (:func:`~medrs_diff.data.translation.sar_optical_phantom`).
- :class:`CloudPairDataModule`: [S1 VV, VH dB +] cloudy S2 (DN) -> clear S2 (DN); ``root`` a folder of
  SEN12MS-CR triplets (``ID_input.tif`` S1 + cloudy S2, ``ID_target.tif``), or ``phantoms`` (clear phantom
  scenes under procedural clouds and shadows, :func:`~medrs_diff.data.cloud.simulate_clouds`).
  ``scaling: s1_db_s2_dn`` (default) stacks S1 first, as the triplets' ``ID_input.tif`` does;
  ``scaling: reflectance`` gives the cloudy S2 alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data import keys as K
from ..data.cloud import S2_L1C_BANDS, read_triplet, simulate_clouds, triplet_ids
from ..data.scaling import SCALING_NAMES, resolve
from ..data.seeding import EpochAware, crop_slices, item_seed
from ..data.translation import RGBN, bigearthnet_pairs, check_10m_bands, sar_optical_phantom
from ..errors import ArgumentError, DataError
from .base import DictDataModule, ResumableDataLoader

#: (name, cond in model space (C_in, H, W), target in model space (C_out, H, W))
Scene = tuple[str, np.ndarray, np.ndarray]


def collate_pairs(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``cond`` / ``image``; names and scaling records stay lists."""
    out: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in (K.COND, K.IMAGE)}
    for k in ("case", K.scaling_key(K.COND), K.scaling_key(K.IMAGE)):
        out[k] = [it[k] for it in items]
    return out


class _PairItems(EpochAware, Dataset):
    """Random (training) or fixed (evaluation) crops of paired scenes."""

    def __init__(self, scenes: list[Scene], records: tuple[dict, dict], *, patch: int | None, length: int, seed: int,
                 train: bool) -> None:
        self.scenes, self.records, self.patch = scenes, records, patch
        self.length, self.seed, self.train = length, seed, train

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.train:
            rng = self.item_rng(i)
            name, cond, target = self.scenes[int(rng.integers(len(self.scenes)))]
            win = (slice(None), *crop_slices(rng, cond.shape[1:], (self.patch, self.patch)))
            cond, target = cond[win], target[win]
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            cond, target = (np.rot90(a, k, axes=(1, 2)) for a in (cond, target))
            if flip:
                cond, target = cond[:, :, ::-1], target[:, :, ::-1]
        else:
            name, cond, target = self.scenes[i % len(self.scenes)]
            if self.patch is not None:
                h, w = cond.shape[1:]
                y0, x0 = (h - self.patch) // 2, (w - self.patch) // 2
                win = (slice(None), slice(y0, y0 + self.patch), slice(x0, x0 + self.patch))
                cond, target = cond[win], target[win]
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
        return {K.COND: as_t(cond), K.IMAGE: as_t(target), "case": name,
                K.scaling_key(K.COND): self.records[0], K.scaling_key(K.IMAGE): self.records[1]}


class _PairDataModule(DictDataModule):
    """Shared machinery: scenes in raw units -> model space, scene split, crops (see the module notes)."""

    def __init__(self, *, scaling: str, target_scaling: str, patch_size: int, eval_size: int | None,
                 test_scenes: Sequence[int], samples_per_epoch: int, batch_size: int, val_batch_size: int | None,
                 num_workers: int, seed: int) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed,
                         collate_fn=collate_pairs)
        if patch_size < 1 or samples_per_epoch < 1 or (eval_size is not None and eval_size < 1):
            raise ArgumentError("patch_size / eval_size / samples_per_epoch", "must be >= 1",
                                "set them to 1 or more (eval_size null: whole test scenes)")
        for name, spec in (("scaling", scaling), ("target_scaling", target_scaling)):
            if not isinstance(spec, str) or spec not in SCALING_NAMES:
                raise ArgumentError(name, f"unknown scaling {spec!r}", f"use one of {', '.join(SCALING_NAMES)}")
        self.scaling, self.target_scaling = scaling, target_scaling
        self.patch, self.eval_size = int(patch_size), eval_size
        self.test_scenes = [int(k) for k in test_scenes]
        self.samples_per_epoch = int(samples_per_epoch)
        self.scene_names: list[str] = []

    def raw_scenes(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(name, input, target) in raw units (dB / DN), sorted by name."""
        raise NotImplementedError

    def scenes(self) -> list[Scene]:
        """Every scene in model space (inputs by ``scaling``, targets by ``target_scaling``)."""
        out = []
        for name, cond, target in self.raw_scenes():
            if cond.shape[1:] != target.shape[1:]:
                raise DataError(name, f"input {cond.shape[1:]} and target {target.shape[1:]} differ in size",
                                "give both on one grid")
            sc, st = resolve(self.scaling, cond), resolve(self.target_scaling, target)
            out.append((name, np.asarray(sc.forward(cond), np.float32), np.asarray(st.forward(target), np.float32)))
        return out

    def split(self, scenes: list[Scene]) -> tuple[list[Scene], list[Scene]]:
        bad = [k for k in self.test_scenes if not 0 <= k < len(scenes)]
        if bad:
            raise ArgumentError("test_scenes", f"indices {bad} outside 0..{len(scenes) - 1}",
                                "index the sorted scene list")
        test = [s for k, s in enumerate(scenes) if k in self.test_scenes]
        train = [s for k, s in enumerate(scenes) if k not in self.test_scenes]
        if not train:
            raise ArgumentError("test_scenes", "holds every scene: nothing left to train on",
                                "hold out fewer scenes")
        small = [n for n, c, _ in scenes if min(c.shape[1:]) < max(self.patch, self.eval_size or 0)]
        if small:
            raise ArgumentError("patch_size / eval_size", f"exceed the size of scene(s) {small[:3]}",
                                "use a smaller patch_size / eval_size")
        return train, test

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        scenes = self.scenes()
        self.scene_names = [s[0] for s in scenes]
        train, test = self.split(scenes)
        c_rec, t_rec = (resolve(s, scenes[0][i][:, :1, :1]).to_dict()
                        for s, i in ((self.scaling, 1), (self.target_scaling, 2)))
        records = (c_rec, t_rec)
        self.train_dataset = _PairItems(train, records, patch=self.patch, length=self.samples_per_epoch,
                                        seed=self.seed, train=True)
        if test:
            self.val_dataset = _PairItems(test, records, patch=self.eval_size, length=len(test), seed=self.seed,
                                          train=False)
        else:
            self.val_dataset = _PairItems(train, records, patch=self.patch, length=len(train), seed=self.seed,
                                          train=False)
        self.test_dataset = self.val_dataset

    def train_dataloader(self) -> ResumableDataLoader:
        loader = super().train_dataloader()
        self.train_dataset.follow(loader.sampler)
        return loader


class Sar2OptDataModule(_PairDataModule):
    """Sentinel-1 VV, VH (dB) -> Sentinel-2 10 m bands (DN): BigEarthNet pairs or phantoms (module notes)."""

    def __init__(
        self,
        root: str | None = None,
        bands: Sequence[str] = RGBN,
        phantoms: int = 0,
        phantom_size: int = 64,
        patch_size: int = 64,
        eval_size: int | None = None,
        test_scenes: Sequence[int] = (),
        samples_per_epoch: int = 256,
        scaling: str = "s1_db",
        target_scaling: str = "reflectance",
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(scaling=scaling, target_scaling=target_scaling, patch_size=patch_size, eval_size=eval_size,
                         test_scenes=test_scenes, samples_per_epoch=samples_per_epoch, batch_size=batch_size,
                         val_batch_size=val_batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters(logger=False)
        self.root, self.bands = root, check_10m_bands(bands)
        self.phantoms, self.phantom_size = int(phantoms), int(phantom_size)
        if not root and self.phantoms < 1:
            raise DataError("Sar2OptDataModule", "has no source", "set root (a bigearthnet_s1_s2 folder) or phantoms")

    def raw_scenes(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        out = []
        for k in range(self.phantoms):
            s1, s2 = sar_optical_phantom(self.phantom_size, item_seed(self.seed, 0, k), self.bands)
            out.append((f"phantom_{k:03d}", s1, s2 * 1e4))
        if self.root:
            out += [(name, s1, s2 * 1e4) for name, s1, s2 in bigearthnet_pairs(self.root, self.bands)]
        return out


class CloudPairDataModule(_PairDataModule):
    """[S1 dB +] cloudy S2 (DN) -> clear S2 (DN): SEN12MS-CR triplets or cloudy phantoms (module notes)."""

    def __init__(
        self,
        root: str | None = None,
        bands: Sequence[str] = RGBN,
        phantoms: int = 0,
        phantom_size: int = 64,
        patch_size: int = 64,
        eval_size: int | None = None,
        test_scenes: Sequence[int] = (),
        samples_per_epoch: int = 256,
        scaling: str = "s1_db_s2_dn",
        target_scaling: str = "reflectance",
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        if scaling not in ("s1_db_s2_dn", "reflectance"):
            raise ArgumentError("scaling", f"unknown input {scaling!r}",
                                "use s1_db_s2_dn (S1 VV, VH dB then cloudy S2 DN) or reflectance (cloudy S2 DN only)")
        super().__init__(scaling=scaling, target_scaling=target_scaling, patch_size=patch_size, eval_size=eval_size,
                         test_scenes=test_scenes, samples_per_epoch=samples_per_epoch, batch_size=batch_size,
                         val_batch_size=val_batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters(logger=False)
        unknown = [b for b in bands if b not in S2_L1C_BANDS]
        if unknown or not bands:
            raise ArgumentError("bands", f"unknown band(s) {unknown}", f"choose among {list(S2_L1C_BANDS)}")
        self.root, self.bands, self.use_sar = root, list(bands), scaling == "s1_db_s2_dn"
        self.phantoms, self.phantom_size = int(phantoms), int(phantom_size)
        if not root and self.phantoms < 1:
            raise DataError("CloudPairDataModule", "has no source",
                            "set root (a sen12mscr_triplets folder) or phantoms")

    def _stack(self, s1: np.ndarray, cloudy_refl: np.ndarray) -> np.ndarray:
        return np.concatenate([s1, cloudy_refl * 1e4]) if self.use_sar else cloudy_refl * 1e4

    def raw_scenes(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        out = []
        if self.phantoms:
            check_10m_bands(self.bands)
        for k in range(self.phantoms):
            seed = item_seed(self.seed, 0, k)
            s1, clear = sar_optical_phantom(self.phantom_size, seed, self.bands)
            rng = np.random.default_rng(seed + 1)
            cloudy, _ = simulate_clouds(clear, rng, coverage=float(rng.uniform(0.2, 0.7)), bands=self.bands)
            out.append((f"phantom_{k:03d}", self._stack(s1, cloudy), clear * 1e4))
        if self.root:
            for sid in triplet_ids(self.root):
                s = read_triplet(self.root, sid, self.bands)
                out.append((f"triplet_{sid}", self._stack(s.sar[0], s.s2[0]), s.target * 1e4))
        return out


__all__ = ["CloudPairDataModule", "Sar2OptDataModule", "collate_pairs"]
