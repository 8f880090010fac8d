"""Task ``seg``: integer label maps (2-D or 3-D) scored per label or per BraTS region.

Each foreground label is scored, or the BraTS regions WT / TC / ET with ``brats``. A first pass over
the references finds their label set, so a label absent from some cases still scores those cases by
the empty-mask rule. A float map in [0, 1] that is not integral is a probability map for a binary
task: thresholded at ``threshold`` for the overlap metrics, used as is for AUROC and ECE. ``probability``
(``--probability``) names class-probability maps (one channel per class, as infer's ``probability/``), which
give the ECE of every scored label (one-vs-rest) or BraTS region
(:mod:`~medrs_diff.evaluation.probability`). Spacing for
HD95 / ASD comes from the NIfTI header or GeoTIFF transform (``spacing`` overrides; ``.npy`` uses 1).
The mask is a field-of-view mask for the pixel-wise scores of binary tasks.

What is refused (one line naming the file, never a silent Dice of 0):

* a prediction label that no reference has (0/255 masks, {0, 2} against {0, 1}) unless ``label_map``
  maps it (``{255: 1}`` / ``--label-map 255:1``) or ``labels`` declares it a real class;
* a float prediction with non-integer values outside [0, 1] (raw logits or scores), and a reference
  with non-integer values (a reference is a label map);
* a geometry-less prediction (``.npy``, PNG) for a NIfTI / GeoTIFF reference, and two geometry-less
  label maps that match far better once transposed or flipped, unless ``assume_same_grid``
  (:func:`~medrs_diff.evaluation.arrays.check_orientation`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import io
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
from .options import CommonOptions, flag, float_tuple, int_tuple, number
from .pairing import Case
from .probability import class_probabilities, find_probabilities, group_probabilities
from .report import TaskResult

__all__ = ["SegOptions", "evaluate_seg", "is_probability", "parse_label_map"]

LabelMap = Mapping[int, int] | Sequence[str] | str


def _integer(text: Any, name: str) -> int:
    try:
        v = float(text)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(text, bool) or not np.isfinite(v) or v != int(v):
        raise ArgumentError(flag(name), f"labels must be integers, got {text!r}",
                            "write FROM:TO pairs of integers, e.g. --label-map 255:1 (label_map={255: 1})")
    return int(v)


def parse_label_map(value: LabelMap | None) -> dict[int, int] | None:
    """``{255: 1}``, ``["255:1", "128:2"]`` or ``"255:1,128:2"`` -> ``{255: 1, 128: 2}`` (None stays None)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        items = value.replace(",", " ").split() if isinstance(value, str) else [str(v) for v in value]
        pairs = []
        for item in items:
            if item.count(":") != 1:
                raise ArgumentError(flag("label_map"), f"{item!r} is not FROM:TO",
                                    "write FROM:TO pairs of integers, e.g. --label-map 255:1 (label_map={255: 1})")
            pairs.append(tuple(item.split(":")))
    out: dict[int, int] = {}
    for a, b in pairs:
        src, dst = _integer(a, "label_map"), _integer(b, "label_map")
        if src in out and out[src] != dst:
            raise ArgumentError(flag("label_map"), f"maps label {src} twice ({out[src]} and {dst})",
                                "give each prediction label once")
        out[src] = dst
    if not out:
        raise ArgumentError(flag("label_map"), "is empty", "give FROM:TO pairs, e.g. --label-map 255:1")
    return out


