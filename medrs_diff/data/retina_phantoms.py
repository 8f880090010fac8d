"""Procedural retinas: branching vessel trees with calibre tapering inside a circular field of view, and
fundus-like RGB renderings of them (for tests and the CI twins of the retinal dual model's recipes).

A tree starts at the optic disc (left or right of the centre) with four trunks (superior / inferior,
temporal / nasal). Each vessel walks in steps of ``step`` pixels with a random turn per step, its
calibre tapering by ``taper`` per step; after 3 to 6 steps it bifurcates following Murray's law
(``w^3 = w1^3 + w2^3``, the thicker child keeping 0.75 to 0.9 of the parent's calibre), until the
calibre falls under ``min_width`` pixels, the vessel leaves the field of view or ``max_depth`` is
reached. Vessels are drawn as capsules (every pixel whose centre lies within half the calibre of a
segment, at least ``0.6`` px so a thin vessel stays 8-connected) and cut to the field of view.

The rendering is an orange-red fundus with vignetting, low-frequency choroidal texture, a bright optic
disc, a darker macula opposite the disc, dark-red vessels (contrast growing with calibre) and a little
sensor noise; black outside the field of view. Everything is drawn from a ``numpy`` generator, so a
case is a pure function of its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RetinaCase", "circular_fov", "render_fundus", "retina_case", "vessel_tree"]

#: Default radius of the circular field of view, as a fraction of the image width (centred). At an HRF-like
#: 2:3 (H:W) aspect the disc is cut at the top and bottom like HRF's.
FOV_RADIUS = 0.47


@dataclass(frozen=True)
class RetinaCase:
    """One synthetic case: ``rgb`` (H, W, 3) uint8, ``vessels`` (H, W) bool, ``fov`` (H, W) bool, and the
    optic disc centre ``disc`` (row, column) in pixels."""

    rgb: np.ndarray
    vessels: np.ndarray
    fov: np.ndarray
    disc: tuple[float, float]


def circular_fov(h: int, w: int, radius: float = FOV_RADIUS) -> np.ndarray:
    """(H, W) bool disc centred on the image, of radius ``radius * w`` pixels."""
    if not (h >= 1 and w >= 1) or not (0 < radius <= 1):
        raise ValueError(f"circular_fov: need a positive size and 0 < radius <= 1, got {(h, w)} and {radius}")
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) <= radius * w


def _capsule(out: np.ndarray, p: tuple[float, float], q: tuple[float, float], r: float) -> None:
    """Set the pixels of ``out`` whose centres lie within ``r`` of the segment p-q (row, column)."""
    h, w = out.shape
    r0, r1 = int(max(0, math.floor(min(p[0], q[0]) - r))), int(min(h - 1, math.ceil(max(p[0], q[0]) + r)))
    c0, c1 = int(max(0, math.floor(min(p[1], q[1]) - r))), int(min(w - 1, math.ceil(max(p[1], q[1]) + r)))
    if r0 > r1 or c0 > c1:
        return
    yy, xx = np.mgrid[r0:r1 + 1, c0:c1 + 1].astype(np.float64)
    dy, dx = q[0] - p[0], q[1] - p[1]
    den = dy * dy + dx * dx
    t = np.zeros_like(yy) if den == 0 else np.clip(((yy - p[0]) * dy + (xx - p[1]) * dx) / den, 0, 1)
    d = np.hypot(yy - (p[0] + t * dy), xx - (p[1] + t * dx))
    out[r0:r1 + 1, c0:c1 + 1] |= d <= r


def vessel_tree(
    rng: np.random.Generator,
    size: Sequence[int],
    *,
    fov: np.ndarray | None = None,
    width: float | None = None,
    min_width: float = 0.8,
    taper: float = 0.97,
    max_depth: int = 6,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """A vessel tree: (vessels (H, W) bool, calibre map (H, W) float in pixels, disc centre (row, col)).

    ``width``: the trunks' calibre in pixels (default ``max(1.5, 0.025 * min(H, W))``); ``fov``: the field of
    view the tree is cut to (default :func:`circular_fov`)."""
    h, w = int(size[0]), int(size[1])
    fov = circular_fov(h, w) if fov is None else np.asarray(fov, bool)
    side = min(h, w)
    w0 = max(1.5, 0.025 * side) if width is None else float(width)
    step = max(1.5, 0.06 * side)
    sign = float(rng.choice([-1.0, 1.0]))  # disc right (+1) or left (-1) of the centre
    disc = ((h - 1) / 2 + rng.uniform(-0.04, 0.04) * h, (w - 1) / 2 + sign * 0.22 * w)
    vessels = np.zeros((h, w), bool)
    calibre = np.zeros((h, w), np.float64)
    temporal = math.pi if sign > 0 else 0.0  # towards the macula (the image centre)
    # angles in (row, col) = (sin, cos): superior is negative rows
    trunks = [temporal - sign * 0.55, temporal + sign * 0.55, temporal + math.pi - sign * 0.6,
              temporal + math.pi + sign * 0.6]
    stack = [(disc[0], disc[1], a + rng.normal(0, 0.12), w0 * rng.uniform(0.85, 1.0), 0) for a in trunks]
    while stack:
        y, x, ang, wd, depth = stack.pop()
        n_steps = int(rng.integers(3, 7))
        for _ in range(n_steps):
            ang += rng.normal(0, 0.22)
            ny, nx = y + math.sin(ang) * step, x + math.cos(ang) * step
            seg = np.zeros((h, w), bool)
            _capsule(seg, (y, x), (ny, nx), max(0.6, wd / 2))
            vessels |= seg
            calibre = np.where(seg, np.maximum(calibre, wd), calibre)
            y, x, wd = ny, nx, wd * taper
            inside = 0 <= int(round(y)) < h and 0 <= int(round(x)) < w and fov[int(round(y)), int(round(x))]
            if not inside:
                break
        else:
            if depth < max_depth:
                a = rng.uniform(0.75, 0.9)
                w1, w2 = wd * a, wd * (1 - a**3) ** (1 / 3)
                spread = rng.uniform(0.35, 0.7)
                turn = float(rng.choice([-1.0, 1.0]))
                for wc, da in ((w1, -turn * spread * 0.5), (w2, turn * spread * 1.2)):
                    if wc >= min_width:
                        stack.append((y, x, ang + da, wc, depth + 1))
    vessels &= fov
    return vessels, np.where(vessels, calibre, 0.0), disc


def render_fundus(
    rng: np.random.Generator, vessels: np.ndarray, fov: np.ndarray, disc: tuple[float, float],
    calibre: np.ndarray | None = None,
) -> np.ndarray:
    """A fundus-like RGB image (H, W, 3) uint8 of a vessel tree: see the module notes."""
    from scipy import ndimage

    h, w = vessels.shape
    side = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rad = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) / (FOV_RADIUS * w)
    shade = 1.0 - 0.35 * np.clip(rad, 0, 1) ** 2
    texture = ndimage.gaussian_filter(rng.standard_normal((h, w)), max(1.0, side / 12))
    texture /= np.abs(texture).max() + 1e-9
    base = np.array([0.80, 0.36, 0.15]) * rng.uniform(0.9, 1.1, 3)
    rgb = base[None, None] * (shade * (1 + 0.08 * texture))[..., None]
    r_disc = 0.07 * side
    glow = np.exp(-((yy - disc[0]) ** 2 + (xx - disc[1]) ** 2) / (2 * r_disc**2))
    rgb = rgb * (1 - 0.7 * glow[..., None]) + 0.7 * glow[..., None] * np.array([1.0, 0.9, 0.6])
    mac = ((h - 1) / 2, (w - 1) / 2 - 0.6 * (disc[1] - (w - 1) / 2))
    dark = np.exp(-((yy - mac[0]) ** 2 + (xx - mac[1]) ** 2) / (2 * (0.09 * side) ** 2))
    rgb = rgb * (1 - 0.3 * dark[..., None])
    cal = vessels.astype(np.float64) if calibre is None else np.where(vessels, np.clip(calibre, 1, None), 0.0)
    top = max(float(cal.max()), 1.0)
    strength = np.where(vessels, 0.55 + 0.35 * cal / top, 0.0)
    strength = np.clip(ndimage.gaussian_filter(strength, 0.5), 0, 1)
    vessel_rgb = rgb * np.array([0.55, 0.35, 0.6])
    rgb = rgb * (1 - strength[..., None]) + vessel_rgb * strength[..., None]
    rgb = rgb + 0.01 * rng.standard_normal(rgb.shape)
    rgb = np.where(fov[..., None], np.clip(rgb, 0, 1), 0.0)
    return np.rint(rgb * 255).astype(np.uint8)


def retina_case(seed: int | np.random.Generator, size: Sequence[int] = (64, 64), *,
                width: float | None = None, fov_radius: float = FOV_RADIUS) -> RetinaCase:
    """One synthetic retina (rendering, vessel tree, circular FOV), a pure function of ``seed`` (an int or a
    numpy generator, which it advances) and ``size`` (H, W); ``width`` as in :func:`vessel_tree`."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(int(seed))
    h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8:
        raise ValueError(f"retina_case: size must be at least 8 x 8, got {(h, w)}")
    fov = circular_fov(h, w, fov_radius)
    vessels, calibre, disc = vessel_tree(rng, (h, w), fov=fov, width=width)
    rgb = render_fundus(rng, vessels, fov, disc, calibre)
    return RetinaCase(rgb, vessels, fov, disc)
