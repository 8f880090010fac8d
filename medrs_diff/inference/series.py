"""Whole-scene cloud removal from a stack of GeoTIFFs (SeqDMs): S2 of several dates (+ S1, + cloud masks) ->
a clear S2 GeoTIFF and an uncertainty GeoTIFF on the S2 grid.

The dates are read and checked by :func:`~medrs_diff.data.cloud.read_series` (one grid, S1 in dB, bands
present), packed as channels ``T x (C + 1 + S + 1)`` and run through blended sliding windows (MONAI, the
project's :func:`~medrs_diff.inference.tiling.infer_volume`), so device memory is bounded by the window, not
the scene. Each window is unpacked into the method's sequence batch. The prediction is written as
reflectance x ``quantification`` (DN, float32) and the uncertainty (std over ``n_samples`` chains) in the
same units; the model-space scaling is recorded in the files.

The stack is given by a manifest CSV (columns ``s2`` and optionally ``s1``, ``mask``; one row per date,
paths relative to the manifest) or by a folder with the naming pattern ``*_s2.tif`` / ``*_s1.tif`` /
``*_mask.tif`` (dates paired by the common prefix, sorted).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import keys as K
from ..data.cloud import S1_POLS, S2_L1C_BANDS, Series, read_series, refl_scaling, s1_scaling
from ..errors import ArgumentError, DataError
from ..io.geotiff import write_geotiff
from ..methods.base import Method
from .tiling import infer_volume

PathLike = str | os.PathLike


def read_stack(source: PathLike) -> tuple[list[Path], list[Path] | None, list[Path] | None]:
    """(S2 files, S1 files or None, mask files or None) from a manifest CSV or a folder (module notes)."""
    src = Path(source)
    if src.is_file():
        with open(src, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "s2" not in rows[0]:
            raise DataError(src, "is not a manifest with an `s2` column and one row per date",
                            "write a CSV with columns s2[,s1][,mask]")
        col = lambda name: ([src.parent / r[name] for r in rows] if name in rows[0] and all(r[name] for r in rows)  # noqa: E731
                            else None)
        return col("s2"), col("s1"), col("mask")
    if not src.is_dir():
        raise DataError(src, "is neither a manifest CSV nor a folder", "give a manifest or a folder of *_s2.tif files")
    s2 = sorted(src.glob("*_s2.tif"))
    if not s2:
        raise DataError(src, "holds no *_s2.tif file (empty sequence)", "name each date's S2 <date>_s2.tif")
    stems = [p.name[: -len("_s2.tif")] for p in s2]

    def paired(suffix: str) -> list[Path] | None:
        files = [src / f"{s}_{suffix}.tif" for s in stems]
        present = [f.is_file() for f in files]
        if any(present) and not all(present):
            missing = [str(f) for f, ok in zip(files, present, strict=True) if not ok]
            raise DataError(missing[0], f"is missing ({suffix} given for some dates only)",
                            f"give a <date>_{suffix}.tif for every date or for none")
        return files if all(present) else None

    return s2, paired("s1"), paired("mask")


def pack(series: Series, sar_channels: int) -> tuple[torch.Tensor, int]:
    """The series in model space packed as (T * (C + 1 + S + 1), H, W) channels; returns it and C."""
    rs, ss = refl_scaling(), s1_scaling()
    t, c, h, w = series.s2.shape
    parts = [rs.forward(torch.from_numpy(series.s2), channel_axis=1), torch.from_numpy(series.cloud)]
    if sar_channels:
        if series.sar is None:
            parts += [torch.zeros(t, sar_channels, h, w), torch.zeros(t, 1, h, w)]
        else:
            parts += [ss.forward(torch.from_numpy(series.sar), channel_axis=1), torch.ones(t, 1, h, w)]
    return torch.cat(parts, dim=1).reshape(-1, h, w).float(), c


def predict_series(method: Method, series: Series, *, tile: int | Sequence[int] = 256, overlap: float = 0.25,
                   batch: int = 4, sampler: str | None = None, steps: int | None = None,
                   n_samples: int | None = None, seed: int = 0, device: str | torch.device = "cpu",
                   progress: bool = False) -> dict[str, np.ndarray]:
    """Reflectance ``prediction`` and ``uncertainty`` (C, H, W) of a series, tiled (module notes)."""
    spec = method.io_spec
    if not spec.extra.get("sequence"):
        raise ArgumentError("checkpoint", f"{type(method).__name__} is not a time-series method",
                            "use a SeqDM checkpoint (or infer this file without a series)")
    if series.s2.shape[1] != spec.inputs[K.COND]:
        raise DataError(series.name, f"{series.s2.shape[1]} S2 bands for a model trained on {spec.inputs[K.COND]}",
                        "select the bands the model was trained with")
    sar_c = int(spec.inputs.get(K.SAR, 0))
    x, c = pack(series, sar_c)
    t = series.s2.shape[0]
    per = c + 1 + (sar_c + 1 if sar_c else 0)
    gen = torch.Generator(device=torch.device(device)).manual_seed(seed)
    method = method.to(device).eval()

    def window(w: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, h, ww = w.shape
        z = w.reshape(b, t, per, h, ww)
        bt = {K.COND: z[:, :, :c], K.CLOUD_MASK: z[:, :, c:c + 1]}
        if sar_c:
            bt[K.SAR] = z[:, :, c + 1:c + 1 + sar_c]
            bt[K.SAR_VALID] = z[:, :, -1].flatten(2).amax(2)
        out = method.predict(bt, sampler=sampler, steps=steps, n_samples=n_samples, generator=gen)
        return {"prediction": out["prediction"], "uncertainty": out["uncertainty"]}

    mult = int(spec.extra.get("size_multiple", 1))
    h, w = x.shape[1:]
    roi = [int(tile)] * 2 if np.isscalar(tile) else [int(v) for v in tile]
    roi = [max(mult, min(r, s) // mult * mult) for r, s in zip(roi, (h, w), strict=True)]
    out = infer_volume(window, x, roi, overlap, batch=batch, device="cpu", sw_device=device, progress=progress)
    rs = refl_scaling()
    pred = rs.inverse(out["prediction"].float(), channel_axis=0).clamp(0, 1).numpy()
    unc = (out["uncertainty"].float() * abs(rs.scale[0])).numpy()
    return {"prediction": pred, "uncertainty": unc}


def infer_series_files(method: Method, source: PathLike, output: PathLike, *, bands: Sequence[str] = S2_L1C_BANDS,
                       quantification: float = 1e4, **kwargs: Any) -> dict[str, Path]:
    """Read the stack at ``source`` (manifest or folder), predict, write ``<output>/<first date>_clear.tif`` (DN)
    and ``_uncertainty.tif`` (DN) on the S2 grid; returns ``{output key: path}``. ``kwargs`` go to
    :func:`predict_series`."""
    s2, s1, masks = read_stack(source)
    series = read_series(s2, sar_paths=s1, mask_paths=masks, bands=bands, quantification=quantification)
    if s1 is not None and len(S1_POLS) != int(method.io_spec.inputs.get(K.SAR, 0)):
        raise DataError(s1[0], "S1 given to a model trained without S1", "drop the s1 files")
    out_dir = Path(output)
    stem = Path(s2[0]).stem
    paths = {"prediction": out_dir / f"{stem}_clear.tif", "uncertainty": out_dir / f"{stem}_uncertainty.tif"}
    inputs = {Path(p).resolve() for p in [*s2, *(s1 or []), *(masks or [])]}
    for path in paths.values():  # before any compute
        if path.resolve() in inputs:
            raise DataError(path, "would overwrite an input", "choose another output folder")
    outs = predict_series(method, series, **kwargs)
    out_dir.mkdir(parents=True, exist_ok=True)
    for key, path in paths.items():
        write_geotiff((outs[key] * quantification).astype(np.float32), path, crs=series.crs,
                      transform=series.transform, band_names=list(bands), scaling=refl_scaling(),
                      tags={"medrs_diff_units": f"reflectance x {quantification:g}", "medrs_diff_output": key},
                      inputs=[*s2, *(s1 or []), *(masks or [])])
    return paths


def checkpoint_bands(checkpoint: PathLike) -> list[str]:
    """The S2 band names the checkpoint's data module trained on (``bands``; all 13 L1C bands when unset)."""
    from ..train.checkpoint import checkpoint_data_config, read_checkpoint

    data = (checkpoint_data_config(read_checkpoint(checkpoint, map_location="cpu")) or {}).get("init_args") or {}
    return list(data.get("bands") or S2_L1C_BANDS)


def infer_series_checkpoint(predictor: Any, source: PathLike, output: PathLike, *, tile: Sequence[int] | None = None,
                            **kwargs: Any) -> dict[str, Path]:
    """``medrs-diff infer`` for a time-series checkpoint: :func:`infer_series_files` with the checkpoint's bands,
    the predictor's device and, without ``tile``, its window (the training patch, at least 256)."""
    bands = checkpoint_bands(predictor.checkpoint) if predictor.checkpoint is not None else list(S2_L1C_BANDS)
    trained = predictor.patch_size
    size = list(tile) if tile is not None else [max(256, int(trained) if trained is not None else 0)]
    if len(size) not in (1, 2):
        raise ArgumentError("--tile", f"give one or two window sizes for 2-D scenes, got {size}", "e.g. --tile 256")
    return infer_series_files(predictor.method, source, output, bands=bands, device=predictor.device,
                              tile=list(size) * (2 // len(size)), **kwargs)


__all__ = ["checkpoint_bands", "infer_series_checkpoint", "infer_series_files", "pack", "predict_series", "read_stack"]
