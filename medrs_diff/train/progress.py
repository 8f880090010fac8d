"""Text progress for training runs without a progress bar (a log file, a batch job, CI).

``medrs-diff fit`` turns Lightning's bar off when stdout is not a terminal (a redrawn bar is one line per
step in a log); :class:`TextProgress` then prints one line every ``every_s`` seconds instead::

    step 1200/12000 (10%) · train/loss 0.0412 · 6 min elapsed · about 54 min left

Nothing is printed while a progress bar is shown, on ranks other than zero, or in runs shorter than
``every_s`` (the quick start and the tests stay quiet).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from lightning.pytorch import Callback, LightningModule, Trainer

from ..errors import ArgumentError

#: Seconds between two progress lines when ``every_s`` is not given.
DEFAULT_EVERY_S = 60.0


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"6 min"``, ``"2 h 05 min"``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = int(round(seconds / 60))
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def progress_line(step: int, total: float, elapsed_s: float, steps_done: int,
                  metrics: dict[str, float] | None = None) -> str:
    """One progress line: ``step`` of ``total`` (``inf``: unknown), the metrics, the time spent and, from the rate
    of the ``steps_done`` steps run in ``elapsed_s`` seconds, the time left."""
    known = math.isfinite(total) and total > 0
    parts = [f"step {step}/{int(total)} ({100 * step / total:.0f}%)" if known else f"step {step}"]
    parts += [f"{k} {v:.4g}" for k, v in (metrics or {}).items()]
    parts.append(f"{format_duration(elapsed_s)} elapsed")
    if known and steps_done > 0 and step < total:
        parts.append(f"about {format_duration((total - step) * elapsed_s / steps_done)} left")
    return " · ".join(parts)


class TextProgress(Callback):
    """Prints :func:`progress_line` every ``every_s`` seconds of training when no progress bar is shown.

    Args:
        every_s: seconds between lines (default :data:`DEFAULT_EVERY_S`).
        metrics: logged metrics to show, when present (default: the training loss).
        stream: where to print (default: standard error, where a progress bar would draw).
    """

    def __init__(self, every_s: float | None = None, metrics: tuple[str, ...] = ("train/loss",),
                 stream: TextIO | None = None) -> None:
        every = DEFAULT_EVERY_S if every_s is None else float(every_s)
        if not (math.isfinite(every) and every > 0):
            raise ArgumentError("TextProgress", f"every_s must be a positive number of seconds, got {every_s}",
                                "pass e.g. every_s: 60")
        self.every_s = every
        self.metrics = tuple(metrics)
        self.stream = stream
        self._start = self._last = 0.0
        self._first_step = 0
        self._total = math.inf

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._first_step = trainer.global_step
        self._total = float(trainer.estimated_stepping_batches)  # once: it may set the training data up

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.progress_bar_callback is not None or not trainer.is_global_zero:
            return
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        shown = {k: float(trainer.callback_metrics[k]) for k in self.metrics if k in trainer.callback_metrics}
        line = progress_line(trainer.global_step, self._total, now - self._start,
                             trainer.global_step - self._first_step, shown)
        print(line, file=sys.stderr if self.stream is None else self.stream, flush=True)
