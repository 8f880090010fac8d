"""Unconditional images from a diffusion-autoencoder checkpoint (``medrs-diff generate`` on a ``diffae`` model):
z_sem from its latent DDIM, x_T ~ N(0, I), DDIM decoding (Preechakul et al. 2022, "sampling with diffusion
autoencoders").

Output (the layout of the retinal generation, an image folder and its manifest)::

    OUT/images/synth_00000.nii.gz    float32 image (H, W) in model space (the training data's scaling, e.g.
                                     per-image z-score), identity affine
    OUT/manifest.json                seed, checkpoint (path, SHA-256), steps, latent_steps, size, files

Determinism: sample ``i`` draws its latent noise, then its x_T, from one generator seeded by
:func:`~medrs_diff.inference.seeding.window_seed` ``(seed, "diffae", (i,))``: it depends on the seed and its
index only (not on ``batch`` or N, up to float rounding of batched arithmetic). Writes are atomic; rerunning
into a folder with the same settings resumes, other settings are refused.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..diffusion.generators import SampleGenerators
from ..errors import ArgumentError, CheckpointError, DataError
from ..io.atomic import atomic_write_text, check_folder_writable, clean_stale_temporaries
from ..io.nifti import write_nifti
from .generate import IMAGE_DIR, MANIFEST, _check_output, _sha256, _size_from
from .seeding import window_seed

__all__ = ["DIFFAE_METHOD", "generate_diffae", "image_path"]

DIFFAE_METHOD = "diffae"
_KEYS = ("seed", "checkpoint", "steps", "latent_steps", "size")


def image_path(output: Path, index: int) -> Path:
    """Where sample ``index`` goes."""
    return output / IMAGE_DIR / f"synth_{index:05d}.nii.gz"


def _positive(name: str, value: Any, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArgumentError(name, f"must be an integer >= 1, got {value!r}",
                            f"pass --{name.replace('_', '-')} 1 or more" + (", or omit it" if optional else ""))


def _training_size(data: dict[str, Any], where: Path) -> tuple[int, int]:
    """(H, W) from the data module's arguments: a square ``phantom_size`` / ``patch_size`` integer (the brain
    phantoms), else the two-value sizes the retinal generation reads."""
    for key in ("phantom_size", "patch_size"):
        v = data.get(key)
        if key == "phantom_size" and not data.get("phantoms"):
            continue
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v, v
    return _size_from(data, where)


def _load_raw_latent(model: Any, ckpt: dict[str, Any], path: Path) -> None:
    raw = ckpt.get("state_dict") or {}
    prefix = "method.latent_net."
    state = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    try:
        model.latent_net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(path, f"its raw latent-DDIM weights do not fit the model ({err})",
                              "pass a checkpoint written by `medrs-diff fit` with this recipe") from err


def generate_diffae(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    n: int,
    *,
    seed: int = 0,
    steps: int | None = None,
    latent_steps: int | None = None,
    size: Sequence[int] | None = None,
    batch: int = 4,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> dict[str, Any]:
    """Write ``n`` generated images into ``output`` (see the module notes); returns the manifest. ``steps`` /
    ``latent_steps``: None uses the checkpoint's own (``sampling_steps`` / ``latent_sampling_steps``);
    ``size`` (H, W): None takes the training size. Every argument is checked before any compute."""
    from ..train.checkpoint import checkpoint_data_config, method_from_checkpoint, read_checkpoint
    from .predictor import check_device

    _positive("n", n, False)
    _positive("batch", batch, False)
    _positive("steps", steps, True)
    _positive("latent_steps", latent_steps, True)
    if size is not None and (len(size) != 2 or any(isinstance(v, bool) or int(v) != v or v < 2 for v in size)):
        raise ArgumentError("size", f"must be two integers H W, got {list(size)}", "pass e.g. --size 32 32")
    dev = check_device(device)
    out, path = Path(output), Path(checkpoint)
    check_folder_writable(out)
    if not path.is_file():
        raise DataError(path, "checkpoint file does not exist" if not path.exists() else "is not a file",
                        "pass a .ckpt written by `medrs-diff fit`")
    ckpt = read_checkpoint(path, map_location="cpu")
    model = method_from_checkpoint(ckpt, path, expected=DIFFAE_METHOD)
    try:
        model.check_sampling_ready()
    except CheckpointError as err:
        raise CheckpointError(path, err.problem, err.fix) from err
    data = (checkpoint_data_config(ckpt) or {}).get("init_args") or {}
    hw = _training_size(data, path) if size is None else (int(size[0]), int(size[1]))
    if hw[0] % model.size_multiple or hw[1] % model.size_multiple:
        raise ArgumentError("size", f"{list(hw)} is not a multiple of {model.size_multiple}, which the model of "
                            f"{path} needs", f"pass --size with multiples of {model.size_multiple}")
    if not model.latent_ema:  # the recipe asks for the raw latent weights (see DiffAE's notes)
        _load_raw_latent(model, ckpt, path)
    model = model.to(dev).eval()
    settings = {"seed": int(seed), "n": int(n), "checkpoint": {"path": str(path), "sha256": _sha256(path)},
                "steps": steps, "latent_steps": latent_steps, "size": list(hw)}
    _check_output(out, settings, keys=_KEYS)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(out / IMAGE_DIR, min_age_s=0.0)
    manifest = {**settings, "complete": False, "method": DIFFAE_METHOD,
                "noise": "sample i: latent noise, then x_T, from window_seed(seed, 'diffae', (i,)) "
                         "(medrs_diff.inference.seeding)",
                "values": f"model space (training data scaling: {data.get('scaling', 'unknown')}), float32 NIfTI"}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    todo = [i for i in range(n) if not image_path(out, i).is_file()]
    bar = None
    if (sys.stderr.isatty() if progress is None else bool(progress)):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="generate", unit="image")
    try:
        for start in range(0, len(todo), batch):
            idx = todo[start:start + batch]
            gens = SampleGenerators.from_seeds([window_seed(seed, DIFFAE_METHOD, (i,)) for i in idx], device=dev)
            drawn = model.sample((len(idx), model.in_channels, *hw), steps=steps, latent_steps=latent_steps,
                                 generator=gens)["prediction"]
            for j, i in enumerate(idx):
                img = drawn[j].detach().cpu().float().numpy()
                write_nifti(img[0] if img.shape[0] == 1 else img, image_path(out, i), np.eye(4),
                            channel_first=img.shape[0] > 1)
            if bar is not None:
                bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
    manifest.update(complete=True, files=[str(image_path(out, i).relative_to(out)) for i in range(n)])
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest
