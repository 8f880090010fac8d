"""Resuming a run: check the checkpoint before anything starts, and continue in the run's own log folder.

:func:`check_resume_checkpoint` reads a ``--ckpt_path`` file with one-line errors (missing, empty,
truncated, not a checkpoint, code-carrying pickle) and refuses NaN / inf weights, before the model is
built. :func:`resume_log_version` points the trainer's logger at ``version_K`` again when the checkpoint
lies in ``<save_dir>/<name>/version_K/checkpoints/``, so a resumed run keeps writing its checkpoints and
metrics there instead of opening ``version_{K+1}``; the CSV logger's ``metrics.csv`` is continued, not
wiped (rows of steps after the checkpoint, which the resumed run replays, are dropped).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from .checkpoint import check_finite_checkpoint, read_checkpoint

__all__ = ["SPECIAL_CKPT_PATHS", "ResumedExperimentWriter", "check_resume_checkpoint", "resume_log_version"]

#: ``ckpt_path`` values Lightning resolves itself (checked when it loads them, by the task's hooks).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc")


def is_checkpoint_file_arg(ckpt_path: Any) -> bool:
    """True for a ``ckpt_path`` that names a local file (not ``last`` / ``best`` / ``hpc``, a registry or a URL)."""
    if not ckpt_path:
        return False
    text = str(ckpt_path)
    return text not in SPECIAL_CKPT_PATHS and not text.startswith("registry") and "://" not in text


def check_resume_checkpoint(ckpt_path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint given to ``--ckpt_path`` (one-line :class:`~medrs_diff.errors.CheckpointError` when
    it cannot be used) and refuse non-finite weights; returns the checkpoint dict."""
    ckpt = read_checkpoint(ckpt_path)
    check_finite_checkpoint(ckpt, ckpt_path)
    return ckpt


class ResumedExperimentWriter(ExperimentWriter):
    """CSV experiment writer that continues an existing ``metrics.csv`` (Lightning's deletes it) and drops its
    rows logged after the checkpoint of ``resume_step`` optimizer steps (the resumed run logs them again)."""

    def __init__(self, log_dir: str, resume_step: int | None = None) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = self.metrics_file_path
        if not self._fs.isfile(path):
            return
        with self._fs.open(path, "r", newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        self.metrics_keys = header
        if self.resume_step is None or "step" not in header:
            return
        # CSV steps are 0-based batch counts: a checkpoint after k optimizer steps was logged up to step k - 1
        kept = [r for r in rows if not r.get("step", "").isdigit() or int(r["step"]) < self.resume_step]
        if len(kept) != len(rows):
            with self._fs.open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=header)
                writer.writeheader()
                writer.writerows(kept)


def _version_of(folder_name: str) -> int | str:
    tail = folder_name[len("version_"):]
    return int(tail) if folder_name.startswith("version_") and tail.isdigit() else folder_name


def resume_log_version(trainer: Any, ckpt_path: str | os.PathLike, resume_step: int | None = None) -> str | None:
    """Log into the run folder ``ckpt_path`` belongs to, when it is ``<logger root>/<version>/checkpoints/<file>``
    and the (single) logger's version was not chosen by the user. Returns the log folder, or None if unchanged."""
    ckpt = Path(ckpt_path).resolve()
    if ckpt.parent.name != "checkpoints":
        return None
    version_dir = ckpt.parent.parent
    loggers = list(getattr(trainer, "loggers", []) or [])
    if len(loggers) != 1:
        return None
    logger = loggers[0]
    root = getattr(logger, "root_dir", None)
    if getattr(logger, "_version", "chosen") is not None or not root or Path(root).resolve() != version_dir.parent:
        return None
    logger._version = _version_of(version_dir.name)
    if isinstance(logger, CSVLogger) and rank_zero_only.rank == 0 and getattr(logger, "_experiment", None) is None:
        logger._fs.makedirs(logger.root_dir, exist_ok=True)
        logger._experiment = ResumedExperimentWriter(logger.log_dir, resume_step)
    rank_zero_info(f"resuming into the run folder {version_dir} (the checkpoint's)")
    return str(version_dir)
