"""Cloud-removal time series (SeqDMs): clear S2 + procedural clouds on several dates, plus real cloudy / clear pairs.

Training items are built on the fly from clear scenes (seeded by ``(seed, epoch, index)``): a random
crop of a clear S2 image becomes the target; ``T`` dates (``min_dates``..``max_dates``) of it are clouded
by :func:`~medrs_diff.data.cloud.simulate_clouds` (each date its own clouds, shadows and a small gain
change), each with the scene's S1 (when the source has one) plus 0.5 dB noise. Clear sources:
``bigearthnet_root`` (S2 L2A + S1, no B10), ``eolearn_root`` (the 3 clear dates), the clear images of the
training pairs, or ``phantoms`` synthetic scenes. With ``pairs_root``, the pairs listed in ``train_pairs``
are also drawn as real one-date items (real clouds, brightness mask, no S1) with probability
``real_fraction``.

Items (model space, :mod:`medrs_diff.data.cloud` scalings, recorded under ``*_scaling``): ``image``
(C, p, p) clear target; ``cond`` (T, C, p, p) cloudy dates; ``cloud_mask`` (T, 1, p, p); ``sar`` (T, 2, p, p)
(zeros where absent); ``sar_valid`` (T,); ``date_valid`` (T,). :func:`collate_series` pads ``T`` to the
longest sequence of a batch (``date_valid`` False on padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data import keys as K
from ..data.cloud import (
    S1_POLS,
    S2_L1C_BANDS,
    read_bigearthnet,
    read_eolearn,
    read_pairs,
    refl_scaling,
    s1_scaling,
    scene_phantom,
    simulate_clouds,
)
from ..data.seeding import EpochAware, crop_slices, item_seed
from ..errors import ArgumentError, DataError
from .base import DictDataModule, ResumableDataLoader

SAR_VALID = K.SAR_VALID
DATE_VALID = K.DATE_VALID


def collate_series(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack series items, padding the date axis to the longest (``date_valid`` False on padded dates)."""
    t = max(it[K.COND].shape[0] for it in items)
    out: dict[str, Any] = {}
    for key in (K.COND, K.CLOUD_MASK, K.SAR, SAR_VALID, DATE_VALID):
        rows = []
        for it in items:
            x = it[key]
            pad = torch.zeros((t - x.shape[0], *x.shape[1:]), dtype=x.dtype)
            rows.append(torch.cat([x, pad]))
        out[key] = torch.stack(rows)
    out[K.IMAGE] = torch.stack([it[K.IMAGE] for it in items])
    for key in ("case", K.scaling_key(K.IMAGE), K.scaling_key(K.SAR)):
        out[key] = [it[key] for it in items]
    return out


def series_item(target: np.ndarray, cloudy: np.ndarray, masks: np.ndarray, sar: np.ndarray | None,
                case: str) -> dict[str, Any]:
    """One item in model space from reflectance arrays (target (C,H,W), cloudy (T,C,H,W), masks (T,1,H,W)) and
    S1 dB (T, 2, H, W) or None."""
    rs, ss = refl_scaling(), s1_scaling()
    t = cloudy.shape[0]
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    sar_t = ss.forward(as_t(sar), channel_axis=1) if sar is not None else torch.zeros(t, len(S1_POLS),
                                                                                        *cloudy.shape[2:])
    return {K.IMAGE: rs.forward(as_t(target)), K.COND: rs.forward(as_t(cloudy), channel_axis=1),
            K.CLOUD_MASK: as_t(masks), K.SAR: sar_t,
            SAR_VALID: torch.full((t,), float(sar is not None)), DATE_VALID: torch.ones(t, dtype=torch.bool),
            "case": case, K.scaling_key(K.IMAGE): rs.to_dict(), K.scaling_key(K.SAR): ss.to_dict()}


class _SeriesItems(EpochAware, Dataset):
    def __init__(self, clear: list[tuple[str, np.ndarray, np.ndarray | None]],
                 real: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], *, bands: Sequence[str], patch: int,
                 length: int, seed: int, dates: tuple[int, int], real_fraction: float, fixed: bool) -> None:
        self.clear, self.real, self.bands, self.patch = clear, real, list(bands), patch
        self.length, self.seed, self.dates, self.real_fraction, self.fixed = length, seed, dates, real_fraction, fixed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = self.item_rng(i, self.fixed)
        p = (self.patch, self.patch)
        if self.real and (not self.clear or rng.uniform() < self.real_fraction):
            name, cloudy, mask, target = self.real[int(rng.integers(len(self.real)))]
            win = (slice(None), *crop_slices(rng, target.shape[1:], p))
            return series_item(target[win], cloudy[:, win[0], win[1], win[2]], mask[:, :, win[1], win[2]], None, name)
        name, clear, sar = self.clear[int(rng.integers(len(self.clear)))]
        win = crop_slices(rng, clear.shape[1:], p)
        target = clear[(slice(None), *win)]
        t = int(rng.integers(self.dates[0], self.dates[1] + 1))
        cloudy, masks = zip(*[simulate_clouds(np.clip(target * rng.normal(1.0, 0.03), 0, 1), rng, bands=self.bands)
                              for _ in range(t)], strict=True)
        s1 = None
        if sar is not None:
            base = sar[(slice(None), *win)]
            s1 = np.stack([base + rng.normal(0, 0.5, base.shape) for _ in range(t)])
        return series_item(target, np.stack(cloudy), np.stack(masks), s1, name)


