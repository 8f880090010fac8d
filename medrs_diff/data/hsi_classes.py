"""Per-pixel classes for hyperspectral classification without a labelled scene: unmixing scenes (Jasper Ridge,
Samson) labelled by their **dominant endmember**, procedural cubes mixed from endmember spectra, and the
random-pixel split beside :func:`~medrs_diff.data.hyperspectral.disjoint_split`.

Labels: class ``k + 1`` where endmember ``k`` has the largest abundance and that abundance is at least
``min_abundance`` (default 0.5); other (mixed) pixels are 0 = unlabelled. These are labels *derived from the
benchmark's reference abundances*, not field-surveyed land cover.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..io.cube import read_mat
from .errors import DataError, require_file
from .hsi_checks import check_abundance_alignment, check_finite_bands, check_label_map, unfold_pixels

#: Endmember names of the two shared scenes (Samson's order read from its spectra, see its README).
SCENE_CLASSES = {"jasper": ("tree", "water", "dirt", "road"), "samson": ("soil", "tree", "water")}


@dataclass
class LabelledScene:
    """A (bands, H, W) float32 cube in reflectance, its (K, H, W) abundances, (H, W) labels 0..K and class names."""

    cube: np.ndarray
    abundances: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    endmembers: np.ndarray | None = None  # (K, bands), on the cube's scale when known


def dominant_labels(abundances: np.ndarray, min_abundance: float = 0.5) -> np.ndarray:
    """(K, H, W) abundances -> (H, W) labels: argmax + 1 where the largest abundance >= ``min_abundance``, else 0."""
    a = np.asarray(abundances)
    if a.ndim != 3:
        raise DataError(None, f"abundances have shape {a.shape}", "pass (K, H, W) abundance maps")
    if not np.isfinite(a).all():
        raise DataError(None, "abundances hold NaN / inf", "pass finite abundance maps")
    lab = a.argmax(0).astype(np.int64) + 1
    lab[a.max(0) < min_abundance] = 0
    return lab


def load_unmixing_scene(path: str | os.PathLike, min_abundance: float = 0.5) -> LabelledScene:
    """Jasper Ridge (``Y / maxValue``, abundances ``A``) or Samson (``Y``, abundances ``S_GT``) as a labelled scene,
    unfolded in MATLAB column-major order (the stored ``nRow`` / ``nCol`` or ``lines`` / ``cols``)."""
    p = require_file(path, "unmixing scene (.mat)")
    y = read_mat(p, key="Y")
    variables = y.geometry.extra["variables"]
    cube = np.asarray(y.data, np.float64)
    if cube.ndim != 3:
        raise DataError(p, f"Y unfolds to {cube.shape}, not (bands, rows, cols)", "store nRow / nCol beside Y")
    check_finite_bands(cube, p)
    # the stated order (MATLAB column-major) must give the smoother image: a mix-up stops here
    unfold_pixels(cube.reshape(cube.shape[0], -1, order="F"), cube.shape[1], cube.shape[2], "F", p)
    if "maxValue" in variables:
        cube = cube / float(variables["maxValue"])
    import scipy.io

    mat = scipy.io.loadmat(p)
    if "A" in mat:  # Jasper Ridge: (K, pixels) in column-major pixel order; endmembers M (bands, K)
        a = mat["A"]
        abund = a.reshape(a.shape[0], cube.shape[1], cube.shape[2], order="F")
        ends = mat["M"].T if "M" in mat else None
        classes = SCENE_CLASSES["jasper"] if a.shape[0] == 4 else tuple(f"class{i + 1}" for i in range(a.shape[0]))
    elif "S_GT" in mat:  # Samson: (rows, cols, K); endmembers GT (K, bands), each scaled to a maximum of 1
        abund = np.moveaxis(mat["S_GT"], -1, 0)
        ends = mat.get("GT")
        k = abund.shape[0]
        classes = SCENE_CLASSES["samson"] if k == 3 else tuple(f"class{i + 1}" for i in range(k))
    else:
        raise DataError(p, "holds no abundance maps (A or S_GT)", "pass Jasper Ridge or Samson from the shared data")
    check_label_map(abund[0], cube.shape, p)
    if ends is not None:
        check_abundance_alignment(cube, abund, ends, p)
    return LabelledScene(cube.astype(np.float32), abund.astype(np.float32), dominant_labels(abund, min_abundance),
                         tuple(classes), None if ends is None else np.asarray(ends, np.float32))


def mixed_cube(endmembers: np.ndarray, size: tuple[int, int] = (48, 48), seed: int = 0, dominance: float = 0.6,
               noise: float = 0.05, regions: int = 10, smooth: float = 1.5) -> LabelledScene:
    """A procedural cube linearly mixed from ``endmembers`` (K, bands): Voronoi regions, each dominated (abundance
    ``dominance``) by one endmember, the rest a spatially smooth random mixture; per-pixel Gaussian noise of
    ``noise`` x the mean endmember level. Labels are the dominant endmember (every pixel labelled)."""
    e = np.asarray(endmembers, np.float64)
    if e.ndim != 2 or e.shape[0] < 2:
        raise DataError(None, f"endmembers have shape {e.shape}", "pass (K >= 2, bands) spectra")
    k = e.shape[0]
    h, w = size
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, (max(regions, k), 2)) * (h, w)
    cls = np.concatenate([np.arange(k), rng.integers(0, k, max(regions, k) - k)])
    yy, xx = np.mgrid[0:h, 0:w]
    region = cls[np.argmin((yy[None] - pts[:, 0, None, None]) ** 2 + (xx[None] - pts[:, 1, None, None]) ** 2, 0)]
    rest = np.stack([ndimage.gaussian_filter(rng.random((h, w)), smooth) for _ in range(k)])
    rest = rest / rest.sum(0, keepdims=True) * (1 - dominance)
    abund = rest.copy()
    abund[region, yy, xx] += dominance
    cube = np.einsum("khw,kb->bhw", abund, e)
    cube += noise * e.mean() * rng.standard_normal(cube.shape)
    return LabelledScene(cube.astype(np.float32), abund.astype(np.float32), (region + 1).astype(np.int64),
                         tuple(f"class{i + 1}" for i in range(k)), e.astype(np.float32))


def smooth_endmembers(k: int, bands: int, seed: int = 0) -> np.ndarray:
    """``k`` smooth synthetic reflectance spectra (k, bands) in about [0.05, 0.6] (Gaussian bumps on a slope)."""
    rng = np.random.default_rng(seed)
    wl = np.linspace(0, 1, bands)
    return np.stack([0.1 + 0.4 * np.exp(-((wl - rng.uniform(0.1, 0.9)) ** 2) / (2 * rng.uniform(0.08, 0.25) ** 2))
                     + rng.uniform(-0.1, 0.1) * wl for _ in range(k)]).astype(np.float32)


def random_split(labels: np.ndarray, test_fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random-pixel train / test masks over the labelled pixels (patches of the two sets overlap: optimistic)."""
    if not 0 < test_fraction < 1:
        raise DataError(None, f"test_fraction {test_fraction} is not in (0, 1)", "give a fraction such as 0.5")
    rng = np.random.default_rng(seed)
    test = (rng.random(labels.shape) < test_fraction) & (labels > 0)
    return (labels > 0) & ~test, test


def sample_per_class(mask: np.ndarray, labels: np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    """At most ``n`` pixels of each class drawn at random from ``mask`` (None: all of them)."""
    if n is None:
        return mask & (labels > 0)
    rng = np.random.default_rng(seed)
    out = np.zeros_like(mask, dtype=bool)
    for c in np.unique(labels[mask & (labels > 0)]):
        idx = np.flatnonzero(mask.ravel() & (labels.ravel() == c))
        out.ravel()[rng.choice(idx, min(n, len(idx)), replace=False)] = True
    return out


def scene_path(root: str | os.PathLike, scene: str) -> Path:
    """The .mat of ``scene`` (``jasper`` / ``samson``) in the shared ``hyperspectral_unmixing`` folder."""
    names = {"jasper": "jasper_ridge_r198.mat", "samson": "samson.mat"}
    if scene not in names:
        raise DataError(None, f"unknown scene {scene!r}", f"choose one of {sorted(names)}")
    return Path(root) / names[scene]
