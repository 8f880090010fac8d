"""``medrs-diff infer``: the argparse arguments and their conversion to a
:class:`~medrs_diff.inference.Predictor` call (argparse lives only here; the Predictor is typed).

Every number is checked while parsing, with the valid range in the message (``--steps 0`` ->
``medrs-diff infer: error: argument --steps: must be an integer >= 1, got 0``), and ``--device cuda``
without a visible GPU is refused there too, before a checkpoint is read. Every input file and output
path is then checked before the first file is computed (see ``Predictor.check_files``).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ArgumentError

__all__ = ["add_arguments", "run_from_args"]


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (0 <= overlap < 1), got {value}")
    return value


def _device(text: str) -> str:
    from ..errors import MedrsError
    from ..inference.predictor import check_device

    try:
        check_device(text)
    except MedrsError as err:
        raise argparse.ArgumentTypeError(f"{err.problem}; {err.fix}") from None
    return text


def _sampler_choice() -> Callable[[str], str]:
    from ..diffusion.samplers import SAMPLERS

    def choose(text: str) -> str:
        if text not in SAMPLERS:
            raise argparse.ArgumentTypeError(f"unknown sampler {text!r}; choose one of {', '.join(SAMPLERS)}")
        return text

    return choose


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``infer`` sub-command's arguments to ``p``."""
    import torch

    p.add_argument("--checkpoint", required=True, help="a .ckpt written by `medrs-diff fit`")
    p.add_argument("--input", required=True,
                   help="a file or a folder of files of any readable type (NIfTI, GeoTIFF, PNG / JPEG, .npy, ...); "
                        "for a multi-modal checkpoint also a BraTS case folder <case>/<case>-<m>.nii.gz, a folder "
                        "of such cases or a flat folder of <case>_<m>.nii.gz files (outputs <case>.nii.gz); for a "
                        "time-series checkpoint (SeqDMs) a manifest CSV (columns s2[,s1][,mask], one row per date) "
                        "or a folder of <date>_s2.tif [+ <date>_s1.tif, <date>_mask.tif]")
    p.add_argument("--output", required=True, help="output file (single input) or folder")
    p.add_argument("--sampler", default=None, type=_sampler_choice(), help="default: the method's own")
    p.add_argument("--steps", type=_at_least_one, default=None, help="sampling steps >= 1 (default: the method's)")
    p.add_argument("--n-samples", type=_at_least_one, default=None,
                   help="stochastic samples fused per case, >= 1 (default: the method's)")
    p.add_argument("--tile", type=_at_least_one, nargs="+", default=None,
                   help="window size in input pixels / voxels, >= 1, one or one per axis (default: from the "
                        "training patch size, so time grows linearly with the image and memory stays flat)")
    p.add_argument("--overlap", type=_fraction, default=0.25, help="window overlap, 0 <= overlap < 1 (default 0.25)")
    p.add_argument("--batch", type=_at_least_one, default=4, help="windows per forward pass, >= 1 (default 4)")
    p.add_argument("--device", type=_device, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the windows run (default: cuda when a GPU is visible, else cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nan-policy", choices=("error", "fill", "mask"), default="error",
                   help="NaN / Inf voxels in an input: error (refuse the file, the default), fill (set them to the "
                        "file's finite minimum) or mask (fill them for the model, write them as nodata: NaN in float "
                        "outputs, 0 in label outputs plus a 'valid' mask; GeoTIFF: the outputs' nodata value)")
    p.add_argument("--slice-wise", action=argparse.BooleanOptionalAction, default=None,
                   help="run a 2-D model over every axial slice of a NIfTI volume (after reorienting to RAS) and "
                        "write one volume per output on its grid (default: on when the checkpoint trained on "
                        "slices, `slices: true`)")
    p.add_argument("--panels", action="store_true",
                   help="also write one PNG per case, OUT/panels/<case>.png: the method's own columns (EI-DDPM: each "
                        "modality, each branch's mask, the fused mask, the uncertainty), else input / prediction / "
                        "uncertainty; a volume shows the axial slice with the most predicted foreground")
    p.add_argument("--raw-weights", action="store_true", help="use the raw training weights, not the EMA ones")
    p.add_argument("--threshold", type=float, default=None,
                   help="anomaly methods (AnoDDPM): the mask threshold chosen on validation (evaluate --task anomaly "
                        "--threshold-from); overrides the checkpoint's `threshold` and adds the `mask` output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (also off when not a terminal)")
    p.add_argument("--importer", default="knmi_hdf5",
                   help="nowcast checkpoints: the reader of the past radar files in --input (knmi_hdf5, a pysteps "
                        "importer name; .nc files are read directly); the forecast goes to --output/forecast.nc")


def _run_nowcast(args: argparse.Namespace, ckpt: dict[str, Any]) -> dict[str, Path] | None:
    """A forecast checkpoint (the diffusion nowcast): past radar files -> NetCDF forecast; else None."""
    from ..train.checkpoint import (
        checkpoint_data_config,
        checkpoint_method_config,
        method_from_checkpoint,
        resolve_method_class,
    )

    cls = resolve_method_class(checkpoint_method_config(ckpt, args.checkpoint)["class_path"], args.checkpoint)
    if getattr(cls, "task", None) != "forecast":
        return None
    from ..inference.nowcast import check_importer, nowcast_files

    check_importer(args.importer)
    method = method_from_checkpoint(ckpt, args.checkpoint, ema=False if args.raw_weights else None).to(args.device)
    data = (checkpoint_data_config(ckpt) or {}).get("init_args") or {}
    paths = nowcast_files(method, args.input, args.output, data, importer=args.importer, n_samples=args.n_samples,
                          sampler=args.sampler, steps=args.steps, seed=args.seed)
    print(f"{args.input} -> " + ", ".join(str(p) for p in paths.values()), flush=True)
    return paths


def run_from_args(args: argparse.Namespace) -> list[dict[str, Path]]:
    """Run ``infer`` from parsed arguments; prints one line per input; returns ``{output key: path}`` per input."""
    from ..inference import Predictor
    from ..train.checkpoint import read_checkpoint

    ckpt = read_checkpoint(args.checkpoint)  # once, for every path below
    nowcast = _run_nowcast(args, ckpt)
    if nowcast is not None:
        return [nowcast]
    predictor = Predictor.from_loaded(ckpt, args.checkpoint, device=args.device,
                                      ema=False if args.raw_weights else None)
    if args.threshold is not None:
        set_threshold = getattr(predictor.method, "set_threshold", None)
        if set_threshold is None:
            raise ArgumentError("--threshold", f"applies to anomaly methods; {type(predictor.method).__name__} "
                                "has no mask threshold", "drop --threshold")
        set_threshold(args.threshold)
        predictor = dataclasses.replace(predictor, io_spec=predictor.method.io_spec)

    if predictor.io_spec.extra.get("sequence"):  # SeqDMs: --input is a manifest CSV or a folder of dates
        from ..inference.series import checkpoint_bands, infer_series_checkpoint

        paths = infer_series_checkpoint(predictor, args.input, args.output, tile=args.tile,
                                        bands=checkpoint_bands(ckpt), overlap=args.overlap,
                                        batch=args.batch, sampler=args.sampler, steps=args.steps,
                                        n_samples=args.n_samples, seed=args.seed)
        print(f"{args.input} -> " + ", ".join(str(p) for p in paths.values()), flush=True)
        return [paths]

    def report(src: object, paths: dict[str, Path]) -> None:
        print(f"{src} -> " + ", ".join(str(p) for p in paths.values()), flush=True)

    return predictor.predict_files(
        args.input, args.output, sampler=args.sampler, steps=args.steps, n_samples=args.n_samples, seed=args.seed,
        tile=args.tile, overlap=args.overlap, batch=args.batch, progress=False if args.no_progress else None,
        on_done=report, nan_policy=args.nan_policy, slice_wise=args.slice_wise, panels=args.panels,
    )
