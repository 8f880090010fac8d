"""``Predictor``: a trained method applied to arrays and files (nnU-Net's predictor is the model).

The CLI (``medrs-diff infer``), the quick start and notebooks all go through it::

    from medrs_diff.inference import Predictor

    p = Predictor.from_checkpoint("runs/x/checkpoints/last.ckpt", device="cuda")
    outs = p.predict_array(image)                      # {"prediction": array, "uncertainty": array, ...}
    p.predict_files("scans/", "predictions/", steps=20)  # every registered file type, every declared output

The checkpoint is read once: the method (EMA weights when present), the data module's model-space
``scaling`` (so inputs are mapped exactly as in training and restored outputs mapped back) and its
training ``patch_size`` (the default window, :func:`~medrs_diff.inference.tiling.default_window`).
What the method reads and writes comes from its ``io_spec``: the input key and channel count, the
outputs written (all of them), the ones mapped back to data units, and the output grid factor.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import io
from ..data.scaling import ScalingSpec, check_bit_depth, resolve
from ..errors import ArgumentError, CheckpointError, DataError, MedrsError
from ..methods.base import IOSpec, Method, check_learned_sampler, check_sampler
from .cases import LAYOUTS, ModalityCase, case_grid, find_cases, stack_case
from .panels import PANELS_DIR, panel_path, write_case_panel
from .seeding import window_generators
from .tiling import (
    MAIN_KEY,
    VALID_KEY,
    PositionalWindowFn,
    WindowFn,
    apply_nan_policy,
    channel_first,
    check_finite,
    check_label_votes,
    check_nan_policy,
    default_window,
    image_output_path,
    infer_geotiff,
    infer_image,
    infer_nifti,
    infer_volume,
    input_scaling,
    mask_invalid,
    nifti_model_layout,
    nonfinite_error,
    oriented_shape,
    slice_window_fn,
    valid_output,
    warn_input_clipping,
)

PathLike = str | os.PathLike
Inputs = PathLike | Sequence[PathLike]
#: One thing to run on: a file, or the modality files of one multi-modal case.
Source = Path | ModalityCase
_log = logging.getLogger(__name__)

__all__ = ["Predictor", "check_device", "input_files", "output_paths"]


def check_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, refusing a CUDA device when no GPU is visible (one clear message)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ArgumentError(f"device {device!r}", f"is not a torch device ({err})", "use cpu, cuda or cuda:N") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError(f"device {device!r}", "no GPU is visible (torch.cuda.is_available() is False)",
                                "use --device cpu, or check CUDA_VISIBLE_DEVICES and the driver")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ArgumentError(f"device {device!r}", f"only {torch.cuda.device_count()} GPU(s) are visible",
                                f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return dev


def checkpoint_label_values(data: Mapping[str, Any], class_path: str | None = None) -> tuple[float, ...] | None:
    """The label value of each class index, from a data module's ``init_args``: ``label_values`` (sorted, as
    the data modules order them), else clinical2d's ``label_map`` {value: class} inverted (a class that
    several values map to gets the smallest of them), else clinical2d's layout map (REFUGE: 255, 128, 0),
    else None (``num_classes`` / binary: class indices are the values)."""
    values = data.get("label_values")
    if values is not None:
        return tuple(sorted(float(v) for v in values))
    lmap = data.get("label_map")
    if lmap is None and class_path and "clinical2d" in class_path.lower() and data.get("num_classes") is None \
            and data.get("mask_threshold") is None and data.get("label_values") is None:
        from ..datamodules.clinical2d import LAYOUTS as CLINICAL_LAYOUTS

        layout = CLINICAL_LAYOUTS.get(str(data.get("layout") or "custom"))
        lmap = layout.label_map if layout is not None else None
    if lmap is None:
        return None
    inverse: dict[int, float] = {}
    for value, cls in dict(lmap).items():
        c, v = int(cls), float(value)
        inverse[c] = min(v, inverse.get(c, v))
    return tuple(inverse[c] for c in sorted(inverse))


def _positive(name: str, value: Any) -> None:
    if value is None:
        return
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ArgumentError(None, f"{name} must be an integer >= 1, got {value!r}", f"pass {name} >= 1")


def _check_options(steps: Any, n_samples: Any, tile: Any, overlap: Any, batch: Any) -> None:
    _positive("steps", steps)
    _positive("n_samples", n_samples)
    _positive("tile", tile)
    _positive("batch", batch)
    if not isinstance(overlap, int | float) or not 0 <= overlap < 1:
        raise ArgumentError(None, f"overlap must be in [0, 1), got {overlap!r}", "pass a fraction such as 0.25")


def input_files(inputs: Inputs) -> tuple[list[Path], bool]:
    """The files to run on and whether a single file was named (not a folder or a list)."""
    if isinstance(inputs, str | os.PathLike):
        p = Path(inputs)
        if p.is_file():
            io.format_for(p)  # an unknown suffix names the known ones
            return [p], True
        if p.is_dir():
            return io.list_inputs(p), False
        raise DataError(p, "input does not exist", "check the path (a file or a folder of files)")
    files = [Path(x) for x in inputs]
    if not files:
        raise DataError(None, "no input files given", "pass a file, a folder or a list of files")
    for f in files:
        if not f.is_file():
            raise DataError(f, "input file does not exist", "check the path")
        io.format_for(f)
    return files, False


def output_paths(src: Source, output: Path, keys: Sequence[str], single: bool) -> dict[str, Path]:
    """Where each output of ``src`` goes. A single output file (``single`` and a registered suffix) gets
    the main output and ``<stem>_<key><suffix>`` beside it; an output folder gets ``OUT/<name>`` and
    ``OUT/<key>/<name>``, so the folder pairs one-to-one with a reference folder for ``evaluate``
    (a multi-modal case's name is ``<case>.nii.gz``)."""
    if isinstance(src, ModalityCase):
        src = Path(src.output_name)
    main = MAIN_KEY if MAIN_KEY in keys else keys[0]
    if single and _is_file_name(output):
        stem, suffix = io.stem_of(output), io.suffix_of(output)
        return {k: output if k == main else output.with_name(f"{stem}_{k}{suffix}") for k in keys}
    return {k: output / src.name if k == main else output / k / src.name for k in keys}


def _clean_stale_temporaries(plans: Sequence[Mapping[str, Path]]) -> list[Path]:
    """Remove the temporary files a killed run left in the output folders (:func:`io.is_stale_temporary`),
    with one log line when there were any; returns them."""
    folders = sorted({p.parent for plan in plans for p in plan.values()})
    removed = [f for folder in folders for f in io.clean_stale_temporaries(folder)]
    if removed:
        _log.warning("removed %d stale temporary file(s) left by an interrupted run in %s", len(removed),
                     ", ".join(sorted({str(f.parent) for f in removed})))
    return removed


def _is_file_name(path: Path) -> bool:
    if path.is_dir():
        return False
    try:
        io.format_for(path)
    except DataError:
        return False
    return True


@dataclass
class Predictor:
    """A method ready for inference: where it runs, how inputs are scaled, which window it uses.

    ``scaling``: the data module's model-space scaling (a name such as ``"reflectance"`` or ``"zscore"``,
    a :class:`~medrs_diff.data.scaling.Scaling`, or None for data already in model space).
    ``patch_size``: the training patch size on the output grid (None: unknown), for default windows.
    ``modalities`` / ``layout``: a multi-modal model's modality tags in channel order and the case layout
    it trained on (``"flat"`` or ``"brats"``, :mod:`~medrs_diff.inference.cases`); each channel is then
    scaled on its own, as in training. ``slice_wise``: a 2-D model runs over every axial slice of a NIfTI
    volume (default from the checkpoint: its data module's ``slices``).
    ``label_values``: the data's label value of each class index 0..K-1 (None: the indices themselves;
    from the checkpoint: :func:`checkpoint_label_values`, BraTS ``(0, 1, 2, 4)``); label outputs are
    stitched as votes and written (and returned) in these values.
    """

    method: Method
    io_spec: IOSpec
    device: torch.device
    scaling: ScalingSpec = None
    patch_size: int | tuple[int, ...] | None = None
    checkpoint: Path | None = None
    modalities: tuple[str, ...] | None = None
    layout: str = "flat"
    slice_wise: bool = False
    label_values: tuple[float, ...] | None = None
    #: the scaling of the outputs when it differs from the input's (a translation: S1 dB in, S2 DN out); None:
    #: ``data_space`` outputs go back through the input's scaling
    target_scaling: ScalingSpec = None

    def __post_init__(self) -> None:
        where = str(self.checkpoint) if self.checkpoint is not None else "Predictor"
        if self.modalities is not None:
            mods = tuple(str(m) for m in self.modalities)
            if not mods or len(set(mods)) != len(mods):
                raise ArgumentError(where, f"modalities must be distinct names, got {list(self.modalities)!r}",
                                    'list the modality tags in channel order, e.g. ["t1n", "t1c", "t2w", "t2f"]')
            if len(mods) != self.io_spec.in_channels:
                raise ArgumentError(where, f"{len(mods)} modalities {list(mods)} for a model with "
                                    f"{self.io_spec.in_channels} input channel(s)", "give one modality per channel")
            self.modalities = mods
        if self.layout not in LAYOUTS:
            raise ArgumentError(where, f"unknown layout {self.layout!r}", f"choose one of {', '.join(LAYOUTS)}")
        self.slice_wise = self._slice_wise(self.slice_wise, "slice_wise")
        self.label_values = self._check_label_values(self.label_values, where)

    def _check_label_values(self, values: Sequence[float] | None, where: str) -> tuple[float, ...]:
        """``values`` (None: ``0 .. K-1``) as floats, one per class of the method (``num_classes``, else 2)."""
        k = int(getattr(self.method, "num_classes", 2))
        if values is None:
            return tuple(float(c) for c in range(k))
        try:
            vals = tuple(float(v) for v in values)
        except (TypeError, ValueError) as err:
            raise ArgumentError(where, f"label_values must be numbers, got {values!r}",
                                "list the data's label value of each class, e.g. [0, 1, 2, 4]") from err
        if self._label_outputs() and len(vals) != k:
            raise ArgumentError(where, f"{len(vals)} label_values {list(vals)} for a method with {k} classes",
                                f"give one value per class ({k}), background first, or match num_classes")
        try:
            check_label_votes({"label_values": vals})
        except ArgumentError as err:
            raise ArgumentError(where, f"label_values {list(vals)} are not distinct finite numbers ({err.problem})",
                                "list the data's label value of each class once, e.g. [0, 1, 2, 4]") from err
        return vals

    def _label_votes(self) -> dict[str, tuple[float, ...]]:
        """``{label output: label values}``: what the tiling functions stitch as votes."""
        return {k: tuple(self.label_values or ()) for k in self._label_outputs()}

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: PathLike, device: str | torch.device = "cpu", ema: bool | None = None,
                        trusted: bool = False) -> Predictor:
        """Read a ``medrs-diff fit`` checkpoint once: method (EMA weights unless ``ema=False``), scaling and
        patch size of its data module. ``device`` is where the windows run (``cuda`` needs a visible GPU)."""
        from ..train.checkpoint import read_checkpoint

        dev = check_device(device)
        return cls.from_loaded(read_checkpoint(path, map_location="cpu", trusted=trusted), path, device=dev, ema=ema)

    @classmethod
    def from_loaded(cls, ckpt: dict[str, Any], path: PathLike, device: str | torch.device = "cpu",
                    ema: bool | None = None) -> Predictor:
        """:meth:`from_checkpoint` on a checkpoint dict already read from ``path`` (named in errors)."""
        from ..train.checkpoint import checkpoint_data_config, method_from_checkpoint

        dev = check_device(device)
        method = method_from_checkpoint(ckpt, path, ema=ema)
        data = (checkpoint_data_config(ckpt) or {}).get("init_args") or {}
        patch = data.get("patch_size")
        mods = data.get("modalities")
        if mods is not None and (not isinstance(mods, list | tuple) or len(mods) != method.io_spec.in_channels):
            raise CheckpointError(path, f"records modalities {mods!r} for a model with "
                                  f"{method.io_spec.in_channels} input channel(s)",
                                  "use a checkpoint written by `medrs-diff fit` with this data module")
        data_config = checkpoint_data_config(ckpt) or {}
        return cls.from_method(method, scaling=data.get("scaling"), device=dev,
                               patch_size=tuple(patch) if isinstance(patch, list | tuple) else patch,
                               checkpoint=Path(path), modalities=mods,
                               layout=(data.get("layout") or "flat") if mods is not None else "flat",
                               slice_wise=bool(data.get("slices", False)) and method.io_spec.spatial_dims == 2,
                               label_values=checkpoint_label_values(data, data_config.get("class_path")),
                               target_scaling=data.get("target_scaling"))

    @classmethod
    def from_method(cls, method: Method, *, scaling: ScalingSpec = None,
                    patch_size: int | Sequence[int] | None = None, device: str | torch.device = "cpu",
                    checkpoint: Path | None = None, modalities: Sequence[str] | None = None, layout: str = "flat",
                    slice_wise: bool = False, label_values: Sequence[float] | None = None,
                    target_scaling: ScalingSpec = None) -> Predictor:
        """Wrap a method built in Python (moved to ``device``, eval mode); ``modalities``, ``layout``,
        ``slice_wise``, ``label_values`` and ``target_scaling`` as the class describes."""
        dev = check_device(device)
        patch = tuple(patch_size) if isinstance(patch_size, Sequence) else patch_size
        mods = tuple(modalities) if modalities is not None else None
        return cls(method.to(dev).eval(), method.io_spec, dev, scaling, patch, checkpoint, mods, layout, slice_wise,
                   label_values, target_scaling)

    def _slice_wise(self, value: bool | None, name: str = "slice_wise") -> bool:
        """``value`` (None: :attr:`slice_wise`), refused unless a bool, and for a 3-D model."""
        if value is None:
            return self.slice_wise
        if not isinstance(value, bool | np.bool_):
            raise ArgumentError(None, f"{name} must be True, False or None, got {value!r}",
                                "pass slice_wise=True to run a 2-D model over every slice of a volume")
        if value and self.io_spec.spatial_dims != 2:
            raise ArgumentError(None, f"{name} runs a 2-D model slice by slice, but this model is "
                                f"{self.io_spec.spatial_dims}-D (it takes whole volumes)",
                                "drop --slice-wise (slice_wise=False) for a 3-D model")
        return bool(value)

    @property
    def channelwise(self) -> bool:
        """Whether each input channel is scaled on its own (a multi-modal model, as in training)."""
        return self.modalities is not None

    # -- windows ----------------------------------------------------------------------------------
    def window(self, shape: Sequence[int] | None = None, tile: int | Sequence[int] | None = None) -> tuple[int, ...]:
        """The window (input grid) for an input of spatial ``shape``: ``tile`` if given (one size for every
        axis or one per axis; a multiple of the model's ``size_multiple``), else :func:`default_window`
        from the training patch size."""
        dims = self.io_spec.spatial_dims
        multiple = int(self.io_spec.extra.get("size_multiple", 1))
        if tile is None:
            return default_window(dims, self.io_spec.grid_factor, self.patch_size, shape, multiple)
        t = [int(tile)] if isinstance(tile, int | np.integer) else [int(v) for v in tile]
        t = t * dims if len(t) == 1 else t
        if len(t) != dims:
            raise ArgumentError(None, f"tile {list(t)} has {len(t)} sizes for a {dims}-D model",
                                f"give one size or {dims} sizes")
        if any(v % multiple for v in t):
            ok = sorted({max(multiple, v // multiple * multiple) for v in t} | {-(-v // multiple) * multiple
                                                                                for v in t})
            raise ArgumentError(None, f"tile {list(t)} is not a multiple of {multiple}, which this model's input "
                                "sizes must be", f"use a multiple of {multiple} (e.g. {', '.join(map(str, ok))})")
        return tuple(t)

    def _window_fn(self, sampler: str | None, steps: int | None, n_samples: int | None, seed: int,
                   generator: torch.Generator | None, case: str) -> WindowFn:
        """The window function of one case. Without ``generator`` each window's noise comes from its own
        generator seeded with ``(seed, case, window start)`` (:mod:`~medrs_diff.inference.seeding`), so the
        case's output depends only on the seed; a given ``generator`` is one stream over every window (and
        file) in turn, so outputs then depend on the batching and on the files run before."""
        spec, method = self.io_spec, self.method

        def run(x: torch.Tensor, gen: Any) -> dict[str, torch.Tensor]:
            method.check_input(x, "input window")
            out = method.predict({spec.input_key: x}, sampler=sampler, steps=steps, n_samples=n_samples,
                                 generator=gen)
            missing = [k for k in spec.outputs if k not in out]
            if missing:
                raise MedrsError(type(method).__name__, f"predict() did not return the declared output(s) {missing}",
                                 "make io_spec.outputs name only tensors that predict() returns")
            return {k: out[k] for k in spec.outputs}

        if generator is not None:
            return lambda x: run(x, generator)
        return PositionalWindowFn(lambda x, starts: run(x, window_generators(seed, case, starts, x.device)))

    def _prepare(self, sampler: str | None, steps: int | None, n_samples: int | None, tile: Any, overlap: float,
                 batch: int, seed: int, generator: torch.Generator | None) -> Callable[[str], WindowFn]:
        """Check the options; returns ``case -> window function`` (see :meth:`_window_fn`)."""
        _check_options(steps, n_samples, tile, overlap, batch)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise ArgumentError(None, f"seed must be an integer, got {seed!r}", "pass an integer seed such as 0")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ArgumentError(None, f"generator must be a torch.Generator, got {type(generator).__name__}",
                                "pass seed= (per-window seeds) or a torch.Generator")
        if sampler is not None:
            if not self.method.uses_samplers:
                raise ArgumentError("--sampler", f"the {self.method.name} model does not sample with the registered "
                                    f"samplers, so {sampler!r} would be ignored", "drop --sampler (--steps still "
                                    "applies where the method has steps)")
            check_sampler(sampler)
            check_learned_sampler(self.method, sampler, steps)  # bddm / masked: a fitted chain of these steps
        return lambda case: self._window_fn(sampler, steps, n_samples, int(seed), generator, case)

    # -- arrays -----------------------------------------------------------------------------------
    def predict_array(self, x: np.ndarray | torch.Tensor, *, sampler: str | None = None, steps: int | None = None,
                      n_samples: int | None = None, seed: int = 0, generator: torch.Generator | None = None,
                      tile: int | Sequence[int] | None = None, overlap: float = 0.25, batch: int = 4,
                      blend: str = "gaussian", progress: bool | None = False, case: str = "",
                      nan_policy: str = "error") -> dict[str, np.ndarray]:
        """Every declared output for one image in data units, channel-first ``(C, *spatial)`` (or
        ``(*spatial)`` for one channel), as float32 arrays ``(C_out, *spatial x grid_factor)``. Label
        outputs are stitched as votes and hold :attr:`label_values` (integral floats, one channel).

        The input is mapped to model space with the checkpoint's scaling (each channel on its own for a
        multi-modal model, as in training), run through blended sliding
        windows (MONAI) on :attr:`device`, and the ``data_space`` outputs are mapped back to data units.
        Each window's noise is seeded by ``(seed, case, window start)``: the same array, seed and ``case``
        give the same outputs at any ``batch`` (``case="x.nii.gz"`` reproduces :meth:`predict_files` on a
        file of that name read the same way). A ``generator`` instead is one stream over all windows.
        ``nan_policy``: NaN / Inf pixels are refused (``"error"``), set to the finite minimum (``"fill"``),
        or filled for the model and returned as NaN (0 in label outputs, with a ``"valid"`` array: 1 =
        finite input pixel) (``"mask"``).
        """
        check_nan_policy(nan_policy)
        fn = self._prepare(sampler, steps, n_samples, tile, overlap, batch, seed, generator)(str(case))
        dims = self.io_spec.spatial_dims
        t = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x), dtype=torch.float32)
        if t.ndim == dims:
            t = t[None]
        if t.ndim != dims + 1:
            raise DataError(None, f"array of shape {tuple(t.shape)} is not (C, *spatial) for a {dims}-D model",
                            f"pass a channel-first array with {dims} spatial axes")
        if t.shape[0] != self.io_spec.in_channels:
            raise DataError(None, f"array has {t.shape[0]} channel(s) but the model expects {self.io_spec.in_channels}",
                            "pass a channel-first array with the model's channels")
        data, invalid = apply_nan_policy(t.numpy(), "array", nan_policy, 0, "voxel" if dims == 3 else "pixel",
                                         per_channel=self.channelwise)
        t = torch.from_numpy(np.ascontiguousarray(data))
        check_bit_depth(self.scaling, t, "array")  # 16-bit pixels into a dn8 model, 0..1 into a DN model
        scaling = resolve(input_scaling(self.scaling, self.channelwise), t)
        warn_input_clipping(f"array {case}".rstrip(), scaling, t)
        outs = infer_volume(fn, scaling.forward(t), self.window(tuple(t.shape[1:]), tile), overlap, blend, batch,
                            device="cpu", sw_device=self.device, progress=progress, label_votes=self._label_votes())
        result = {}
        votes = self._label_votes()
        for k in self.io_spec.outputs:
            y = outs[k].float()
            if k in self.io_spec.data_space and k not in votes:
                y = (resolve(self.target_scaling) if self.target_scaling is not None else scaling).inverse(y)
            result[k] = y.cpu().numpy()
        labels = [k for k in self._label_outputs() if k in result]
        if nan_policy == "mask":
            if invalid is None:
                invalid = np.zeros(tuple(t.shape[1:]), bool)
            for k in result:
                result[k] = mask_invalid(result[k], invalid, k in labels)
            if labels:
                result[VALID_KEY] = valid_output(invalid, result[labels[0]].shape[1:])[None]
        return result

    def _label_outputs(self) -> tuple[str, ...]:
        """Outputs that are label maps (integers; ``0`` where masked, never NaN)."""
        spec = self.io_spec
        return tuple(spec.extra.get("label_outputs", (spec.outputs[0],) if spec.task == "seg" else ()))

    # -- files ------------------------------------------------------------------------------------
    def predict_files(self, inputs: Inputs, output: PathLike, *, sampler: str | None = None,
                      steps: int | None = None, n_samples: int | None = None, seed: int = 0,
                      generator: torch.Generator | None = None, tile: int | Sequence[int] | None = None,
                      overlap: float = 0.25, batch: int = 4, progress: bool | None = None,
                      on_done: Callable[[Source, dict[str, Path]], None] | None = None,
                      nan_policy: str = "error", slice_wise: bool | None = None,
                      panels: bool = False) -> list[dict[str, Path]]:
        """Run on files (a file, a folder or a list; any format of :mod:`medrs_diff.io`) and write every
        declared output on the input's grid (``grid_factor`` times finer for super-resolution).

        NIfTI volumes are reoriented to RAS for the model (3-D) and written back in stored order with the
        input's affine and header; GeoTIFF scenes are read and written strip by strip (memory bounded);
        other formats (PNG / JPEG clinical images, ``.npy``, ...) are read in memory (masks of 2-D images
        as PNG, float outputs as float TIFF). ``output``: a file name for a single input (others beside
        it as ``<stem>_<key>``), else a folder (``OUT/<name>``, ``OUT/<key>/<name>``). Each window's noise
        is seeded by ``(seed, file name, window start)`` (:mod:`~medrs_diff.inference.seeding`), so a file's
        outputs depend only on the seed: not on ``batch``, on the other files or on the folder's location.
        A ``generator`` instead is one stream over every window of every file in order (outputs then
        depend on both). Returns ``{output key: path}`` per input.

        ``slice_wise`` (None: :attr:`slice_wise`, from the checkpoint): a 2-D model runs over every axial
        slice of a NIfTI volume (reoriented to RAS, as training with ``slices: true``), each slice window
        seeded by its start ``(x, y, z)``, and writes one NIfTI per output on the volume's grid. A
        multi-modal model (:attr:`modalities`) takes a BraTS case folder, a folder of cases or a flat
        folder of ``<case>_<m>.nii.gz`` files (:func:`~medrs_diff.inference.cases.find_cases`), stacks each
        case's modalities as channels (each scaled on its own) and writes ``<case>.nii.gz`` outputs on the
        modalities' grid; a 4-D NIfTI with the modalities as channels works too.

        Every file is checked before the first one is computed (:meth:`check_files`: output suffixes that
        fit the writer, writable output folders, volume vs image, channels, NaN / Inf voxels, the modalities
        of each case and their grids), so a folder with one bad file stops before any output is written.
        ``nan_policy``: NaN / Inf voxels are refused (``"error"``, naming the file and the count), set to
        the file's finite minimum (``"fill"``), or filled for the model and written as nodata (``"mask"``:
        NaN in float outputs, 0 in label outputs plus a ``valid`` output, 1 = finite input voxel; GeoTIFF
        outputs get the nodata value in their profile instead). Stale temporary files that a killed run
        left in the output folders are removed first (one log line).

        ``panels``: also write one PNG per case, ``OUT/panels/<case>.png``
        (:mod:`~medrs_diff.inference.panels`: the method's own columns, or input / prediction / uncertainty;
        a volume's axial slice with the most predicted foreground), returned under the key ``"panel"``.
        """
        check_nan_policy(nan_policy)
        sw = self._slice_wise(slice_wise)
        window_fn = self._prepare(sampler, steps, n_samples, tile, overlap, batch, seed, generator)
        sources, single = self.input_sources(inputs)
        out = Path(output)
        if not single and (_is_file_name(out) or (out.exists() and not out.is_dir())):
            raise DataError(out, "names a file, but a folder or several inputs need an output folder",
                            "give a folder as the output (OUT/<name>, OUT/<output>/<name>)")
        plans = self.check_files(sources, out, single, tile, nan_policy, slice_wise=sw)  # before any compute
        output_is_file = single and _is_file_name(out)
        if panels:
            io.check_folder_writable((out.parent if output_is_file else out) / PANELS_DIR)
        _clean_stale_temporaries(plans)
        results = []
        for src, paths in zip(sources, plans, strict=True):
            main = next(iter(paths))
            extra = {k: v for k, v in paths.items() if k != main}
            name = src.output_name if isinstance(src, ModalityCase) else src.name
            results.append(self._predict_file(window_fn(name), src, paths[main], extra, tile, overlap, batch,
                                              progress, nan_policy, sw))
            if panels:
                written = results[-1]
                key = MAIN_KEY if MAIN_KEY in written else next(iter(written))
                written["panel"] = write_case_panel(self.method, src, dict(written), key,
                                                    panel_path(written[key], output_is_file, out))
            if on_done is not None:
                on_done(src, results[-1])
        return results

    def input_sources(self, inputs: Inputs) -> tuple[list[Source], bool]:
        """What to run on and whether a single input was named: the files of :func:`input_files`, or for a
        multi-modal model given a folder, its cases (:func:`~medrs_diff.inference.cases.find_cases`; a
        single case folder counts as a single input)."""
        if self.modalities is not None and isinstance(inputs, str | os.PathLike) and Path(inputs).is_dir():
            cases = find_cases(inputs, self.modalities, self.layout)
            if cases is not None:
                return list(cases), len(cases) == 1 and cases[0].folder == Path(inputs)
        files, single = input_files(inputs)
        return list(files), single

    def check_files(self, files: Sequence[Source], out: Path, single: bool, tile: Any = None,
                    nan_policy: str = "error", *, slice_wise: bool | None = None) -> list[dict[str, Path]]:
        """What can be checked before compute, for every file (or multi-modal case): each input fits the
        model (volume vs image, channels, each modality present and on one grid; NaN / Inf voxels under
        ``nan_policy="error"``), its window, and each output path (a suffix whose writer holds the output
        and the input's geometry, a writable folder, not an input, not shared by two inputs). Creates and
        writes nothing; returns each file's ``{output key: path}``."""
        spec = self.io_spec
        sw = self._slice_wise(slice_wise)
        labels = self._label_outputs()
        if not (single and _is_file_name(out)):
            io.check_folder_writable(out)
        plans: list[dict[str, Path]] = []
        claimed: dict[Path, Source] = {}
        for src in files:
            kind = "nifti" if isinstance(src, ModalityCase) else io.format_for(src).name
            keys = list(spec.outputs)
            if nan_policy == "mask" and labels and kind != "geotiff":
                keys.append(VALID_KEY)  # GeoTIFF outputs carry nodata in their profile instead
            shape, has_affine = self._check_input(src, kind, nan_policy, sw)
            self.window(shape, tile)
            paths = output_paths(src, out, keys, single)
            for key, path in paths.items():
                final = path if kind in ("nifti", "geotiff") else image_output_path(path, key in labels or
                                                                                     key == VALID_KEY)
                self._check_output(src, kind, final, has_affine)
                other = claimed.setdefault(final.resolve(), src)
                if other != src:
                    raise DataError(final, f"would be written for both {other} and {src}",
                                    "give the inputs distinct file names, or run them into separate output folders")
            plans.append(paths)
        return plans

    def _nifti_layout(self, src: Path, shape: Sequence[int], slice_wise: bool) -> tuple[int, ...]:
        """The spatial shape of a NIfTI of stored ``shape`` for this model, refusing one that does not fit
        (the channel count, for a multi-modal model, with the ways to give the modalities)."""
        spec = self.io_spec
        spatial, channels, _ = nifti_model_layout(shape, spec.spatial_dims, src, None, slice_wise=slice_wise)
        if channels != spec.in_channels:
            if self.modalities is not None:
                mods = ", ".join(self.modalities)
                sep = "-" if self.layout == "brats" else "_"
                raise DataError(src, f"has {channels} channel(s) but the model expects {spec.in_channels} "
                                f"modalities ({mods})",
                                f"give a folder of <case>{sep}<m>.nii.gz files "
                                f"{'(a BraTS case folder <case>/<case>-<m>.nii.gz) ' if sep == '-' else ''}"
                                f"for m in {mods}, or a 4-D NIfTI with them on the 4th axis in that order")
            nifti_model_layout(shape, spec.spatial_dims, src, spec.in_channels, slice_wise=slice_wise)
        return spatial

    def _model_shape(self, spatial: Sequence[int], affine: np.ndarray) -> tuple[int, ...]:
        """The spatial shape a model window sees: the RAS-oriented volume for 3-D models, its axial slice
        for a 2-D model run slice-wise, else the stored 2-D shape."""
        if len(spatial) == 3:
            oriented = oriented_shape(affine, spatial, "RAS")
            return oriented if self.io_spec.spatial_dims == 3 else oriented[:2]
        return tuple(spatial)

    def _check_input(self, src: Source, kind: str, nan_policy: str,
                     slice_wise: bool = False) -> tuple[tuple[int, ...], bool]:
        """The spatial shape the model sees (for its window) and whether the input has an affine; refuses
        an input that does not fit the model or (``nan_policy="error"``) holds NaN / Inf voxels."""
        spec = self.io_spec
        dims, channels = spec.spatial_dims, spec.in_channels
        unit = "voxel" if dims == 3 else "pixel"
        if isinstance(src, ModalityCase):
            from ..io.nifti import read_nifti

            grid, affine = case_grid(src)
            spatial = self._nifti_layout(src.paths[0], (*grid, len(src.paths)), slice_wise)
            for p in src.paths:
                check_finite(read_nifti(p).data[..., None], p, nan_policy, -1, unit)
            return self._model_shape(spatial, affine), True
        if kind == "nifti":
            from ..io.nifti import load_nifti_image, read_nifti

            img = load_nifti_image(src)
            spatial = self._nifti_layout(src, img.shape, slice_wise)
            check_finite(read_nifti(src).data.reshape(*spatial, -1), src, nan_policy, -1, unit)
            return self._model_shape(spatial, img.affine), True
        if kind == "geotiff":
            from ..io.geotiff import check_bands, has_valid_data, nonfinite_pixels, open_geotiff

            if dims == 3:
                raise DataError(src, "is a 2-D image (a GeoTIFF raster) given to a 3-D model",
                                "use a 2-D checkpoint for rasters, or give this 3-D model a volume (NIfTI)")
            with open_geotiff(src) as r:
                check_bands(src, r.count, None, channels)
                shape = (r.height, r.width)
            if not has_valid_data(src):
                raise DataError(src, "holds only nodata / NaN pixels", "check the file and its nodata value")
            if isinstance(self.scaling, str) and (self.scaling.startswith("dn") or self.scaling == "reflectance"):
                with open_geotiff(src) as r:  # a decimated view: bounded memory, enough to see the range
                    view = r.read(out_shape=(r.count, min(r.height, 1024), min(r.width, 1024)), masked=True)
                check_bit_depth(self.scaling, view.filled(0), src)
            if nan_policy == "error":
                n_bad, _ = nonfinite_pixels(src)
                if n_bad:
                    raise nonfinite_error(src, n_bad, shape[0] * shape[1], "pixel")
            return shape, True
        arr = io.read(src)
        pet_model = isinstance(self.scaling, str) and (self.scaling == "pet" or self.scaling.startswith("pet:"))
        if pet_model and arr.geometry.extra.get("units") == "BQML":  # SUV model, Bq/mL file
            raise DataError(src, f"is PET in Bq/mL, but this model works in SUV (scaling {self.scaling!r})",
                            "convert it to SUV first (medrs_diff.data.pet.read_pet, then write a NIfTI)")
        data, _ = channel_first(np.asarray(arr.data), arr.geometry.layout, dims, src, channels)
        if np.issubdtype(data.dtype, np.floating):
            check_finite(data, src, nan_policy, 0, unit)
        check_bit_depth(self.scaling, data, src)
        return tuple(data.shape[1:]), arr.geometry.affine is not None

    def _check_output(self, src: Source, kind: str, path: Path, has_affine: bool) -> None:
        """An output path whose writer can hold the output and the input's geometry, in a writable folder."""
        fmt = io.check_writable(path)
        sources = src.paths if isinstance(src, ModalityCase) else [src]
        io.check_output_path(path, sources, create=False)
        suffix = ".nii.gz" if isinstance(src, ModalityCase) else io.suffix_of(src)
        if kind in ("nifti", "geotiff") and fmt.name != kind:
            raise DataError(path, f"a {kind} input gives {kind} outputs, not {io.suffix_of(path)}",
                            f"name the output like the input ({suffix}) or give a folder")
        if fmt.name == "nifti" and not has_affine:
            raise DataError(path, f"a NIfTI output needs an affine, and this {kind} input has none",
                            f"name the output like the input ({suffix}), .npy or .tif, or give a folder")
        if fmt.name == "image2d" and self.io_spec.spatial_dims == 3:
            raise DataError(path, f"a 3-D model's output cannot be written as a 2-D image ({io.suffix_of(path)})",
                            "name the output .npy or .nii.gz, or give a folder")

    def _predict_file(self, fn: Callable, src: Source, dst: Path, extra: dict[str, Path], tile: Any, overlap: float,
                      batch: int, progress: bool | None, nan_policy: str = "error",
                      slice_wise: bool = False) -> dict[str, Path]:
        spec = self.io_spec
        restore = (resolve(self.target_scaling) if self.target_scaling is not None else "input") \
            if spec.data_space else None
        case = src if isinstance(src, ModalityCase) else None
        kind = "nifti" if case is not None else io.format_for(src).name
        if kind in ("nifti", "geotiff") and io.format_for(dst).name != kind:
            suffix = ".nii.gz" if case is not None else io.suffix_of(src)
            raise DataError(dst, f"a {kind} input gives {kind} outputs, not {io.suffix_of(dst)}",
                            f"name the output like the input ({suffix}) or give a folder")
        common = dict(in_scaling=self.scaling, out_scaling=restore, data_space=spec.data_space,
                      extra_outputs=extra, progress=progress, nan_policy=nan_policy)
        if kind == "nifti":
            from ..io.nifti import load_nifti_image

            if case is not None:
                vol, inputs = stack_case(case), case.paths
                stored, affine, where = vol.data.shape, vol.affine, case.paths[0]
            else:
                img = load_nifti_image(src)
                vol, inputs, stored, affine, where = src, [src], img.shape, img.affine, src
            spatial = self._nifti_layout(where, stored, slice_wise)
            window = self.window(self._model_shape(spatial, affine), tile)
            slices = spec.spatial_dims == 2 and len(spatial) == 3  # a volume through a 2-D model
            if slices:
                fn, window = slice_window_fn(fn), (*window, 1)
            return infer_nifti(fn, vol, dst, window, overlap, batch=batch,
                               orientation="RAS" if len(spatial) == 3 else None,
                               expected_channels=spec.in_channels, sw_device=self.device,
                               label_outputs=self._label_outputs(), channelwise=self.channelwise, inputs=inputs,
                               label_votes=self._label_votes(), **common)
        if kind == "geotiff" and spec.spatial_dims == 2:
            from ..io.geotiff import open_geotiff

            with open_geotiff(src) as r:
                shape = (r.height, r.width)
            return infer_geotiff(fn, src, dst, tile=self.window(shape, tile), overlap=overlap, batch=batch,
                                 expected_bands=spec.in_channels, scale=spec.grid_factor, device=self.device,
                                 label_votes=self._label_votes(), **common)
        arr = io.read(src)
        spatial = channel_first(arr.data, arr.geometry.layout, spec.spatial_dims, src)[0].shape[1:]
        return infer_image(fn, arr, dst, self.window(tuple(spatial), tile), overlap, batch=batch,
                           expected_channels=spec.in_channels, label_outputs=self._label_outputs(),
                           label_votes=self._label_votes(), device=self.device, **common)
