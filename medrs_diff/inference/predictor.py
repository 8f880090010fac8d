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

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import io
from ..data.scaling import ScalingSpec, resolve
from ..errors import ArgumentError, CheckpointError, DataError, MedrsError
from ..methods.base import IOSpec, Method, check_sampler
from .tiling import (
    MAIN_KEY,
    channel_first,
    default_window,
    infer_geotiff,
    infer_image,
    infer_nifti,
    infer_volume,
    oriented_shape,
)

PathLike = str | os.PathLike
Inputs = PathLike | Sequence[PathLike]

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


def _method_from_checkpoint_dict(ckpt: Mapping[str, Any], path: PathLike, ema: bool | None) -> Method:
    """The method stored in an already-read checkpoint dict (what ``load_method_from_checkpoint`` does
    after reading the file), so a checkpoint is read only once."""
    from ..train.checkpoint import (
        EMA_FORMAT,
        build_method,
        check_state_fits,
        checkpoint_method_config,
        ema_state_dict,
        resolve_method_class,
    )

    cfg = checkpoint_method_config(ckpt, path)
    resolve_method_class(cfg["class_path"], path)  # refuses unknown classes with the list of valid ones
    try:
        method = build_method(cfg, path)
    except MedrsError:
        raise
    except Exception as err:  # changed signatures
        raise CheckpointError(path, f"cannot rebuild the method {cfg['class_path']} from its stored arguments ({err})",
                              "use the medrs_diff version the checkpoint was trained with") from err
    has_ema = any(isinstance(s, Mapping) and s.get("format") == EMA_FORMAT and s.get("shadow")
                  for s in (ckpt.get("callbacks") or {}).values())
    if ema and not has_ema:
        raise CheckpointError(path, "holds no EMA weights (the run had no medrs_diff.train.EMA callback)",
                              "load the raw weights with ema=False (or ema=None), or train with the EMA callback")
    if has_ema and ema is not False:
        state, source = ema_state_dict(ckpt, path), "EMA weights"
    else:
        raw = ckpt.get("state_dict")
        if not isinstance(raw, Mapping):
            raise CheckpointError(path, "has no 'state_dict'", "pass a Lightning checkpoint from `medrs-diff fit`")
        state, source = {k[len("method."):]: v for k, v in raw.items() if k.startswith("method.")}, "model weights"
    check_state_fits(method, state, path, source)
    method.load_state_dict(state, strict=True)
    return method.eval()


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


