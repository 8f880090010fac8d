"""Brain-like 2-D T1 phantoms for unsupervised anomaly detection (AnoDDPM): healthy slices for training,
the same anatomy with inserted lesions (known masks) for validation and testing.

A slice (intensities about [0, 1], T1 contrast) holds: a bright scalp/skull ring around a dark CSF gap,
grey matter with a smooth texture, a white-matter core whose outline is deformed by a smooth random
field, and two lateral ventricles (dark CSF) whose size and position vary; every shape is drawn from
a seed, so a phantom is deterministic. A lesion is a smooth-edged blob inside the brain (not in the
ventricles), hyper-intense (``+contrast``) or hypo-intense (``-contrast``) relative to the tissue it
replaces; its mask is the blob's support (soft weight > 0.5).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..io.nifti import write_nifti
from . import keys as K

PathLike = str | os.PathLike

#: T1-like tissue intensities (arbitrary units about [0, 1]).
SKULL, CSF, GREY, WHITE = 0.75, 0.12, 0.5, 0.78
LESION_KINDS = ("hyper", "hypo", "mixed")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(c, c, indexing="ij")


def _smooth(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (Gaussian-filtered white noise)."""
    f = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="reflect")
    return (f - f.mean()) / (f.std() + 1e-12)


def _ellipse(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float,
             angle: float = 0.0) -> np.ndarray:
    """Ellipse "radius" field: < 1 inside."""
    ca, sa = np.cos(angle), np.sin(angle)
    dy, dx = y - cy, x - cx
    u, v = ca * dy + sa * dx, -sa * dy + ca * dx
    return np.sqrt((u / ry) ** 2 + (v / rx) ** 2)


