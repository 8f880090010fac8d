"""(past, future) radar windows for the diffusion nowcast, from a folder of radar files or a synthetic twin.

Real data (``root``): the files are read once by :func:`~medrs_diff.data.radar_sequence.read_radar` (KNMI
HDF5 or any pysteps importer), checked (mm/h, regular time step, a gap is refused naming the missing
timestamps), cut to ``box`` (rows y0:y1, columns x0:x1; null: the whole grid), averaged ``factor`` x
``factor`` and mapped to the log-rain model space (:func:`~medrs_diff.data.radar_sequence.rain_to_model`;
missing pixels are no rain). Windows of ``past`` + ``future`` frames are **split by time** at frame ``cut``
(:func:`~medrs_diff.data.radar_sequence.split_windows`: training windows end before the cut, validation
windows start at it, no frame shared). Training items: a window start and a ``patch_size`` crop drawn
from ``(seed, epoch, index)``; validation: the first ``val_windows`` test windows, fixed centre crops.

Synthetic twin (``synthetic`` > 0 sequences, in memory): Gaussian rain cells advected by one random
velocity per sequence (:func:`~medrs_diff.data.radar_sequence.advected_rain`), ``synthetic_size`` pixels;
validation sequences come from another seed.

Items: ``cond`` (past, 1, p, p) and ``image`` (future, 1, p, p), float32 model space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.radar_sequence import advected_rain, check_sequence, rain_to_model, read_radar, split_windows
from ..data.seeding import EpochAware, crop_slices
from ..errors import ArgumentError, DataError
from .base import DictDataModule, ResumableDataLoader


class _Windows(EpochAware, Dataset):
    """Items from a (S, T, H, W) stack of model-space sequences: (sequence, start) pairs, cropped."""

    def __init__(self, seqs: np.ndarray, starts: list[tuple[int, int]], past: int, future: int, patch: int | None,
                 length: int, seed: int, fixed: bool) -> None:
        self.seqs, self.starts, self.past, self.future = seqs, starts, past, future
        self.patch, self.length, self.seed, self.fixed = patch, int(length), int(seed), fixed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = self.item_rng(i, self.fixed)
        k, s = self.starts[i % len(self.starts)] if self.fixed else self.starts[int(rng.integers(len(self.starts)))]
        win = self.seqs[k, s:s + self.past + self.future]
        if self.patch is not None:
            h, w = win.shape[-2:]
            if self.fixed:
                y0, x0 = (h - self.patch) // 2, (w - self.patch) // 2
                win = win[:, y0:y0 + self.patch, x0:x0 + self.patch]
            else:
                win = win[(slice(None), *crop_slices(rng, win.shape[-2:], (self.patch, self.patch)))]
        t = torch.from_numpy(np.ascontiguousarray(win, dtype=np.float32))[:, None]
        return {"cond": t[:self.past], "image": t[self.past:]}


class NowcastDataModule(DictDataModule):
    """Radar windows split by time, or the synthetic advected-rain twin (see the module notes)."""

    def __init__(
        self,
        root: str | None = None,
        importer: str = "knmi_hdf5",
        past: int = 4,
        future: int = 12,
        cut: int = 60,
        box: list[int] | None = None,
        factor: int = 1,
        patch_size: int | None = None,
        stride: int = 1,
        samples_per_epoch: int = 256,
        val_windows: int = 2,
        synthetic: int = 0,
        synthetic_size: int = 32,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters(logger=False)
        for name, v in (("past", past), ("future", future), ("factor", factor), ("stride", stride),
                        ("samples_per_epoch", samples_per_epoch), ("val_windows", val_windows)):
            if int(v) < 1:
                raise ArgumentError(f"data.init_args.{name}", f"must be >= 1, got {v}", "pass a positive integer")
        if synthetic < 0 or (synthetic == 0 and not root):
            raise ArgumentError("data.init_args.root", "no radar folder and no synthetic sequences",
                                "set root to a folder of radar files or synthetic to a number of sequences")
        if box is not None and (len(box) != 4 or box[0] >= box[1] or box[2] >= box[3]):
            raise ArgumentError("data.init_args.box", f"{box} is not [y0, y1, x0, x1] with y0 < y1, x0 < x1",
                                "give rows y0:y1 and columns x0:x1")
        self.root, self.importer, self.past, self.future, self.cut = root, importer, int(past), int(future), int(cut)
        self.box, self.factor, self.patch, self.stride = box, int(factor), patch_size, int(stride)
        self.samples_per_epoch, self.val_windows = int(samples_per_epoch), int(val_windows)
        self.synthetic, self.synthetic_size = int(synthetic), int(synthetic_size)

    def load_sequence(self) -> np.ndarray:
        """The real sequence in model space (T, H, W) after the checks, box and averaging."""
        files = sorted(p for p in Path(str(self.root)).iterdir() if p.is_file() and not p.name.startswith(".")) \
            if Path(str(self.root)).is_dir() else []
        if not files:
            raise DataError(self.root, "is not a folder of radar files", "point data.init_args.root at one")
        da = check_sequence(read_radar(files, importer=self.importer), min_frames=self.past + self.future,
                            where=self.root)
        if self.box is not None:
            y0, y1, x0, x1 = self.box
            if y1 > da.sizes["y"] or x1 > da.sizes["x"]:
                raise ArgumentError("data.init_args.box", f"{self.box} exceeds the grid {da.shape[1:]}",
                                    "pick a box inside the radar grid")
            da = da.isel(y=slice(y0, y1), x=slice(x0, x1))
        if self.factor > 1:
            da = da.coarsen(y=self.factor, x=self.factor, boundary="trim").mean()
        return rain_to_model(da.values)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        n = self.past + self.future
        if self.synthetic > 0:
            s = self.synthetic_size
            train = rain_to_model(advected_rain(self.synthetic, n, s, seed=self.seed))
            val = rain_to_model(advected_rain(self.val_windows, n, s, seed=self.seed + 10_007))
            seqs = np.concatenate([train, val])
            tr = [(k, 0) for k in range(self.synthetic)]
            va = [(self.synthetic + k, 0) for k in range(self.val_windows)]
        else:
            seqs = self.load_sequence()[None]
            split = split_windows(seqs.shape[1], self.past, self.future, self.cut, stride=self.stride)
            if not split.train:
                raise DataError(self.root, f"no training window of {n} frames before frame {self.cut}",
                                "move the cut later or shorten the windows")
            tr = [(0, s) for s in split.train]
            va = [(0, s) for s in split.test[: self.val_windows]]
        if self.patch is not None and self.patch > min(seqs.shape[-2:]):
            raise ArgumentError("data.init_args.patch_size", f"{self.patch} exceeds the grid {seqs.shape[-2:]}",
                                "use a smaller patch_size")
        common = dict(past=self.past, future=self.future, patch=self.patch)
        self.train_dataset = _Windows(seqs, tr, length=self.samples_per_epoch, seed=self.seed, fixed=False, **common)
        self.val_dataset = _Windows(seqs, va, length=len(va), seed=self.seed + 1, fixed=True, **common)
        self.test_dataset = self.val_dataset

    def train_dataloader(self) -> ResumableDataLoader:
        loader = super().train_dataloader()
        self.train_dataset.follow(loader.sampler)
        return loader


__all__ = ["NowcastDataModule"]
