"""Lightning training layer: ``DiffusionTask`` for any method, the EMA callback, resumable data
modules and full-state, atomically written checkpoints."""

from .checkpoint import (
    AtomicCheckpointIO,
    CheckpointError,
    RecipeConfigCallback,
    atomic_torch_save,
    build_method,
    capture_rng_state,
    load_method_from_checkpoint,
    method_config,
    read_checkpoint,
    restore_rng_state,
)
from .datamodule import DictDataModule, ResumableDataLoader, ResumableSampler, seed_worker
from .ema import EMA, ema_state_dict
from .optim import WarmupCosine, param_groups, warmup_cosine
from .panels import save_panel
from .task import DiffusionTask

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "DictDataModule",
    "DiffusionTask",
    "EMA",
    "RecipeConfigCallback",
    "ResumableDataLoader",
    "ResumableSampler",
    "WarmupCosine",
    "atomic_torch_save",
    "build_method",
    "capture_rng_state",
    "ema_state_dict",
    "load_method_from_checkpoint",
    "method_config",
    "param_groups",
    "read_checkpoint",
    "restore_rng_state",
    "save_panel",
    "seed_worker",
    "warmup_cosine",
]
