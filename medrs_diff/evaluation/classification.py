"""Task ``class``: integer class maps or label vectors scored with OA, AA, Cohen's kappa, per-class recall.

The confusion matrix is summed over the whole test set; the mask selects the pixels to score and
``ignore_index`` drops a reference label. Without ``num_classes`` it is the largest reference label + 1
(>= 2), and a prediction class above it (0/255 maps) is refused. Geometry-less class maps that match
far better once transposed or flipped are refused unless ``assume_same_grid``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import metrics as M
from ..errors import ArgumentError, DataError
from .arrays import (
    check_orientation,
    check_pair,
    has_geometry,
    iter_cases,
    label_map,
    load,
    mask_on_grid,
    require_finite,
    scoring,
)
from .options import CommonOptions, flag
from .pairing import Case
from .report import TaskResult

__all__ = ["ClassOptions", "evaluate_class"]


@dataclass
class ClassOptions(CommonOptions):
    """Options of task ``class``: ``num_classes`` (default: largest label found + 1, at least 2) and
    ``ignore_index``, a reference label left out of every score."""

    num_classes: int | None = None
    ignore_index: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_classes", "ignore_index"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | np.integer)):
                raise ArgumentError(flag(name), f"must be an integer, got {v!r}", "give an integer")
        if self.num_classes is not None and self.num_classes < 2:
            raise ArgumentError(flag("num_classes"), f"must be >= 2, got {self.num_classes}",
                                "give the number of classes (background included)")


def _num_classes(cases: list[Case], ignore_index: int | None) -> int:
    """Largest reference class + 1 (>= 2); a prediction class above every reference class is refused."""
    top, preds = 0, []
    for case in cases:
        for path, role in ((case.pred, "prediction"), (case.ref, "reference")):
            f = load(path, role)
            require_finite(f, role)
            d = f.data
            valid = d[d != ignore_index] if ignore_index is not None else d
            biggest = int(valid.max()) if valid.size else 0
            if role == "reference":
                top = max(top, biggest)
            else:
                preds.append((path, biggest))
    for path, biggest in preds:
        if biggest > top:
            raise DataError(path, f"prediction holds class {biggest}, above every reference class (largest "
                            f"{top}): counting it would add classes no reference has",
                            "write the reference's class codes, or pass --num-classes N (num_classes=N) if the "
                            "classes really go up to N-1")
    return max(top + 1, 2)


def evaluate_class(cases: list[Case], opts: ClassOptions) -> TaskResult:
    """Per-case scores from each case's confusion matrix, the aggregate from the summed one."""
    num_classes = opts.num_classes if opts.num_classes is not None else _num_classes(cases, opts.ignore_index)
    res = TaskResult(settings={
        "num_classes": num_classes, "ignore_index": opts.ignore_index,
        "definitions": {"overall_accuracy": "trace/N of the confusion matrix summed over the set",
                        "average_accuracy": "mean per-class recall (classes present in the reference)",
                        "kappa": "Cohen's kappa from the summed confusion matrix"},
    })
    agg = M.ClassificationMetric(num_classes, opts.ignore_index)
    for case, lp, lr, lm in iter_cases(cases):
        require_finite(lp, "prediction")
        require_finite(lr, "reference")
        check_pair(lp, lr, assume_same_grid=opts.assume_same_grid)
        p, r = lp.data.astype(np.float64), lr.data.astype(np.float64)
        if not opts.assume_same_grid and not (has_geometry(lp) and has_geometry(lr)):
            check_orientation(lp, lr, label_map(lp)[0], label_map(lr)[0])
        if lm is not None:
            keep = mask_on_grid(lm, lr, label_map(lr)[0].shape,
                                assume_same_grid=opts.assume_same_grid).reshape(r.shape)
            p, r = p[keep], r[keep]
        with scoring(case):
            cm = M.confusion_matrix(p, r, num_classes, opts.ignore_index)
            res.cases[case.name] = {"all": M.classification_scores(cm)}
            agg.update(p, r)
    res.aggregate["all"] = agg.compute()
    res.extra["confusion_matrix"] = agg.matrix.tolist()
    return res
