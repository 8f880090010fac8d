"""Task ``fusion``: fused images scored against their two sources (no fused reference exists) with EN, SD,
MI, VIF, Qabf and SSIM (:mod:`medrs_diff.metrics.fusion`, conventions there).

PRED holds the fused images, REF the first source (e.g. MRI) and ``second_source`` (``--second-source``) the
second (e.g. CT / PET / SPECT), a file for every case or a folder paired by name. Each image is one
single-channel 2-D map; all three are divided by ``data_range`` (255 for 8-bit, 1 for [0, 1] images) and
must then lie in [0, 1] (1 % of the range beyond it is clipped, as the 8-bit histograms do; more is
refused: the range is wrong). Sources in raw units (MR intensities, HU, SUV) take ``source_scaling``
instead: the data layer's scaling by name (``"mri"`` = the 0.5-99.5 percentile range, as DDFM's data
module scales them; ``"ct"``, ``"minmax"``, ...) maps each source onto [0, 1], the view the model fused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import io
from ..data.scaling import SCALING_NAMES, resolve
from ..errors import ArgumentError, DataError
from ..metrics.fusion import FUSION_KEYS, fusion_scores
from .arrays import check_pair, iter_cases, label_map, load, require_finite, scoring
from .options import CommonOptions, data_range, flag
from .pairing import Case, MissingFileError, pair_folder
from .report import TaskResult

__all__ = ["FusionOptions", "evaluate_fusion"]

SLACK = 0.01  # fraction of data_range by which an image may leave [0, data_range] (then clipped)


@dataclass
class FusionOptions(CommonOptions):
    """Options of task ``fusion``.

    ``second_source`` (required): the second source image(s), one file or a folder paired with the cases by
    name; ``data_range`` (required): the images' full range (255 for 8-bit, 1.0 for [0, 1]);
    ``source_scaling``: a data-layer scaling name mapping each raw source onto [0, 1] (then ``data_range``
    applies to the fused image only).
    """

    second_source: str | Path | None = None
    data_range: float | None = None
    source_scaling: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.second_source is None:
            raise ArgumentError(flag("second_source"), "task 'fusion' needs the second source image(s)",
                                "pass the second modality's file or folder (REF is the first)")
        self.second_source = Path(self.second_source)
        self.data_range = float(data_range(self.data_range, "fusion", allow_reference=False))
        if self.source_scaling is not None and self.source_scaling not in SCALING_NAMES:
            raise ArgumentError(flag("source_scaling"), f"unknown scaling {self.source_scaling!r}",
                                f"use one of {', '.join(SCALING_NAMES)}, or leave it unset for sources in "
                                "[0, data_range]")


def _unit_image(x: io.ArrayFile, role: str, rng: float) -> np.ndarray:
    """The single-channel 2-D image of ``x`` divided by ``rng``, within [0, 1] (small excursions clipped)."""
    a, _ = label_map(x)
    if a.ndim != 2:
        raise DataError(x.path, f"{role} of shape {x.data.shape} is not one 2-D single-channel image",
                        "write one 2-D grey image per case (a slice for volumes)")
    a = np.asarray(a, np.float64) / rng
    lo, hi = float(a.min()), float(a.max())
    if lo < -SLACK or hi > 1 + SLACK:
        raise DataError(x.path, f"{role} spans [{lo * rng:g}, {hi * rng:g}], outside [0, {rng:g}] (--data-range)",
                        "pass the images' real range as --data-range (255 for 8-bit, 1 for [0, 1] images)")
    return np.clip(a, 0.0, 1.0)


def _scaled_source(x: io.ArrayFile, role: str, name: str) -> np.ndarray:
    """A raw source onto [0, 1] through the data layer's scaling ``name`` (clipped like training)."""
    a, _ = label_map(x)
    if a.ndim != 2:
        raise DataError(x.path, f"{role} of shape {x.data.shape} is not one 2-D single-channel image",
                        "write one 2-D grey image per case (a slice for volumes)")
    a = np.asarray(a, np.float64)
    return np.clip((np.asarray(resolve(name, a).forward(a), np.float64) + 1.0) / 2.0, 0.0, 1.0)


def _second_sources(folder_or_file: Path, names: list[str]) -> dict[str, Path]:
    if not folder_or_file.exists():
        raise MissingFileError(folder_or_file, "second source does not exist", "check the path")
    if folder_or_file.is_file():
        io.format_for(folder_or_file)
        return dict.fromkeys(names, folder_or_file)
    return pair_folder(folder_or_file, names, "second source")


def evaluate_fusion(cases: list[Case], opts: FusionOptions) -> TaskResult:
    """Per-case EN, SD, MI, VIF, Qabf, SSIM; the aggregate is their mean over cases."""
    assert isinstance(opts.second_source, Path) and opts.data_range is not None
    rng = opts.data_range
    res = TaskResult(settings={
        "data_range": rng, "second_source": str(opts.second_source), "source_scaling": opts.source_scaling,
        "definitions": {
            "EN": "entropy (bits) of the fused image's 256-bin histogram over [0, 1]",
            "SD": "population standard deviation of the fused image in [0, 1] units (x 255 for 8-bit tables)",
            "MI": "MI(F, A) + MI(F, B), bits, 256 x 256 joint histograms",
            "VIF": "VIFp(A, F) + VIFp(B, F), four scales, sigma_n^2 = 2 on the 0-255 scale",
            "Qabf": "Xydeas-Petrovic edge preservation, Sobel gradients",
            "SSIM": "(SSIM(F, A) + SSIM(F, B)) / 2, Gaussian window 11, sigma 1.5, data range 1",
            "sources": "A = REF, B = --second-source; divided by data_range, or mapped onto [0, 1] by "
                       "--source-scaling",
            "aggregate": "mean over cases of the per-case values",
        },
    })
    seconds = _second_sources(opts.second_source, [c.name for c in cases])
    sums: dict[str, list[float]] = {k: [] for k in FUSION_KEYS}
    for case, lf, la, _ in iter_cases(cases):
        lb = load(seconds[case.name], "second source")
        for x, role in ((lf, "prediction"), (la, "reference"), (lb, "second source")):
            require_finite(x, role)
        check_pair(lf, la, assume_same_grid=opts.assume_same_grid)
        check_pair(lb, la, assume_same_grid=opts.assume_same_grid)
        f = _unit_image(lf, "fused image", rng)
        if opts.source_scaling is None:
            a, b = _unit_image(la, "source A", rng), _unit_image(lb, "source B", rng)
        else:
            a, b = (_scaled_source(x, role, opts.source_scaling) for x, role in ((la, "source A"),
                                                                                  (lb, "source B")))
        with scoring(case):
            scores = fusion_scores(f, a, b)
        for k in FUSION_KEYS:
            sums[k].append(scores[k])
        res.cases[case.name] = {"all": scores}
    res.aggregate["all"] = {k: float(np.mean(v)) if v else float("nan") for k, v in sums.items()}
    res.aggregate["all"]["n_images"] = float(len(res.cases))
    return res
