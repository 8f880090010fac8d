"""``medrs-diff infer``: a trained checkpoint over whole NIfTI volumes or GeoTIFF scenes.

The method is rebuilt from the checkpoint (EMA weights); the intensity scaling the model was trained
with is read from the checkpoint's data-module settings, so inputs are mapped to model space exactly
as in training. Outputs land on the input's voxel or map grid (tiled with blended overlaps; a
super-resolution output on a grid ``scale`` times finer), with the uncertainty map written beside
the prediction (``<stem>_uncertainty`` for a file, ``OUT/uncertainty/`` for a folder). Every output
file appears only when all of a case succeeded.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from .data.errors import DataError
from .data.scaling import resolve
from .diffusion.samplers import SAMPLERS
from .infer import infer_geotiff, infer_nifti
from .methods.base import DiffusionMethod, check_sampler

NIFTI = (".nii", ".nii.gz")
GEOTIFF = (".tif", ".tiff")


def add_infer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a .ckpt written by `medrs-diff fit`")
    p.add_argument("--input", required=True, help="a NIfTI / GeoTIFF file or a folder of them")
    p.add_argument("--output", required=True, help="output file (single input) or folder")
    p.add_argument("--sampler", default=None, choices=sorted(SAMPLERS), help="default: the method's own")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the method's own)")
    p.add_argument("--n-samples", type=int, default=None, help="stochastic samples fused per case")
    p.add_argument("--tile", type=int, nargs="+", default=None,
                   help="window size in pixels/voxels (default: 256 for scenes, 96 for volumes, 2-D: whole)")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=4, help="windows per forward pass")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def input_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _suffix(p) in NIFTI + GEOTIFF)
        if not files:
            raise DataError(path, "holds no .nii/.nii.gz/.tif file", "point --input at NIfTI or GeoTIFF files")
        return files
    raise DataError(path, "does not exist", "check the --input path")


def output_paths(src: Path, out: Path, single: bool) -> tuple[Path, dict[str, Path] | None]:
    """Prediction path and extra-output paths. A single output file gets ``<stem>_uncertainty`` beside
    it; an output folder gets ``OUT/<name>`` and ``OUT/uncertainty/<name>``, so the folder itself pairs
    one-to-one with a reference folder for ``medrs-diff evaluate``."""
    if single and _suffix(out) in NIFTI + GEOTIFF:
        return out, None
    return out / src.name, {"uncertainty": out / "uncertainty" / src.name}


def _nifti_shape(path: Path) -> tuple[int, ...]:
    import nibabel as nib

    try:
        return tuple(int(s) for s in nib.load(str(path)).shape)
    except Exception as err:  # nibabel raises several types for unreadable files
        raise DataError(path, f"cannot be read as NIfTI ({err})", "check that it is a valid .nii/.nii.gz") from err


def data_scaling(ckpt: dict[str, Any]) -> Any:
    """The model-space scaling the run trained with (data module hyper-parameter ``scaling``)."""
    dm = ckpt.get("datamodule_hyper_parameters") or {}
    return dm.get("scaling")


def make_predictor(method: DiffusionMethod, args: argparse.Namespace, generator: torch.Generator):
    check_sampler(args.sampler or getattr(method, "sampler", "ddpm"))

    def predictor(x: torch.Tensor) -> dict[str, torch.Tensor]:
        method.check_input(x, "input window")
        out = method.predict({method.input_key: x}, sampler=args.sampler, steps=args.steps,
                             n_samples=args.n_samples, generator=generator)
        return {"prediction": out["prediction"], "uncertainty": out["uncertainty"]}

    predictor.device = torch.device(args.device)  # read by infer to place windows
    return predictor


def run_infer(args: argparse.Namespace) -> list[dict[str, Path]]:
    from .train.checkpoint import load_method_from_checkpoint, read_checkpoint

    ckpt_path = Path(args.checkpoint)
    method = load_method_from_checkpoint(ckpt_path, map_location="cpu").to(args.device).eval()
    scaling = data_scaling(read_checkpoint(ckpt_path))
    files = input_files(Path(args.input))
    out = Path(args.output)
    single = len(files) == 1 and Path(args.input).is_file()
    if not (single and _suffix(out) in NIFTI + GEOTIFF):
        out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    predictor = make_predictor(method, args, generator)
    is_seg = method.task == "seg"
    results = []
    for src in files:
        dst, extra = output_paths(src, out, single)
        if extra:
            extra["uncertainty"].parent.mkdir(parents=True, exist_ok=True)
        if _suffix(src) in NIFTI:
            dims = method.spatial_dims
            roi = args.tile or ([96] * dims if dims == 3 else _nifti_shape(src)[:2])
            roi = list(roi) * dims if len(roi) == 1 else list(roi)
            results.append(infer_nifti(
                predictor, src, dst, roi, args.overlap, batch=args.batch, in_scaling=scaling,
                out_scaling=None if is_seg else resolve(scaling), expected_channels=method.in_channels,
                orientation="RAS" if dims == 3 else None, extra_outputs=extra, device=args.device,
                progress=not args.no_progress,
            ))
        else:
            tile = (args.tile or [256])[0]
            results.append(infer_geotiff(
                predictor, src, dst, tile=tile, overlap=args.overlap, batch=args.batch, in_scaling=scaling,
                out_scaling=None if is_seg else resolve(scaling), expected_bands=method.in_channels,
                scale=int(getattr(method, "scale", 1)), extra_outputs=extra, device=args.device,
                progress=not args.no_progress,
            ))
        print(f"{src} -> " + ", ".join(str(p) for p in results[-1].values()))
    return results