@dataclass
class SegOptions(CommonOptions):
    """Options of task ``seg``.

    ``labels``: labels to score (default: every non-zero label of the references); labels listed here
    are also accepted in predictions when no reference has them (a real class absent from this set);
    ``brats``: score the BraTS regions WT / TC / ET instead; ``et_label``: enhancing-tumour label (4 for
    BraTS <= 2021, 3 for 2023+); ``threshold``: foreground threshold of probability maps;
    ``tolerance``: surface Dice tolerance in mm; ``empty_score``: Dice / IoU / surface Dice when both
    masks are empty (NaN leaves such cases out); ``spacing``: voxel spacing in mm per axis, overriding
    the file header; ``label_map``: prediction label -> reference label, applied to prediction label
    maps before scoring (``{255: 1}``, or ``["255:1"]`` / ``"255:1,128:2"``); ``assume_same_grid``: see
    :class:`~medrs_diff.evaluation.options.CommonOptions`; ``probability``: a class-probability file
    (one case) or folder paired by case name, one channel per class in the order of the label values
    (background first; infer's ``OUT/probability``): the ECE of each label or BraTS region.
    """

    labels: Sequence[int] | None = None
    brats: bool = False
    et_label: int = 4
    threshold: float = 0.5
    tolerance: float = 1.0
    empty_score: float = 1.0
    spacing: Sequence[float] | None = None
    label_map: LabelMap | None = None
    probability: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.labels is not None:
            self.labels = int_tuple(self.labels, "labels")
        if self.brats and self.labels is not None:
            raise ArgumentError(flag("labels"), "cannot be combined with brats (--brats)",
                                "drop one of them: brats scores the regions WT / TC / ET")
        self.brats = bool(self.brats)
        if self.et_label not in (3, 4):
            raise ArgumentError(flag("et_label"), f"must be 4 (BraTS <= 2021) or 3 (BraTS 2023+), got "
                                f"{self.et_label!r}", "give 3 or 4")
        self.threshold = number(self.threshold, "threshold")
        self.tolerance = number(self.tolerance, "tolerance", low=0.0)
        self.empty_score = number(self.empty_score, "empty_score", allow_nan=True)
        if self.spacing is not None:
            self.spacing = float_tuple(self.spacing, "spacing", positive=True)
        self.label_map = parse_label_map(self.label_map)


def _integral(x: np.ndarray) -> bool:
    return not np.issubdtype(x.dtype, np.floating) or bool(np.all(x == np.round(x)))


def is_probability(x: np.ndarray) -> bool:
    """A float map with values in [0, 1] that are not all integers (a probability map, not labels)."""
    if not np.issubdtype(x.dtype, np.floating):
        return False
    finite = x[np.isfinite(x)]
    return finite.size > 0 and finite.min() >= 0 and finite.max() <= 1 and bool((finite != np.round(finite)).any())


def _example(values: np.ndarray) -> str:
    off = values[values != np.round(values)]
    return f"{float(off.flat[0]):.4g}" if off.size else "?"


def _reference_labels(f: io.ArrayFile) -> set[int]:
    """The labels of one reference file; a reference with non-integer values is refused."""
    require_finite(f, "reference")
    if not _integral(f.data):
        raise DataError(f.path, f"reference holds non-integer values (e.g. {_example(f.data)}), but a seg "
                        f"reference is a label map", "write integer labels (threshold or round the reference)")
    return {int(v) for v in np.unique(f.data)}


def _prediction_labels(f: io.ArrayFile, pred: np.ndarray, opts: SegOptions, allowed: set[int],
                       ref_labels: set[int]) -> tuple[np.ndarray, bool]:
    """``(label map, is_probability)``: probability maps pass through; label maps are mapped and checked."""
    if is_probability(pred):
        return pred, True
    if not _integral(pred):
        lo, hi = float(np.min(pred)), float(np.max(pred))
        raise DataError(f.path, f"prediction holds non-integer values in [{lo:.4g}, {hi:.4g}], outside [0, 1] "
                        f"(e.g. {_example(pred)}): raw logits or scores, neither labels nor probabilities",
                        "write labels (argmax or threshold the model output) or probabilities in [0, 1] "
                        "(apply a sigmoid / softmax first)")
    labels = pred.astype(np.int64)
    if opts.label_map:
        mapped = labels.copy()
        for src, dst in opts.label_map.items():
            mapped[labels == src] = dst
        labels = mapped
    found = {int(v) for v in np.unique(labels)}
    bad = sorted(found - allowed)
    if bad:
        fg_ref = sorted(ref_labels - {0})
        after = " after --label-map" if opts.label_map else ""
        hint = ""
        if len(bad) == 1 and len(fg_ref) == 1 and not (found - {0} - set(bad)):
            hint = f"pass --label-map {bad[0]}:{fg_ref[0]} (label_map={{{bad[0]}: {fg_ref[0]}}})"
        else:
            hint = "map them with --label-map FROM:TO (e.g. --label-map 255:1, label_map={255: 1})"
        raise DataError(f.path, f"prediction holds label(s) {_short(bad)}{after} that no reference has (reference "
                        f"labels: {_short(sorted(ref_labels))}): scored as classes they would give Dice 0",
                        f"{hint}; if they are real classes absent from these references, list the classes with "
                        f"--labels (labels=[...])")
    return labels, False


