"""Whole-scene cloud removal from a stack of GeoTIFFs (SeqDMs): S2 of several dates (+ S1, + cloud masks) ->
a clear S2 GeoTIFF and an uncertainty GeoTIFF on the S2 grid.

The stack is checked up front by :func:`~medrs_diff.data.cloud.open_series` (one grid, bands present, VV/VH
from the headers; S2 reflectance and S1 in dB by a bounded-memory scan), then streamed: each window of every
date is read, packed as channels ``T x (C + 1 + S + 1)`` and unpacked into the method's sequence batch, and
the blended windows are written strip by strip (:func:`~medrs_diff.inference.tiling.write_strips`), so host
memory is bounded by a strip of windows and device memory by a batch, not by the scene.
:func:`predict_series` does the same on a :class:`~medrs_diff.data.cloud.Series` in memory (MONAI sliding
windows); windows, gaussian blending and per-window seeds are the same, so both give the same result. The
prediction is written as reflectance x ``quantification`` (DN, float32) and the uncertainty (std over
``n_samples`` chains) in the same units; the model-space scaling is recorded in the files.

The stack is given by a manifest CSV (columns ``s2`` and optionally ``s1``, ``mask``; one row per date,
paths relative to the manifest) or by a folder with the naming pattern ``*_s2.tif`` / ``*_s1.tif`` /
``*_mask.tif`` (dates paired by the common prefix, sorted).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import keys as K
from ..data.cloud import S1_POLS, S2_L1C_BANDS, Series, open_series, refl_scaling, s1_scaling
from ..errors import ArgumentError, DataError
from ..io.atomic import check_output_path
from ..methods.base import Method
from .seeding import window_generators
from .tiling import GeoOutput, PositionalWindowFn, TileReader, gdal_cache_cap, infer_volume, write_strips

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
    """The series in model space packed as (T * (C + 1 + S + 1), H, W) channels; returns it and C. The S1-present
    channel is 0 where S1 is absent: the whole date without S1, or pixels where ``sar`` is NaN (nodata)."""
    rs, ss = refl_scaling(), s1_scaling()
    t, c, h, w = series.s2.shape
    parts = [rs.forward(torch.from_numpy(series.s2), channel_axis=1), torch.from_numpy(series.cloud)]
    if sar_channels:
        if series.sar is None:
            parts += [torch.zeros(t, sar_channels, h, w), torch.zeros(t, 1, h, w)]
        else:
            present = torch.from_numpy(np.isfinite(series.sar).all(axis=1, keepdims=True)).float()
            sar = ss.forward(torch.from_numpy(np.nan_to_num(series.sar)), channel_axis=1) * present
            parts += [sar, present]
    return torch.cat(parts, dim=1).reshape(-1, h, w).float(), c


def _model_channels(method: Method, n_bands: int, where: Any) -> tuple[int, int]:
    """(S2 bands C, S1 channels S) of a time-series ``method`` given ``n_bands`` S2 bands; refuses others."""
    spec = method.io_spec
    if not spec.extra.get("sequence"):
        raise ArgumentError("checkpoint", f"{type(method).__name__} is not a time-series method",
                            "use a SeqDM checkpoint (or infer this file without a series)")
    if n_bands != spec.inputs[K.COND]:
        raise DataError(where, f"{n_bands} S2 bands for a model trained on {spec.inputs[K.COND]}",
                        "select the bands the model was trained with")
    return int(n_bands), int(spec.inputs.get(K.SAR, 0))


def _window(method: Method, tile: int | Sequence[int], h: int, w: int) -> list[int]:
    """The window (rows, cols): ``tile`` within the scene, a multiple of the method's ``size_multiple``."""
    mult = int(method.io_spec.extra.get("size_multiple", 1))
    roi = [int(tile)] * 2 if np.isscalar(tile) else [int(v) for v in tile]
    return [max(mult, min(r, s) // mult * mult) for r, s in zip(roi, (h, w), strict=True)]


def series_window_fn(method: Method, dates: int, c: int, sar_c: int, *, sampler: str | None = None,
                     steps: int | None = None, n_samples: int | None = None, seed: int = 0,
                     case: str = "series") -> PositionalWindowFn:
    """The window function of a packed series (:func:`pack`): each window (B, T * (C + 1 + S + 1), h, w) is
    unpacked into the method's sequence batch; its noise comes from a generator seeded by ``(seed, case, window
    start)`` (:mod:`~medrs_diff.inference.seeding`), so the output does not depend on batching or on reading
    the scene in memory or window by window."""
    per = c + 1 + (sar_c + 1 if sar_c else 0)

    def run(x: torch.Tensor, starts: list[tuple[int, ...]]) -> dict[str, torch.Tensor]:
        b, _, h, w = x.shape
        z = x.reshape(b, dates, per, h, w)
        bt = {K.COND: z[:, :, :c], K.CLOUD_MASK: z[:, :, c:c + 1]}
        if sar_c:
            # a date's S1 counts in a window only where it covers the whole window (nodata pixels: absent S1, as
            # the model was trained for a date without S1: zeros and flag 0)
            valid = z[:, :, -1].flatten(2).amin(2)
            bt[K.SAR] = z[:, :, c + 1:c + 1 + sar_c] * valid[:, :, None, None, None]
            bt[K.SAR_VALID] = valid
        out = method.predict(bt, sampler=sampler, steps=steps, n_samples=n_samples,
                             generator=window_generators(seed, case, starts, x.device))
        return {"prediction": out["prediction"], "uncertainty": out["uncertainty"]}

    return PositionalWindowFn(run)


def to_reflectance(key: str, y: np.ndarray) -> np.ndarray:
    """A blended output (C, ...) from model space to reflectance: ``prediction`` inverted and clipped to 0..1,
    ``uncertainty`` (a std) scaled only."""
    rs = refl_scaling()
    if key == "prediction":
        return np.clip(rs.inverse(y, channel_axis=0), 0.0, 1.0)
    return y * abs(rs.scale[0])


def predict_series(method: Method, series: Series, *, tile: int | Sequence[int] = 256, overlap: float = 0.25,
                   batch: int = 4, sampler: str | None = None, steps: int | None = None,
                   n_samples: int | None = None, seed: int = 0, device: str | torch.device = "cpu",
                   progress: bool = False) -> dict[str, np.ndarray]:
    """Reflectance ``prediction`` and ``uncertainty`` (C, H, W) of a series in memory, tiled (MONAI sliding
    windows, gaussian blending); :func:`infer_series_files` streams files instead (same windows and seeds)."""
    c, sar_c = _model_channels(method, series.s2.shape[1], series.name)
    x, _ = pack(series, sar_c)
    method = method.to(device).eval()
    fn = series_window_fn(method, series.s2.shape[0], c, sar_c, sampler=sampler, steps=steps, n_samples=n_samples,
                          seed=seed, case=series.name)
    roi = _window(method, tile, *x.shape[1:])
    out = infer_volume(fn, x, roi, overlap, batch=batch, device="cpu", sw_device=device, progress=progress)
    res = {k: to_reflectance(k, out[k].float().numpy()) for k in ("prediction", "uncertainty")}
    if series.nodata is not None:  # no date has data there: NaN, as the streamed files' nodata
        res = {k: np.where(series.nodata.all(axis=0), np.float32(np.nan), v) for k, v in res.items()}
    return res


def infer_series_files(method: Method, source: PathLike, output: PathLike, *, bands: Sequence[str] = S2_L1C_BANDS,
                       quantification: float = 1e4, tile: int | Sequence[int] = 256, overlap: float = 0.25,
                       batch: int = 4, sampler: str | None = None, steps: int | None = None,
                       n_samples: int | None = None, seed: int = 0, device: str | torch.device = "cpu",
                       progress: bool | None = False) -> dict[str, Path]:
    """Predict the stack at ``source`` (manifest or folder) and write ``<output>/<first date>_clear.tif`` (DN)
    and ``_uncertainty.tif`` (DN) on the S2 grid; returns ``{output key: path}``.

    Streamed: the files are checked up front (headers, then a bounded-memory scan of the values,
    :func:`~medrs_diff.data.cloud.open_series`), then every window of every date is read, packed and
    predicted as :func:`predict_series` does (same windows, gaussian blending, per-window seeds) and the
    outputs are written strip by strip (:func:`~medrs_diff.inference.tiling.write_strips`): memory holds one
    strip of windows, never the scene; both files appear only when the whole scene succeeded. A date's S2 nodata
    pixels are read as cloud (filled from the other dates); where every date is nodata the outputs hold NaN, their
    declared nodata."""
    s2, s1, masks = read_stack(source)
    c, sar_c = _model_channels(method, len(bands), s2[0])
    if s1 is not None and len(S1_POLS) != sar_c:
        raise DataError(s1[0], "S1 given to a model trained without S1", "drop the s1 files")
    out_dir = Path(output)
    stem = Path(s2[0]).stem
    paths = {"prediction": out_dir / f"{stem}_clear.tif", "uncertainty": out_dir / f"{stem}_uncertainty.tif"}
    with gdal_cache_cap(), open_series(s2, sar_paths=s1, mask_paths=masks, bands=bands,
                                        quantification=quantification) as files:
        for path in paths.values():  # before any compute
            check_output_path(path, files.inputs, create=False)
        method = method.to(device).eval()
        fn = series_window_fn(method, len(s2), c, sar_c, sampler=sampler, steps=steps, n_samples=n_samples,
                              seed=seed, case=files.name)

        def read(y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
            series = files.read(y0, x0, h, w)
            ok = np.ones((h, w), bool) if series.nodata is None else ~series.nodata.all(axis=0)
            return pack(series, sar_c)[0].numpy(), ok

        nodata = float("nan") if files.declares_nodata else None  # where every date is nodata

        def plan(outs: Any) -> dict[str, GeoOutput]:
            return {key: GeoOutput(path, "float32", nodata=nodata, band_names=list(bands), scaling=refl_scaling(),
                                   tags={"medrs_diff_units": f"reflectance x {quantification:g}",
                                         "medrs_diff_output": key},
                                   strip=lambda y, k=key: to_reflectance(k, y) * quantification)
                    for key, path in paths.items()}

        reader = TileReader(read, files.height, files.width, files.crs, files.transform, files.inputs, files.name)
        roi = _window(method, tile, files.height, files.width)
        return write_strips(fn, reader, plan, (roi[0], roi[1]), overlap, "gaussian", batch, device=device,
                            progress=progress)


def checkpoint_bands(checkpoint: PathLike | Mapping[str, Any]) -> list[str]:
    """The S2 band names the checkpoint's data module trained on (``bands``; all 13 L1C bands when unset), from
    its file or from the checkpoint dict already read."""
    from ..train.checkpoint import checkpoint_data_config, read_checkpoint

    ckpt = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint, map_location="cpu")
    data = (checkpoint_data_config(ckpt) or {}).get("init_args") or {}
    bands = data.get("bands")
    return list(S2_L1C_BANDS if bands is None else bands)


def infer_series_checkpoint(predictor: Any, source: PathLike, output: PathLike, *, tile: Sequence[int] | None = None,
                            bands: Sequence[str] | None = None, **kwargs: Any) -> dict[str, Path]:
    """``medrs-diff infer`` for a time-series checkpoint: :func:`infer_series_files` with ``bands`` (None: the
    checkpoint's, :func:`checkpoint_bands`, read from its file), the predictor's device and, without ``tile``, its
    window (the training patch, at least 256)."""
    if bands is None:
        bands = checkpoint_bands(predictor.checkpoint) if predictor.checkpoint is not None else list(S2_L1C_BANDS)
    trained = predictor.patch_size
    size = list(tile) if tile is not None else [max(256, int(trained) if trained is not None else 0)]
    if len(size) not in (1, 2):
        raise ArgumentError("--tile", f"give one or two window sizes for 2-D scenes, got {size}", "e.g. --tile 256")
    return infer_series_files(predictor.method, source, output, bands=bands, device=predictor.device,
                              tile=list(size) * (2 // len(size)), **kwargs)


__all__ = ["checkpoint_bands", "infer_series_checkpoint", "infer_series_files", "pack", "predict_series", "read_stack",
           "series_window_fn", "to_reflectance"]
