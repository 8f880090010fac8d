"""The base of every data module: a Lightning data module over map-style datasets of batch dicts,
seeded, rank-aware and resumable mid-epoch.

Determinism: the training order of epoch ``e`` is a permutation drawn from ``seed + e`` (the
DistributedSampler rule, so it is also split across DDP ranks without Lightning replacing the
sampler); worker processes are seeded from a per-epoch generator derived from ``(seed, epoch, rank)``
and seed Python / NumPy from their torch seed. The global RNGs are never touched by data loading.

Resume: the training loader reports how many batches of the current epoch it has served
(``state_dict``), Lightning saves that in the checkpoint and hands it back on resume, and the loader
then skips exactly those samples (at the sampler, without loading them). Lightning only does this for
loaders that implement ``state_dict`` / ``load_state_dict``; a plain DataLoader restarts the epoch.

Random augmentations and resume: skipped samples are never loaded, so an augmentation whose random
state advances per loaded sample (MONAI random transforms keep their own ``RandomState``) would
draw differently after a resume. A dataset makes its augmentation exact at any step by reseeding it
per item from ``(seed, epoch, index)`` (:mod:`medrs_diff.data.seeding`), reading the epoch from the
loader's sampler, which Lightning advances (as :class:`~medrs_diff.datamodules.nifti.NiftiSegmentationDataModule`
does).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..errors import ArgumentError, DataError

PathLike = str | os.PathLike


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed Python and NumPy from the worker's torch seed (base seed + worker id)."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)  # noqa: NPY002 - seed the legacy global state that transforms use


def _mix(seed: int, epoch: int, rank: int) -> int:
    return ((int(seed) * 1_000_003 + int(epoch)) * 1_009 + int(rank)) % (2**63 - 1)


class ResumableSampler(DistributedSampler):
    """A DistributedSampler (seeded, per-epoch permutation; ``num_replicas=1`` for one process) that can
    start the next iteration ``start`` samples into the epoch."""

    def __init__(
        self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning can save and restore mid-epoch.

    With a :class:`ResumableSampler` the served samples are skipped without loading them; with any
    other sampler (Lightning swaps in a sequential one for ``overfit_batches``) the served batches
    are loaded and dropped.
    """

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seed = seed
        self._served = 0  # batches of the current epoch handed out
        self._resume: tuple[int, int] | None = None  # (epoch, batches) to skip on the next iteration

    def _epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def __iter__(self) -> Iterator[Any]:
        # Worker base seeds come from this generator, never from the global torch RNG.
        self.generator = torch.Generator().manual_seed(
            _mix(self.seed, self._epoch(), getattr(self.sampler, "rank", 0)))
        skip = 0
        if self._resume is not None:
            epoch, served = self._resume
            self._resume = None
            if epoch == self._epoch() and served < len(self):
                skip = served
        drop = skip
        if isinstance(self.sampler, ResumableSampler):
            self.sampler.start = skip * int(self.batch_size or 1)
            drop = 0
        self._served = skip
        return self._count(super().__iter__(), drop)

    def _count(self, it: Iterator[Any], drop: int) -> Iterator[Any]:
        for k, batch in enumerate(it):
            if k < drop:
                continue
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch(), "batches": int(self._served)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))


class DictDataModule(L.LightningDataModule):
    """Train / val / test / predict datasets of batch dicts with seeded, resumable, rank-aware loading.

    Subclasses (one file per dataset family in :mod:`medrs_diff.datamodules`) build their datasets in
    ``setup(stage)`` and assign ``self.train_dataset`` / ``val_dataset`` / ``test_dataset`` /
    ``predict_dataset``; the loaders here do the rest. ``persistent_workers`` keeps worker processes
    (faster) at the cost of exact resume when workers draw random augmentations (their seeds are then
    fixed at the first epoch).

    Subclasses record their arguments with ``save_hyperparameters(logger=False)``: the checkpoint keeps
    them (``datamodule_hyper_parameters``, read back by ``infer``), the logger gets the task's alone.
    Lightning refuses to merge the two when a key differs, and both have ``seed`` (the task's seeds the
    training noise, the data module's the patch draws), so a run with two seeds would stop at start.
    """

    def __init__(
        self,
        train: Dataset | None = None,
        val: Dataset | None = None,
        test: Dataset | None = None,
        predict: Dataset | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ArgumentError(type(self).__name__, f"batch_size must be >= 1, got {batch_size}",
                                "set data.init_args.batch_size to 1 or more")
        if val_batch_size is not None and val_batch_size < 1:
            raise ArgumentError(type(self).__name__, f"val_batch_size must be >= 1, got {val_batch_size}",
                                "set data.init_args.val_batch_size to 1 or more, or null to use batch_size")
        if num_workers < 0:
            raise ArgumentError(type(self).__name__, f"num_workers must be >= 0, got {num_workers}",
                                "set data.init_args.num_workers to 0 (main process) or more")
        self.train_dataset, self.val_dataset, self.test_dataset, self.predict_dataset = train, val, test, predict
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size if val_batch_size is not None else batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.collate_fn = collate_fn

    def _dataset(self, split: str) -> Dataset:
        ds = getattr(self, f"{split}_dataset", None)
        if ds is None:
            raise RuntimeError(
                f"{type(self).__name__} has no {split} dataset; pass {split}=... or set self.{split}_dataset "
                "in setup(stage)"
            )
        return ds

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _common(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "collate_fn": self.collate_fn,
            "pin_memory": self.pin_memory,
            "worker_init_fn": seed_worker,
            "persistent_workers": self.persistent_workers,
        }

    def train_dataloader(self) -> ResumableDataLoader:
        ds = self._dataset("train")
        rank, world = self._rank_world()
        sampler = ResumableSampler(ds, num_replicas=world, rank=rank, shuffle=self.shuffle, seed=self.seed)
        return ResumableDataLoader(
            ds, batch_size=self.batch_size, sampler=sampler, drop_last=self.drop_last, seed=self.seed, **self._common()
        )

    def _eval_loader(self, split: str) -> DataLoader | list:
        if split in ("val", "test") and getattr(self, f"{split}_dataset", None) is None:
            return []  # Lightning skips the loop
        return DataLoader(
            self._dataset(split), batch_size=self.val_batch_size, shuffle=False,
            generator=torch.Generator().manual_seed(self.seed), **self._common(),
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")


def split_train_val(items: list, val_fraction: float, what: str, root: PathLike) -> tuple[list, list]:
    """Split sorted ``items`` into (train, validation): the last ``val_fraction`` (at least one) validate."""
    if len(items) < 2:
        raise DataError(root, f"found {len(items)} {what}; need at least 2 (one for training, one for validation)",
                        "add more cases or point `root` at the dataset folder")
    if not 0.0 < val_fraction < 1.0:
        raise ArgumentError(root, f"val_fraction must lie in (0, 1), got {val_fraction}",
                            "set data.init_args.val_fraction to e.g. 0.25")
    n_val = min(len(items) - 1, max(1, round(len(items) * val_fraction)))
    return items[:-n_val], items[-n_val:]
