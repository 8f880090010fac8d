"""``medrs-diff generate``: the argparse arguments and their conversion to
:func:`~medrs_diff.inference.generate.generate_pairs` (retinal mask / image models) or, for a diffusion
autoencoder checkpoint (method ``diffae`` with its latent DDIM), to
:func:`~medrs_diff.inference.generate_diffae.generate_diffae` (argparse lives only here).

Numbers are checked while parsing (``--n 0`` -> ``argument --n: must be an integer >= 1, got 0``); the
checkpoints, the size and the output folder are checked before the first sample is drawn.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ArgumentError, MedrsError
from .infer_args import _at_least_one, _device, _sampler_choice

__all__ = ["add_arguments", "run_from_args"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``generate`` sub-command's arguments to ``p``."""
    import torch

    p.add_argument("--checkpoint", required=True,
                   help="the vessel-mask model (retinal_mask_ddpm) checkpoint written by `medrs-diff fit`, or a "
                        "diffusion autoencoder (diffae, trained with latent: true): unconditional images")
    p.add_argument("--image-checkpoint", default=None,
                   help="the mask-conditioned image model (retinal_image_ddpm); without it only masks are written")
    p.add_argument("--n", type=_at_least_one, required=True, help="number of pairs to write, >= 1")
    p.add_argument("--output", required=True,
                   help="output folder (new, empty, or a previous run's with the same settings: resumed), written "
                        "in the HRF layout: images/, manual1/, mask/ and manifest.json")
    p.add_argument("--seed", type=int, default=0, help="pair i depends on (seed, i) only (default 0)")
    p.add_argument("--sampler", default=None, type=_sampler_choice(),
                   help="default: each model's own (the paper's ancestral ddpm)")
    p.add_argument("--steps", type=_at_least_one, default=None,
                   help="sampling steps >= 1 (default: each model's own; every step of the chain for ddpm)")
    p.add_argument("--latent-steps", type=_at_least_one, default=None,
                   help="diffae only: latent DDIM steps (default: the checkpoint's latent_sampling_steps)")
    p.add_argument("--size", type=_at_least_one, nargs=2, default=None, metavar=("H", "W"),
                   help="image size (default: the mask checkpoint's training size)")
    p.add_argument("--batch", type=_at_least_one, default=4, help="pairs per forward pass, >= 1 (default 4)")
    p.add_argument("--device", type=_device, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the models run (default: cuda when a GPU is visible, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (also off when not a terminal)")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``generate`` from parsed arguments; prints where the pairs went; returns the manifest."""
    from ..inference.generate import generate_pairs

    if _is_diffae(args.checkpoint):
        return _run_diffae(args)
    if args.latent_steps is not None:
        raise ArgumentError("latent_steps", "applies to diffusion autoencoder (diffae) checkpoints only",
                            "omit --latent-steps for retinal checkpoints")
    manifest = generate_pairs(
        args.checkpoint, args.output, args.n, image_checkpoint=args.image_checkpoint, seed=args.seed,
        sampler=args.sampler, steps=args.steps, size=args.size, batch=args.batch, device=args.device,
        progress=False if args.no_progress else None,
    )
    what = "image / mask pairs" if args.image_checkpoint else "vessel masks"
    print(f"{args.n} {what} -> {args.output} (manifest.json)", flush=True)
    return manifest


def _is_diffae(checkpoint: str) -> bool:
    """Whether ``checkpoint`` holds a ``diffae`` model (False when it cannot be read: the generator says why)."""
    from pathlib import Path

    from ..train.checkpoint import checkpoint_method_config, read_checkpoint, resolve_method_class

    p = Path(checkpoint)
    if not p.is_file():
        return False
    try:
        cfg = checkpoint_method_config(read_checkpoint(p, map_location="cpu"), p)
        cls = resolve_method_class(cfg["class_path"], p)
    except MedrsError:
        return False
    return getattr(cls, "name", None) == "diffae"


def _run_diffae(args: argparse.Namespace) -> dict[str, Any]:
    from ..inference.generate_diffae import generate_diffae

    if args.image_checkpoint is not None:
        raise ArgumentError("image_checkpoint", "a diffusion autoencoder generates images by itself",
                            "omit --image-checkpoint with a diffae checkpoint")
    if args.sampler not in (None, "ddim"):
        raise ArgumentError("sampler", f"a diffusion autoencoder decodes with DDIM only, got {args.sampler!r}",
                            "omit --sampler or pass --sampler ddim")
    manifest = generate_diffae(
        args.checkpoint, args.output, args.n, seed=args.seed, steps=args.steps, latent_steps=args.latent_steps,
        size=args.size, batch=args.batch, device=args.device, progress=False if args.no_progress else None,
    )
    print(f"{args.n} images -> {args.output} (manifest.json)", flush=True)
    return manifest
