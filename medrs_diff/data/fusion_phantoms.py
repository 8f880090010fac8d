"""Registered two-modality phantoms for image fusion: one anatomy seen by a structural and a functional modality.

``structural`` (MRI-like, the gradient source b of DDFM): a head outline with a skull ring, ventricles
and several tissue compartments with sharp edges and fine texture, no lesion. ``functional``
(PET / SPECT-like, the intensity source a): a smooth, blurred uptake map of the brain (no compartments,
no skull) plus one or two hot lesions the structural image does not show. Each modality holds information
the other lacks, so a good fusion shares more with each source than the sources share with each other.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..io.nifti import write_nifti

#: Default modality tags of the phantom pairs (channel order: intensity source a, then gradient source b).
FUSION_MODALITIES = ("pet", "mri")


def _ellipse(shape: Sequence[int], center: Sequence[float], radii: Sequence[float], angle: float = 0.0) -> np.ndarray:
    yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    dy, dx = yy - center[0], xx - center[1]
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * dy + sa * dx, -sa * dy + ca * dx
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 <= 1.0


def fusion_phantom_pair(size: int | Sequence[int] = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One registered pair ``(functional, structural)`` of 2-D float32 images in [0, 1]."""
    shape = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    if len(shape) != 2 or min(shape) < 16:
        raise ValueError(f"fusion phantoms are 2-D images of at least 16 x 16 pixels, got size {size}")
    rng = np.random.default_rng(seed)
    h, w = shape
    c = (h / 2 + rng.uniform(-0.05, 0.05) * h, w / 2 + rng.uniform(-0.05, 0.05) * w)
    r = (0.42 * h * rng.uniform(0.9, 1.05), 0.36 * w * rng.uniform(0.9, 1.05))
    head = _ellipse(shape, c, r)
    brain = _ellipse(shape, c, (r[0] - 0.06 * h, r[1] - 0.06 * w))
    skull = head & ~brain
    angle = rng.uniform(-0.3, 0.3)
    vent = _ellipse(shape, (c[0] - 0.04 * h, c[1]), (0.12 * h, 0.05 * w), angle)
    white = _ellipse(shape, c, (0.7 * (r[0] - 0.06 * h), 0.7 * (r[1] - 0.06 * w))) & ~vent
    grey = brain & ~white & ~vent
    # structural: sharp compartments, skull, fine texture
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 0.7)
    mri = 0.05 + 0.9 * skull + 0.45 * grey + 0.7 * white + 0.15 * vent
    mri = mri + 0.06 * texture * brain
    # functional: smooth, low-resolution uptake (little anatomy) and hot lesion(s) absent from the structural image
    uptake = 0.25 * brain
    for _ in range(int(rng.integers(1, 3))):
        lc = (c[0] + rng.uniform(-0.2, 0.2) * h, c[1] + rng.uniform(-0.2, 0.2) * w)
        lr = rng.uniform(0.05, 0.09) * min(h, w)
        uptake = uptake + 0.6 * _ellipse(shape, lc, (lr, lr))
    pet = ndimage.gaussian_filter(uptake, 2.0) + 0.02 * rng.standard_normal(shape)
    return np.clip(pet, 0, 1).astype(np.float32), np.clip(mri, 0, 1).astype(np.float32)


def make_fusion_phantoms(out_dir: str | os.PathLike, n: int = 8, size: int | Sequence[int] = 32,
                         modalities: Sequence[str] = FUSION_MODALITIES, seed: int = 0) -> list[dict[str, str]]:
    """Write ``n`` pairs as 2-D NIfTI ``<case>_<a>.nii.gz``, ``<case>_<b>.nii.gz`` (1 mm pixels) in ``out_dir``.

    ``modalities``: the tags of the functional then the structural image. Returns one record per case,
    ``{tag: path}``.
    """
    if len(modalities) != 2 or modalities[0] == modalities[1]:
        raise ValueError(f"fusion phantoms need two distinct modality tags, got {list(modalities)}")
    out = Path(out_dir)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    records = []
    for i in range(n):
        a, b = fusion_phantom_pair(size, seed=seed * 100_003 + i)
        rec = {}
        for tag, img in zip(modalities, (a, b), strict=True):
            rec[tag] = str(out / f"fusion_{i:03d}_{tag}.nii.gz")
            write_nifti(img, rec[tag], affine)
        records.append(rec)
    return records
