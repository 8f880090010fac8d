"""Task ``spectral``: band stacks (C, H, W) scored with SAM, ERGAS, mPSNR, mSSIM, UIQI, Q2n, RMSE, MRAE.

Rasters keep their band order ((band, y, x) from GeoTIFF / 2-D images / cubes); a 3-D NIfTI is read as
(x, y, bands); a ``.npy`` is (C, H, W), or (H, W, C) with ``channels_last``. The mask restricts SAM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import io
from .. import metrics as M
from ..errors import DataError
from .arrays import BAND_AXES, band_first, check_pair, iter_cases, mask_on_grid, require_finite, scoring
from .options import CommonOptions, DataRange, data_range, number
from .pairing import Case
from .report import TaskResult

__all__ = ["SpectralOptions", "band_stack", "evaluate_spectral"]


@dataclass
class SpectralOptions(CommonOptions):
    """Options of task ``spectral``.

    ``data_range`` (required): the PSNR / SSIM data range (1.0 for reflectance, 10000 for Sentinel-2 DN,
    255 for 8-bit); ``resolution_ratio``: ERGAS h/l, the high/low-resolution pixel-size ratio (0.25 for
    x4 super-resolution); ``channels_last``: ``.npy`` band stacks are (H, W, C).
    """

    data_range: DataRange | None = None
    resolution_ratio: float = 1.0
    channels_last: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.data_range = data_range(self.data_range, "spectral", allow_reference=False)
        self.resolution_ratio = number(self.resolution_ratio, "resolution_ratio", low=0.0, high=1.0, low_open=True)
        self.channels_last = bool(self.channels_last)


def band_stack(x: io.ArrayFile, channels_last: bool = False) -> np.ndarray:
    """The file's array as (C, H, W)."""
    data = x.data
    layout = x.geometry.layout if len(x.geometry.layout) == data.ndim else ()
    bands = [i for i, a in enumerate(layout) if a in BAND_AXES]
    if band_first(x):
        pass
    elif bands:
        data = np.moveaxis(data, bands[0], 0)
    elif x.kind == "nifti":
        if data.ndim == 3:
            data = np.moveaxis(data, -1, 0)
    elif channels_last:
        data = np.moveaxis(data, -1, 0)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise DataError(x.path, f"spectral images must be (C, H, W) band stacks, got shape {x.data.shape}",
                        "write one band stack per file (for .npy (H, W, C) pass channels_last / --channels-last)")
    return data


def evaluate_spectral(cases: list[Case], opts: SpectralOptions) -> TaskResult:
    """Per-image spectral scores; the aggregate is their mean over images."""
    res = TaskResult(settings={
        "data_range": opts.data_range, "resolution_ratio": opts.resolution_ratio,
        "definitions": {
            "sam_deg": "mean per-pixel spectral angle in degrees, zero vectors (and pixels outside --mask) left out",
            "ergas": "Wald: 100*(h/l)*sqrt(mean_k (RMSE_k/mean_ref_k)^2), h/l = resolution_ratio",
            "mpsnr/mssim": "per-band PSNR / SSIM (Gaussian 11x11, sigma 1.5) with data_range, mean over bands",
            "uiqi": "Wang-Bovik 8x8 sliding blocks, mean over bands",
            "q2n": "Garzelli-Nencini, 32x32 blocks (both shrink to the image side for smaller images)",
            "rmse": "over all bands and pixels", "mrae": "mean |pred-ref|/ref over ref != 0",
            "aggregate": "mean over images of the per-image values",
        },
    })
    means = {k: M.MeanTracker() for k in M.SPECTRAL_KEYS}
    for case, lp, lr, lm in iter_cases(cases):
        require_finite(lp, "prediction")
        require_finite(lr, "reference")
        check_pair(lp, lr, assume_same_grid=opts.assume_same_grid)
        p = band_stack(lp, opts.channels_last)[None]
        r = band_stack(lr, opts.channels_last)[None]
        mask = None
        if lm is not None:
            mask = mask_on_grid(lm, lr, r.shape[-2:], assume_same_grid=opts.assume_same_grid)[None]
        with scoring(case):
            scores = M.spectral_scores(p, r, float(opts.data_range), opts.resolution_ratio, mask)
        res.cases[case.name] = {"all": {k: float(v[0]) for k, v in scores.items()}}
        for k, v in scores.items():
            means[k].add(v)
    res.aggregate["all"] = {k: t.mean for k, t in means.items()}
    res.aggregate["all"]["n_images"] = float(len(res.cases))
    return res
