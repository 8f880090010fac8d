"""SeqDMs (Xiaohu Zhao, Kebin Jia; Remote Sensing 15(11):2861, 2023): cloud removal from S1 SAR + cloudy S2 dates.

**MmDM** (the multi-modal diffusion model): an eps-prediction DDPM generates the clear S2 image
(``image``, C bands); the UNet sees, concatenated to x_t at every step, one date's conditions: its cloudy
S2 (C), its cloud mask (1), its S1 VV/VH (2, zeros where absent) and an S1-present flag (1).
Training ("sequential-based training", as read here): every item is a sequence of dates; each step
conditions every batch element on **one** of its valid dates drawn at random, so a single model learns
p(clear | one date) for whichever date it is given.

**SeqTIS** (sequential inference, any number of dates, no retraining): at every reverse step the
per-date noise predictions are folded in one date at a time into a **time-aware, mask-weighted mean**,
``eps = sum_k w_k eps_k / sum_k w_k`` with ``w_k = valid_k ((1 - m_k) + cloudy_weight)``: where date k is
clear it counts fully, where it is cloudy by ``cloudy_weight`` (so pixels cloudy in every date still
average all dates, S1 carrying the information there). The fold is a running weighted mean, so memory
does not grow with T, one date gives exactly the single-date model (the first fold is ``w/w = 1``) and the
result does not depend on the order of the dates (up to float rounding).

Fidelity: no official code exists and the reference notes mark the paper's unrolling as not checked
(../shared/reference/remote_sensing.md, section 3); the per-date conditioning, eps-MSE and DDPM are the
paper's, the mask-weighted fold is this project's reading of SeqTIS, stated as such. ``uncertainty`` is
the per-pixel standard deviation over ``n_samples`` chains in model space (0 with one sample).

``prediction_type``: ``"eps"`` (the paper's eps-MSE, default) or ``"x0"`` (an explicit switch: the net regresses
the clear image, which a small CPU budget learns far faster; see evaluation/seqdm_table.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..data import keys as K
from ..diffusion.generators import GeneratorLike
from ..diffusion.process import DiffusionLoss
from ..diffusion.schedules import make_schedule
from ..errors import ArgumentError, DataError
from ..nets.unet import ConditionedUNet
from ._sampling import repeat_batch, sample_n
from .base import DiffusionMethod, DiffusionPair, IOSpec, check_sampler

SAR_VALID = K.SAR_VALID
DATE_VALID = K.DATE_VALID


def check_sequence(batch: dict[str, Any], bands: int, sar_channels: int) -> dict[str, Tensor]:
    """The checked date tensors of a batch: cond, mask, sar, sar_valid (B, T), date_valid (B, T)."""
    s2 = batch.get(K.COND)
    if not isinstance(s2, Tensor) or s2.ndim != 5:
        raise DataError("cond", f"expected cloudy S2 dates (B, T, C, H, W), got "
                        f"{tuple(s2.shape) if isinstance(s2, Tensor) else type(s2).__name__}",
                        "give a time axis (one date: T = 1)")
    b, t, c, h, w = s2.shape
    if t == 0:
        raise DataError("cond", "the date sequence is empty (T = 0)", "give at least one S2 date")
    if c != bands:
        raise DataError("cond", f"the model expects {bands} S2 band(s) but got {c}",
                        f"give the {bands} bands the model was trained with (a band is missing?)")
    mask = batch.get(K.CLOUD_MASK)
    if not isinstance(mask, Tensor) or tuple(mask.shape) != (b, t, 1, h, w):
        got = tuple(mask.shape) if isinstance(mask, Tensor) else None
        raise DataError("cloud_mask", f"shape {got} differs from (B, T, 1, H, W) = {(b, t, 1, h, w)} of the S2 "
                        "dates", "give one cloud mask per date on the S2 grid")
    valid = batch.get(DATE_VALID)
    valid = torch.ones(b, t, dtype=torch.bool, device=s2.device) if valid is None else valid.bool()
    if not bool(valid.any(dim=1).all()):
        raise DataError("date_valid", "a batch element has no valid date (empty sequence)",
                        "give at least one S2 date per element")
    sar = batch.get(K.SAR)
    if sar_channels:
        if sar is None:
            sar = torch.zeros(b, t, sar_channels, h, w, device=s2.device)
            sar_valid = torch.zeros(b, t, device=s2.device)
        else:
            if tuple(sar.shape) != (b, t, sar_channels, h, w):
                raise DataError("sar", f"shape {tuple(sar.shape)} differs from {(b, t, sar_channels, h, w)}",
                                f"give {sar_channels} S1 channel(s) per date on the S2 grid")
            sv = batch.get(SAR_VALID)
            sar_valid = torch.ones(b, t, device=s2.device) if sv is None else sv.float()
    else:
        sar, sar_valid = None, None
    for name, x in (("cond", s2), ("cloud_mask", mask), ("sar", sar)):
        if x is not None and not bool(torch.isfinite(x).all()):
            raise DataError(name, "holds NaN or inf", "fill nodata before cloud removal")
    return {"s2": s2, "mask": mask.float(), "sar": sar, "sar_valid": sar_valid, "valid": valid}

def date_condition(seq: dict[str, Tensor], k: Tensor | int) -> Tensor:
    """The UNet condition of date ``k`` (an int, or one index per batch element): S2, mask, S1, S1 flag."""
    b = seq["s2"].shape[0]
    idx = torch.full((b,), int(k), device=seq["s2"].device) if isinstance(k, int) else k
    rows = torch.arange(b, device=idx.device)
    parts = [seq["s2"][rows, idx], seq["mask"][rows, idx]]
    if seq["sar"] is not None:
        sv = seq["sar_valid"][rows, idx].view(b, 1, 1, 1)
        sar = seq["sar"][rows, idx]
        parts += [sar * sv, sv.expand(b, 1, *sar.shape[2:])]
    return torch.cat(parts, dim=1)


class SeqDM(DiffusionMethod):
    """Cloudy S2 dates (+ S1, masks) -> clear S2; batch ``cond`` (B, T, C, H, W), ``cloud_mask`` (B, T, 1, H, W),
    ``sar`` (B, T, S, H, W), optional ``sar_valid`` (B, T) and ``date_valid`` (B, T)."""

    name = "seqdm"
    task = "spectral"
    input_key = K.COND
    target_key = K.IMAGE
    outputs = ("prediction", "uncertainty")
    data_space = ("prediction",)

    def __init__(
        self,
        bands: int = 13,
        sar_channels: int = 2,
        channels: Sequence[int] = (64, 128, 256, 256),
        attention_levels: Sequence[bool] = (False, False, True, True),
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        timesteps: int = 1000,
        schedule: str = "linear",
        cloudy_weight: float = 0.05,
        prediction_type: str = "eps",
        n_samples: int = 1,
        rgb: Sequence[int] = (3, 2, 1),
        sampler: str = "ddpm",
        sampling_steps: int | None = None,
    ) -> None:
        super().__init__()
        check_sampler(sampler)
        if bands < 1 or sar_channels < 0:
            raise ArgumentError("bands / sar_channels", f"got {bands}, {sar_channels}", "bands >= 1, sar_channels >= 0")
        if not cloudy_weight > 0:
            raise ArgumentError("cloudy_weight", f"must be > 0, got {cloudy_weight}",
                                "use e.g. 0.05 (a fully cloudy pixel still averages every date)")
        if n_samples < 1:
            raise ArgumentError("n_samples", f"must be >= 1, got {n_samples}", "use 1, or more for an uncertainty")
        if any(not 0 <= c < bands for c in rgb) or len(rgb) != 3:
            raise ArgumentError("rgb", f"{list(rgb)} are not 3 band indices below {bands}", "e.g. [3, 2, 1]")
        self.in_channels = self.out_channels = int(bands)
        self.sar_channels = int(sar_channels)
        self.spatial_dims = 2
        cond = bands + 1 + (sar_channels + 1 if sar_channels else 0)
        self.unet = ConditionedUNet(2, bands, bands, channels, attention_levels, num_res_blocks, num_head_channels,
                                    norm_num_groups, cond_channels=cond)
        self.schedule = make_schedule(schedule, timesteps)
        if prediction_type not in ("eps", "x0"):
            raise ArgumentError("prediction_type", f"unknown {prediction_type!r}", "use eps (the paper) or x0")
        self.prediction_type = prediction_type
        self.objective = DiffusionLoss(self.schedule, prediction_type=prediction_type, variance="fixed_small",
                                       loss_type="mse")
        self.cloudy_weight, self.n_samples, self.rgb = float(cloudy_weight), int(n_samples), [int(c) for c in rgb]
        self.sampler, self.sampling_steps = sampler, sampling_steps

    @property
    def denoiser(self) -> ConditionedUNet:
        return self.unet

    @property
    def size_multiple(self) -> int:
        return self.unet.size_multiple

    @property
    def io_spec(self) -> IOSpec:
        inputs = {K.COND: self.in_channels, K.CLOUD_MASK: 1}
        if self.sar_channels:
            inputs[K.SAR] = self.sar_channels
        return IOSpec(inputs=inputs, outputs=self.outputs, spatial_dims=2, task=self.task, data_space=self.data_space,
                      extra={"size_multiple": self.size_multiple, "sequence": True})

    # -- inputs ---------------------------------------------------------------------------------------
    def sequence(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The checked date tensors of a batch (:func:`check_sequence`)."""
        return check_sequence(batch, self.in_channels, self.sar_channels)

    def date_condition(self, seq: dict[str, Tensor], k: Tensor | int) -> Tensor:
        """The UNet condition of date ``k`` (:func:`date_condition`)."""
        return date_condition(seq, k)

    # -- training -------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        seq = self.sequence(batch)
        clear = batch.get(self.target_key)
        if clear is None:
            raise DataError("batch", "SeqDM training needs batch['image'] (the clear S2)",
                            "use CloudSeriesDataModule (it provides it)")
        if clear.shape != seq["s2"].shape[:1] + seq["s2"].shape[2:]:
            raise DataError("batch", f"clear {tuple(clear.shape)} and cloudy dates {tuple(seq['s2'].shape)} differ",
                            "give the clear image on the dates' grid with the same bands")
        # one valid date per element, uniformly (sequential-based training)
        dev = generator.device if generator is not None else clear.device
        u = torch.rand(seq["valid"].shape, generator=generator, device=dev).to(clear.device)
        k = torch.where(seq["valid"], u, torch.full_like(u, -1.0)).argmax(dim=1)
        cond = self.date_condition(seq, k)
        return self.objective(lambda x, t: self.unet(x, t, cond=cond), clear, generator=generator)

    # -- inference: SeqTIS ----------------------------------------------------------------------------
    def fused_prediction(self, x: Tensor, t: Tensor, seq: dict[str, Tensor], n: int = 1) -> Tensor:
        """SeqTIS: the mask-weighted running mean of the per-date predictions (eps, or x0 with
        ``prediction_type="x0"``; either is affine in the other at fixed x_t, so the fold is the same), dates folded
        in one by one."""
        acc = torch.zeros_like(x)
        total = torch.zeros_like(x[:, :1])
        for k in range(seq["s2"].shape[1]):
            valid = repeat_batch(seq["valid"][:, k].float(), n).view(-1, 1, 1, 1)
            if not bool(valid.any()):
                continue
            wk = valid * ((1.0 - repeat_batch(seq["mask"][:, k], n)) + self.cloudy_weight)
            eps = self.unet(x, t, cond=repeat_batch(self.date_condition(seq, k), n))
            total = total + wk
            frac = torch.where(total > 0, wk / total.clamp_min(1e-30), torch.zeros_like(wk))
            acc = acc + frac * (eps - acc)
        return acc

    def diffusion_pair(self, batch: dict[str, Any]) -> DiffusionPair:
        """SeqTIS's fused denoiser over the batch's dates (what ``predict`` samples with; with one date it is the
        single-date model the loss trains) and the clear image."""
        if (err := self.pair_refusal()) is not None:
            raise err
        seq = self.sequence(batch)
        clear = batch.get(self.target_key)
        if clear is None or clear.shape != seq["s2"].shape[:1] + seq["s2"].shape[2:]:
            got = None if clear is None else tuple(clear.shape)
            raise DataError("batch", f"SeqDM's diffusion pair needs batch['image'] (the clear S2) on the dates' grid, "
                            f"got {got}", "use CloudSeriesDataModule (it provides it)")
        return DiffusionPair(lambda x, t: self.fused_prediction(x, t, seq), clear, self.prediction_type,
                             {"clip": True})

    @torch.no_grad()
    def predict(
        self,
        batch: dict[str, Any],
        *,
        sampler: str | None = None,
        steps: int | None = None,
        n_samples: int | None = None,
        generator: GeneratorLike = None,
        progress: bool = False,
    ) -> dict[str, Tensor]:
        """``prediction`` (mean of ``n_samples`` SeqTIS chains) and ``uncertainty`` (their std, model space)."""
        seq = self.sequence(batch)
        s2 = seq["s2"]
        n = self.n_samples if n_samples is None else int(n_samples)
        shape = (s2.shape[0], s2.shape[2], *s2.shape[3:])
        name = sampler if sampler is not None else self.default_sampler
        kw: dict[str, Any] = {"variance": "fixed_small"} if name in ("ddpm", "bddm") else {}
        if name in ("ddpm", "ddim", "bddm", "masked"):
            kw["prediction_type"] = self.prediction_type
        elif self.prediction_type != "eps":
            raise ArgumentError("sampler", f"{name!r} takes eps predictions; this model predicts "
                                f"{self.prediction_type}", "use sampler ddpm, ddim, bddm or masked")
        out = sample_n(lambda x, t: self.fused_prediction(x, t, seq, n), shape, self.schedule, n_samples=n,
                       sampler=name,
                       steps=steps if steps is not None else self.sampling_steps, device=s2.device,
                       generator=generator, progress=progress, clip=True, **kw).clamp(-1, 1)
        pred = out.mean(0)
        unc = out.std(0, unbiased=False) if n > 1 else torch.zeros_like(pred)
        return {"prediction": pred, "uncertainty": unc}

    def panel_columns(self, batch: dict[str, Any], out: dict[str, Tensor]) -> tuple[dict[str, Tensor], tuple[str, ...]]:
        """RGB (``rgb`` band indices) of the first cloudy date, the prediction and the reference."""
        rgb = self.rgb
        cols = {"cloudy date 1": batch[K.COND][:, 0, rgb], "prediction": out["prediction"][:, rgb]}
        if isinstance(batch.get(self.target_key), Tensor):
            cols["reference"] = batch[self.target_key][:, rgb]
        return cols, ("cloudy date 1", "prediction", "reference")


__all__ = ["DATE_VALID", "SAR_VALID", "SeqDM", "check_sequence", "date_condition"]
