"""Per-item randomness: an item's random augmentation is a pure function of ``(seed, epoch, index)``.

Random transforms that keep one RandomState advanced per loaded sample (MONAI's) make an item depend
on which items were loaded before it: on the worker that loaded it, and on a mid-epoch resume that
skips the served items without loading them. Reseeding the transforms from ``item_seed`` before each
item removes that dependence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 32-bit seed of ``(seed, epoch, index)`` (NumPy SeedSequence); all must be >= 0."""
    return int(np.random.SeedSequence([int(seed) % 2**63, int(epoch), int(index)]).generate_state(1)[0])


def seed_transforms(transform: Any, seed: int, epoch: int, index: int) -> None:
    """Reseed every random transform of ``transform`` (MONAI ``Randomizable`` / ``Compose``) for one item."""
    set_state = getattr(transform, "set_random_state", None)
    if callable(set_state):
        set_state(seed=item_seed(seed, epoch, index))


class EpochAware:
    """Mixin for datasets whose items depend on the epoch: ``set_epoch(e)``, or ``follow(obj)`` to read the
    epoch from ``obj.epoch`` at item time (e.g. the loader's DistributedSampler, which Lightning advances)."""

    epoch: int = 0
    epoch_source: Any = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.epoch_source = None

    def follow(self, source: Any) -> None:
        self.epoch_source = source

    def current_epoch(self) -> int:
        src = self.epoch_source
        return int(getattr(src, "epoch", self.epoch)) if src is not None else int(self.epoch)

    def item_rng(self, index: int, fixed: bool = False) -> np.random.Generator:
        """Item ``index``'s generator, seeded by ``(self.seed, epoch, index)``; epoch 0 when ``fixed``
        (validation items that stay the same every epoch)."""
        return np.random.default_rng(item_seed(self.seed, 0 if fixed else self.current_epoch(), index))


def crop_slices(rng: np.random.Generator, shape: Sequence[int], patch: Sequence[int]) -> tuple[slice, ...]:
    """A window of size ``patch`` at a random position inside ``shape`` (one start per axis, drawn in order)."""
    starts = [int(rng.integers(n - p + 1)) for n, p in zip(shape, patch, strict=True)]
    return tuple(slice(a, a + p) for a, p in zip(starts, patch, strict=True))
