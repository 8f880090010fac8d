"""Task ``image``: 2-D or 3-D images (synthesis, restoration, denoising) scored with PSNR, SSIM, NRMSE.

Rasters are (band, y, x) with bands as channels and a 2-D window; a NIfTI is (x, y[, z]) with an
optional trailing channel axis; a ``.npy`` is (*spatial) or (C, *spatial). The mask restricts PSNR /
SSIM / NRMSE and gives the SUV bias (PET) inside it; ``enl`` adds the equivalent number of looks (SAR).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .. import io
from .. import metrics as M
from ..errors import ArgumentError, DataError
from .arrays import band_first, check_pair, iter_cases, label_map, mask_on_grid, require_finite, scoring
from .options import CommonOptions, DataRange, data_range, flag
from .pairing import Case
from .report import TaskResult

__all__ = ["ImageOptions", "evaluate_image", "image_layout"]

NRMSE_NORMS = ("euclidean", "min-max", "mean")


@dataclass
class ImageOptions(CommonOptions):
    """Options of task ``image``.

    ``data_range`` (required): PSNR / SSIM data range, a number or ``"ref_range"`` / ``"ref_max"`` (from
    each reference); ``nrmse_norm``: NRMSE normaliser (``euclidean``, ``min-max`` or ``mean`` of the
    reference); ``spatial_dims``: 2 or 3 for the SSIM window (default: from the array, at most 3);
    ``enl``: also report the equivalent number of looks of prediction and reference (SAR).
    """

    data_range: DataRange | None = None
    nrmse_norm: Literal["euclidean", "min-max", "mean"] = "euclidean"
    spatial_dims: int | None = None
    enl: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.data_range = data_range(self.data_range, "image", allow_reference=True)
        if self.nrmse_norm not in NRMSE_NORMS:
            raise ArgumentError(flag("nrmse_norm"), f"must be one of {NRMSE_NORMS}, got {self.nrmse_norm!r}",
                                "choose one of them")
        if self.spatial_dims is not None and self.spatial_dims not in (2, 3):
            raise ArgumentError(flag("spatial_dims"), f"must be 2 or 3, got {self.spatial_dims!r}",
                                "give 2 or 3, or leave it unset")
        self.enl = bool(self.enl)


def image_layout(x: io.ArrayFile, spatial_dims: int | None = None) -> tuple[np.ndarray, int]:
    """(C, *spatial) array and its number of spatial dims."""
    data = x.data
    if band_first(x):
        return data, 2
    if x.kind == "nifti":
        data, _ = label_map(x)
    sd = spatial_dims if spatial_dims is not None else min(data.ndim, 3)
    if data.ndim == sd:
        return data[None], sd
    if data.ndim == sd + 1:
        return (np.moveaxis(data, -1, 0) if x.kind == "nifti" else data), sd  # NIfTI channels are last
    raise DataError(x.path, f"image of shape {x.data.shape} does not fit spatial_dims {sd}",
                    "write (*spatial) or (C, *spatial) images, or set spatial_dims / --spatial-dims")


def evaluate_image(cases: list[Case], opts: ImageOptions) -> TaskResult:
    """Per-image PSNR / SSIM / NRMSE (+ SUV bias, ENL); the aggregate is their mean over images."""
    res = TaskResult(settings={
        "data_range": opts.data_range, "nrmse_normalization": opts.nrmse_norm, "spatial_dims": opts.spatial_dims,
        "definitions": {
            "psnr": "10 log10(L^2/MSE) per image (inside --mask), L = data_range",
            "ssim": "Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, valid region, 2-D or 3-D window",
            "nrmse": f"RMSE / {opts.nrmse_norm} of the reference",
            "suv_bias": "inside --mask: 100*(mean pred-mean ref)/mean ref and the same for max, percent",
            "enl": "mean^2/variance of linear intensity inside --mask",
            "aggregate": "mean over images of the per-image values",
        },
    })
    means: dict[str, M.MeanTracker] = {}

    def add(key: str, value: torch.Tensor) -> float:
        means.setdefault(key, M.MeanTracker()).add(value)
        return float(value[0])

    for case, lp, lr, lm in iter_cases(cases):
        require_finite(lp, "prediction")
        require_finite(lr, "reference")
        check_pair(lp, lr, assume_same_grid=opts.assume_same_grid)
        p, sd = image_layout(lp, opts.spatial_dims)
        r, _ = image_layout(lr, opts.spatial_dims)
        mask = None
        if lm is not None:
            mask = mask_on_grid(lm, lr, r.shape[-sd:], assume_same_grid=opts.assume_same_grid)[None]
        pb, rb = p[None], r[None]
        with scoring(case):
            out = {
                "psnr": add("psnr", M.psnr(pb, rb, opts.data_range, mask)),
                "ssim": add("ssim", M.ssim(pb, rb, opts.data_range, sd, mask)),
                "nrmse": add("nrmse", M.nrmse(pb, rb, opts.nrmse_norm, mask)),
            }
            if mask is not None:
                bias = M.suv_bias(pb, rb, mask)
                out["suv_mean_bias_pct"] = add("suv_mean_bias_pct", bias["mean_bias_pct"])
                out["suv_max_bias_pct"] = add("suv_max_bias_pct", bias["max_bias_pct"])
            if opts.enl:
                out["enl_pred"] = add("enl_pred", M.enl(pb, mask))
                out["enl_ref"] = add("enl_ref", M.enl(rb, mask))
        res.cases[case.name] = {"all": out}
    res.aggregate["all"] = {k: t.mean for k, t in means.items()}
    res.aggregate["all"]["n_images"] = float(len(res.cases))
    return res
