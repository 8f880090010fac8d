"""RGB -> hyperspectral synthesis helpers: RGB rendering from chosen bands, the per-pixel linear regression
baseline, endmember libraries (scene endmembers or an ATGP / VCA-style extraction) and procedural cubes mixed
from endmembers.

All cubes are (bands, H, W) reflectance arrays. The linear baseline is the least-squares map
``hsi = W @ [r, g, b, 1]`` fitted on training pixels only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ArgumentError, DataError

__all__ = [
    "LinearRGBToHSI", "check_cube", "extract_endmembers", "mixed_cube", "orient_endmembers", "render_rgb",
    "scene_library",
    "rgb_bands_for", "synthetic_endmembers",
]


def check_cube(cube: np.ndarray, where: object = "cube", bands: int | None = None) -> np.ndarray:
    """``cube`` as float32 (bands, H, W); a wrong band count or any NaN / inf band stops with one DataError."""
    a = np.asarray(cube)
    if a.ndim != 3:
        raise DataError(where, f"has shape {a.shape}, not a (bands, H, W) cube", "pass a band-first 3-D cube")
    if bands is not None and a.shape[0] != bands:
        raise DataError(where, f"has {a.shape[0]} bands but the model was trained on {bands}",
                        f"give a cube of the checkpoint's sensor ({bands} bands) or train a model on this one")
    bad = ~np.isfinite(a).reshape(a.shape[0], -1).all(1)
    if bad.any():
        idx = np.flatnonzero(bad)
        shown = ", ".join(str(int(i)) for i in idx[:8]) + (" ..." if len(idx) > 8 else "")
        raise DataError(where, f"holds NaN / inf values in {len(idx)} band(s) (0-based: {shown})",
                        "drop those bands (e.g. water-absorption bands) or fill them before training / scoring")
    return a.astype(np.float32, copy=False)


def render_rgb(cube: np.ndarray, bands: Sequence[int] | None = None, *, wavelengths: Sequence[float] | None = None,
               rgb_nm: Sequence[float] = (640.0, 550.0, 460.0)) -> np.ndarray:
    """A (3, H, W) RGB image of a (bands, H, W) cube: the given band indices (R, G, B), or the bands nearest
    ``rgb_nm`` when ``wavelengths`` (nm, one per band) are given instead. Values are the cube's own units."""
    c = np.asarray(cube)
    if bands is None:
        if wavelengths is None:
            raise ArgumentError("rgb_bands", "neither band indices nor wavelengths were given",
                                "pass rgb_bands (R, G, B indices) or the cube's wavelengths")
        wl = np.asarray(wavelengths, dtype=float)
        if wl.shape != (c.shape[0],):
            raise DataError("wavelengths", f"has {wl.size} values for {c.shape[0]} bands", "give one per band")
        bands = [int(np.argmin(np.abs(wl - t))) for t in rgb_nm]
    idx = [int(b) for b in bands]
    if len(idx) != 3 or min(idx) < 0 or max(idx) >= c.shape[0]:
        raise ArgumentError("rgb_bands", f"{list(bands)} are not 3 band indices in [0, {c.shape[0] - 1}]",
                            "give three 0-based band indices (R, G, B) of the cube")
    return np.ascontiguousarray(c[idx], dtype=np.float32)


def rgb_bands_for(wavelengths: Sequence[float], rgb_nm: Sequence[float] = (640.0, 550.0, 460.0)) -> list[int]:
    """Indices of the bands nearest ``rgb_nm`` (nm)."""
    wl = np.asarray(wavelengths, dtype=float)
    return [int(np.argmin(np.abs(wl - t))) for t in rgb_nm]


class LinearRGBToHSI:
    """Per-pixel least-squares regression ``hsi = W [r, g, b, 1]`` (the synthesis baseline)."""

    def __init__(self) -> None:
        self.coef: np.ndarray | None = None  # (bands, 4)

    def fit(self, rgb: np.ndarray, hsi: np.ndarray, mask: np.ndarray | None = None) -> LinearRGBToHSI:
        """Fit on the pixels of ``mask`` (all when None) of (3, H, W) ``rgb`` and (bands, H, W) ``hsi``."""
        x = np.asarray(rgb, np.float64).reshape(rgb.shape[0], -1)
        y = np.asarray(hsi, np.float64).reshape(hsi.shape[0], -1)
        if x.shape[1] != y.shape[1]:
            raise DataError("hsi", f"RGB {rgb.shape} and cube {hsi.shape} differ in pixels", "pair them on one grid")
        if mask is not None:
            m = np.asarray(mask, bool).reshape(-1)
            x, y = x[:, m], y[:, m]
        design = np.concatenate([x, np.ones((1, x.shape[1]))]).T  # (pixels, 4)
        self.coef = np.linalg.lstsq(design, y.T, rcond=None)[0].T
        return self

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        if self.coef is None:
            raise ArgumentError("LinearRGBToHSI", "is not fitted", "call fit(rgb, hsi) first")
        x = np.asarray(rgb, np.float64)
        flat = x.reshape(x.shape[0], -1)
        out = self.coef[:, :3] @ flat + self.coef[:, 3:]
        return out.reshape(-1, *x.shape[1:]).astype(np.float32)


