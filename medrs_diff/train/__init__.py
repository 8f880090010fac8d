"""Lightning training layer: ``DiffusionTask`` for any method, the EMA callback and full-state,
atomically written checkpoints whose class paths resolve through the method registry.

Data modules live in :mod:`medrs_diff.datamodules` (``DictDataModule`` and friends are still
reachable here, loaded on first use, for code written before the move).
"""

from typing import Any

from .checkpoint import (
    AtomicCheckpointIO,
    CheckpointError,
    RecipeConfigCallback,
    atomic_torch_save,
    build_method,
    canonical_method_config,
    capture_rng_state,
    checkpoint_data_config,
    ema_state_dict,
    load_method_from_checkpoint,
    method_config,
    read_checkpoint,
    resolve_method_class,
    restore_rng_state,
)
from .ema import EMA
from .learned_schedule import LearnedSchedule
from .optim import WarmupCosine, param_groups, warmup_cosine
from .panels import save_panel
from .progress import TextProgress
from .task import DiffusionTask

#: Names that moved to :mod:`medrs_diff.datamodules.base`; resolved lazily so ``train`` does not import
#: the data-module floor (see :func:`__getattr__`).
_MOVED_TO_DATAMODULES = ("DictDataModule", "ResumableDataLoader", "ResumableSampler", "seed_worker")


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_DATAMODULES:
        from ..datamodules import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EMA",
    "LearnedSchedule",
    "AtomicCheckpointIO",
    "CheckpointError",
    "DiffusionTask",
    "RecipeConfigCallback",
    "TextProgress",
    "WarmupCosine",
    "atomic_torch_save",
    "build_method",
    "canonical_method_config",
    "capture_rng_state",
    "checkpoint_data_config",
    "ema_state_dict",
    "load_method_from_checkpoint",
    "method_config",
    "param_groups",
    "read_checkpoint",
    "resolve_method_class",
    "restore_rng_state",
    "save_panel",
    "warmup_cosine",
]
