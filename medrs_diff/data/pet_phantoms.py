"""Deterministic PET phantoms in SUV (2-D slices and 3-D volumes): a body outline, organs and hot lesions.

Each phantom is a function of ``(shape, seed)``: an elliptical body (background SUV ~1), lungs (~0.4),
liver (~2.5), heart wall (~4), kidneys (~3) and ``n_lesions`` small hot spheres whose nominal SUV lies in
``lesion_suv``, each drawn inside the body, then blurred with a Gaussian PSF (``psf_sigma`` voxels). The
result carries the body mask and a lesion label map so lesion SUVmax / SUVmean can be measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import ArgumentError


@dataclass
class PETPhantom:
    """``image`` float32 SUV (spatial shape), ``body`` bool, ``lesions`` int16 labels (0 = none, k = lesion k),
    ``lesion_suv`` the nominal SUV of lesion k at index k - 1 (before the PSF)."""

    image: np.ndarray
    body: np.ndarray
    lesions: np.ndarray
    lesion_suv: tuple[float, ...]


def _ellipsoid(grid: list[np.ndarray], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))
    return r2 <= 1.0


def pet_phantom(
    shape: tuple[int, ...],
    seed: int = 0,
    n_lesions: int = 3,
    lesion_suv: tuple[float, float] = (4.0, 8.0),
    psf_sigma: float = 0.7,
) -> PETPhantom:
    """A 2-D (H, W) or 3-D (D, H, W) PET phantom in SUV, deterministic in ``(shape, seed)``.

    Axes: the last two are (anterior-posterior, left-right); a 3-D phantom's first axis is cranio-caudal.
    Lesion radii are 1.5-3 voxels (in-plane), so they are a few voxels wide as in clinical PET.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 8:
        raise ArgumentError("shape", f"a PET phantom is 2-D or 3-D with every size >= 8, got {shape}",
                            "give 2 or 3 sizes, each at least 8")
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1.0, 1.0, s) for s in shape], indexing="ij")
    nd = len(shape)
    jitter = lambda s: 1.0 + rng.uniform(-s, s, nd)  # noqa: E731
    zr = [1.3] if nd == 3 else []  # organs reach beyond the volume's ends in z
    body_r = np.array(zr + [0.62, 0.88]) * jitter(0.08)
    body = _ellipsoid(grid, np.zeros(nd), body_r)
    img = np.zeros(shape, dtype=np.float64)
    img[body] = rng.uniform(0.8, 1.2)

    def organ(centre: list[float], radii: list[float], suv: float) -> np.ndarray:
        c = np.array(([rng.uniform(-0.2, 0.2)] if nd == 3 else []) + centre) + rng.uniform(-0.04, 0.04, nd)
        r = np.array(([0.9] if nd == 3 else []) + radii) * jitter(0.1)
        m = _ellipsoid(grid, c, r) & body
        img[m] = suv
        return m

    organ([-0.05, -0.42], [0.35, 0.3], rng.uniform(0.3, 0.5))      # right lung
    organ([-0.05, 0.42], [0.35, 0.28], rng.uniform(0.3, 0.5))      # left lung
    organ([0.15, -0.3], [0.3, 0.28], rng.uniform(2.0, 3.0))        # liver
    heart = organ([0.0, 0.15], [0.2, 0.2], rng.uniform(3.5, 4.5))  # heart wall, hollow
    inner = ndimage.binary_erosion(heart, iterations=max(1, min(shape[-2:]) // 24))
    img[inner] = rng.uniform(1.0, 1.5)
    organ([0.4, -0.45], [0.1, 0.08], rng.uniform(2.5, 3.5))        # kidneys
    organ([0.4, 0.45], [0.1, 0.08], rng.uniform(2.5, 3.5))
    lesions = np.zeros(shape, dtype=np.int16)
    inside = np.argwhere(ndimage.binary_erosion(body, iterations=max(2, min(shape[-2:]) // 10)))
    suvs: list[float] = []
    for k in range(n_lesions):
        centre_vox = inside[rng.integers(len(inside))]
        r_vox = rng.uniform(1.5, 3.0)
        dist2 = sum((np.arange(s)[(slice(None),) + (None,) * (nd - 1 - a)] - centre_vox[a]) ** 2
                    for a, s in enumerate(shape))
        m = (dist2 <= r_vox**2) & (lesions == 0) & body
        suv = float(rng.uniform(*lesion_suv))
        img[m] = suv
        lesions[m] = k + 1
        suvs.append(suv)
    img = ndimage.gaussian_filter(img, psf_sigma) if psf_sigma > 0 else img
    return PETPhantom(img.astype(np.float32), body, lesions, tuple(suvs))
