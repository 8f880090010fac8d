"""Cloud-removal baselines on the SeqDM batch (``cond`` (B, T, C, H, W), ``cloud_mask``, ``sar``): the least-cloudy
mosaic and the temporal median (no training), and a UNet regression from S1 + cloudy S2 trained like SeqDM
(one random valid date per element, L1 on the clear image) and folded over dates with the same mask weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import keys as K
from .base import IOSpec, Method
from .seqdm import check_sequence, date_condition


def least_cloudy_mosaic(cond: Tensor, mask: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per pixel, the value of the least-cloudy date (lowest cloud fraction) among the dates clear there; where no
    date is clear, the least-cloudy date. ``cond`` (B, T, C, H, W), ``mask`` (B, T, 1, H, W) -> (B, C, H, W)."""
    b, t = cond.shape[:2]
    valid = torch.ones(b, t, dtype=torch.bool, device=cond.device) if valid is None else valid.bool()
    frac = torch.where(valid, mask.flatten(2).mean(2), torch.full((b, t), 2.0, device=cond.device))
    rank = frac.argsort(dim=1).argsort(dim=1).float()  # 0 = least cloudy
    score = rank.view(b, t, 1, 1, 1) + (1 - valid.float()).view(b, t, 1, 1, 1) * 1e6 + mask * t  # cloudy: last
    pick = score.argmin(dim=1, keepdim=True)  # (B, 1, 1, H, W)
    return torch.gather(cond, 1, pick.expand(-1, 1, cond.shape[2], -1, -1)).squeeze(1)


def temporal_median(cond: Tensor, mask: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per pixel and band, the median over the dates clear there (over every valid date where none is clear)."""
    b, t = cond.shape[:2]
    valid = torch.ones(b, t, dtype=torch.bool, device=cond.device) if valid is None else valid.bool()
    v = valid.view(b, t, 1, 1, 1)
    clear = (mask < 0.5) & v
    use = torch.where(clear.any(dim=1, keepdim=True), clear, v.expand_as(clear))
    x = torch.where(use.expand_as(cond), cond, torch.full_like(cond, float("nan")))
    return x.nanmedian(dim=1).values


class CloudRegressionUNet(Method):
    """UNet regression baseline: MONAI UNet on one date's (S2, mask, S1, S1 flag) -> clear S2 (L1)."""

    name = "cloud_regression_unet"
    task = "spectral"
    input_key = K.COND
    target_key = K.IMAGE
    outputs = ("prediction", "uncertainty")
    data_space = ("prediction",)

    def __init__(self, bands: int = 13, sar_channels: int = 2, channels: Sequence[int] = (32, 64, 128),
                 num_res_units: int = 2, cloudy_weight: float = 0.05) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.in_channels = self.out_channels = int(bands)
        self.sar_channels = int(sar_channels)
        cond = bands + 1 + (sar_channels + 1 if sar_channels else 0)
        self.net = UNet(2, cond, bands, tuple(channels), (2,) * (len(channels) - 1), num_res_units=num_res_units)
        self.cloudy_weight = float(cloudy_weight)

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.net.channels) - 1)

    def fast_path_target(self) -> nn.Module:
        return self.net

    @property
    def io_spec(self) -> IOSpec:
        inputs = {K.COND: self.in_channels, K.CLOUD_MASK: 1}
        if self.sar_channels:
            inputs[K.SAR] = self.sar_channels
        return IOSpec(inputs=inputs, outputs=self.outputs, task=self.task, data_space=self.data_space,
                      extra={"size_multiple": self.size_multiple, "sequence": True})

    def _date(self, seq: dict[str, Tensor], k: Tensor | int) -> Tensor:
        return self.net(date_condition(seq, k)).clamp(-1, 1)

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        seq = check_sequence(batch, self.in_channels, self.sar_channels)
        clear = batch[self.target_key]
        dev = generator.device if generator is not None else clear.device
        u = torch.rand(seq["valid"].shape, generator=generator, device=dev).to(clear.device)
        k = torch.where(seq["valid"], u, torch.full_like(u, -1.0)).argmax(dim=1)
        loss = F.l1_loss(self.net(date_condition(seq, k)), clear)
        return loss, {"loss_l1": loss.detach()}

    @torch.no_grad()
    def predict(self, batch: dict[str, Any], *, sampler: str | None = None, steps: int | None = None,
                n_samples: int | None = None, generator: Any = None, progress: bool = False) -> dict[str, Tensor]:
        seq = check_sequence(batch, self.in_channels, self.sar_channels)
        acc, total = None, None
        for k in range(seq["s2"].shape[1]):
            w = seq["valid"][:, k].float().view(-1, 1, 1, 1) * ((1 - seq["mask"][:, k]) + self.cloudy_weight)
            y = self._date(seq, k)
            total = w if total is None else total + w
            frac = torch.where(total > 0, w / total.clamp_min(1e-30), torch.zeros_like(w))
            acc = frac * y if acc is None else acc + frac * (y - acc)
        return {"prediction": acc, "uncertainty": torch.zeros_like(acc)}


__all__ = ["CloudRegressionUNet", "least_cloudy_mosaic", "temporal_median"]
