"""Trivial fundus-vessel baselines and field-of-view scores for the HRF table (issue 12).

* :func:`all_background`: predicts no vessel anywhere (Dice 0, specificity 1): the floor a model must beat.
* :func:`green_vessels`: the classic unsupervised vessel map. Take the green channel (best vessel contrast),
  invert it (vessels become bright), fill the pixels outside the field of view with the FOV's median (so the
  dark border does not leak into the filter), subtract a large median filter (``background`` pixels wide,
  the slowly varying illumination), and threshold the residual with Otsu's method computed on the FOV
  pixels only; pixels outside the FOV are background.
* :func:`fov_scores`: Dice, Jaccard, sensitivity, specificity and Matthews correlation of a binary mask,
  counting only pixels inside the field of view (the retinal-vessel convention: outside pixels are dropped,
  not scored as true negatives).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["SCORES", "all_background", "fov_scores", "green_vessels", "otsu_threshold"]

#: The score names of :func:`fov_scores`, in table order.
SCORES = ("dice", "jaccard", "sensitivity", "specificity", "mcc")


def _plane(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a 2-D array (a leading singleton channel is dropped)."""
    a = np.asarray(x)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"fundus_baselines.py: {name} must be (H, W) or (1, H, W), got shape {a.shape}")
    return a


def all_background(fov: np.ndarray) -> np.ndarray:
    """A mask of zeros shaped like ``fov`` (H, W): no vessel anywhere."""
    return np.zeros(_plane(fov, "fov").shape, dtype=bool)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of 1-D ``values``: the bin edge maximising the between-class variance."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError("fundus_baselines.py: Otsu needs a non-empty, finite set of values")
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    p = hist / hist.sum()
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(p)
    mu = np.cumsum(p * centres)
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


def green_vessels(rgb: np.ndarray, fov: np.ndarray, background: int = 25) -> np.ndarray:
    """Vessel mask (H, W) bool from a channel-first RGB image ``rgb`` (3, H, W) (any range) and its ``fov``:
    inverted green, minus a ``background``-pixel median filter, Otsu threshold inside the FOV (module notes)."""
    img = np.asarray(rgb, dtype=np.float64)
    if img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"fundus_baselines.py: rgb must be channel-first (3, H, W), got shape {img.shape}")
    inside = _plane(fov, "fov") > 0
    if inside.shape != img.shape[1:]:
        raise ValueError(f"fundus_baselines.py: fov {inside.shape} and image {img.shape[1:]} differ in size")
    if background < 3:
        raise ValueError(f"fundus_baselines.py: background must be >= 3 pixels, got {background}")
    if not inside.any():
        return np.zeros(inside.shape, dtype=bool)
    inv = -img[1]
    inv = np.where(inside, inv, np.median(inv[inside]))
    residual = inv - ndimage.median_filter(inv, size=int(background), mode="reflect")
    t = otsu_threshold(residual[inside])
    return (residual > t) & inside


def fov_scores(pred: np.ndarray, ref: np.ndarray, fov: np.ndarray) -> dict[str, float]:
    """Dice, Jaccard, sensitivity, specificity and MCC of binary ``pred`` against ``ref`` over the pixels
    where ``fov`` > 0 (each (H, W) or (1, H, W)). An empty denominator scores 0 (MCC: 0)."""
    p, r, f = (_plane(a, n) > 0 for a, n in ((pred, "pred"), (ref, "ref"), (fov, "fov")))
    if not p.shape == r.shape == f.shape:
        raise ValueError(f"fundus_baselines.py: pred {p.shape}, ref {r.shape} and fov {f.shape} differ in size")
    tp = float(np.sum(p & r & f))
    fp = float(np.sum(p & ~r & f))
    fn = float(np.sum(~p & r & f))
    tn = float(np.sum(~p & ~r & f))

    def div(a: float, b: float) -> float:
        return a / b if b > 0 else 0.0

    return {
        "dice": div(2 * tp, 2 * tp + fp + fn),
        "jaccard": div(tp, tp + fp + fn),
        "sensitivity": div(tp, tp + fn),
        "specificity": div(tn, tn + fp),
        "mcc": div(tp * tn - fp * fn, math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))),
    }
