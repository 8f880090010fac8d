"""Homogeneous regions of SAR intensity, for the equivalent number of looks (ENL, :func:`.image.enl`).

ENL = mean^2 / var of linear intensity over a homogeneous region. Without a user-given mask, the
region is auto-detected: the ``n_windows`` non-overlapping ``window`` x ``window`` tiles with the
lowest coefficient of variation (std / mean) of the **reference** image (the speckled input), so
before / after despeckling are measured on the same pixels.
"""

from __future__ import annotations

import numpy as np
import torch

from ._common import as_float
from .image import enl


def homogeneous_mask(intensity: np.ndarray | torch.Tensor, window: int = 16, n_windows: int = 1) -> np.ndarray:
    """Boolean mask (H, W) of the ``n_windows`` lowest-CV ``window``-sized tiles of a 2-D linear intensity image."""
    x = as_float(intensity, "intensity").double().cpu().numpy()
    if x.ndim != 2:
        raise ValueError(f"intensity must be one 2-D image (H, W), got shape {x.shape}")
    if window < 2 or n_windows < 1:
        raise ValueError(f"window must be >= 2 and n_windows >= 1, got {window}, {n_windows}")
    h, w = (s // window for s in x.shape)
    if h * w < n_windows:
        raise ValueError(f"image {x.shape} holds fewer than {n_windows} tiles of {window} px; use a smaller window")
    tiles = x[: h * window, : w * window].reshape(h, window, w, window).swapaxes(1, 2).reshape(h * w, -1)
    mean, std = tiles.mean(1), tiles.std(1)
    ok = np.isfinite(tiles).all(1) & (mean > 0)
    cv = np.where(ok, std / np.where(mean > 0, mean, 1.0), np.inf)
    if int(np.isfinite(cv).sum()) < n_windows:
        raise ValueError("too few finite, positive tiles to find a homogeneous region")
    mask = np.zeros(x.shape, dtype=bool)
    for k in np.argsort(cv, kind="stable")[:n_windows]:
        i, j = divmod(int(k), w)
        mask[i * window : (i + 1) * window, j * window : (j + 1) * window] = True
    return mask


def enl_region(intensity: np.ndarray | torch.Tensor, mask: np.ndarray | None = None, window: int = 16,
               n_windows: int = 1) -> float:
    """ENL of a 2-D linear intensity image over ``mask`` (auto-detected by :func:`homogeneous_mask` if None)."""
    x = as_float(intensity, "intensity")
    m = homogeneous_mask(x, window, n_windows) if mask is None else np.asarray(mask, dtype=bool)
    return float(enl(x[None], torch.from_numpy(m)[None]).item())
