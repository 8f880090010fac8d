"""Per-window seeds: a case's output depends only on the seed, not on batching or on the other files.

Each window's noise comes from its own generator seeded with :func:`window_seed` ``(seed, case,
start)``: the run's seed, the case (the input file's *name*) and the window's start on the input grid.
A file therefore gives the same output alone or in a folder, at any ``batch`` and wherever the folder
lies (the name, not the full path, is hashed: moving or renaming the folder keeps the outputs;
renaming the file changes them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from ..diffusion.generators import SampleGenerators

__all__ = ["window_generators", "window_seed"]


def window_seed(seed: int, case: str, start: Sequence[int]) -> int:
    """A 63-bit seed for the window at ``start`` (input-grid index per spatial axis) of ``case`` under
    ``seed``: BLAKE2b of ``"seed|case|(start, ...)"``, stable across runs, processes and machines
    (never Python's salted ``hash``)."""
    key = f"{int(seed)}|{case}|{tuple(int(s) for s in start)}"
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") >> 1


def window_generators(seed: int, case: str, starts: Sequence[Sequence[int]],
                      device: torch.device | str = "cpu") -> SampleGenerators:
    """One generator per window of a batch (on ``device``, where the noise is drawn), seeded by
    :func:`window_seed`; the method gives window ``j`` rows ``j, j + B, ...`` of every draw."""
    return SampleGenerators.from_seeds((window_seed(seed, case, s) for s in starts), device=device)
