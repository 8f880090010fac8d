"""A 3-class 2-D phantom as NIfTI pairs that ``NiftiSegmentationDataModule(num_classes=3)`` reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from medrs_diff.io.nifti import write_nifti

#: image level per class (background, class 1, class 2): far apart next to the noise, so intensity separates them
LEVELS = (0.1, 0.5, 0.9)


def _ellipse(shape: tuple[int, int], center: tuple[float, float], radii: tuple[float, float],
             angle: float) -> np.ndarray:
    i, j = np.meshgrid(np.arange(shape[0], dtype=np.float32), np.arange(shape[1], dtype=np.float32), indexing="ij")
    di, dj = i - center[0], j - center[1]
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * di + sa * dj, -sa * di + ca * dj
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 <= 1.0


def make_three_class_phantoms(root: str | Path, n: int = 20, size: int = 32, seed: int = 0,
                              noise: float = 0.05) -> list[tuple[Path, Path]]:
    """Write ``n`` cases ``case_XXX_image.nii.gz`` / ``case_XXX_label.nii.gz`` of ``size`` x ``size`` pixels.

    Each case holds two disjoint ellipses, label 1 in one half of the image and label 2 in the other
    (which half is random), on a background 0; the image is ``LEVELS[label]`` plus Gaussian noise, lightly
    smoothed. Returns the (image, label) paths.
    """
    if size < 16:
        raise ValueError(f"_phantoms.py: size {size} is too small for two ellipses; use size >= 16")
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    shape = (size, size)
    half = size / 2
    out = []
    for k in range(n):
        label = np.zeros(shape, np.uint8)
        axis = int(rng.integers(2))  # split the image left/right or top/bottom
        first = int(rng.integers(2))  # which half holds class 1
        for cls, side in ((1, first), (2, 1 - first)):
            r = (rng.uniform(0.14, 0.22) * size, rng.uniform(0.14, 0.22) * size)
            reach = max(r) + 1
            lo, hi = side * half + reach, (side + 1) * half - reach
            along = rng.uniform(lo, hi) if hi > lo else side * half + half / 2
            across = rng.uniform(reach, size - reach)
            center = (along, across) if axis == 0 else (across, along)
            label[_ellipse(shape, center, r, rng.uniform(0, np.pi))] = cls
        image = np.asarray(LEVELS, np.float32)[label] + noise * rng.standard_normal(shape).astype(np.float32)
        image = ndimage.gaussian_filter(image, 0.5).astype(np.float32)
        paths = (root / f"case_{k:03d}_image.nii.gz", root / f"case_{k:03d}_label.nii.gz")
        write_nifti(image, str(paths[0]), np.eye(4))
        write_nifti(label, str(paths[1]), np.eye(4))
        out.append(paths)
    return out