def output_paths(src: Path, output: Path, keys: Sequence[str], single: bool) -> dict[str, Path]:
    """Where each output of ``src`` goes. A single output file (``single`` and a registered suffix) gets
    the main output and ``<stem>_<key><suffix>`` beside it; an output folder gets ``OUT/<name>`` and
    ``OUT/<key>/<name>``, so the folder pairs one-to-one with a reference folder for ``evaluate``."""
    main = MAIN_KEY if MAIN_KEY in keys else keys[0]
    if single and _is_file_name(output):
        stem, suffix = io.stem_of(output), io.suffix_of(output)
        return {k: output if k == main else output.with_name(f"{stem}_{k}{suffix}") for k in keys}
    return {k: output / src.name if k == main else output / k / src.name for k in keys}


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
    """

    method: Method
    io_spec: IOSpec
    device: torch.device
    scaling: ScalingSpec = None
    patch_size: int | tuple[int, ...] | None = None
    checkpoint: Path | None = None

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: PathLike, device: str | torch.device = "cpu", ema: bool | None = None,
                        trusted: bool = False) -> Predictor:
        """Read a ``medrs-diff fit`` checkpoint once: method (EMA weights unless ``ema=False``), scaling and
        patch size of its data module. ``device`` is where the windows run (``cuda`` needs a visible GPU)."""
        from ..train.checkpoint import checkpoint_data_config, read_checkpoint

        dev = check_device(device)
        ckpt = read_checkpoint(path, map_location="cpu", trusted=trusted)
        method = _method_from_checkpoint_dict(ckpt, path, ema)
        data = (checkpoint_data_config(ckpt) or {}).get("init_args") or {}
        patch = data.get("patch_size")
        return cls.from_method(method, scaling=data.get("scaling"), device=dev,
                               patch_size=tuple(patch) if isinstance(patch, list | tuple) else patch,
                               checkpoint=Path(path))

    @classmethod
    def from_method(cls, method: Method, *, scaling: ScalingSpec = None,
                    patch_size: int | Sequence[int] | None = None, device: str | torch.device = "cpu",
                    checkpoint: Path | None = None) -> Predictor:
        """Wrap a method built in Python (moved to ``device``, eval mode)."""
        dev = check_device(device)
        patch = tuple(patch_size) if isinstance(patch_size, Sequence) else patch_size
        return cls(method.to(dev).eval(), method.io_spec, dev, scaling, patch, checkpoint)

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

    def _window_fn(self, generator: torch.Generator, sampler: str | None, steps: int | None,
                   n_samples: int | None) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
        spec, method = self.io_spec, self.method

        def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
            method.check_input(x, "input window")
            out = method.predict({spec.input_key: x}, sampler=sampler, steps=steps, n_samples=n_samples,
                                 generator=generator)
            missing = [k for k in spec.outputs if k not in out]
            if missing:
                raise MedrsError(type(method).__name__, f"predict() did not return the declared output(s) {missing}",
                                 "make io_spec.outputs name only tensors that predict() returns")
            return {k: out[k] for k in spec.outputs}

        return run

    def _prepare(self, sampler: str | None, steps: int | None, n_samples: int | None, tile: Any, overlap: float,
                 batch: int, seed: int, generator: torch.Generator | None):
        _check_options(steps, n_samples, tile, overlap, batch)
        if sampler is not None:
            check_sampler(sampler)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        return self._window_fn(generator, sampler, steps, n_samples)

    # -- arrays -----------------------------------------------------------------------------------
    def predict_array(self, x: np.ndarray | torch.Tensor, *, sampler: str | None = None, steps: int | None = None,
                      n_samples: int | None = None, seed: int = 0, generator: torch.Generator | None = None,
                      tile: int | Sequence[int] | None = None, overlap: float = 0.25, batch: int = 4,
                      blend: str = "gaussian", progress: bool | None = False) -> dict[str, np.ndarray]:
        """Every declared output for one image in data units, channel-first ``(C, *spatial)`` (or
        ``(*spatial)`` for one channel), as float32 arrays ``(C_out, *spatial x grid_factor)``.

        The input is mapped to model space with the checkpoint's scaling, run through blended sliding
        windows (MONAI) on :attr:`device`, and the ``data_space`` outputs are mapped back to data units.
        """
        fn = self._prepare(sampler, steps, n_samples, tile, overlap, batch, seed, generator)
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
        if not torch.isfinite(t).all():
            raise DataError(None, "array holds NaN or Inf", "fill or mask invalid pixels first")
        scaling = resolve(self.scaling, t)
        outs = infer_volume(fn, scaling.forward(t), self.window(tuple(t.shape[1:]), tile), overlap, blend, batch,
                            device="cpu", sw_device=self.device, progress=progress)
        result = {}
        for k in self.io_spec.outputs:
            y = outs[k].float()
            if k in self.io_spec.data_space:
                y = scaling.inverse(y)
            result[k] = y.cpu().numpy()
        return result

    # -- files ------------------------------------------------------------------------------------
    def predict_files(self, inputs: Inputs, output: PathLike, *, sampler: str | None = None,
                      steps: int | None = None, n_samples: int | None = None, seed: int = 0,
                      generator: torch.Generator | None = None, tile: int | Sequence[int] | None = None,
                      overlap: float = 0.25, batch: int = 4, progress: bool | None = None,
                      on_done: Callable[[Path, dict[str, Path]], None] | None = None) -> list[dict[str, Path]]:
        """Run on files (a file, a folder or a list; any format of :mod:`medrs_diff.io`) and write every
        declared output on the input's grid (``grid_factor`` times finer for super-resolution).

        NIfTI volumes are reoriented to RAS for the model (3-D) and written back in stored order with the
        input's affine and header; GeoTIFF scenes are read and written strip by strip (memory bounded);
        other formats (PNG / JPEG clinical images, ``.npy``, ...) are read in memory (masks of 2-D images
        as PNG, float outputs as float TIFF). ``output``: a file name for a single input (others beside
        it as ``<stem>_<key>``), else a folder (``OUT/<name>``, ``OUT/<key>/<name>``). One generator seeded
        with ``seed`` runs over the files in order. Returns ``{output key: path}`` per input.
        """
        fn = self._prepare(sampler, steps, n_samples, tile, overlap, batch, seed, generator)
        files, single = input_files(inputs)
        out = Path(output)
        if not single and (_is_file_name(out) or (out.exists() and not out.is_dir())):
            raise DataError(out, "names a file, but a folder or several inputs need an output folder",
                            "give a folder as the output (OUT/<name>, OUT/<output>/<name>)")
        spec = self.io_spec
        results = []
        for src in files:
            paths = output_paths(src, out, spec.outputs, single)
            main = next(iter(paths))
            extra = {k: v for k, v in paths.items() if k != main}
            results.append(self._predict_file(fn, src, paths[main], extra, tile, overlap, batch, progress))
            if on_done is not None:
                on_done(src, results[-1])
        return results

    def _predict_file(self, fn: Callable, src: Path, dst: Path, extra: dict[str, Path], tile: Any, overlap: float,
                      batch: int, progress: bool | None) -> dict[str, Path]:
        spec = self.io_spec
        restore = "input" if spec.data_space else None
        kind = io.format_for(src).name
        if kind in ("nifti", "geotiff") and io.format_for(dst).name != kind:
            raise DataError(dst, f"a {kind} input gives {kind} outputs, not {io.suffix_of(dst)}",
                            f"name the output like the input ({io.suffix_of(src)}) or give a folder")
        common = dict(in_scaling=self.scaling, out_scaling=restore, data_space=spec.data_space,
                      extra_outputs=extra, progress=progress)
        if kind == "nifti":
            from ..io.nifti import load_nifti_image

            img = load_nifti_image(src)
            orientation = "RAS" if spec.spatial_dims == 3 else None
            shape = oriented_shape(img.affine, img.shape[: spec.spatial_dims], orientation)
            return infer_nifti(fn, src, dst, self.window(shape, tile), overlap, batch=batch, orientation=orientation,
                               expected_channels=spec.in_channels, sw_device=self.device, **common)
        if kind == "geotiff" and spec.spatial_dims == 2:
            from ..io.geotiff import open_geotiff

            with open_geotiff(src) as r:
                shape = (r.height, r.width)
            return infer_geotiff(fn, src, dst, tile=self.window(shape, tile), overlap=overlap, batch=batch,
                                 expected_bands=spec.in_channels, scale=spec.grid_factor, device=self.device,
                                 **common)
        arr = io.read(src)
        spatial = channel_first(arr.data, arr.geometry.layout, spec.spatial_dims, src)[0].shape[1:]
        labels = tuple(spec.extra.get("label_outputs", (spec.outputs[0],) if spec.task == "seg" else ()))
        return infer_image(fn, arr, dst, self.window(tuple(spatial), tile), overlap, batch=batch,
                           expected_channels=spec.in_channels, label_outputs=labels, device=self.device, **common)

