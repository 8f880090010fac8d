"""Whole-volume and whole-scene inference: blended overlapping windows (no seams), bounded memory,
file in -> file out on exactly the input's grid.

``predictor`` is any callable mapping a batch of windows (B, C_in, *window) to (B, C_out, *window x f),
or to a dict of such tensors (e.g. ``{"prediction": ..., "uncertainty": ...}``); each dict entry is
written to its own file with the input's geometry. A :class:`PositionalWindowFn` also gets each
window's start (per-window seeds, so a window's noise does not depend on the batch it runs in).
Window contributions are weighted by a blending window (``gaussian``, ``cosine`` or ``constant``) and
normalised by the summed weights, so an identity model returns the input and a constant model returns
the constant across tile borders.

Three file paths: :func:`infer_nifti` (volumes in memory, reoriented to RAS for the model, MONAI
``sliding_window_inference``), :func:`infer_geotiff` (scenes larger than memory: windowed reads,
strip-wise writes by :func:`write_strips`, which also streams several files, e.g. a time series) and
:func:`infer_image` (any other registered format, e.g. PNG / JPEG clinical images and ``.npy`` arrays, in
memory). :func:`default_window` picks a window from the training patch
size so that time grows linearly with the image and memory per window stays flat.

Label outputs (class indices, e.g. a segmenter's ``prediction``) are never averaged: with ``label_votes``
``{key: label values}`` each window's class map becomes K one-hot vote channels (:func:`vote_window_fn`),
the votes are blended like any output, and right after stitching each pixel gets the value of the class
with the largest weighted vote (ties: the lower class; :func:`decode_votes`). Where one window covers a
pixel it is that window's class, exactly; at seams a weighted majority. The stitched map of K channels
lives in memory (K x the volume, float32) until decoded. Labels are written as integers where the format
allows (:func:`label_dtype`: uint8, else int16; GeoTIFF: :func:`geotiff_label_format`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from rasterio.transform import Affine
from rasterio.windows import Window
from tqdm.auto import tqdm

from .. import io
from ..data.scaling import Scaling, ScalingSpec, clip_counts, resolve, warn_clipped
from ..errors import ArgumentError, DataError, MedrsError
from ..io.atomic import atomic_outputs, check_output_path
from ..io.geotiff import (
    check_bands,
    geotiff_profile,
    has_valid_data,
    nonfinite_pixels,
    open_geotiff,
    set_band_metadata,
    undeclared_nonfinite,
    valid_mask,
)
from ..io.nifti import NiftiVolume, nifti_image, read_nifti

Output = torch.Tensor | Mapping[str, torch.Tensor]


class PositionalWindowFn:
    """A window function that also gets where each window lies: ``fn(x, starts)``, ``starts[j]`` the
    first index per spatial axis of window ``j`` on the input grid (global in the volume or scene; for
    MONAI windows of an input smaller than the window, in its padded frame). The tiling functions pass
    the starts to these only; a plain callable of ``x`` is called as before. Used for per-window seeds
    (:mod:`medrs_diff.inference.seeding`)."""

    def __init__(self, fn: Callable[[torch.Tensor, list[tuple[int, ...]]], Output]) -> None:
        self.fn = fn

    def __call__(self, x: torch.Tensor, starts: list[tuple[int, ...]]) -> Output:
        return self.fn(x, starts)


#: What the tiling functions call on a batch of windows: ``fn(x)``, or ``fn(x, starts)`` when wrapped.
WindowFn = Callable[[torch.Tensor], Output] | PositionalWindowFn
#: ``out_scaling``: a Scaling, ``"input"`` (the inverse of the input's own scaling) or None (no mapping).
OutScaling = Scaling | Literal["input"] | None
PathLike = str | os.PathLike
MAIN_KEY = "prediction"
INPUT_SCALING_TAG = "MEDRS_INPUT_SCALING"

#: Default window (output-grid pixels / voxels per axis) when no training patch size is known.
FALLBACK_WINDOW = {2: 128, 3: 96}
#: Smallest default window (output grid): below it the per-window overhead dominates.
MIN_WINDOW = {2: 64, 3: 32}
#: Default windows are multiples of this on the output grid, so a UNet's downsampling divides them.
WINDOW_MULTIPLE = 16


def show_progress(progress: bool | None) -> bool:
    """``progress`` if given, else True only when stderr (where tqdm writes) is a terminal."""
    if progress is not None:
        return bool(progress)
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def default_window(spatial_dims: int, grid_factor: int = 1, patch_size: int | Sequence[int] | None = None,
                   shape: Sequence[int] | None = None, size_multiple: int = 1) -> tuple[int, ...]:
    """The default inference window on the *input* grid, per spatial axis.

    Starts from the training patch size (on the output grid, as data modules store it) or
    :data:`FALLBACK_WINDOW` when unknown, enlarged to at least :data:`MIN_WINDOW`, rounded up to a
    multiple of :data:`WINDOW_MULTIPLE` and divided by ``grid_factor`` (the super-resolution scale), and
    a multiple of ``size_multiple`` (what the model's input sizes must be a multiple of, from
    ``io_spec.extra``). With ``shape`` (the input's spatial shape) it never exceeds the image rounded up
    to that multiple, so a small image is one window. Fixed windows make time linear in the image size and keep the
    memory of one window constant, whatever the scene; the model's attention never sees a larger
    window than it was trained near.
    """
    if spatial_dims not in FALLBACK_WINDOW:
        raise ArgumentError(None, f"spatial_dims must be 2 or 3, got {spatial_dims}", "use a 2-D or 3-D model")
    f = int(grid_factor)
    if f < 1:
        raise ArgumentError(None, f"grid_factor must be >= 1, got {grid_factor}", "use a positive integer")
    if patch_size is None:
        patch: tuple[int, ...] = (FALLBACK_WINDOW[spatial_dims],) * spatial_dims
    elif isinstance(patch_size, int | np.integer):
        patch = (int(patch_size),) * spatial_dims
    else:
        patch = tuple(int(p) for p in patch_size)
        patch = patch * spatial_dims if len(patch) == 1 else patch
    if len(patch) != spatial_dims:
        raise ArgumentError(None, f"patch_size {patch} does not have {spatial_dims} entries",
                            f"give one size or {spatial_dims} sizes")
    if int(size_multiple) < 1:
        raise ArgumentError(None, f"size_multiple must be >= 1, got {size_multiple}", "use a positive integer")
    step = math.lcm(max(1, math.ceil(WINDOW_MULTIPLE / f)), int(size_multiple))  # input pixels
    window = [max(1, _round_up(max(p, MIN_WINDOW[spatial_dims]), WINDOW_MULTIPLE) // f) for p in patch]
    window = [_round_up(w, step) for w in window]
    if shape is not None:
        shape = tuple(int(s) for s in shape)[-spatial_dims:]
        window = [min(w, _round_up(s, step)) for w, s in zip(window, shape)]
    return tuple(window)


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
            raise ArgumentError(None, f"blend must be 'gaussian', 'cosine' or 'constant', not {blend!r}",
                                "choose one of those")
        w = w[..., None] * (w1 / w1.max())
    return w.clamp_min(min_weight).float()


#: ``label_votes``: label output key -> the value written for each class index 0..K-1 (K = its length).
LabelVotes = Mapping[str, Sequence[float]]


def check_label_votes(label_votes: LabelVotes | None) -> dict[str, tuple[float, ...]]:
    """``label_votes`` as ``{key: values}``; refuses fewer than 2, repeated or non-finite values."""
    out: dict[str, tuple[float, ...]] = {}
    for key, values in (label_votes or {}).items():
        try:
            vals = tuple(float(v) for v in values)
        except (TypeError, ValueError) as err:
            raise ArgumentError(f"label_votes[{key!r}]", f"must be a list of numbers, got {values!r}",
                                "give the value written for each class index 0..K-1, e.g. [0, 1, 2, 4]") from err
        if len(vals) < 2 or len(set(vals)) != len(vals) or not all(math.isfinite(v) for v in vals):
            raise ArgumentError(f"label_votes[{key!r}]", f"must list at least 2 distinct finite label values (one "
                                f"per class), got {list(values)}",
                                "give the value written for each class index 0..K-1, e.g. [0, 1, 2, 4]")
        out[str(key)] = vals
    return out


def one_hot_votes(y: torch.Tensor, num_classes: int, key: str = MAIN_KEY) -> torch.Tensor:
    """A window's class map ``(B, 1, *spatial)`` (indices 0..K-1, any float or integer dtype) as K one-hot
    vote channels ``(B, K, *spatial)`` (float32); ``MedrsError`` on values that are not class indices."""
    k = int(num_classes)
    if y.ndim < 3 or y.shape[1] != 1:
        raise MedrsError(f"label output '{key}'", f"has shape {tuple(y.shape)}, not (B, 1, *spatial) class indices",
                         "return one channel of class indices for a label output")
    idx = y[:, 0].float()
    bad = ~torch.isfinite(idx) | (idx != torch.round(idx)) | (idx < 0) | (idx > k - 1)
    if bool(bad.any()):
        found = torch.unique(idx[bad])[:5].tolist()
        raise MedrsError(f"label output '{key}'", f"holds values {found} that are not class indices 0..{k - 1}",
                         "return class indices (argmax / threshold) for label outputs, with the method's num_classes")
    return F.one_hot(idx.long(), k).movedim(-1, 1).to(torch.float32)


def vote_window_fn(fn: WindowFn, label_votes: LabelVotes | None) -> WindowFn:
    """``fn`` whose label outputs (the keys of ``label_votes``) come back as one-hot votes
    (:func:`one_hot_votes`, K = the number of label values), so blending windows sums their votes;
    ``fn`` itself when there are none. Keeps :class:`PositionalWindowFn`."""
    classes = {k: len(v) for k, v in check_label_votes(label_votes).items()}
    if not classes:
        return fn

    def convert(out: Output) -> Output:
        if isinstance(out, torch.Tensor):
            return one_hot_votes(out, classes[MAIN_KEY], MAIN_KEY) if MAIN_KEY in classes else out
        return {k: one_hot_votes(v, classes[k], k) if k in classes else v for k, v in _as_dict(out).items()}

    if isinstance(fn, PositionalWindowFn):
        return PositionalWindowFn(lambda x, starts: convert(fn(x, starts)))
    return lambda x: convert(fn(x))


def decode_votes(votes: np.ndarray | torch.Tensor, values: Sequence[float], channel_axis: int = 0) -> np.ndarray:
    """Stitched votes (K channels on ``channel_axis``) -> one channel holding ``values[c]`` of the class ``c``
    with the largest vote (ties: the lower class, as ``np.argmax``), float32."""
    v = votes.detach().cpu().numpy() if isinstance(votes, torch.Tensor) else np.asarray(votes)
    if v.shape[channel_axis] != len(values):
        raise ValueError(f"{v.shape[channel_axis]} vote channels for {len(values)} label values")
    idx = np.argmax(v, axis=channel_axis)
    return np.expand_dims(np.asarray(values, np.float32)[idx], channel_axis)


def label_dtype(values: Sequence[float]) -> np.dtype:
    """The dtype label ``values`` are written in: uint8 (integers 0..255), int16 (other integers that fit),
    else float32 (non-integral label values)."""
    v = np.asarray(values, np.float64)
    if v.size and np.all(v == np.round(v)):
        if v.min() >= 0 and v.max() <= 255:
            return np.dtype(np.uint8)
        if v.min() >= -32767 and v.max() <= 32767:
            return np.dtype(np.int16)
    return np.dtype(np.float32)


def geotiff_label_format(values: Sequence[float], nodata: bool) -> tuple[str, float | None]:
    """GeoTIFF dtype and nodata of a label output of ``values``: :func:`label_dtype`, with (``nodata``) a nodata
    value that is no label: 255 (uint8), else -32768 (int16), else NaN (float32)."""
    dt = label_dtype(values)
    if not nodata:
        return dt.name, None
    if dt == np.uint8 and 255 not in set(values):
        return "uint8", 255.0
    if dt != np.float32:
        return "int16", -32768.0
    return "float32", float("nan")


def _label_keys(label_outputs: Sequence[str], votes: Mapping[str, Any], outs: Mapping[str, Any]) -> list[str]:
    """The label outputs present: ``label_outputs`` and the voted ones, in order."""
    return [k for k in dict.fromkeys([*label_outputs, *votes]) if k in outs]


def _not_voted(mapped: set[str], votes: Mapping[str, Any], data_space: Sequence[str] | None) -> set[str]:
    """``mapped`` without the voted label outputs (class values are never data units); refuses a voted output
    named in ``data_space``."""
    both = sorted(set(data_space or ()) & set(votes))
    if both:
        raise ArgumentError(None, f"output(s) {both} are label outputs (label_votes) and also in data_space",
                            "map only intensity outputs back to data units: drop them from data_space")
    return mapped - set(votes)


def _as_dict(out: Output) -> dict[str, torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return {MAIN_KEY: out}
    if isinstance(out, Mapping) and out and all(isinstance(v, torch.Tensor) for v in out.values()):
        return dict(out)
    raise TypeError(f"predictor must return a tensor or a dict of tensors, got {type(out).__name__}")


def _slice_starts(window: Sequence[slice]) -> tuple[int, ...]:
    """Spatial start of one MONAI window (``[batch, channel, *spatial]`` slices, ``with_coord=True``)."""
    return tuple(int(sl.start or 0) for sl in window[2:])


def _call(predictor: WindowFn, x: torch.Tensor, starts: list[tuple[int, ...]]) -> Output:
    return predictor(x, starts) if isinstance(predictor, PositionalWindowFn) else predictor(x)


def _device_of(predictor: Any, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(predictor, torch.nn.Module):
        p = next(predictor.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


def _check_overlap(overlap: float) -> None:
    if not 0 <= overlap < 1:
        raise ArgumentError(None, f"overlap must be in [0, 1), got {overlap}", "pass a fraction such as 0.25")


def infer_volume(predictor: WindowFn, image: torch.Tensor, roi_size: Sequence[int] | int, overlap: float = 0.25,
                 blend: str = "gaussian", batch: int = 4, *, device: Any = None, sw_device: Any = None,
                 progress: bool | None = False, padding_mode: str = "replicate",
                 label_votes: LabelVotes | None = None) -> Output:
    """Sliding-window inference (MONAI) over a (C, *spatial) or (B, C, *spatial) tensor.

    ``label_votes`` ``{key: label values}``: those outputs are class indices, stitched as weighted votes and
    returned as one channel of the winning class's label value (see the module docstring).

    ``device`` holds the stitched output (keep the whole volume on CPU), ``sw_device`` runs the windows
    (e.g. ``"cuda"``). Returns a tensor (or dict of tensors) shaped like the input but with C_out channels
    (and ``f`` times larger spatially when the predictor's outputs are ``f`` times larger than its windows).
    """
    _check_overlap(overlap)
    squeeze = isinstance(roi_size, Sequence) and image.ndim == len(roi_size) + 1
    x = image[None] if squeeze else image
    spatial = x.ndim - 2
    roi = (int(roi_size),) * spatial if not isinstance(roi_size, Sequence) else tuple(int(r) for r in roi_size)
    if len(roi) != spatial:
        raise ArgumentError(None, f"roi_size {roi} does not match the {spatial} spatial dims of the input "
                            f"{tuple(x.shape)}", f"give {spatial} window sizes")
    if not torch.isfinite(x).all():
        raise DataError(None, "input tensor holds NaN or Inf", "fill or mask invalid voxels before inference")
    roi = tuple(r if r > 0 else s for r, s in zip(roi, x.shape[2:]))
    sw_dev = torch.device(sw_device) if sw_device is not None else _device_of(predictor, None)
    weights = blend_window(roi, blend)[None, None]  # MONAI pads inputs smaller than the roi
    votes = check_label_votes(label_votes)
    predictor = vote_window_fn(predictor, votes)
    positional = isinstance(predictor, PositionalWindowFn)
    fn = (lambda w, slices: predictor(w, [_slice_starts(s) for s in slices])) if positional else predictor
    with torch.inference_mode():
        out = sliding_window_inference(x, roi, batch, fn, overlap=overlap, mode="constant",
                                       padding_mode=padding_mode, sw_device=sw_dev,
                                       device=device if device is not None else x.device,
                                       progress=show_progress(progress), roi_weight_map=weights.to(sw_dev),
                                       with_coord=positional)
    if votes:
        if isinstance(out, torch.Tensor):
            out = torch.from_numpy(decode_votes(out, votes[MAIN_KEY], 1)) if MAIN_KEY in votes else out
        else:
            out = {k: torch.from_numpy(decode_votes(v, votes[k], 1)) if k in votes else v for k, v in out.items()}
    if squeeze:
        return {k: v[0] for k, v in out.items()} if isinstance(out, dict) else out[0]
    return out


def _default_paths(out_path: Path, keys: Sequence[str], extra: Mapping[str, PathLike] | None) -> dict[str, Path]:
    """Main output at ``out_path``; other keys at ``extra[key]`` or ``<stem>_<key><suffix>`` beside it."""
    extra = dict(extra or {})
    suffix = io.suffix_of(out_path)
    stem = io.stem_of(out_path)
    main = MAIN_KEY if MAIN_KEY in keys else keys[0]
    paths = {main: out_path}
    for k in keys:
        if k != main:
            paths[k] = Path(extra[k]) if k in extra else out_path.with_name(f"{stem}_{k}{suffix}")
    return paths


def _mapped_keys(paths: Mapping[str, Path], data_space: Sequence[str] | None) -> set[str]:
    """Outputs that ``out_scaling`` maps back: ``data_space`` if given, else the main output only."""
    return set(data_space) if data_space is not None else {next(iter(paths))}


def _out_scaling(out_scaling: OutScaling, scale_in: Scaling) -> Scaling | None:
    if isinstance(out_scaling, str):
        if out_scaling != "input":
            raise ArgumentError(None, f"out_scaling must be a Scaling, 'input' or None, not {out_scaling!r}",
                                "pass 'input' to map outputs back with the input's own scaling")
        return scale_in
    return out_scaling


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


#: What to do with NaN / Inf voxels of an input: refuse the file (default), fill them with the file's
#: finite minimum, or fill them for the model and write them as nodata in every output (``mask``).
NAN_POLICIES = ("error", "fill", "mask")
#: Output written beside the label outputs under ``nan_policy="mask"``: 1 where the input was finite,
#: 0 where it was not (label files hold integers, so their masked voxels are 0 and this file tells).
VALID_KEY = "valid"
NAN_FIX = ("clean the file, or pass --nan-policy fill (set them to the file's finite minimum) or --nan-policy "
           "mask (fill them for the model, write them as nodata: NaN in float outputs, 0 in label outputs plus a "
           "'valid' mask); in Python: nan_policy='fill' / 'mask'")


def check_nan_policy(policy: str) -> str:
    """``policy`` if it is one of :data:`NAN_POLICIES`, else ``ArgumentError``."""
    if policy not in NAN_POLICIES:
        raise ArgumentError(None, f"nan_policy must be one of {', '.join(NAN_POLICIES)}, not {policy!r}",
                            "use 'error' (refuse), 'fill' or 'mask'")
    return policy


def nonfinite_error(path: PathLike | None, count: int, total: int, unit: str = "voxel") -> DataError:
    """The refusal of an input holding ``count`` non-finite voxels or pixels (``unit``) of ``total``."""
    return DataError(path, f"holds {count} non-finite {unit}(s) (NaN / Inf) of {total}", NAN_FIX)


def check_finite(data: np.ndarray, path: PathLike | None, policy: str = "error", channel_axis: int = 0,
                 unit: str = "voxel") -> np.ndarray | None:
    """Refuse ``data`` without any finite value, or (``policy="error"``) with a non-finite one, naming the
    count; returns the spatial mask of non-finite voxels (True: a channel is NaN / Inf), None if none."""
    check_nan_policy(policy)
    finite = np.isfinite(data)
    if finite.all():
        return None
    if not finite.any():
        raise DataError(path, f"holds no finite {unit} (all NaN / Inf)", "check the file; it holds no data")
    invalid = ~finite.all(axis=channel_axis)
    if policy == "error":
        raise nonfinite_error(path, int(invalid.sum()), int(invalid.size), unit)
    return invalid


def apply_nan_policy(data: np.ndarray, path: PathLike | None, policy: str = "error", channel_axis: int = 0,
                     unit: str = "voxel", per_channel: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """``data`` with its non-finite values handled by ``policy`` (:data:`NAN_POLICIES`, see
    :func:`check_finite`): ``fill`` / ``mask`` set them to the finite minimum of the file (``per_channel``:
    of their own channel, as training does for separately scaled modalities); returns the data and, for
    ``mask``, the spatial mask to write as nodata (else None)."""
    invalid = check_finite(data, path, policy, channel_axis, unit)
    if invalid is None:
        return data, None
    finite = np.isfinite(data)
    if per_channel:
        lows = [c[f].min() if f.any() else data[finite].min()
                for c, f in zip(np.moveaxis(data, channel_axis, 0), np.moveaxis(finite, channel_axis, 0))]
        shape = [1] * data.ndim
        shape[channel_axis] = len(lows)
        fill = np.asarray(lows, dtype=data.dtype).reshape(shape)
    else:
        fill = data[finite].min()
    return np.where(finite, data, fill), (invalid if policy == "mask" else None)


class ChannelwiseScaling:
    """A scaling spec resolved separately on every channel of an image (``(C, ...)``), giving one
    :class:`~medrs_diff.data.scaling.Scaling` with per-channel parameters: what training does when it
    scales each modality of a multi-modal case on its own before stacking them (a data-derived spec such as
    ``"zscore"`` resolved on the stacked image would pool the modalities). A fixed ``Scaling`` or None is
    used as it is."""

    def __init__(self, spec: ScalingSpec) -> None:
        self.spec = spec

    def __call__(self, x: Any) -> Scaling:
        if self.spec is None or isinstance(self.spec, Scaling):
            return resolve(self.spec)
        parts = [resolve(self.spec, x[c : c + 1]) for c in range(int(x.shape[0]))]
        if len(parts) == 1:
            return parts[0]

        def per_channel(name: str, missing: float) -> tuple[float, ...] | None:
            values = [getattr(s, name) for s in parts]
            if all(v is None for v in values):
                return None
            return tuple(missing if v is None else v[0] for v in values)

        kinds = {s.kind for s in parts}
        return Scaling(kinds.pop() if len(kinds) == 1 else "channelwise", per_channel("offset", 0.0),
                       per_channel("scale", 1.0), per_channel("clip_min", -np.inf), per_channel("clip_max", np.inf))

    def __repr__(self) -> str:
        return f"ChannelwiseScaling({self.spec!r})"


def input_scaling(spec: ScalingSpec, channelwise: bool) -> ScalingSpec:
    """``spec``, resolved per channel (:class:`ChannelwiseScaling`) when ``channelwise``."""
    return ChannelwiseScaling(spec) if channelwise else spec


def _resize_mask(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour ``mask`` on a grid of ``shape`` over the same field of view (super-resolution)."""
    shape = tuple(int(n) for n in shape)
    if mask.shape == shape:
        return mask
    return mask[np.ix_(*[np.arange(n) * m // n for n, m in zip(shape, mask.shape)])]


def mask_invalid(arr: np.ndarray, invalid: np.ndarray, label: bool, channel_axis: int = 0) -> np.ndarray:
    """``arr`` (one channel axis) with the voxels of ``invalid`` (the input grid; nearest-neighbour onto a
    finer output grid) set to nodata: 0 for a label output, else NaN (``nan_policy="mask"``)."""
    spatial = [n for i, n in enumerate(arr.shape) if i != channel_axis % arr.ndim]
    m = np.expand_dims(_resize_mask(invalid, spatial), channel_axis)
    return np.where(m, 0 if label else np.nan, arr).astype(arr.dtype, copy=False)


def valid_output(invalid: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The ``valid`` output on a grid of spatial ``shape``: uint8, 1 where the input was finite."""
    return (~_resize_mask(invalid, shape)).astype(np.uint8)


def oriented_shape(affine: np.ndarray, shape: Sequence[int], orientation: str | None = "RAS") -> tuple[int, ...]:
    """Spatial shape of a NIfTI volume as :func:`infer_nifti` shows it to the model (3-D: after the axis
    permutation to ``orientation``); for choosing its window."""
    shape = tuple(int(s) for s in shape)
    if not orientation or len(shape) != 3:
        return shape
    fwd = ornt_transform(io_orientation(affine), axcodes2ornt(orientation))
    return tuple(apply_orientation(np.broadcast_to(np.zeros((), bool), shape), fwd).shape)


def _voxels(shape: Sequence[int]) -> str:
    return " x ".join(str(int(n)) for n in shape)


#: The way out for a 3-D NIfTI volume given to a 2-D model without slice-wise inference.
SLICE_WISE_FIX = ("use a 3-D checkpoint, or infer slice-wise: pass --slice-wise (Python: slice_wise=True) to run "
                  "every axial slice (after reorienting to RAS) and write one volume on the input's grid")


def nifti_model_layout(shape: Sequence[int], spatial_dims: int, path: PathLike | None,
                       expected_channels: int | None = None,
                       slice_wise: bool = False) -> tuple[tuple[int, ...], int, bool]:
    """How a ``spatial_dims``-D model reads a NIfTI of stored ``shape``: (spatial shape, channels, whether
    a singleton third axis is dropped). 2-D models take X x Y, X x Y x 1 or X x Y x 1 x C (a slice, C
    channels), and with ``slice_wise`` also volumes X x Y x Z (x C) (the spatial shape then has 3 axes,
    run slice by slice: :func:`slice_window_fn`); 3-D models X x Y x Z or X x Y x Z x C (Z > 1). A volume
    given to a 2-D model (not ``slice_wise``), a slice given to a 3-D model and a wrong channel count are
    refused here, by name, before any compute."""
    shape = tuple(int(n) for n in shape)
    n = len(shape)
    if spatial_dims == 2 and n in (3, 4) and shape[2] > 1:
        if not slice_wise:
            raise DataError(path, f"is a 3-D volume ({_voxels(shape[:3])} voxels"
                            f"{f', {shape[3]} channels' if n == 4 else ''}) given to a 2-D model", SLICE_WISE_FIX)
        spatial_dims = 3  # every axial slice through the 2-D model: the volume's own grid
    if spatial_dims == 3 and (n == 2 or (n in (3, 4) and shape[2] == 1)):
        raise DataError(path, f"is a 2-D image ({_voxels(shape[:3])} voxels, one slice) given to a 3-D model",
                        "use a 2-D checkpoint for 2-D images, or give the 3-D model a volume of several slices")
    if n == 2 and spatial_dims == 2:
        spatial, channels, drop = shape, 1, False
    elif n in (3, 4) and spatial_dims == 2:
        spatial, channels, drop = shape[:2], (shape[3] if n == 4 else 1), True
    elif n in (3, 4) and spatial_dims == 3:
        spatial, channels, drop = shape[:3], (shape[3] if n == 4 else 1), False
    else:
        raise DataError(path, f"has shape {shape}, not {spatial_dims} spatial axes (+ one channel axis)",
                        f"pass a {spatial_dims}-D NIfTI (channels, if any, on the 4th axis)")
    if expected_channels is not None and channels != expected_channels:
        raise DataError(path, f"has {channels} channel(s) but the model expects {expected_channels}",
                        "stack the right modalities into a 4-D NIfTI (channels on the 4th axis)")
    return spatial, channels, drop


def slice_window_fn(fn: WindowFn) -> WindowFn:
    """A 2-D window function as a 3-D one over windows ``(wx, wy, 1)``: each axial slice window
    ``(B, C, wx, wy, 1)`` goes through ``fn`` as ``(B, C, wx, wy)`` and its outputs come back with the
    slice axis. A :class:`PositionalWindowFn` keeps getting each window's start, now ``(x, y, z)``, so
    per-window seeds differ from slice to slice. With :func:`infer_nifti` (``roi_size=(wx, wy, 1)``,
    ``orientation="RAS"``) a 2-D model runs over every axial slice of a volume."""

    def lift(out: Output) -> Output:
        if isinstance(out, torch.Tensor):
            return out[..., None]
        return {k: v[..., None] for k, v in _as_dict(out).items()}

    def check(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[-1] != 1:
            raise ValueError(f"slice-wise windows are (B, C, wx, wy, 1), got {tuple(x.shape)}")
        return x[..., 0]

    if isinstance(fn, PositionalWindowFn):
        return PositionalWindowFn(lambda x, starts: lift(fn(check(x), starts)))
    return lambda x: lift(fn(check(x)))


def infer_nifti(predictor: WindowFn, in_path: PathLike | NiftiVolume, out_path: PathLike, roi_size: Sequence[int],
                overlap: float = 0.25, blend: str = "gaussian", batch: int = 4, *,
                in_scaling: ScalingSpec = None, out_scaling: OutScaling = None,
                data_space: Sequence[str] | None = None,
                orientation: str | None = "RAS", expected_channels: int | None = None,
                extra_outputs: Mapping[str, PathLike] | None = None, out_dtype: Any = np.float32,
                device: Any = None, sw_device: Any = None, progress: bool | None = None,
                nan_policy: str = "error", label_outputs: Sequence[str] = (), channelwise: bool = False,
                inputs: Sequence[PathLike] | None = None, label_votes: LabelVotes | None = None) -> dict[str, Path]:
    """NIfTI in -> NIfTI out(s) on exactly the input's voxel grid (affine and header kept).

    ``in_path`` may also be a :class:`~medrs_diff.io.nifti.NiftiVolume` already in memory (e.g. the
    modalities of a case stacked as channels, :func:`~medrs_diff.inference.cases.stack_case`); ``inputs``
    are then the files it came from (never overwritten; default: ``in_path``). ``channelwise``: the
    channels are separate modalities, scaled one by one (:class:`ChannelwiseScaling`) and NaN-filled with
    their own minimum, as training scales each modality before stacking them.

    The volume is scaled by ``in_scaling`` (name or Scaling; recorded in the output), reoriented to
    ``orientation`` by exact axis flips / permutations (no resampling) for the predictor, and the outputs
    in ``data_space`` (default: the main one) are mapped back by ``out_scaling`` (``"input"``: the input's
    own scaling) and every output by the inverse reorientation. Multi-channel inputs are 4-D NIfTI
    (channels last). A predictor whose outputs are larger than its windows by a factor (super-resolution)
    gets outputs on a finer grid over the same field of view. ``device`` runs the windows (alias of
    ``sw_device``); the stitched volume stays on the CPU. The accepted shapes are those of
    :func:`nifti_model_layout` (a 2-D model's X x Y x 1 input gives X x Y x 1 outputs).

    ``nan_policy`` (:data:`NAN_POLICIES`): NaN / Inf voxels are refused (``error``, the default),
    set to the finite minimum (``fill``), or filled for the model and written as nodata (``mask``):
    NaN in every float output, 0 in the ``label_outputs`` (NIfTI has no nodata value), and a uint8
    ``valid`` output (1 = finite input voxel) beside them (``<stem>_valid`` or ``extra_outputs["valid"]``).
    ``label_votes`` ``{key: label values}``: label outputs stitched as votes (module docstring), written in
    those values as :func:`label_dtype` (uint8 / int16) instead of ``out_dtype``; they count as
    ``label_outputs`` too. Returns ``{key: path}``; all files appear only when all succeed.
    """
    _check_overlap(overlap)
    check_nan_policy(nan_policy)
    given = in_path if isinstance(in_path, NiftiVolume) else None
    in_path = given.path if given is not None else in_path
    sources = list(inputs) if inputs is not None else [in_path]
    for p in [out_path, *(extra_outputs or {}).values()]:
        check_output_path(p, sources)  # refuse before any work is done
    vol = given if given is not None else read_nifti(in_path)
    spatial = len(roi_size)
    _, _, drop_z = nifti_model_layout(vol.data.shape, spatial, in_path, expected_channels)
    data = vol.data[:, :, 0] if drop_z else vol.data
    if data.ndim == spatial:
        data = data[..., None]
    data, invalid = apply_nan_policy(data, in_path, nan_policy, channel_axis=-1, per_channel=channelwise)
    fwd = inv = None
    if orientation and spatial == 3:
        cur = io_orientation(vol.affine)
        fwd = ornt_transform(cur, axcodes2ornt(orientation))
        inv = ornt_transform(axcodes2ornt(orientation), cur)
        data = apply_orientation(data, fwd)
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(data, -1, 0)))
    scale_in = resolve(input_scaling(in_scaling, channelwise), x)
    warn_input_clipping(in_path, scale_in, x)
    x = scale_in.forward(x)
    run_on = sw_device if sw_device is not None else _device_of(predictor, device)
    votes = check_label_votes(label_votes)
    outs = _as_dict(infer_volume(predictor, x, roi_size, overlap, blend, batch, device="cpu", sw_device=run_on,
                                 progress=progress, label_votes=votes))
    labels = _label_keys(label_outputs, votes, outs)
    masking = nan_policy == "mask"
    keys = [*outs, VALID_KEY] if masking and labels else list(outs)
    paths = _default_paths(Path(out_path), keys, extra_outputs)
    mapped = _not_voted(_mapped_keys(paths, data_space), votes, data_space)
    scale_out = _out_scaling(out_scaling, scale_in)
    if invalid is None:  # stored voxel order, as the outputs are written
        invalid = np.zeros(vol.data.shape[:spatial], bool)
    images, grid = [], None
    for key in keys:
        if key == VALID_KEY:  # on the grid of the first label output
            arr = valid_output(invalid, grid)[..., None]
            dtype = np.uint8
        else:
            y = outs[key].float()
            if scale_out is not None and key in mapped:
                y = scale_out.inverse(y)
            arr = np.moveaxis(y.cpu().numpy(), 0, -1)
            if inv is not None:
                arr = apply_orientation(arr, inv)
            if masking:
                arr = mask_invalid(arr, invalid, key in labels, -1)
            if labels and key == labels[0]:
                grid = arr.shape[:spatial]
            dtype = label_dtype(votes[key]) if key in votes else out_dtype
        affine = _zoomed_affine(vol.affine, vol.data.shape[:spatial], arr.shape[:spatial])
        if drop_z:  # back to the input's X x Y x 1 (x C)
            arr = arr[:, :, None]
        arr = arr[..., 0] if arr.shape[-1] == 1 else arr
        images.append(nifti_image(arr.astype(dtype), affine, header=vol.header, dtype=dtype,
                                  scaling=scale_in))
    with atomic_outputs([paths[k] for k in keys], sources) as tmps:  # in the order of ``images``
        for img, tmp in zip(images, tmps, strict=True):
            img.to_filename(str(tmp))
    return paths


#: Axis names of a layout that are spatial (the others are channels, bands or times).
SPATIAL_AXES = ("x", "y", "z")
VOLUME_FIX = ("use a 3-D checkpoint, or infer slice-wise: save the volume as a NIfTI (X x Y x Z) and pass "
              "--slice-wise (Python: slice_wise=True), or save each slice as a 2-D image")
IMAGE_FIX = "use a 2-D checkpoint for 2-D images, or give this 3-D model a volume (e.g. a NIfTI of several slices)"


def channel_first(data: np.ndarray, layout: Sequence[str], spatial: int, path: PathLike,
                  expected_channels: int | None = None) -> tuple[np.ndarray, str]:
    """(C, *spatial) from an array in ``layout`` (channels first, last or absent); returns the array and
    where its channels were (``"first"``, ``"last"``, ``"none"``), to put outputs back the same way.

    A layout naming a different number of spatial axes than the model's ``spatial`` is refused by name
    (a 2-D image given to a 3-D model, a volume given to a 2-D one), as is a channel count other than
    ``expected_channels``; arrays without a layout (``.npy``) are told apart by their number of axes."""
    shape = tuple(int(n) for n in data.shape)
    named = sum(a in SPATIAL_AXES for a in layout) if layout else None
    if (named == 2 and spatial == 3) or (named is None and spatial == 3 and data.ndim == 2):
        raise DataError(path, f"is a 2-D image (shape {shape}) given to a 3-D model", IMAGE_FIX)
    if named == 3 and spatial == 2:
        raise DataError(path, f"is a 3-D volume (shape {shape}) given to a 2-D model", VOLUME_FIX)
    if data.ndim == spatial:
        out, where = data[None], "none"
    elif data.ndim == spatial + 1:
        if layout and layout[-1] in ("c", "channel", "band"):
            out, where = np.moveaxis(data, -1, 0), "last"
        else:  # (channel, ...) layouts and plain arrays: channels first (NumPy convention)
            out, where = data, "first"
    else:
        raise DataError(path, f"has shape {shape}, not {spatial} spatial dims (+ channels)",
                        f"pass a {spatial}-D image (optionally with one channel axis)")
    if expected_channels is not None and out.shape[0] != expected_channels:
        if named is None and spatial == 2 and where == "first":
            raise DataError(path, f"has shape {shape}: read as {out.shape[0]} channel(s) of a 2-D image, but the "
                            f"model expects {expected_channels}", f"if it is a 3-D volume, {VOLUME_FIX}; else pass "
                            f"a (C, H, W) array with C = {expected_channels}")
        raise DataError(path, f"has {out.shape[0]} channel(s) but the model expects {expected_channels}",
                        f"pass an image with {expected_channels} channel(s)")
    return out, where


def _restore_layout(y: np.ndarray, where: str) -> np.ndarray:
    if where == "last":
        return np.moveaxis(y, 0, -1)
    if where == "none" and y.shape[0] == 1:
        return y[0]
    return y


def image_output_path(path: Path, label: bool) -> Path:
    """Where an in-memory output goes: its own path, except for 2-D image formats (PNG / JPEG / ...),
    which hold integers only: a ``label`` output (a mask) is written as PNG when the input was lossy
    (JPEG), any other output (probabilities, uncertainties, intensities) as a float TIFF ``<stem>.tif``."""
    if io.format_for(path).name != "image2d":
        return path
    if label:
        return path if io.suffix_of(path) not in (".jpg", ".jpeg") else path.with_name(io.stem_of(path) + ".png")
    return path.with_name(io.stem_of(path) + ".tif")


def infer_image(predictor: WindowFn, in_path: PathLike | io.ArrayFile, out_path: PathLike, roi_size: Sequence[int],
                overlap: float = 0.25, blend: str = "gaussian", batch: int = 4, *,
                in_scaling: ScalingSpec = None, out_scaling: OutScaling = None,
                data_space: Sequence[str] | None = None, label_outputs: Sequence[str] = (),
                expected_channels: int | None = None,
                extra_outputs: Mapping[str, PathLike] | None = None, device: Any = None,
                progress: bool | None = None, read_kwargs: Mapping[str, Any] | None = None,
                nan_policy: str = "error", label_votes: LabelVotes | None = None) -> dict[str, Path]:
    """Any registered file read in memory (PNG / JPEG / BMP / GIF clinical images, ``.npy``, cubes...)
    -> outputs of the same kind and geometry, through MONAI sliding windows of ``roi_size``.

    ``in_path`` may also be an :class:`~medrs_diff.io.ArrayFile` already read. The array is read with
    :func:`medrs_diff.io.read` and brought to (C, *spatial) from its layout; outputs
    go back to that layout and are written with :func:`medrs_diff.io.write`. For 2-D image formats the
    ``label_outputs`` (masks) are rounded and written as PNG, the others as float TIFF ``<stem>.tif``
    (see :func:`image_output_path`). ``nan_policy`` as in :func:`infer_nifti` (masked pixels: NaN in float
    outputs, 0 in label outputs plus a ``valid`` output, 1 = finite input pixel, written like a label).
    ``label_votes`` ``{key: label values}``: label outputs stitched as votes (module docstring), holding
    those values; written as integers (:func:`label_dtype`) in 2-D images and ``.npy`` / ``.npz`` (other
    formats: float32). The returned ``{key: path}`` names the files written.
    """
    _check_overlap(overlap)
    check_nan_policy(nan_policy)
    src = in_path if isinstance(in_path, io.ArrayFile) else io.read(in_path, **dict(read_kwargs or {}))
    in_path = src.path
    for p in [out_path, *(extra_outputs or {}).values()]:
        check_output_path(p, [in_path])
    spatial = len(roi_size)
    data, where = channel_first(np.asarray(src.data, dtype=np.float32), src.geometry.layout, spatial, in_path,
                                expected_channels)
    data, invalid = apply_nan_policy(data, in_path, nan_policy, channel_axis=0,
                                     unit="voxel" if spatial == 3 else "pixel")
    x = torch.from_numpy(np.ascontiguousarray(data))
    scale_in = resolve(in_scaling, x)
    warn_input_clipping(in_path, scale_in, x)
    x = scale_in.forward(x)
    run_on = _device_of(predictor, device)
    votes = check_label_votes(label_votes)
    outs = _as_dict(infer_volume(predictor, x, roi_size, overlap, blend, batch, device="cpu", sw_device=run_on,
                                 progress=progress, label_votes=votes))
    labels = _label_keys(label_outputs, votes, outs)
    masking = nan_policy == "mask"
    planned = _default_paths(Path(out_path), [*outs, VALID_KEY] if masking and labels else list(outs), extra_outputs)
    mapped = _not_voted(_mapped_keys(planned, data_space), votes, data_space)
    scale_out = _out_scaling(out_scaling, scale_in)
    if invalid is None:
        invalid = np.zeros(data.shape[1:], bool)
    arrays, paths = {}, {}
    for key, path in planned.items():
        if key == VALID_KEY:  # on the grid of the first label output
            y = valid_output(invalid, outs[labels[0]].shape[1:])[None]
        else:
            y = outs[key].float()
            if scale_out is not None and key in mapped:
                y = scale_out.inverse(y)
            y = y.cpu().numpy()
            if key in labels:
                y = np.round(y)
            if masking:
                y = mask_invalid(y, invalid, key in labels, 0)
            if key in votes and io.format_for(path).name in ("image2d", "numpy"):
                y = y.astype(label_dtype(votes[key]))
        paths[key] = image_output_path(path, key in labels or key == VALID_KEY)
        arrays[key] = _restore_layout(y, where)
    geometry = src.geometry
    if any(y.shape[-spatial:] != data.shape[-spatial:] for y in arrays.values()):
        geometry = type(geometry)(kind=geometry.kind, layout=geometry.layout, extra=dict(geometry.extra))
    for p in paths.values():
        check_output_path(p, [in_path])
    written: list[Path] = []
    try:
        for key, arr in arrays.items():
            written.append(io.write(paths[key], arr, geometry, inputs=[in_path]))
    except BaseException:
        for p in written:  # all outputs or none
            with contextlib.suppress(OSError):
                p.unlink()
        raise
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


def warn_input_clipping(where: Any, scaling: Any, x: Any) -> None:
    """Warn (naming ``where``) when a fixed-range input scaling clips more of ``x`` than it should
    (:func:`~medrs_diff.data.scaling.warn_clipped`); per-channel modality scalings are not checked."""
    if isinstance(scaling, Scaling):
        warn_clipped(where, scaling, *clip_counts(scaling, x))


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


@dataclass(frozen=True)
class TileReader:
    """A scene that :func:`write_strips` reads window by window: ``read(y0, x0, h, w)`` returns the model-space
    input (C, h, w) float32 (0 where invalid) and its valid pixels (h, w) bool for the window at row ``y0``,
    column ``x0``; ``height`` x ``width`` pixels on ``crs`` / ``transform``; ``inputs`` are the files read
    (never overwritten); ``name`` labels the progress bar. One file (:func:`infer_geotiff`) or several
    (a time series, :mod:`medrs_diff.inference.series`)."""

    read: Callable[[int, int, int, int], tuple[np.ndarray, np.ndarray]]
    height: int
    width: int
    crs: Any
    transform: Any
    inputs: Sequence[PathLike]
    name: str


@dataclass(frozen=True)
class GeoOutput:
    """How :func:`write_strips` writes one output: its ``path``, ``dtype``, ``nodata`` (written where no input
    pixel was valid), ``count`` bands (None: the predictor's channels), ``band_names``, ``scaling`` record and
    ``tags``; ``window`` maps each predicted window (B, C, h, w) before blending, ``strip`` the blended rows
    (C, rows, width) float64 after it (e.g. decoding votes, clamping)."""

    path: Path
    dtype: Any = "float32"
    nodata: float | None = None
    count: int | None = None
    band_names: Sequence[str | None] | None = None
    scaling: Any = None
    tags: Mapping[str, str] | None = None
    window: Callable[[torch.Tensor], torch.Tensor] | None = None
    strip: Callable[[np.ndarray], np.ndarray] | None = None


#: GDAL block cache (MiB) while :func:`write_strips` streams, unless GDAL_CACHEMAX is set: GDAL's default (5 % of
#: the RAM) would otherwise fill with blocks of the scene's files and grow with the scene.
STREAM_CACHE_MB = 256


def gdal_cache_cap() -> Any:
    """A rasterio Env capping GDAL's block cache at :data:`STREAM_CACHE_MB`, or a no-op where the user set it."""
    if "GDAL_CACHEMAX" in os.environ or (rasterio.env.hasenv() and "GDAL_CACHEMAX" in rasterio.env.getenv()):
        return contextlib.nullcontext()
    return rasterio.Env(GDAL_CACHEMAX=STREAM_CACHE_MB)


#: ``outputs`` of :func:`write_strips`: the first batch's outputs ``{key: (B, C, h, w)}`` -> how to write each key.
OutputPlan = Callable[[Mapping[str, torch.Tensor]], Mapping[str, GeoOutput]]


def write_strips(predictor: WindowFn, reader: TileReader, outputs: OutputPlan, tile: int | tuple[int, int] = 256,
                 overlap: float = 0.25, blend: str = "cosine", batch: int = 4, *, scale: int = 1, device: Any = None,
                 progress: bool | None = None) -> dict[str, Path]:
    """Blended overlapping tiles over a scene read window by window, written strip by strip.

    Tiles of ``tile`` pixels overlapping by ``overlap`` (fraction) come from ``reader`` (padded by reflection
    where the scene is smaller than a tile), run in batches of ``batch`` on ``device`` (a
    :class:`PositionalWindowFn` gets each tile's start), are blended by ``blend`` weights and written by rows:
    memory holds one strip of tile rows (C x tile x width per output), never the scene, and GDAL's block
    cache is capped at :data:`STREAM_CACHE_MB` unless ``GDAL_CACHEMAX`` is set. With ``scale`` > 1
    the predictor returns tiles ``scale`` times larger (super-resolution) and the outputs cover the same ground
    with finer pixels. ``outputs`` decides each output's file and format from the first batch
    (:class:`GeoOutput`); every file appears only when the whole scene succeeded. Returns ``{key: path}``.
    """
    th, tw = (tile, tile) if isinstance(tile, int) else tuple(tile)
    _check_overlap(overlap)
    s = int(scale)
    dev = _device_of(predictor, device)
    H, W = reader.height, reader.width
    out_transform = reader.transform * Affine.scale(1.0 / s) if s > 1 else reader.transform
    sy, sx = max(1, round(th * (1 - overlap))), max(1, round(tw * (1 - overlap)))
    ys, xs = _starts(H, th, sy), _starts(W, tw, sx)
    hh, ww = min(th, H), min(tw, W)  # tile extent inside the scene (input pixels)
    weight = blend_window((th * s, tw * s), blend).numpy()[: hh * s, : ww * s].astype(np.float64)
    bar = tqdm(total=len(ys) * len(xs), desc=f"tiles {reader.name}", disable=not show_progress(progress))
    with contextlib.ExitStack() as stack:
        stack.enter_context(gdal_cache_cap())
        acc: dict[str, np.ndarray] = {}  # weighted sums over the current strip, output pixels
        wsum = np.zeros((hh * s, W * s), np.float64)
        valid = np.zeros((hh, W), bool)  # input pixels of the strip holding data
        dsts: dict[str, Any] = {}
        plan: dict[str, GeoOutput] = {}
        for r, y0 in enumerate(ys):
            for b0 in range(0, len(xs), batch):
                xb = xs[b0 : b0 + batch]
                tiles = []
                for x0 in xb:
                    a, ok = reader.read(y0, x0, hh, ww)
                    valid[:, x0 : x0 + ww] |= ok
                    tiles.append(_pad_to(a, th, tw))
                with torch.inference_mode():
                    outs = _as_dict(_call(predictor, torch.from_numpy(np.stack(tiles)).to(dev),
                                          [(y0, x0) for x0 in xb]))
                if not dsts:
                    plan = dict(outputs(outs))
                    tmps = stack.enter_context(atomic_outputs([o.path for o in plan.values()], reader.inputs))
                    for (key, o), tmp in zip(plan.items(), tmps, strict=True):
                        y = outs[key]
                        prof = geotiff_profile(H * s, W * s, y.shape[1] if o.count is None else o.count, o.dtype,
                                               reader.crs, out_transform, o.nodata)
                        dsts[key] = stack.enter_context(rasterio.open(tmp, "w", **prof))
                        set_band_metadata(dsts[key], o.band_names, o.scaling, o.tags)
                        acc[key] = np.zeros((y.shape[1], hh * s, W * s), np.float64)
                for key, y in outs.items():
                    if key not in acc or tuple(y.shape[-2:]) != (th * s, tw * s) or y.shape[0] != len(xb):
                        raise ValueError(f"predictor output '{key}' has shape {tuple(y.shape)}; expected "
                                         f"({len(xb)}, C, {th * s}, {tw * s}) (scale {s}), keys {list(acc)}")
                    y = y.float()
                    if plan[key].window is not None:
                        y = plan[key].window(y)
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
                o = plan[key]
                vals = acc[key][:, : done * s] / wsum[None, : done * s]
                if o.strip is not None:
                    vals = o.strip(vals)
                if o.nodata is not None:
                    vals = np.where(ok_rows[None], vals, o.nodata)
                dst.write(vals.astype(o.dtype), window=Window(0, y0 * s, W * s, done * s))
                acc[key] = _shift_up(acc[key], done * s)
            wsum, valid = _shift_up(wsum, done * s), _shift_up(valid, done)
        bar.close()
    return {key: o.path for key, o in plan.items()}


def infer_geotiff(predictor: WindowFn, in_path: PathLike, out_path: PathLike, tile: int | tuple[int, int] = 256,
                  overlap: float = 0.25, blend: str = "cosine", batch: int = 4, *,
                  bands: Sequence[int] | None = None, expected_bands: int | None = None,
                  in_scaling: ScalingSpec = None, out_scaling: OutScaling = None, scale: int = 1,
                  data_space: Sequence[str] | None = None,
                  out_band_names: Sequence[str] | None = None, extra_outputs: Mapping[str, PathLike] | None = None,
                  out_nodata: float | None = None, out_dtype: Any = "float32", device: Any = None,
                  progress: bool | None = None, nan_policy: str = "error",
                  label_votes: LabelVotes | None = None) -> dict[str, Path]:
    """GeoTIFF in -> GeoTIFF out(s) on the input's map grid, for scenes larger than memory.

    Tiles of ``tile`` pixels overlapping by ``overlap`` (fraction) are read with rasterio windows, scaled
    by ``in_scaling`` (nodata / NaN pixels set to 0 in model space), predicted in batches of ``batch`` on
    ``device``, the outputs in ``data_space`` (default: the main one) mapped back by ``out_scaling``
    (``"input"``: the input's own scaling), blended and written strip by strip: memory holds one strip of
    tile rows (C x tile x width), never the scene. With ``scale`` > 1 (super-resolution) the predictor
    returns tiles ``scale`` times larger and the outputs cover the same ground with pixels ``scale``
    times smaller. Pixels that are nodata in the input get ``out_nodata`` (default: the input's nodata,
    or NaN for float inputs without one) in every output. ``bands`` are 1-based input bands.

    NaN / Inf pixels that the file does not declare as nodata (a float raster without a NaN nodata) are
    counted before any tile runs and handled by ``nan_policy`` (:data:`NAN_POLICIES`): refused
    (``error``, the default), set to the band's finite minimum (``fill``) or treated as nodata
    (``mask``: ``out_nodata`` in every output, set as the outputs' nodata). Returns ``{key: path}``;
    outputs appear only when the whole scene succeeded.

    ``label_votes`` ``{key: label values}``: label outputs stitched as votes (module docstring), decoded
    per strip after normalisation, and written as one band in those values with the dtype and nodata of
    :func:`geotiff_label_format` (uint8 with nodata 255, else int16 with -32768; nodata only where the
    float outputs have one), not ``out_dtype`` / ``out_nodata``.
    """
    tile = (tile, tile) if isinstance(tile, int) else tuple(tile)
    _check_overlap(overlap)
    if int(scale) != scale or scale < 1:
        raise ArgumentError(None, f"scale must be a positive integer, got {scale}", "pass 1, 2, 4, ...")
    check_nan_policy(nan_policy)
    for p in [out_path, *(extra_outputs or {}).values()]:
        check_output_path(p, [in_path])  # refuse before any work is done
    dev = _device_of(predictor, device)
    votes = check_label_votes(label_votes)
    predictor = vote_window_fn(predictor, votes)
    with open_geotiff(in_path) as src:
        idx = check_bands(in_path, src.count, bands, expected_bands)
        if not has_valid_data(in_path, idx):
            raise DataError(in_path, "holds only nodata / NaN pixels", "check the file and its nodata value")
        H, W, nodata = src.height, src.width, src.nodata
        n_bad, band_min = nonfinite_pixels(in_path, idx) if nan_policy != "mask" else (0, None)
        if n_bad and nan_policy == "error":
            raise nonfinite_error(in_path, n_bad, H * W, "pixel")
        fill = band_min[:, None, None].astype(np.float32) if n_bad else None  # nan_policy "fill"
        if out_nodata is None:
            floats = np.issubdtype(np.dtype(src.dtypes[0]), np.floating) and np.issubdtype(np.dtype(out_dtype),
                                                                                            np.floating)
            out_nodata = nodata if nodata is not None else (float("nan") if floats else None)
        scale_in = _geo_scaling(in_scaling, src, idx)
        scale_out = _out_scaling(out_scaling, scale_in)
        n_clip = np.zeros(2, np.int64)  # input values the scaling clips, finite input values

        def read(y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
            a = src.read(idx, window=Window(x0, y0, w, h)).astype(np.float32)
            if fill is not None:
                a = np.where(undeclared_nonfinite(a, nodata, per_band=True), fill, a)
            ok = valid_mask(a, nodata)
            n_clip[:] += clip_counts(scale_in, np.where(ok[None], a, np.nan))
            a = scale_in.forward(np.where(ok[None], a, 0.0).astype(np.float32))
            return np.where(ok[None], a, 0.0).astype(np.float32), ok

        def plan(outs: Mapping[str, torch.Tensor]) -> dict[str, GeoOutput]:
            paths = _default_paths(Path(out_path), list(outs), extra_outputs)
            main = next(iter(paths))
            mapped = _not_voted(_mapped_keys(paths, data_space), votes, data_space)
            to_data = None if scale_out is None else (lambda y: scale_out.inverse(y, channel_axis=1))
            plans = {}
            for key, path in paths.items():
                dtype, nd = (geotiff_label_format(votes[key], out_nodata is not None) if key in votes
                             else (out_dtype, out_nodata))
                plans[key] = GeoOutput(path, dtype, nd, count=1 if key in votes else None,
                                       band_names=out_band_names if key == main else None,
                                       scaling=scale_out if key in mapped else None,
                                       tags={INPUT_SCALING_TAG: scale_in.to_json()},
                                       window=to_data if key in mapped else None,
                                       strip=partial(decode_votes, values=votes[key]) if key in votes else None)
            return plans

        reader = TileReader(read, H, W, src.crs, src.transform, [in_path], Path(in_path).name)
        paths = write_strips(predictor, reader, plan, tile, overlap, blend, batch, scale=int(scale), device=dev,
                             progress=progress)
    warn_clipped(in_path, scale_in, int(n_clip[0]), int(n_clip[1]))  # overlapping tiles count alike
    return paths