class CloudSeriesDataModule(DictDataModule):
    """Simulated-cloud series on clear scenes (+ real training pairs); see the module notes."""

    def __init__(
        self,
        bands: Sequence[str] = S2_L1C_BANDS,
        patch_size: int = 64,
        min_dates: int = 1,
        max_dates: int = 3,
        bigearthnet_root: str | None = None,
        eolearn_root: str | None = None,
        pairs_root: str | None = None,
        train_pairs: Sequence[int] = (),
        real_fraction: float = 0.25,
        phantoms: int = 0,
        phantom_size: int = 64,
        samples_per_epoch: int = 256,
        val_samples: int = 4,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed,
                         collate_fn=collate_series)
        self.save_hyperparameters(logger=False)
        if not 1 <= min_dates <= max_dates:
            raise ArgumentError("min_dates / max_dates", f"need 1 <= min_dates <= max_dates, got {min_dates}, "
                                f"{max_dates}", "e.g. min_dates 1, max_dates 3")
        if patch_size < 1 or samples_per_epoch < 1 or val_samples < 1:
            raise ArgumentError("patch_size / samples_per_epoch / val_samples", "must be >= 1", "set them to 1 or more")
        if not 0.0 <= real_fraction <= 1.0:
            raise ArgumentError("real_fraction", f"must lie in [0, 1], got {real_fraction}", "e.g. 0.25")
        unknown = [b for b in bands if b not in S2_L1C_BANDS]
        if unknown:
            raise ArgumentError("bands", f"unknown band(s) {unknown}", f"choose among {list(S2_L1C_BANDS)}")
        self.bands, self.patch, self.dates = list(bands), int(patch_size), (int(min_dates), int(max_dates))
        self.roots = {"bigearthnet": bigearthnet_root, "eolearn": eolearn_root, "pairs": pairs_root}
        self.train_pairs, self.real_fraction = [int(k) for k in train_pairs], float(real_fraction)
        self.phantoms, self.phantom_size = int(phantoms), int(phantom_size)
        self.samples_per_epoch, self.val_samples = int(samples_per_epoch), int(val_samples)

    def sources(self) -> tuple[list, list]:
        """(clear scenes [(name, S2 reflectance, S1 dB or None)], real pairs [(name, cloudy, mask, clear)])."""
        clear: list[tuple[str, np.ndarray, np.ndarray | None]] = []
        real: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        if self.phantoms > 0:
            for k in range(self.phantoms):
                s2, s1 = scene_phantom(self.phantom_size, len(self.bands), item_seed(self.seed, 0, k))
                clear.append((f"phantom_{k:03d}", s2, s1))
        if self.roots["bigearthnet"]:
            clear += list(read_bigearthnet(self.roots["bigearthnet"], self.bands))
        if self.roots["eolearn"]:
            series = read_eolearn(self.roots["eolearn"])
            idx = [S2_L1C_BANDS.index(b) for b in self.bands]
            clear += [(f"eolearn_{d}", series[d][idx], None) for d in (2, 3, 4)]
        if self.roots["pairs"]:
            pairs = read_pairs(self.roots["pairs"], self.bands)
            bad = [k for k in self.train_pairs if not 0 <= k < len(pairs)]
            if bad:
                raise ArgumentError("train_pairs", f"indices {bad} outside 0..{len(pairs) - 1}", "index pairs.csv rows")
            for k in self.train_pairs:
                s = pairs[k][1]
                clear.append((s.name, s.target, None))
                real.append((s.name, s.s2, s.cloud, s.target))
        if not clear and not real:
            raise DataError("CloudSeriesDataModule", "has no source", "set phantoms, bigearthnet_root, eolearn_root "
                            "or pairs_root with train_pairs")
        small = [n for n, a, *_ in clear if min(a.shape[1:]) < self.patch]
        if small:
            raise ArgumentError("patch_size", f"{self.patch} exceeds scenes {small[:3]}", "use a smaller patch_size")
        return clear, real

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        clear, real = self.sources()
        common = dict(bands=self.bands, patch=self.patch, dates=self.dates, real_fraction=self.real_fraction)
        self.train_dataset = _SeriesItems(clear, real, length=self.samples_per_epoch, seed=self.seed, fixed=False,
                                          **common)
        self.val_dataset = _SeriesItems(clear, real, length=self.val_samples, seed=self.seed + 1, fixed=True, **common)
        self.test_dataset = self.val_dataset

    def train_dataloader(self) -> ResumableDataLoader:
        loader = super().train_dataloader()
        self.train_dataset.follow(loader.sampler)
        return loader


__all__ = ["DATE_VALID", "SAR_VALID", "CloudSeriesDataModule", "collate_series", "series_item"]