def _short(values: list[int]) -> str:
    return ", ".join(map(str, values[:8])) + (" ..." if len(values) > 8 else "")


def _all_reference_labels(cases: list[Case]) -> set[int]:
    found: set[int] = set()
    for case in cases:
        found |= _reference_labels(load(case.ref, "reference"))
    return found


def evaluate_seg(cases: list[Case], opts: SegOptions) -> TaskResult:
    """Score every case; the aggregate pools Dice / IoU over the set and averages the surface metrics."""
    spacing_override = tuple(opts.spacing) if opts.spacing else None
    res = TaskResult(settings={
        "threshold": opts.threshold, "tolerance_mm": opts.tolerance, "empty_score": opts.empty_score,
        "brats": opts.brats, "et_label": opts.et_label, "spacing_override": spacing_override,
        "label_map": None if opts.label_map is None else {str(k): v for k, v in opts.label_map.items()},
        "assume_same_grid": opts.assume_same_grid,
        "definitions": {
            "dice/iou": "per-image mean (dice_mean) and pooled over the set (dice_pooled); both masks empty "
                        "-> empty_score",
            "hd95_mm": "max of directed 95th percentiles of boundary distances in mm (MONAI); one mask empty -> "
                       "image diagonal in mm, both empty -> 0",
            "asd_mm": "mean of both directed boundary-distance sets in mm",
            "surface_dice": "fraction of boundary points within tolerance_mm",
            "pixel scores": "binary tasks only, inside --mask (FOV) when given; AUROC/ECE need probability maps",
            "ece": "expected calibration error, 20 equal-width bins [k/20, (k+1)/20) of the group's probability "
                   "(a label: its channel, one-vs-rest; WT: 1 - p(0), TC: p(1) + p(ET), ET: p(ET)); aggregate "
                   "pools the bins over all voxels, with the maximum bin gap (mce)",
        },
    })
    ref_labels = _all_reference_labels(cases)
    groups: list[Any]
    if opts.brats:
        groups = list(M.BRATS_REGIONS)
        allowed = {0, 1, 2, opts.et_label} | ref_labels
    elif opts.labels:
        groups = list(opts.labels)
        allowed = {0} | set(groups) | ref_labels
    else:
        groups = sorted(ref_labels - {0}) or [1]
        allowed = {0} | set(groups) | ref_labels
    res.settings["labels"] = [str(g) for g in groups]
    class_values = (0, 1, 2, opts.et_label) if opts.brats else tuple(sorted(allowed))
    prob_files = None
    if opts.probability is not None:
        prob_files = find_probabilities(opts.probability, [c.name for c in cases])
        res.settings["probability"] = str(opts.probability)
        res.settings["class_values"] = list(class_values)
    group_calib = {g: M.CalibrationMetric() for g in groups}
    binary_task = not opts.brats and groups == [1]
    if any(c.mask is not None for c in cases) and not binary_task:
        raise ArgumentError("mask (--mask)", f"is a field-of-view mask for the pixel scores of binary "
                            f"segmentation, but the labels are {res.settings['labels']}",
                            "drop the mask or score label 1 only (labels=[1] / --labels 1)")
    overlap = {g: M.OverlapMetric(empty_score=opts.empty_score) for g in groups}
    surface = {g: {k: M.MeanTracker() for k in ("hd95", "asd", "surface_dice")} for g in groups}
    pixel, calib = M.PixelMetric(threshold=opts.threshold), M.CalibrationMetric()
    spacing_sources = set()
    any_prob = False
    for case, lp, lr, lm in iter_cases(cases):
        require_finite(lp, "prediction")
        _reference_labels(lr)
        check_pair(lp, lr, assume_same_grid=opts.assume_same_grid)
        pred, _ = label_map(lp)
        ref, spacing = label_map(lr)
        if pred.ndim not in (2, 3):
            raise DataError(lp.path, f"segmentation maps must be 2-D or 3-D, got shape {pred.shape}",
                            "write one 2-D or 3-D label map per file")
        if spacing_override is not None:
            spacing, source = spacing_override, "--spacing"
        elif spacing is None:
            spacing, source = (1.0,) * ref.ndim, "unit (no header)"
        else:
            source = f"{lr.kind} header"
        spacing_sources.add(source)
        pred, prob = _prediction_labels(lp, pred, opts, allowed, ref_labels)
        any_prob |= prob
        if prob and not binary_task:
            raise DataError(lp.path, f"is a probability map but the reference labels are {groups}",
                            "probability maps are only scored for binary (0/1) references; write label maps")
        labels = (pred >= opts.threshold).astype(np.int64) if prob else pred
        if not opts.assume_same_grid and not (has_geometry(lp) and has_geometry(lr)):
            check_orientation(lp, lr, labels, ref)
        case_out: dict[str, dict[str, float]] = {}
        with scoring(case):
            if opts.brats:
                pm, rm = M.brats_regions(labels[None], opts.et_label), M.brats_regions(ref[None], opts.et_label)
            else:
                pm = {g: torch.from_numpy(np.asarray(labels == g))[None] for g in groups}
                rm = {g: torch.from_numpy(np.asarray(ref == g))[None] for g in groups}
            for g in groups:
                overlap[g].update(pm[g], rm[g])
                sd = M.surface_distances(pm[g], rm[g], spacing, opts.tolerance, empty_score=opts.empty_score)
                for k, tracker in surface[g].items():
                    tracker.add(sd[k])
                case_out[str(g)] = {
                    "dice": float(M.dice(pm[g], rm[g], empty_score=opts.empty_score)[0]),
                    "iou": float(M.iou(pm[g], rm[g], empty_score=opts.empty_score)[0]),
                    "hd95_mm": float(sd["hd95"][0]), "asd_mm": float(sd["asd"][0]),
                    "surface_dice": float(sd["surface_dice"][0]),
                }
            if prob_files is not None:
                cp = class_probabilities(prob_files[case.name], lr, tuple(ref.shape), class_values,
                                         assume_same_grid=opts.assume_same_grid)
                fov = None if lm is None else mask_on_grid(lm, lr, ref.shape,
                                                           assume_same_grid=opts.assume_same_grid)[None]
                for g, pg in group_probabilities(cp, class_values, groups, brats=opts.brats,
                                                 et_label=opts.et_label).items():
                    key = g if opts.brats else int(g)
                    pt = torch.from_numpy(pg)[None]
                    case_out[g]["ece"] = float(M.expected_calibration_error(pt, rm[key], fov)[0])
                    group_calib[key].update(pt, rm[key], fov)
            if binary_task:
                fov = None if lm is None else mask_on_grid(lm, lr, ref.shape,
                                                           assume_same_grid=opts.assume_same_grid)[None]
                score_map = pred if prob else labels.astype(np.float64)
                ref_b = ref[None]
                ps = M.pixel_scores(score_map[None], ref_b, fov, opts.threshold)
                case_out["1"].update({k: float(v[0]) for k, v in ps.items() if prob or k != "auroc"})
                pixel.update(score_map[None], ref_b, fov)
                if prob and prob_files is None:
                    case_out["1"]["ece"] = float(M.expected_calibration_error(score_map[None], ref_b, fov)[0])
                    calib.update(score_map[None], ref_b, fov)
        res.cases[case.name] = case_out
    for g in groups:
        agg = overlap[g].compute()
        agg.update(hd95_mm_mean=surface[g]["hd95"].mean, asd_mm_mean=surface[g]["asd"].mean,
                   surface_dice_mean=surface[g]["surface_dice"].mean)
        if prob_files is not None:
            agg.update(group_calib[g].compute())
        res.aggregate[str(g)] = agg
    if binary_task:
        pix = pixel.compute()
        if not any_prob:
            pix.pop("auroc")
        res.aggregate["1"].update({f"pixel_{k}": v for k, v in pix.items() if k != "n_images"})
        if any_prob and prob_files is None:
            res.aggregate["1"].update(calib.compute())
    res.settings["spacing_source"] = sorted(spacing_sources)
    return res
