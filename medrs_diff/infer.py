"""Whole-volume and whole-scene inference: blended overlapping windows (no seams), bounded memory,
file in -> file out on exactly the input's grid.

``predictor`` is any callable mapping a batch (B, C_in, *tile) to (B, C_out, *tile), or to a dict of
such tensors (e.g. ``{"prediction": ..., "uncertainty": ...}``); each dict entry is written to its own
file with the input's geometry. Window contributions are weighted by a blending window (``gaussian``,
``cosine`` or ``constant``) and normalised by the summed weights, so an identity model returns the input
and a constant model returns the constant across tile borders.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import rasterio
import torch
from monai.inferers import sliding_window_inference
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from rasterio.transform import Affine
from rasterio.windows import Window
from tqdm.auto import tqdm

from .data.atomic import atomic_outputs, check_output_path
from .data.errors import DataError
from .data.readers import check_bands, has_valid_data, open_geotiff, read_nifti, valid_mask
from .data.scaling import Scaling, ScalingSpec, resolve
from .data.writers import geotiff_profile, nifti_image, set_band_metadata

Output = torch.Tensor | Mapping[str, torch.Tensor]
Predictor = Callable[[torch.Tensor], Output]
PathLike = str | os.PathLike
MAIN_KEY = "prediction"
INPUT_SCALING_TAG = "MEDRS_INPUT_SCALING"


def blend_window(size: Sequence[int], blend: str = "gaussian", sigma_scale: float = 0.125,
                 min_weight: float = 1e-3) -> torch.Tensor:
    """Separable blending window of shape ``size`` (max 1, min ``min_weight`` so every pixel counts).

    ``gaussian``: sigma = ``sigma_scale`` x size (as MONAI); ``cosine``: raised cosine (Hann) that falls
    towards the borders; ``constant``: plain averaging.
    """
    w = torch.ones(())
    for n in size:
        i = torch.arange(n, dtype=torch.float64)
        if blend == "gaussian":
            c, s = (n - 1) / 2, max(sigma_scale * n, 1e-6)
            w1 = torch.exp(-0.5 * ((i - c) / s) ** 2)
        elif blend == "cosine":
            w1 = 0.5 - 0.5 * torch.cos(2 * torch.pi * (i + 0.5) / n)
        elif blend == "constant":
            w1 = torch.ones(n, dtype=torch.float64)
        else:
            raise ValueError(f"blend must be 'gaussian', 'cosine' or 'constant', not {blend!r}")
        w = w[..., None] * (w1 / w1.max())
    return w.clamp_min(min_weight).float()


def _as_dict(out: Output) -> dict[str, torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return {MAIN_KEY: out}
    if isinstance(out, Mapping) and out and all(isinstance(v, torch.Tensor) for v in out.values()):
        return dict(out)
    raise TypeError(f"predictor must return a tensor or a dict of tensors, got {type(out).__name__}")


def _device_of(predictor: Any, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(predictor, torch.nn.Module):
        p = next(predictor.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


def infer_volume(predictor: Predictor, image: torch.Tensor, roi_size: Sequence[int] | int, overlap: float = 0.25,
                 blend: str = "gaussian", batch: int = 4, *, device: Any = None, sw_device: Any = None,
                 progress: bool = False, padding_mode: str = "replicate") -> Output:
    """Sliding-window inference (MONAI) over a (C, *spatial) or (B, C, *spatial) tensor.

    ``device`` holds the stitched output (keep the whole volume on CPU), ``sw_device`` runs the windows
    (e.g. ``"cuda"``). Returns a tensor (or dict of tensors) shaped like the input but with C_out channels.
    """
    squeeze = isinstance(roi_size, Sequence) and image.ndim == len(roi_size) + 1
    x = image[None] if squeeze else image
    spatial = x.ndim - 2
    roi = (int(roi_size),) * spatial if not isinstance(roi_size, Sequence) else tuple(int(r) for r in roi_size)
    if len(roi) != spatial:
        raise ValueError(f"roi_size {roi} does not match the {spatial} spatial dims of the input {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise DataError(None, "input tensor holds NaN or Inf", "fill or mask invalid voxels before inference")
    roi = tuple(r if r > 0 else s for r, s in zip(roi, x.shape[2:]))
    sw_dev = torch.device(sw_device) if sw_device is not None else _device_of(predictor, None)
    weights = blend_window(roi, blend)[None, None]  # MONAI pads inputs smaller than the roi
    with torch.inference_mode():
        out = sliding_window_inference(x, roi, batch, predictor, overlap=overlap, mode="constant",
                                       padding_mode=padding_mode, sw_device=sw_dev, device=device or x.device,
                                       progress=progress, roi_weight_map=weights.to(sw_dev))
    if squeeze:
        return {k: v[0] for k, v in out.items()} if isinstance(out, dict) else out[0]
    return out


def _default_paths(out_path: Path, keys: Sequence[str], extra: Mapping[str, PathLike] | None) -> dict[str, Path]:
    """Main output at ``out_path``; other keys at ``extra[key]`` or ``<stem>_<key><suffix>`` beside it."""
    extra = dict(extra or {})
    name = out_path.name
    suffix = ".nii.gz" if name.endswith(".nii.gz") else out_path.suffix
    stem = name[: len(name) - len(suffix)]
    main = MAIN_KEY if MAIN_KEY in keys else keys[0]
    paths = {main: out_path}
    for k in keys:
        if k != main:
            paths[k] = Path(extra[k]) if k in extra else out_path.with_name(f"{stem}_{k}{suffix}")
    return paths


def _zoomed_affine(affine: np.ndarray, in_shape: Sequence[int], out_shape: Sequence[int]) -> np.ndarray:
    """Affine of an output covering the same field of view as the input with ``out_shape`` voxels
    (super-resolution): voxel j of the output sits at input voxel ``(j + 0.5) / f - 0.5``."""
    if tuple(in_shape) == tuple(out_shape):
        return affine
    t = np.eye(4)
    for k, (n_in, n_out) in enumerate(zip(in_shape, out_shape)):
        f = n_out / n_in
        t[k, k], t[k, 3] = 1.0 / f, (1.0 / f - 1.0) / 2.0
    return affine @ t


def infer_nifti(predictor: Predictor, in_path: PathLike, out_path: PathLike, roi_size: Sequence[int],
                overlap: float = 0.25, blend: str = "gaussian", batch: int = 4, *,
                in_scaling: ScalingSpec = None, out_scaling: Scaling | None = None,
                orientation: str | None = "RAS", expected_channels: int | None = None,
                extra_outputs: Mapping[str, PathLike] | None = None, out_dtype: Any = np.float32,
                device: Any = None, sw_device: Any = None, progress: bool = True) -> dict[str, Path]:
    """NIfTI in -> NIfTI out(s) on exactly the input's voxel grid (affine and header kept).

    The volume is scaled by ``in_scaling`` (name or Scaling; recorded in the output), reoriented to
    ``orientation`` by exact axis flips / permutations (no resampling) for the predictor, and every output
    is mapped back by ``out_scaling.inverse`` (if given) and the inverse reorientation. Multi-channel
    inputs are 4-D NIfTI (channels last). A predictor whose outputs are larger than its windows by a factor
    (super-resolution) gets outputs on a finer grid over the same field of view. Returns ``{key: path}``;
    all files appear only when all succeed.
    """
    check_output_path(out_path, [in_path])  # refuse before any work is done
    vol = read_nifti(in_path)
    spatial = len(roi_size)
    data = vol.data
    if data.ndim == spatial:
        data = data[..., None]
    if data.ndim != spatial + 1:
        raise DataError(in_path, f"has shape {vol.data.shape}, not {spatial} spatial dims (+ channels)",
                        f"pass a roi_size with {vol.data.ndim} or {vol.data.ndim - 1} entries")
    if expected_channels is not None and data.shape[-1] != expected_channels:
        raise DataError(in_path, f"has {data.shape[-1]} channel(s) but the model expects {expected_channels}",
                        "stack the right modalities into a 4-D NIfTI (channels last)")
    finite = np.isfinite(data)
    if not finite.any():
        raise DataError(in_path, "holds no finite voxel (all NaN)", "check the file; it holds no data")
    if not finite.all():
        data = np.where(finite, data, data[finite].min())
    fwd = inv = None
    if orientation and spatial == 3:
        cur = io_orientation(vol.affine)
        fwd = ornt_transform(cur, axcodes2ornt(orientation))
        inv = ornt_transform(axcodes2ornt(orientation), cur)
        data = apply_orientation(data, fwd)
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(data, -1, 0)))
    scale_in = resolve(in_scaling, x)
    x = scale_in.forward(x)
    outs = _as_dict(infer_volume(predictor, x, roi_size, overlap, blend, batch, device="cpu", sw_device=sw_device
                                 or _device_of(predictor, device), progress=progress))
    paths = _default_paths(Path(out_path), list(outs), extra_outputs)
    images = []
    for key in paths:
        y = outs[key].float()
        if out_scaling is not None and key == next(iter(paths)):
            y = out_scaling.inverse(y)
        arr = np.moveaxis(y.cpu().numpy(), 0, -1)
        if inv is not None:
            arr = apply_orientation(arr, inv)
        affine = _zoomed_affine(vol.affine, vol.data.shape[:spatial], arr.shape[:spatial])
        arr = arr[..., 0] if arr.shape[-1] == 1 else arr
        images.append(nifti_image(arr.astype(out_dtype), affine, header=vol.header, dtype=out_dtype,
                                  scaling=scale_in))
    with atomic_outputs(list(paths.values()), [in_path]) as tmps:
        for img, tmp in zip(images, tmps, strict=True):
            nib.save(img, str(tmp))
    return paths


def _starts(n: int, tile: int, stride: int) -> list[int]:
    if n <= tile:
        return [0]
    s = list(range(0, n - tile + 1, stride))
    return s if s[-1] == n - tile else [*s, n - tile]


def _pad_to(a: np.ndarray, h: int, w: int) -> np.ndarray:
    ph, pw = h - a.shape[-2], w - a.shape[-1]
    if ph == 0 and pw == 0:
        return a
    mode = "reflect" if min(a.shape[-2:]) > 1 else "edge"
    return np.pad(a, ((0, 0), (0, ph), (0, pw)), mode=mode)


def _geo_scaling(spec: ScalingSpec, src: Any, idx: list[int]) -> Scaling:
    """Resolve a scaling; data-derived ones (names, callables) see a decimated view without nodata."""
    if spec is None or isinstance(spec, Scaling):
        return resolve(spec)
    view = src.read(idx, out_shape=(len(idx), min(src.height, 512), min(src.width, 512))).astype(np.float32)
    view[:, ~valid_mask(view, src.nodata)] = np.nan
    return resolve(spec, view)


def _shift_up(a: np.ndarray, n: int) -> np.ndarray:
    """Drop the first ``n`` rows (axis -2) and append ``n`` zero rows: the strip moves down the scene."""
    return np.concatenate([a[..., n:, :], np.zeros_like(a[..., :n, :])], axis=-2)


def infer_geotiff(predictor: Predictor, in_path: PathLike, out_path: PathLike, tile: int | tuple[int, int] = 256,
                  overlap: float = 0.25, blend: str = "cosine", batch: int = 4, *,
                  bands: Sequence[int] | None = None, expected_bands: int | None = None,
                  in_scaling: ScalingSpec = None, out_scaling: Scaling | None = None, scale: int = 1,
                  out_band_names: Sequence[str] | None = None, extra_outputs: Mapping[str, PathLike] | None = None,
                  out_nodata: float | None = None, out_dtype: Any = "float32", device: Any = None,
                  progress: bool = True) -> dict[str, Path]:
    """GeoTIFF in -> GeoTIFF out(s) on the input's map grid, for scenes larger than memory.

    Tiles of ``tile`` pixels overlapping by ``overlap`` (fraction) are read with rasterio windows, scaled
    by ``in_scaling`` (nodata / NaN pixels set to 0 in model space), predicted in batches of ``batch``,
    mapped back by ``out_scaling.inverse`` (main output only), blended and written strip by strip: memory
    holds one strip of tile rows (C x tile x width), never the scene. With ``scale`` > 1 (super-resolution)
    the predictor returns tiles ``scale`` times larger and the outputs cover the same ground with pixels
    ``scale`` times smaller. Pixels that are nodata in the input get ``out_nodata`` (default: the input's
    nodata, or NaN for float inputs without one) in every output. ``bands`` are 1-based input bands.
    Returns ``{key: path}``; outputs appear only when the whole scene succeeded.
    """
    th, tw = (tile, tile) if isinstance(tile, int) else tuple(tile)
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    s = int(scale)
    check_output_path(out_path, [in_path])  # refuse before any work is done
    dev = _device_of(predictor, device)
    with open_geotiff(in_path) as src:
        idx = check_bands(in_path, src.count, bands, expected_bands)
        if not has_valid_data(in_path, idx):
            raise DataError(in_path, "holds only nodata / NaN pixels", "check the file and its nodata value")
        H, W, nodata = src.height, src.width, src.nodata
        if out_nodata is None:
            floats = np.issubdtype(np.dtype(src.dtypes[0]), np.floating) and np.issubdtype(np.dtype(out_dtype),
                                                                                            np.floating)
            out_nodata = nodata if nodata is not None else (float("nan") if floats else None)
        scale_in = _geo_scaling(in_scaling, src, idx)
        out_transform = src.transform * Affine.scale(1.0 / s) if s > 1 else src.transform
        sy, sx = max(1, round(th * (1 - overlap))), max(1, round(tw * (1 - overlap)))
        ys, xs = _starts(H, th, sy), _starts(W, tw, sx)
        hh, ww = min(th, H), min(tw, W)  # tile extent inside the scene (input pixels)
        weight = blend_window((th * s, tw * s), blend).numpy()[: hh * s, : ww * s].astype(np.float64)
        bar = tqdm(total=len(ys) * len(xs), desc=f"tiles {Path(in_path).name}", disable=not progress)
        with contextlib.ExitStack() as stack:
            acc: dict[str, np.ndarray] = {}  # weighted sums over the current strip, output pixels
            wsum = np.zeros((hh * s, W * s), np.float64)
            valid = np.zeros((hh, W), bool)  # input pixels of the strip holding data
            dsts: dict[str, Any] = {}
            for r, y0 in enumerate(ys):
                for b0 in range(0, len(xs), batch):
                    xb = xs[b0 : b0 + batch]
                    tiles = []
                    for x0 in xb:
                        a = src.read(idx, window=Window(x0, y0, ww, hh)).astype(np.float32)
                        ok = valid_mask(a, nodata)
                        valid[:, x0 : x0 + ww] |= ok
                        a = scale_in.forward(np.where(ok[None], a, 0.0).astype(np.float32))
                        tiles.append(_pad_to(np.where(ok[None], a, 0.0).astype(np.float32), th, tw))
                    with torch.inference_mode():
                        outs = _as_dict(predictor(torch.from_numpy(np.stack(tiles)).to(dev)))
                    if not dsts:
                        paths = _default_paths(Path(out_path), list(outs), extra_outputs)
                        tmps = stack.enter_context(atomic_outputs(list(paths.values()), [in_path]))
                        main = next(iter(paths))
                        for key, tmp in zip(paths, tmps, strict=True):
                            y = outs[key]
                            prof = geotiff_profile(H * s, W * s, y.shape[1], out_dtype, src.crs, out_transform,
                                                   out_nodata)
                            dsts[key] = stack.enter_context(rasterio.open(tmp, "w", **prof))
                            set_band_metadata(dsts[key], out_band_names if key == main else None,
                                              out_scaling if key == main else None,
                                              {INPUT_SCALING_TAG: scale_in.to_json()})
                            acc[key] = np.zeros((y.shape[1], hh * s, W * s), np.float64)
                    for key, y in outs.items():
                        if key not in acc or tuple(y.shape[-2:]) != (th * s, tw * s) or y.shape[0] != len(xb):
                            raise ValueError(f"predictor output '{key}' has shape {tuple(y.shape)}; expected "
                                             f"({len(xb)}, C, {th * s}, {tw * s}) (scale {s}), keys {list(acc)}")
                        y = y.float()
                        if out_scaling is not None and key == main:
                            y = out_scaling.inverse(y, channel_axis=1)
                        y = y.cpu().numpy()[:, :, : hh * s, : ww * s]
                        for j, x0 in enumerate(xb):
                            acc[key][:, :, x0 * s : (x0 + ww) * s] += y[j] * weight
                    for x0 in xb:
                        wsum[:, x0 * s : (x0 + ww) * s] += weight
                    bar.update(len(xb))
                # input rows above the next tile row are final: write them, then move the strip down
                done = hh if r == len(ys) - 1 else ys[r + 1] - y0
                ok_rows = np.repeat(np.repeat(valid[:done], s, axis=0), s, axis=1)
                for key, dst in dsts.items():
                    vals = acc[key][:, : done * s] / wsum[None, : done * s]
                    if out_nodata is not None:
                        vals = np.where(ok_rows[None], vals, out_nodata)
                    dst.write(vals.astype(out_dtype), window=Window(0, y0 * s, W * s, done * s))
                    acc[key] = _shift_up(acc[key], done * s)
                wsum, valid = _shift_up(wsum, done * s), _shift_up(valid, done)
            bar.close()
    return paths
