"""Task ``anomaly``: anomaly maps (AnoDDPM's ``anomaly_map`` output) scored against lesion masks.

Pixel AUROC and AUPRC pool every scored pixel of every case (and are also given per case with a lesion);
Dice / IoU / precision / recall binarise ``map >= threshold``. The threshold is never chosen on the
scored (test) cases: it is either given (``anomaly_threshold``, e.g. from an earlier validation run) or
chosen here on a separate validation split, ``threshold_from = (val_maps, val_labels)``, by
``threshold_rule`` ``dice`` (the threshold maximising pooled Dice on the validation lesions) or
``percentile`` (the ``threshold_percentile``-th percentile of the validation errors of healthy pixels;
``val_labels`` may then be omitted for an all-healthy split). Without either, only AUROC / AUPRC are
reported. The mask (``--mask``, e.g. a brain mask) restricts every score to its pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArgumentError, DataError
from ..metrics.anomaly import THRESHOLD_RULES, anomaly_scores, select_threshold
from .arrays import check_pair, iter_cases, label_map, load, mask_on_grid, require_finite, scoring
from .options import CommonOptions, flag, number
from .pairing import Case, find_pairs
from .report import TaskResult

__all__ = ["AnomalyOptions", "evaluate_anomaly", "validation_threshold"]


@dataclass
class AnomalyOptions(CommonOptions):
    """Options of task ``anomaly`` (see the module docstring): ``threshold_from`` (validation maps and,
    optionally, their labels), ``threshold_rule``, ``threshold_percentile`` or a given ``anomaly_threshold``."""

    threshold_from: tuple[str, ...] | None = None
    threshold_rule: str = "dice"
    threshold_percentile: float = 99.0
    anomaly_threshold: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ArgumentError(flag("threshold_rule"), f"must be one of {', '.join(THRESHOLD_RULES)}, got "
                                f"{self.threshold_rule!r}", "choose dice or percentile")
        self.threshold_percentile = number(self.threshold_percentile, "threshold_percentile", low=0.0, high=100.0,
                                           low_open=True)
        if self.threshold_percentile >= 100.0:
            raise ArgumentError(flag("threshold_percentile"), "must be < 100", "give e.g. 99")
        if self.threshold_from is not None:
            paths = (self.threshold_from,) if isinstance(self.threshold_from, str | Path) else self.threshold_from
            self.threshold_from = tuple(str(p) for p in paths)
            if len(self.threshold_from) not in (1, 2):
                raise ArgumentError(flag("threshold_from"), f"takes VAL_MAPS [VAL_LABELS], got "
                                    f"{len(self.threshold_from)} paths", "give the validation maps and their labels")
            if len(self.threshold_from) == 1 and self.threshold_rule == "dice":
                raise ArgumentError(flag("threshold_from"), "rule 'dice' needs the validation lesion labels",
                                    "give VAL_MAPS VAL_LABELS, or --threshold-rule percentile on healthy maps")
            if self.anomaly_threshold is not None:
                raise ArgumentError(flag("anomaly_threshold"), "given together with --threshold-from",
                                    "give one: a fixed threshold or the validation split to choose it on")
        if self.anomaly_threshold is not None:
            self.anomaly_threshold = number(self.anomaly_threshold, "anomaly_threshold")


def _map(f, role: str) -> np.ndarray:
    require_finite(f, role)
    return label_map(f)[0].astype(np.float64)


def _lesion(f) -> np.ndarray:
    require_finite(f, "reference")
    return label_map(f)[0] > 0


def validation_threshold(opts: AnomalyOptions) -> float | None:
    """The threshold of ``opts``: given, chosen on ``threshold_from``, or None."""
    if opts.anomaly_threshold is not None:
        return float(opts.anomaly_threshold)
    if opts.threshold_from is None:
        return None
    if len(opts.threshold_from) == 1:
        folder = Path(opts.threshold_from[0])
        files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else [folder]
        maps = [_map(load(p, "validation map"), "validation map").ravel() for p in files]
        if not maps:
            raise DataError(folder, "holds no validation maps", "point --threshold-from at infer's anomaly maps")
        return select_threshold(np.concatenate(maps), None, "percentile", opts.threshold_percentile)
    maps, labels = [], []
    for _, p, r in find_pairs(opts.threshold_from[0], opts.threshold_from[1]):
        fp, fr = load(p, "validation map"), load(r, "validation label")
        check_pair(fp, fr, assume_same_grid=opts.assume_same_grid)
        maps.append(_map(fp, "validation map").ravel())
        labels.append(_lesion(fr).ravel())
    m, y = np.concatenate(maps), np.concatenate(labels)
    if opts.threshold_rule == "dice" and not y.any():
        raise DataError(opts.threshold_from[1], "the validation labels hold no lesion pixel",
                        "give validation cases with lesions, or --threshold-rule percentile")
    return select_threshold(m, y, opts.threshold_rule, opts.threshold_percentile)


def evaluate_anomaly(cases: list[Case], opts: AnomalyOptions) -> TaskResult:
    """Per-case AUROC / AUPRC (+ Dice, IoU at the threshold); the aggregate pools every pixel."""
    threshold = validation_threshold(opts)
    how = ("given" if opts.anomaly_threshold is not None else
           None if opts.threshold_from is None else f"{opts.threshold_rule} on {', '.join(opts.threshold_from)}")
    res = TaskResult(settings={
        "threshold": threshold, "threshold_chosen_by": how,
        "threshold_percentile": opts.threshold_percentile if opts.threshold_rule == "percentile" else None,
        "definitions": {
            "auroc": "exact pixel AUROC (Mann-Whitney, ties half) of the map against lesion > 0",
            "auprc": "average precision sum_n (R_n - R_n-1) P_n (sklearn's definition)",
            "dice": "2TP/(2TP+FP+FN) of map >= threshold; aggregate pooled over all pixels",
            "dice_mean": "aggregate only: mean per-case Dice over cases with a lesion",
            "aggregate": "every pixel of every case pooled (--mask pixels only)",
        },
    })
    all_maps, all_labels = [], []
    for case, fp, fr, fm in iter_cases(cases):
        check_pair(fp, fr, assume_same_grid=opts.assume_same_grid)
        m, y = _map(fp, "prediction"), _lesion(fr)
        if m.shape != y.shape:
            raise DataError(case.pred, f"anomaly map {m.shape} and lesion mask {y.shape} differ in shape",
                            "write one single-channel map per case on the mask's grid")
        if fm is not None:
            keep = mask_on_grid(fm, fr, y.shape, assume_same_grid=opts.assume_same_grid).reshape(y.shape)
            m, y = m[keep], y[keep]
        with scoring(case):
            scores = anomaly_scores(m.reshape(1, -1), y.reshape(1, -1), threshold)
        for k in ("threshold", "dice_mean", "iou_mean"):
            scores.pop(k, None)
        res.cases[case.name] = {"all": scores}
        all_maps.append(m.ravel())
        all_labels.append(y.ravel())
    if not all_maps:
        raise DataError(None, "no case to score", "give anomaly maps and lesion masks")
    m, y = np.concatenate(all_maps), np.concatenate(all_labels)
    if not y.any():
        raise DataError(cases[0].ref, "no reference holds a lesion pixel: AUROC / AUPRC are undefined",
                        "score cases with lesions (healthy cases alone only give error statistics)")
    # pooled scores; the per-image Dice means come from the per-case values
    agg = anomaly_scores(m.reshape(1, -1), y.reshape(1, -1), threshold)
    agg.pop("dice_mean", None)
    agg.pop("iou_mean", None)
    agg.pop("threshold", None)
    if threshold is not None:
        with_lesion = [c["all"] for c in res.cases.values() if not np.isnan(c["all"].get("recall", np.nan))]
        agg["dice_mean"] = float(np.mean([c["dice"] for c in with_lesion])) if with_lesion else float("nan")
        agg["iou_mean"] = float(np.mean([c["iou"] for c in with_lesion])) if with_lesion else float("nan")
        agg["threshold"] = float(threshold)
    res.aggregate["all"] = agg
    return res
