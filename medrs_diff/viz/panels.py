"""Validation panels: a PNG grid of input / prediction / reference / uncertainty, one row per image.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend change) and
written atomically, so a panel being written never appears half-finished. 3-D volumes show their
middle slice along the first spatial axis; 3-channel images show as RGB, others show channel 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..io.atomic import atomic_output


def _plane(x: Tensor) -> Tensor:
    """(C, *spatial) -> (H, W) or (H, W, 3): middle slice of a volume, RGB for 3 channels, else channel 0."""
    x = x.detach().float().cpu()
    if x.ndim == 4:  # (C, D, H, W): middle slice along depth
        x = x[:, x.shape[1] // 2]
    if x.ndim != 3:
        raise ValueError(f"expected a (C, H, W) or (C, D, H, W) image, got shape {tuple(x.shape)}")
    return torch.nan_to_num(x[:3].permute(1, 2, 0) if x.shape[0] == 3 else x[0])


def to_display(x: Tensor, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """A (C, *spatial) image as a 2-D or RGB float array mapped from [lo, hi] (default: its own range) to [0, 1]."""
    img = _plane(x)
    lo = float(img.min()) if lo is None else lo
    hi = float(img.max()) if hi is None else hi
    img = ((img - lo) / (hi - lo)).clamp(0, 1) if hi > lo else torch.zeros_like(img)
    return img.numpy()


def save_panel(
    path: str | os.PathLike, columns: Mapping[str, Tensor | None], max_rows: int = 4, title: str = "",
    shared: Sequence[str] = ("prediction", "reference"),
) -> Path:
    """Write a panel PNG with one column per non-None entry of ``columns`` (each a (B, C, ...) batch).

    The ``shared`` columns of a row (default ``prediction`` and ``reference``; label maps of several
    sources, e.g. per-branch masks) share one intensity range (so an offset shows); ``uncertainty`` runs
    from 0 to the column's maximum; other columns use their own range.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = {k: v for k, v in columns.items() if v is not None}
    if not cols:
        raise ValueError("a panel needs at least one column")
    rows = min(max_rows, *(int(v.shape[0]) for v in cols.values()))
    fig = Figure(figsize=(2.4 * len(cols), 2.4 * rows + (0.4 if title else 0.0)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, len(cols), squeeze=False)
    paired = [k for k in shared if k in cols]
    u_max = max((float(_plane(cols["uncertainty"][i]).max()) for i in range(rows)), default=0.0) \
        if "uncertainty" in cols else 0.0
    for i in range(rows):
        planes = [_plane(cols[k][i]) for k in paired]
        joint = (min(float(p.min()) for p in planes), max(float(p.max()) for p in planes)) if planes else None
        for j, (name, batch) in enumerate(cols.items()):
            ax = axes[i, j]
            if name in paired:
                img = to_display(batch[i], *joint)
            elif name == "uncertainty":
                img = to_display(batch[i], 0.0, u_max)
            else:
                img = to_display(batch[i])
            cmap = "magma" if name == "uncertainty" else "gray"
            ax.imshow(img, cmap=None if img.ndim == 3 else cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                label = f"{name} (max {u_max:.3g})" if name == "uncertainty" else name
                ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return path
