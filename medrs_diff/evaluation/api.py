"""The typed entry point: ``evaluate(pred, ref, task, *, out=None, mask=None, **options) -> dict``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ArgumentError
from .anomaly import AnomalyOptions, evaluate_anomaly
from .classification import ClassOptions, evaluate_class
from .forecast import ForecastOptions, evaluate_forecast
from .fusion import FusionOptions, evaluate_fusion
from .image import ImageOptions, evaluate_image
from .pairing import Case, find_cases
from .report import TaskResult, default_out, write_report
from .seg import SegOptions, evaluate_seg
from .spectral import SpectralOptions, evaluate_spectral

__all__ = ["TASKS", "Task", "TaskOptions", "evaluate", "make_options"]

PathLike = str | os.PathLike
TaskOptions = (SegOptions | SpectralOptions | ForecastOptions | ImageOptions | ClassOptions | AnomalyOptions
               | FusionOptions)


@dataclass(frozen=True)
class Task:
    """An evaluation task: its name, option class, evaluator and a one-line description."""

    name: str
    options: type
    run: Callable[[list[Case], Any], TaskResult]
    description: str


#: The tasks by name (the ``--task`` choices).
TASKS: dict[str, Task] = {t.name: t for t in (
    Task("seg", SegOptions, evaluate_seg, "label maps: Dice, IoU, HD95, ASD, surface Dice, pixel scores"),
    Task("spectral", SpectralOptions, evaluate_spectral, "band stacks: SAM, ERGAS, mPSNR, mSSIM, UIQI, Q2n"),
    Task("forecast", ForecastOptions, evaluate_forecast, "fields: CSI, POD, FAR, HSS, ETS, FSS, CRPS, RALSD"),
    Task("image", ImageOptions, evaluate_image, "images: PSNR, SSIM, NRMSE, SUV bias, ENL"),
    Task("class", ClassOptions, evaluate_class, "class maps: OA, AA, kappa, per-class recall"),
    Task("anomaly", AnomalyOptions, evaluate_anomaly,
         "anomaly maps: pixel AUROC, AUPRC, Dice at a validation threshold"),
    Task("fusion", FusionOptions, evaluate_fusion,
         "fused images vs REF and --second-source: EN, SD, MI, VIF, Qabf, SSIM"),
)}


def _task(task: str) -> Task:
    if task not in TASKS:
        raise ArgumentError("task (--task)", f"must be one of {', '.join(TASKS)}, got {task!r}",
                            "choose one of them")
    return TASKS[task]


def make_options(task: str, options: TaskOptions | None = None, **task_options: Any) -> TaskOptions:
    """The option object of ``task``: ``options`` as given, or built from keyword arguments."""
    t = _task(task)
    if options is not None:
        if task_options:
            raise ArgumentError(", ".join(task_options), "given together with options=", "pass one or the other")
        if not isinstance(options, t.options):
            raise ArgumentError("options", f"is a {type(options).__name__}, but task {task!r} takes "
                                f"{t.options.__name__}", f"pass {t.options.__name__}(...)")
        return options
    names = [f.name for f in dataclasses.fields(t.options)]
    unknown = [k for k in task_options if k not in names]
    if unknown:
        owners = {k: [n for n, o in TASKS.items() if k in {f.name for f in dataclasses.fields(o.options)}]
                  for k in unknown}
        detail = "; ".join(f"{k} belongs to task {', '.join(v)}" if v else f"{k} is no option" for k, v in
                           owners.items())
        raise ArgumentError(", ".join(unknown), f"not an option of task {task!r} ({detail})",
                            f"task {task!r} takes {', '.join(names)}")
    return t.options(**task_options)


def evaluate(pred: PathLike, ref: PathLike, task: str, *, out: PathLike | None = None,
             mask: PathLike | None = None, options: TaskOptions | None = None, write: bool = True,
             **task_options: Any) -> dict[str, Any]:
    """Score prediction files against reference files and write the report.

    ``pred`` / ``ref``: two files or two folders (paired by name without extension) of any type
    :mod:`medrs_diff.io` reads. ``task``: one of :data:`TASKS` (``seg``, ``spectral``, ``forecast``,
    ``image``, ``class``). ``mask``: one file for all cases or a folder paired by name (its meaning per
    task is in each task's module). Task options are keyword arguments of the task's option class
    (:class:`SegOptions`, :class:`SpectralOptions`, :class:`ForecastOptions`, :class:`ImageOptions`,
    :class:`ClassOptions`), or one such object as ``options``. With ``write`` the CSV and JSON go to
    ``out`` (default: ``<PRED>_evaluation`` beside PRED, else ``./evaluation_out``).

    Returns ``task``, ``pred``, ``ref``, ``mask``, ``n_cases``, ``settings``, ``aggregate`` (group ->
    metric -> value), ``cases`` (case -> group -> metric -> value), task extras (``contingency_tables``,
    ``confusion_matrix``) and the written ``csv`` / ``json`` paths (None without ``write``).
    Bad files raise :class:`~medrs_diff.errors.DataError`, bad options
    :class:`~medrs_diff.errors.ArgumentError`, each one line naming the file or option and the fix.
    """
    t = _task(task)
    opts = make_options(task, options, **task_options)
    cases = find_cases(pred, ref, mask)
    with torch.no_grad():
        res = t.run(cases, opts)
    results: dict[str, Any] = {
        "task": task, "pred": str(pred), "ref": str(ref), "mask": None if mask is None else str(mask),
        "n_cases": len(res.cases), "settings": res.settings, "aggregate": res.aggregate, "cases": res.cases,
        **res.extra,
    }
    csv_path = json_path = None
    if write:
        folder = Path(out) if out is not None else default_out(Path(pred))
        csv_path, json_path = write_report(results, folder)
    results.update(csv=None if csv_path is None else str(csv_path),
                   json=None if json_path is None else str(json_path))
    return results
