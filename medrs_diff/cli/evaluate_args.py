"""``medrs-diff evaluate PRED REF --task ...``: the argparse arguments and their conversion to
:func:`medrs_diff.evaluation.evaluate` (argparse lives only here; the evaluation package is typed)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..errors import ArgumentError
from ..evaluation import TASKS, evaluate, format_table

__all__ = ["add_arguments", "run_from_args"]


def _default(task: str, name: str) -> Any:
    (f,) = [f for f in dataclasses.fields(TASKS[task].options) if f.name == name]
    return f.default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` sub-command's arguments to ``parser``."""
    parser.add_argument("pred", type=Path, metavar="PRED", help="prediction file or folder")
    parser.add_argument("ref", type=Path, metavar="REF", help="reference file or folder (paired by name)")
    parser.add_argument("--task", required=True, choices=tuple(TASKS),
                        help="which metric family to compute: "
                             + "; ".join(f"{t.name}: {t.description}" for t in TASKS.values()))
    parser.add_argument("--mask", type=Path, default=None,
                        help="mask file (all cases) or folder (paired by name): FOV for seg, SAM mask for "
                             "spectral, verification domain for forecast, body/lesion mask for image, "
                             "pixels to score for class")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for evaluation_<task>.csv/.json (default: <PRED>_evaluation beside PRED, "
                             "else ./evaluation_out)")
    parser.add_argument("--assume-same-grid", action="store_true",
                        help="accept a prediction or mask without geometry (.npy, PNG, plain TIFF) for a NIfTI / "
                             "GeoTIFF reference (or the other way round) and skip the transposed / flipped check of "
                             "geometry-less label maps: you vouch that both hold the same stored array order "
                             "(NIfTI: x, y, z as nibabel's dataobj; rasters: (band, y, x), row 0 at the top)")
    g = parser.add_argument_group("seg")
    g.add_argument("--spacing", type=float, nargs="+", default=None,
                   help="voxel spacing in mm per axis, overriding the file header")
    g.add_argument("--labels", type=int, nargs="+", default=None,
                   help="labels to score (default: every non-zero label of the references); a label listed "
                        "here is accepted in predictions even when no reference has it")
    g.add_argument("--label-map", nargs="+", default=None, metavar="FROM:TO",
                   help="map prediction labels to reference labels before scoring, e.g. --label-map 255:1 for "
                        "0/255 masks (a prediction label that no reference has is refused otherwise)")
    g.add_argument("--brats", action="store_true", help="score BraTS regions WT/TC/ET instead of labels")
    g.add_argument("--et-label", type=int, default=_default("seg", "et_label"), choices=(3, 4),
                   help="enhancing-tumour label (BraTS)")
    g.add_argument("--probability", type=Path, default=None,
                   help="class-probability file or folder (paired by name; infer's OUT/probability): one channel "
                        "per class in the order of the label values, background first; adds the ECE of each label "
                        "(one-vs-rest) or, with --brats, of WT = 1 - p(0), TC = p(1) + p(ET), ET = p(ET)")
    g.add_argument("--threshold", type=float, default=_default("seg", "threshold"),
                   help="threshold for probability maps")
    g.add_argument("--tolerance", type=float, default=_default("seg", "tolerance"),
                   help="surface Dice tolerance in mm")
    g.add_argument("--empty-score", type=float, default=_default("seg", "empty_score"),
                   help="Dice/IoU/surface Dice when prediction and reference are both empty ('nan' to skip)")
    g = parser.add_argument_group("spectral / image")
    g.add_argument("--data-range", default=None,
                   help="data range for PSNR/SSIM (required): a number, or ref_range / ref_max (image task); "
                        "fusion: the images' full range")
    g.add_argument("--resolution-ratio", type=float, default=_default("spectral", "resolution_ratio"),
                   help="ERGAS h/l, high/low-resolution pixel-size ratio (0.25 for x4 SR)")
    g.add_argument("--channels-last", action="store_true", help=".npy band stacks are (H, W, C)")
    g.add_argument("--nrmse-norm", default=_default("image", "nrmse_norm"), choices=("euclidean", "min-max", "mean"),
                   help="NRMSE normaliser")
    g.add_argument("--spatial-dims", type=int, default=None, choices=(2, 3), help="2-D or 3-D SSIM")
    g.add_argument("--enl", action="store_true", help="also report the equivalent number of looks (SAR)")
    g = parser.add_argument_group("forecast")
    g.add_argument("--thresholds", type=float, nargs="+", default=None, help="event thresholds, increasing")
    g.add_argument("--scales", type=int, nargs="+", default=list(_default("forecast", "scales")),
                   help="max-pool sizes for CSI, FSS neighbourhoods, CRPS average-pool sizes")
    g.add_argument("--ensemble", action="store_true", help="PRED has a leading ensemble-member axis")
    g = parser.add_argument_group("class")
    g.add_argument("--num-classes", type=int, default=None, help="number of classes (default: max label + 1)")
    g.add_argument("--ignore-index", type=int, default=None, help="reference label to leave out")
    g = parser.add_argument_group("fusion")
    g.add_argument("--second-source", type=Path, default=None,
                   help="the second source image file or folder (paired by name; REF is the first); "
                        "fusion also needs --data-range")
    g.add_argument("--source-scaling", default=None,
                   help="map raw sources onto [0, 1] with this data-layer scaling (mri = 0.5-99.5 percentiles, "
                        "as DDFM's data module; ct, minmax, ...); --data-range then applies to PRED only")
    g = parser.add_argument_group("anomaly")
    g.add_argument("--threshold-from", nargs="+", default=None, metavar="VAL",
                   help="VAL_MAPS VAL_LABELS: choose the mask threshold on this validation split (never the test "
                        "set); VAL_MAPS alone (healthy maps) with --threshold-rule percentile")
    g.add_argument("--threshold-rule", default=_default("anomaly", "threshold_rule"), choices=("dice", "percentile"),
                   help="dice: maximise pooled validation Dice; percentile: that percentile of healthy errors")
    g.add_argument("--threshold-percentile", type=float, default=_default("anomaly", "threshold_percentile"),
                   help="percentile of healthy validation errors (rule percentile)")
    g.add_argument("--anomaly-threshold", type=float, default=None,
                   help="a fixed threshold chosen earlier on validation data (instead of --threshold-from)")


def _same(a: Any, b: Any) -> bool:
    norm = (lambda v: tuple(v) if isinstance(v, list | tuple) else v)  # noqa: E731
    return norm(a) == norm(b)


def _task_options(args: argparse.Namespace) -> dict[str, Any]:
    """The chosen task's options from ``args``; an option of another task set away from its default is refused."""
    own = {f.name for f in dataclasses.fields(TASKS[args.task].options)}
    for name, task in TASKS.items():
        if name == args.task:
            continue
        for f in dataclasses.fields(task.options):
            if f.name not in own and hasattr(args, f.name) and not _same(getattr(args, f.name), f.default):
                flag = "--" + f.name.replace("_", "-")
                users = [n for n, t in TASKS.items() if f.name in {x.name for x in dataclasses.fields(t.options)}]
                raise ArgumentError(flag, f"does not apply to --task {args.task} (it is an option of --task "
                                    f"{', '.join(users)})", "drop it or choose the matching --task")
    return {name: getattr(args, name) for name in own if hasattr(args, name)}


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate from parsed ``evaluate`` arguments, print the table and the written paths; return the results."""
    results = evaluate(args.pred, args.ref, args.task, out=args.out, mask=args.mask, **_task_options(args))
    print(format_table(results))
    print(f"wrote {results['csv']} and {results['json']}")
    return results
