"""Synthetic image / mask pairs from generative checkpoints (``medrs-diff generate``): the retinal dual model's
mask DDPM draws N vessel trees, its image DDPM paints a fundus image for each.

Output (the HRF layout of :class:`~medrs_diff.datamodules.clinical2d.Clinical2DSegmentationDataModule`, so the
folder trains a segmenter as it is: ``layout: hrf``)::

    OUT/images/synth_00000.png       RGB uint8 (with --image-checkpoint)
    OUT/manual1/synth_00000.png      vessel mask, {0, 255}
    OUT/mask/synth_00000_mask.png    field of view, {0, 255}
    OUT/manifest.json                seed, checkpoints (path, SHA-256), sampler, steps, size, files

Determinism: sample ``i`` draws its mask noise from a generator seeded by
:func:`~medrs_diff.inference.seeding.window_seed` ``(seed, "mask", (i,))`` and its image noise from ``(seed,
"image", (i,))``, so a pair depends on the seed and its index only (not on ``batch`` up to float rounding, nor
on N). Writes are atomic per file (temporary name, then rename) and the image, the file that makes a pair,
is renamed last (the mask, when no images are drawn): a killed run leaves complete pairs, plus at most a mask /
FOV without an image, which the data module never reads (it lists images) and the next run into the folder
removes. Rerunning into a folder
with the same settings resumes (complete pairs are kept); other settings are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..diffusion.generators import SampleGenerators
from ..errors import ArgumentError, DataError
from ..io.atomic import atomic_write_text, check_folder_writable, clean_stale_temporaries, is_temporary
from ..io.image2d import write_image2d
from .seeding import window_seed

__all__ = ["MANIFEST", "generate_pairs", "pair_paths"]

#: The manifest's file name inside the output folder.
MANIFEST = "manifest.json"
IMAGE_DIR, MASK_DIR, FOV_DIR = "images", "manual1", "mask"
MASK_METHOD, IMAGE_METHOD = "retinal_mask_ddpm", "retinal_image_ddpm"


def pair_paths(output: Path, index: int) -> dict[str, Path]:
    """``{"image", "mask", "fov"}`` paths of sample ``index`` in the HRF layout."""
    stem = f"synth_{index:05d}"
    return {"mask": output / MASK_DIR / f"{stem}.png", "fov": output / FOV_DIR / f"{stem}_mask.png",
            "image": output / IMAGE_DIR / f"{stem}.png"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load(path: str | os.PathLike, expected: str, device: torch.device) -> tuple[Any, dict[str, Any]]:
    from ..train.checkpoint import checkpoint_data_config, method_from_checkpoint, read_checkpoint

    p = Path(path)
    if not p.is_file():
        raise DataError(p, "checkpoint file does not exist" if not p.exists() else "is not a file",
                        "pass a .ckpt written by `medrs-diff fit`")
    ckpt = read_checkpoint(p, map_location="cpu")
    method = method_from_checkpoint(ckpt, p, expected=expected)
    data = (checkpoint_data_config(ckpt) or {}).get("init_args") or {}
    return method.to(device).eval(), data


def _size_from(data: dict[str, Any], where: Path) -> tuple[int, int]:
    for key in ("resize", "phantom_size", "patch_size"):
        v = data.get(key)
        if key == "phantom_size" and not data.get("phantoms"):
            continue
        if isinstance(v, list | tuple) and len(v) == 2:
            return int(v[0]), int(v[1])
    raise ArgumentError(str(where), "records no image size (no resize / phantom_size / patch_size in its data "
                        "module)", "pass --size H W")


def _settings(seed: int, n: int, mask_ckpt: Path, image_ckpt: Path | None, sampler: str, steps: int | None,
              size: tuple[int, int]) -> dict[str, Any]:
    def ck(p: Path | None) -> dict[str, str] | None:
        return None if p is None else {"path": str(p), "sha256": _sha256(p)}

    return {"seed": int(seed), "n": int(n), "mask_checkpoint": ck(mask_ckpt), "image_checkpoint": ck(image_ckpt),
            "sampler": sampler, "steps": steps, "size": list(size)}


_SETTING_KEYS = ("seed", "mask_checkpoint", "image_checkpoint", "sampler", "steps", "size")


def _check_output(output: Path, settings: dict[str, Any], keys: tuple[str, ...] = _SETTING_KEYS) -> None:
    """An empty or new folder, or one holding a generation with the same settings (N may differ: resume)."""
    check_folder_writable(output)
    if not output.exists():
        return
    if not output.is_dir():
        raise DataError(output, "output is a file, not a folder", "choose a folder for --output")
    manifest = output / MANIFEST
    if not manifest.is_file():
        if any(not p.name.startswith(".") for p in output.iterdir()):
            raise DataError(output, "output folder is not empty and holds no generation manifest",
                            "choose a new or empty folder for --output")
        return
    try:
        old = json.loads(manifest.read_text())
    except (OSError, ValueError) as err:
        raise DataError(manifest, f"cannot be read ({err})", "delete the output folder or choose another") from err
    changed = [k for k in keys if old.get(k) != settings.get(k)]
    if changed:
        raise DataError(output, f"holds a generation with other settings ({', '.join(changed)} differ)",
                        "choose another --output, or rerun with the settings of its manifest.json to resume")


def _clean_partial(output: Path, complete_by: str) -> list[Path]:
    """Remove stale temporaries, and the files of pairs a killed run cut short: those whose completing file
    (``complete_by``: ``image``, or ``mask`` when no images are drawn) is missing."""
    removed: list[Path] = []
    for sub in (IMAGE_DIR, MASK_DIR, FOV_DIR):
        if (output / sub).is_dir():
            removed += clean_stale_temporaries(output / sub, min_age_s=0.0)
    folder = output / (IMAGE_DIR if complete_by == "image" else MASK_DIR)
    done = {p.stem for p in folder.glob("synth_*.png")} if folder.is_dir() else set()
    parts = ((MASK_DIR, ""), (FOV_DIR, "_mask")) if complete_by == "image" else ((FOV_DIR, "_mask"),)
    for sub, suffix in parts:
        if not (output / sub).is_dir():
            continue
        for p in (output / sub).glob("synth_*.png"):
            stem = p.stem[: -len(suffix)] if suffix and p.stem.endswith(suffix) else p.stem
            if stem not in done and not is_temporary(p):
                p.unlink()
                removed.append(p)
    return removed


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """Model space [-1, 1] -> 8-bit (the ``dn8`` scaling's inverse: ``(x + 1) * 127.5``, rounded)."""
    return np.clip(np.rint((x.detach().cpu().double().numpy() + 1.0) * 127.5), 0, 255).astype(np.uint8)


def generate_pairs(
    mask_checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    n: int,
    *,
    image_checkpoint: str | os.PathLike | None = None,
    seed: int = 0,
    sampler: str | None = None,
    steps: int | None = None,
    size: Sequence[int] | None = None,
    batch: int = 4,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> dict[str, Any]:
    """Write ``n`` synthetic vessel masks (and, with ``image_checkpoint``, a fundus image painted for each) into
    ``output`` (see the module notes); returns the manifest. ``sampler`` / ``steps``: None uses each model's own
    (the paper's 1000-step ancestral DDPM); ``size`` (H, W): None takes the mask checkpoint's training size;
    ``progress``: None shows a bar only when stderr is a terminal. Every argument is checked before any
    compute."""
    from ..diffusion.samplers import SAMPLERS
    from .predictor import check_device

    for name, value in (("n", n), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArgumentError(name, f"must be an integer >= 1, got {value!r}", f"pass --{name} 1 or more")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ArgumentError("steps", f"must be an integer >= 1, got {steps!r}", "pass --steps 1 or more, or omit it")
    if sampler is not None and sampler not in SAMPLERS:
        raise ArgumentError("sampler", f"unknown sampler {sampler!r}", f"choose one of {', '.join(SAMPLERS)}")
    if size is not None and (len(size) != 2 or any(isinstance(v, bool) or int(v) != v or v < 8 for v in size)):
        raise ArgumentError("size", f"must be two integers H W, each >= 8, got {list(size)}",
                            "pass e.g. --size 64 64")
    dev = check_device(device)
    out = Path(output)
    check_folder_writable(out)
    mask_path = Path(mask_checkpoint)
    image_path = None if image_checkpoint is None else Path(image_checkpoint)
    mask_model, mask_data = _load(mask_path, MASK_METHOD, dev)
    image_model = None if image_path is None else _load(image_path, IMAGE_METHOD, dev)[0]
    hw = _size_from(mask_data, mask_path) if size is None else (int(size[0]), int(size[1]))
    for model, where in ((mask_model, mask_path), (image_model, image_path)):
        if model is not None and (hw[0] % model.size_multiple or hw[1] % model.size_multiple):
            raise ArgumentError("size", f"{list(hw)} is not a multiple of {model.size_multiple}, which the model of "
                                f"{where} needs", f"pass --size with multiples of {model.size_multiple}")
    used_sampler = sampler if sampler is not None else mask_model.default_sampler
    settings = _settings(seed, n, mask_path, image_path, used_sampler, steps, hw)
    _check_output(out, settings)

    for sub in (IMAGE_DIR, MASK_DIR, FOV_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)
    complete_by = "image" if image_model is not None else "mask"
    _clean_partial(out, complete_by)
    manifest = {**settings, "complete": False, "layout": "hrf",
                "noise": "sample i: mask noise from window_seed(seed, 'mask', (i,)), image noise from "
                         "window_seed(seed, 'image', (i,)) (medrs_diff.inference.seeding)",
                "image_scaling": "8-bit: (x + 1) * 127.5 of the model-space image in [-1, 1]"}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")

    todo = [i for i in range(n) if not pair_paths(out, i)[complete_by].is_file()]
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="generate", unit="pair")
    try:
        for start in range(0, len(todo), batch):
            idx = todo[start:start + batch]
            shape_src = {"label": torch.zeros(len(idx), 1, *hw, device=dev)}
            gens = SampleGenerators.from_seeds([window_seed(seed, "mask", (i,)) for i in idx], device=dev)
            drawn = mask_model.predict(shape_src, sampler=sampler, steps=steps, n_samples=1, generator=gens)
            masks, fov = drawn["prediction"], drawn["fov"]
            images = None
            if image_model is not None:
                gens = SampleGenerators.from_seeds([window_seed(seed, "image", (i,)) for i in idx], device=dev)
                images = image_model.predict({"label": masks, "fov": fov}, sampler=sampler, steps=steps, n_samples=1,
                                             generator=gens)["prediction"]
            for j, i in enumerate(idx):
                paths = pair_paths(out, i)
                write_image2d((fov[j, 0] > 0.5).cpu().numpy().astype(np.uint8) * 255, paths["fov"])
                write_image2d((masks[j, 0] > 0.5).cpu().numpy().astype(np.uint8) * 255, paths["mask"])
                if images is not None:
                    if not torch.isfinite(images[j]).all():
                        raise DataError(image_path, f"produced NaN / Inf values for sample {i}",
                                        "check the checkpoint (retrain it), or try another --sampler")
                    write_image2d(_to_uint8(images[j]), paths["image"])  # last: the image completes the pair
            if bar is not None:
                bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
    files = []
    for i in range(n):
        p = pair_paths(out, i)
        files.append({k: str(v.relative_to(out)) for k, v in p.items() if image_model is not None or k != "image"})
    manifest.update(complete=True, files=files)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest
