"""Checks on hyperspectral cubes before any compute, each stopping with one line naming the problem and the fix:
NaN / inf bands, wavelengths out of order, a label map of another size, a band count other than the model's, and
MATLAB column-major vs row-major pixel order of a (bands, pixels) matrix.

Pixel order: a (bands, rows x cols) matrix unfolds to an image either way when the stated shape fits, so the
order is told from the image itself: real scenes are spatially smooth, so the right order gives neighbouring
pixels much closer spectra than the wrong one (which interleaves distant rows). :func:`pixel_order` returns the
order whose image is smoother and the ratio of the two roughness values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .errors import DataError

Where = str | os.PathLike | None


def check_finite_bands(cube: np.ndarray, where: Where = None) -> None:
    """Refuse a (bands, H, W) cube with NaN / inf values, naming the bands that hold them."""
    bad = ~np.isfinite(cube).reshape(cube.shape[0], -1).all(1)
    if bad.any():
        idx = np.flatnonzero(bad)
        shown = ", ".join(map(str, idx[:10])) + (" ..." if len(idx) > 10 else "")
        raise DataError(where, f"{len(idx)} of {cube.shape[0]} bands hold NaN / inf values (bands {shown}, 0-based)",
                        "drop those bands (e.g. water-absorption bands) or fill them before use")


def check_wavelengths(wavelengths: Sequence[float] | None, bands: int, where: Where = None) -> None:
    """Wavelengths, when known, must be one finite value per band, strictly increasing."""
    if wavelengths is None:
        return
    wl = np.asarray(wavelengths, np.float64)
    if wl.shape != (bands,):
        raise DataError(where, f"has {wl.size} wavelengths for {bands} bands", "give one wavelength per band")
    if not np.isfinite(wl).all():
        raise DataError(where, "has NaN / inf wavelengths", "fix the wavelength list")
    step = np.diff(wl)
    if (step <= 0).any():
        i = int(np.flatnonzero(step <= 0)[0])
        raise DataError(where, f"wavelengths are not strictly increasing (band {i}: {wl[i]:g} nm, band {i + 1}: "
                        f"{wl[i + 1]:g} nm)", "sort the bands by wavelength (and the cube with them) or drop "
                        "duplicated bands")


def check_label_map(labels: np.ndarray, cube_shape: Sequence[int], where: Where = None) -> None:
    """A label map must be (H, W) of the cube (bands, H, W)."""
    if tuple(labels.shape) != tuple(cube_shape[-2:]):
        hint = " (transposed?)" if tuple(labels.shape) == tuple(cube_shape[-2:])[::-1] else ""
        raise DataError(where, f"label map {tuple(labels.shape)} differs from the cube's {tuple(cube_shape[-2:])} "
                        f"pixels{hint}", "pass the label map of this cube, on its grid")


def check_bands(cube_bands: int, model_bands: int, where: Where = None) -> None:
    """The cube must have the band count the model (checkpoint) was built for."""
    if cube_bands != model_bands:
        raise DataError(where, f"has {cube_bands} bands but the model was trained on {model_bands}",
                        f"give a cube of the same sensor and band selection ({model_bands} bands) or retrain")


def _roughness(img: np.ndarray) -> float:
    """Mean absolute difference of vertically and horizontally adjacent spectra, per unit of spectral spread."""
    d = np.abs(np.diff(img, axis=1)).mean() + np.abs(np.diff(img, axis=2)).mean()
    return float(d / (img.std() + 1e-12))


def pixel_order(flat: np.ndarray, rows: int, cols: int) -> tuple[str, float]:
    """``("F" | "C", ratio)``: the unfolding order of (bands, rows x cols) ``flat`` that gives the smoother image,
    and rough(other) / rough(chosen) (>= 1; near 1 means the image does not tell)."""
    if flat.ndim != 2 or flat.shape[1] != rows * cols:
        raise DataError(None, f"matrix {flat.shape} is not (bands, {rows} x {cols})", "state the image size")
    f = _roughness(flat.reshape(flat.shape[0], rows, cols, order="F"))
    c = _roughness(flat.reshape(flat.shape[0], rows, cols, order="C"))
    return ("F", c / f) if f <= c else ("C", f / c)


def unfold_pixels(flat: np.ndarray, rows: int, cols: int, order: str = "F", where: Where = None,
                  tolerance: float = 1.3) -> np.ndarray:
    """Unfold (bands, rows x cols) in the stated ``order`` (MATLAB files: ``F``, column-major), refusing it when the
    other order gives an image ``tolerance`` times smoother (a column-major / row-major mix-up)."""
    if order not in ("F", "C"):
        raise DataError(where, f"unknown pixel order {order!r}", "use 'F' (MATLAB column-major) or 'C' (row-major)")
    best, ratio = pixel_order(flat, rows, cols)
    if best != order and ratio > tolerance:
        names = {"F": "column-major (MATLAB, order='F')", "C": "row-major (order='C')"}
        raise DataError(where, f"pixels unfolded {names[order]} give an image {ratio:.1f}x rougher than "
                        f"{names[best]}: the stated pixel order looks wrong", f"unfold with order='{best}' (or check "
                        f"the stated size {rows} x {cols})")
    return flat.reshape(flat.shape[0], rows, cols, order=order)


def check_abundance_alignment(cube: np.ndarray, abundances: np.ndarray, endmembers: np.ndarray, where: Where = None,
                              margin: float = 0.2) -> float:
    """For a square image, column- and row-major unfolding differ by a transpose, which smoothness cannot tell:
    compare least-squares abundances of the cube (from ``endmembers`` (K, bands)) with the image-shaped reference
    ``abundances`` (K, H, W) as given and transposed; refuse when the transposed one correlates better by
    ``margin``. Returns the mean correlation as given."""
    b = cube.shape[0]
    ls = np.linalg.lstsq(np.asarray(endmembers, np.float64).T, cube.reshape(b, -1).astype(np.float64), rcond=None)[0]

    def corr(ref: np.ndarray) -> float:
        return float(np.mean([np.corrcoef(ls[k], ref[k].ravel())[0, 1] for k in range(ref.shape[0])]))

    given = corr(abundances)
    if abundances.shape[1] == abundances.shape[2]:
        flipped = corr(np.swapaxes(abundances, 1, 2))
        if flipped > given + margin:
            raise DataError(where, f"the cube matches its reference abundances transposed (correlation {flipped:.2f}) "
                            f"better than as given ({given:.2f}): a column-major / row-major mix-up",
                            "unfold the pixel matrix in the other order (MATLAB files: order='F')")
    return given