def orient_endmembers(m: np.ndarray, bands: int, where: object = "endmembers") -> np.ndarray:
    """An endmember matrix as (bands, K): (K, bands) and (1, ., .) files are turned around."""
    a = np.squeeze(np.asarray(m, dtype=np.float64))
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or bands not in a.shape:
        raise DataError(where, f"has shape {np.shape(m)}, with no axis of {bands} bands",
                        "give the endmember matrix (bands x K or K x bands) of this cube")
    if a.shape[0] != bands:
        a = a.T
    if not np.isfinite(a).all():
        raise DataError(where, "holds NaN / inf values", "give finite endmember spectra")
    return a.astype(np.float32)


def extract_endmembers(cube: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    """``k`` endmembers (bands, k) picked among the pixels by ATGP, the pure-pixel search VCA starts from: the
    brightest pixel first, then each time the pixel farthest from the span of those already found (its
    residual after orthogonal projection). Pixels are restricted to ``mask`` (e.g. training pixels)."""
    c = np.asarray(cube, np.float64)
    x = c.reshape(c.shape[0], -1)
    if mask is not None:
        x = x[:, np.asarray(mask, bool).reshape(-1)]
    if k < 1 or k > min(x.shape):
        raise ArgumentError("num_endmembers", f"{k} is not in [1, {min(x.shape)}]", "ask for fewer endmembers")
    picked = [int(np.argmax((x ** 2).sum(0)))]
    for _ in range(k - 1):
        e = x[:, picked]
        proj = e @ np.linalg.pinv(e)
        resid = x - proj @ x
        picked.append(int(np.argmax((resid ** 2).sum(0))))
    return x[:, picked].astype(np.float32)


def synthetic_endmembers(bands: int, k: int, seed: int = 0) -> np.ndarray:
    """``k`` smooth, distinct reflectance spectra (bands, k) in [0.02, 0.9]: sums of a few Gaussian bumps on a
    slope (vegetation-, soil- and water-like shapes without claiming to be any)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, bands)
    out = np.empty((bands, k))
    for j in range(k):
        s = rng.uniform(0.05, 0.3) + rng.uniform(-0.2, 0.4) * t
        for _ in range(3):
            s = s + rng.uniform(-0.2, 0.35) * np.exp(-0.5 * ((t - rng.uniform(0, 1)) / rng.uniform(0.05, 0.25)) ** 2)
        out[:, j] = s
    return np.clip(out, 0.02, 0.9).astype(np.float32)


def mixed_cube(endmembers: np.ndarray, size: int, seed: int = 0, sharpness: float = 6.0,
               noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A procedural (bands, size, size) cube ``M A`` and its (K, size, size) abundances: smooth random fields,
    one per endmember, through a softmax of temperature 1 / ``sharpness`` (regions dominated by one material
    with mixed borders). ``noise``: std of added Gaussian noise (reflectance units)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    m = np.asarray(endmembers, np.float64)
    k = m.shape[1]
    fields = np.stack([gaussian_filter(rng.standard_normal((size, size)), size / 8, mode="wrap") for _ in range(k)])
    fields /= fields.std(axis=(1, 2), keepdims=True) + 1e-12
    z = sharpness * fields
    a = np.exp(z - z.max(0, keepdims=True))
    a /= a.sum(0, keepdims=True)
    cube = np.einsum("bk,khw->bhw", m, a)
    if noise > 0:
        cube = cube + noise * rng.standard_normal(cube.shape)
    return cube.astype(np.float32), a.astype(np.float32)


def scene_library(cube: np.ndarray, endmembers: np.ndarray, mask: np.ndarray | None = None,
                  abundances: np.ndarray | None = None) -> np.ndarray:
    """Scene endmembers (bands, K) put on the cube's scale.

    Without ``abundances``: one global factor ``s``; with ``Y ~ s M a`` and abundances summing to 1, ``s`` is the
    mean over (``mask``) pixels of the sum of the unconstrained least-squares abundances ``pinv(M) y`` (Jasper
    Ridge's endmembers are on the cube's scale already: s close to 1). With the file's reference ``abundances``
    (K, H, W): one factor per endmember, the least-squares ``s`` of ``Y ~ M diag(s) A`` (Samson's endmembers are
    each normalised to a maximum of 1, so their relative brightness is lost and one factor cannot restore it)."""
    m = np.asarray(endmembers, np.float64)
    y = np.asarray(cube, np.float64).reshape(cube.shape[0], -1)
    sel = np.asarray(mask, bool).reshape(-1) if mask is not None else slice(None)
    y = y[:, sel]
    if abundances is not None:
        a = np.asarray(abundances, np.float64).reshape(m.shape[1], -1)[:, sel]
        # Y ~ sum_k s_k m_k a_k: linear in s, design columns vec(m_k a_k^T)
        design = np.stack([np.outer(m[:, k], a[k]).ravel() for k in range(m.shape[1])], 1)
        s = np.linalg.lstsq(design, y.ravel(), rcond=None)[0]
        if not np.isfinite(s).all() or (s <= 0).any():
            raise DataError("endmembers", f"per-endmember scales {np.round(s, 3).tolist()} are not all positive",
                            "check that the abundances belong to these endmembers (same order)")
        return (m * s[None]).astype(np.float32)
    s = float((np.linalg.pinv(m) @ y).sum(0).mean())
    if not np.isfinite(s) or s <= 0:
        raise DataError("endmembers", f"do not fit the cube (global scale {s:.3g})",
                        "give the endmembers of this scene, or use endmembers: extract")
    return (m * s).astype(np.float32)
