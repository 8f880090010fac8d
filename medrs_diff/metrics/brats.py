"""BraTS tumour regions (WT / TC / ET) from label maps and their Dice and HD95 on 3-D volumes.

Label convention: 0 background, 1 necrotic / non-enhancing core (NCR/NET), 2 peritumoral oedema (ED),
``et_label`` enhancing tumour (4 up to BraTS 2021, 3 from BraTS 2023). Regions:
WT (whole tumour) = {1, 2, ET}, TC (tumour core) = {1, ET}, ET = {ET}.

Scores follow the challenge rules: per region and per case on the full volume, HD95 in mm; a region
empty in both prediction and reference scores Dice 1 and HD95 0; empty in only one scores Dice 0 and
HD95 = the volume diagonal (373.13 mm for 240×240×155 at 1 mm).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._common import ArrayLike, MeanTracker, StreamingMetric, as_float, check_same_shape
from .overlap import dice
from .surface import surface_distances

__all__ = ["BRATS_REGIONS", "brats_regions", "brats_scores", "BratsMetric"]

BRATS_REGIONS = ("WT", "TC", "ET")


def brats_regions(labels: ArrayLike, et_label: int = 4) -> dict[str, torch.Tensor]:
    """Binary WT, TC, ET masks (each shaped like ``labels``) from an integer BraTS label map."""
    if et_label not in (3, 4):
        raise ValueError(f"et_label must be 4 (BraTS ≤2021) or 3 (BraTS 2023+), got {et_label}")
    lab = as_float(labels, "labels")
    allowed = torch.tensor([0.0, 1.0, 2.0, float(et_label)], dtype=lab.dtype, device=lab.device)
    bad = ~torch.isin(lab, allowed)
    if bool(bad.any()):
        found = sorted({float(v) for v in lab[bad].flatten()[:1000].tolist()})
        raise ValueError(f"BraTS label map holds labels {found} outside {{0, 1, 2, {et_label}}}; "
                         f"set et_label=3 for BraTS 2023 data or remap the labels")
    et = lab == et_label
    return {"WT": (lab == 1) | (lab == 2) | et, "TC": (lab == 1) | et, "ET": et}


def brats_scores(pred: ArrayLike, ref: ArrayLike, spacing: Sequence[float] | float | None = None,
                 et_label: int = 4) -> dict[str, torch.Tensor]:
    """Per-case Dice and HD95 (mm) per region for label maps ``(B, D, H, W)``.

    Returns keys ``dice_WT``, ``hd95_WT``, ``dice_TC``, ... each ``(B,)``.
    """
    p, r = as_float(pred, "pred"), as_float(ref, "ref")
    check_same_shape(p, r)
    if p.ndim != 4:
        raise ValueError(f"BraTS scores are computed on 3-D volumes (B, D, H, W), got shape {tuple(p.shape)}")
    rp, rr = brats_regions(p, et_label), brats_regions(r, et_label)
    out: dict[str, torch.Tensor] = {}
    for name in BRATS_REGIONS:
        out[f"dice_{name}"] = dice(rp[name], rr[name], empty_score=1.0)
        out[f"hd95_{name}"] = surface_distances(rp[name], rr[name], spacing, empty_distance="diagonal")["hd95"]
    return out


class BratsMetric(StreamingMetric):
    """Streaming per-case means of BraTS region Dice and HD95 plus pooled Dice per region.

    ``compute()`` keys: ``dice_WT``, ``hd95_WT``, ``dice_pooled_WT``, ... and ``n_cases``.
    """

    def __init__(self, spacing: Sequence[float] | float | None = None, et_label: int = 4) -> None:
        self.spacing, self.et_label = spacing, et_label
        super().__init__()

    def reset(self) -> None:
        self._means = {f"{m}_{r}": MeanTracker() for r in BRATS_REGIONS for m in ("dice", "hd95")}
        self._pooled = {r: torch.zeros(3, dtype=torch.float64) for r in BRATS_REGIONS}
        self._n = 0

    def update(self, pred: ArrayLike, ref: ArrayLike, spacing: Sequence[float] | float | None = None) -> None:
        sp = self.spacing if spacing is None else spacing
        for k, v in brats_scores(pred, ref, sp, self.et_label).items():
            self._means[k].add(v)
        rp, rr = brats_regions(pred, self.et_label), brats_regions(ref, self.et_label)
        for name in BRATS_REGIONS:
            a, b = rp[name].flatten(1), rr[name].flatten(1)
            self._pooled[name] += torch.stack([(a & b).sum(), a.sum(), b.sum()]).double().cpu()
        self._n += int(as_float(pred, "pred").shape[0])

    def compute(self) -> dict[str, float]:
        out = {k: t.mean for k, t in self._means.items()}
        for name, (inter, sp, sr) in self._pooled.items():
            out[f"dice_pooled_{name}"] = float(2 * inter / (sp + sr)) if (sp + sr) > 0 else 1.0
        out["n_cases"] = float(self._n)
        return out