def brain_slice(size: int = 64, seed: int = 0, noise: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """One healthy slice ``(size, size)`` float32 and its brain mask (bool, tissue inside the skull)."""
    if size < 16:
        raise ValueError(f"brain phantoms need size >= 16, got {size}")
    rng = np.random.default_rng(seed)
    y, x = _grid(size)
    angle = rng.uniform(-0.2, 0.2)
    ry, rx = rng.uniform(0.82, 0.92), rng.uniform(0.68, 0.78)
    head = _ellipse(y, x, 0.0, 0.0, ry, rx, angle)
    img = np.zeros((size, size))
    img[head < 1.0] = SKULL
    img[head < 0.9] = CSF  # the gap between skull and brain
    outline = 0.84 + 0.025 * _smooth(rng, size, size / 8)  # a slightly wavy brain surface
    brain = head < outline
    texture = _smooth(rng, size, max(1.0, size / 32))
    img[brain] = GREY + 0.03 * texture[brain]
    wm_r = 0.62 + 0.07 * _smooth(rng, size, size / 10)
    white = brain & (head < wm_r)
    img[white] = WHITE + 0.02 * texture[white]
    # two lateral ventricles, mirrored about the midline with small asymmetries
    vy, vx = rng.uniform(-0.15, 0.05), rng.uniform(0.08, 0.14)
    vry, vrx = rng.uniform(0.18, 0.3), rng.uniform(0.05, 0.08)
    for side in (-1.0, 1.0):
        tilt = side * rng.uniform(0.1, 0.35) + angle
        vent = _ellipse(y, x, vy + rng.uniform(-0.02, 0.02), side * vx, vry, vrx, tilt) < 1.0
        img[vent & brain] = CSF
    img = ndimage.gaussian_filter(img, 0.6) + noise * rng.standard_normal((size, size))
    return img.astype(np.float32), brain


def insert_lesions(image: np.ndarray, brain: np.ndarray, seed: int = 0, n: int = 1, kind: str = "mixed",
                   radius: tuple[float, float] = (0.1, 0.18), contrast: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with ``n`` blob lesions inside the tissue of ``brain`` (avoiding CSF); returns
    (image float32, mask uint8). ``radius`` is the blob radius as a fraction of the half-size; ``kind``
    "hyper" adds ``contrast``, "hypo" subtracts it, "mixed" picks one per lesion."""
    if kind not in LESION_KINDS:
        raise ValueError(f"unknown lesion kind {kind!r}; choose one of {', '.join(LESION_KINDS)}")
    rng = np.random.default_rng(seed)
    size = image.shape[0]
    y, x = _grid(size)
    tissue = brain & (image > 0.5 * (CSF + GREY))
    inner = ndimage.binary_erosion(tissue, iterations=max(1, size // 16))
    candidates = np.argwhere(inner if inner.any() else tissue)
    out = image.astype(np.float64).copy()
    mask = np.zeros(image.shape, dtype=bool)
    for _ in range(n):
        cy, cx = candidates[rng.integers(len(candidates))]
        r = rng.uniform(*radius)
        field = _ellipse(y, x, y[cy, cx], x[cy, cx], r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2),
                         rng.uniform(0, np.pi))
        field = field + 0.15 * _smooth(rng, size, size / 16)  # irregular outline
        weight = np.clip((1.15 - field) / 0.3, 0.0, 1.0) * brain  # soft edge
        sign = {"hyper": 1.0, "hypo": -1.0}.get(kind, rng.choice([-1.0, 1.0]))
        out = out + sign * contrast * weight
        mask |= weight > 0.5
    return out.astype(np.float32), mask.astype(np.uint8)


def brain_phantom_arrays(n: int, size: int = 64, seed: int = 0, lesions: bool = False, kind: str = "mixed",
                         n_lesions: int = 1, contrast: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """``n`` phantoms as arrays ``(n, size, size)``: images float32 and lesion masks uint8 (zeros if healthy).
    Case ``i`` uses seed ``seed * 100003 + i`` for the anatomy, so a lesion case and a healthy case with the
    same ``(seed, i)`` share their anatomy."""
    imgs = np.zeros((n, size, size), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        s = int(seed) * 100003 + i
        img, brain = brain_slice(size, s)
        if lesions:
            img, masks[i] = insert_lesions(img, brain, seed=s + 7919, n=n_lesions, kind=kind, contrast=contrast)
        imgs[i] = img
    return imgs, masks


def make_brain_anomaly_phantoms(out_dir: PathLike, n_healthy: int = 16, n_lesion: int = 8,
                                size: int | Sequence[int] = 64, seed: int = 0, kind: str = "mixed",
                                contrast: float = 0.35) -> dict[str, list[dict[str, str]]]:
    """Write ``healthy/<case>_image.nii.gz`` (training) and ``lesion/<case>_image.nii.gz`` with
    ``lesion/<case>_label.nii.gz`` (validation / test) as 2-D NIfTI slices with 1 mm pixels.
    Lesion cases use other seeds than the healthy ones (unseen anatomy). Returns the records by folder."""
    s = int(size if np.isscalar(size) else size[0])
    if not np.isscalar(size) and len(set(int(v) for v in size)) != 1:
        raise ValueError(f"brain phantoms are square, got size {list(size)}")
    out = Path(out_dir)
    affine = np.eye(4)
    records: dict[str, list[dict[str, str]]] = {"healthy": [], "lesion": []}
    imgs, _ = brain_phantom_arrays(n_healthy, s, seed)
    for i, img in enumerate(imgs):
        rec = {K.IMAGE: str(out / "healthy" / f"healthy_{i:03d}_image.nii.gz")}
        write_nifti(img, rec[K.IMAGE], affine)
        records["healthy"].append(rec)
    imgs, masks = brain_phantom_arrays(n_lesion, s, seed + 1, lesions=True, kind=kind, contrast=contrast)
    for i, (img, m) in enumerate(zip(imgs, masks)):
        rec = {K.IMAGE: str(out / "lesion" / f"lesion_{i:03d}_image.nii.gz"),
               K.LABEL: str(out / "lesion" / f"lesion_{i:03d}_label.nii.gz")}
        write_nifti(img, rec[K.IMAGE], affine)
        write_nifti(m, rec[K.LABEL], affine)
        records["lesion"].append(rec)
    return records


__all__ = ["LESION_KINDS", "brain_phantom_arrays", "brain_slice", "insert_lesions", "make_brain_anomaly_phantoms"]
