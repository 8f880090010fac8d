"""Readable output for LightningCLI runs: no Lightning tips, no known-harmless deprecation warnings,
no progress bar line per step when stdout is not a terminal (logs, CI, captured output)."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence

#: Warnings that say nothing actionable to a medrs-diff user (regexes matched at the message start).
QUIET_WARNINGS = (
    r"LightningCLI's args parameter",  # we pass args on purpose (main(argv), the quick start)
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # torch pytree API used inside Lightning
    r"Starting from v1\.9\.0, `tensorboardX` has been removed",  # CSVLogger is what we want
    r"NvImgCodecPydicomReader: nvImageCodec decoder plugin",  # MONAI LoadImage with pydicom installed, no GPU codec
    # Lightning counts log_every_n_steps over global steps, so short epochs are logged all the same
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)
#: Lightning loggers whose INFO lines (tips, "GPU available", ...) the quick start hides.
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")
_TIP_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
#: Loggers whose warnings are harmless here (MONAI's optional GPU DICOM codec: we read NIfTI).
_SILENT_LOGGERS = ("monai.data.nvimgcodec_pydicom_plugin",)
PROGRESS_FLAG = "--trainer.enable_progress_bar"


class _DropTips(logging.Filter):
    """Drops Lightning's advertising lines ("💡 Tip: ... litlogger / litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith("💡 Tip")


def is_terminal(stream: object = None) -> bool:
    """True when ``stream`` (default: stdout) is an interactive terminal."""
    stream = sys.stdout if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_args(argv: Sequence[str]) -> list[str]:
    """``argv`` plus ``--trainer.enable_progress_bar false`` when stdout is not a terminal and the user
    did not choose (a progress bar redrawn into a log file is one line per step)."""
    argv = list(argv)
    chosen = any(a == PROGRESS_FLAG or a.startswith(PROGRESS_FLAG + "=") for a in argv)
    if chosen or is_terminal() or any(a in ("-h", "--help") for a in argv):
        return argv
    return [*argv, PROGRESS_FLAG, "false"]


@contextlib.contextmanager
def quiet_lightning(info: bool = True) -> Iterator[None]:
    """Within the block: :data:`QUIET_WARNINGS` ignored and Lightning's tips dropped; with ``info=False``
    Lightning's INFO lines too (the quick start prints its own summary)."""
    tip_filter = _DropTips()
    tip_loggers = [logging.getLogger(n) for n in _TIP_LOGGERS]
    levels = {n: logging.getLogger(n).level for n in (*LIGHTNING_LOGGERS, *_SILENT_LOGGERS)}
    with warnings.catch_warnings():
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for lg in tip_loggers:
            lg.addFilter(tip_filter)
        for n in _SILENT_LOGGERS:
            logging.getLogger(n).setLevel(logging.ERROR)
        if not info:
            for n in LIGHTNING_LOGGERS:
                logging.getLogger(n).setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg in tip_loggers:
                lg.removeFilter(tip_filter)
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)
