"""UNet regression baseline for paired image restoration (low-dose -> full-dose PET): the same pairs, the
same data module and the same number of steps as the diffusion method it is compared with.

``prediction = cond + UNet(cond)`` (residual learning, the usual CNN denoiser form; with ``out_channels`` other
than the input's, ``skip_channels`` names the input channels added, or ``residual: false``), trained with L1
(``loss="l1"``) or L2 (``"l2"``) on ``image``; the net is MONAI's
:class:`monai.networks.nets.UNet` (strided convolutions, residual units). Deterministic: ``predict``
ignores the sampler arguments and returns a zero ``uncertainty``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..diffusion.process import check_spatial
from ..errors import ArgumentError, DataError
from .base import Method


class RegressionUNet(Method):
    name = "regression_unet"
    task = "image"
    input_key = "cond"
    target_key = "image"
    outputs = ("prediction", "uncertainty")
    data_space = ("prediction",)

    def __init__(
        self,
        in_channels: int = 1,
        spatial_dims: int = 2,
        channels: Sequence[int] = (32, 64, 128),
        num_res_units: int = 2,
        loss: str = "l1",
        residual: bool = True,
        out_channels: int | None = None,
        skip_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        if loss not in ("l1", "l2"):
            raise ArgumentError("loss", f"unknown loss {loss!r}", "use 'l1' or 'l2'")
        if len(channels) < 2:
            raise ArgumentError("channels", f"needs at least 2 levels, got {list(channels)}", "use e.g. [32, 64, 128]")
        out = in_channels if out_channels is None else int(out_channels)
        skip = None
        if residual:
            skip = list(range(in_channels)) if skip_channels is None else [int(c) for c in skip_channels]
            if len(skip) != out or any(not 0 <= c < in_channels for c in skip):
                raise ArgumentError("skip_channels", f"residual learning adds input channels {skip} to {out} output "
                                    f"channel(s) of a {in_channels}-channel input",
                                    "list one input channel per output channel, or set residual: false")
        elif skip_channels is not None:
            raise ArgumentError("skip_channels", "applies with residual: true only", "drop it, or set residual: true")
        self.in_channels, self.out_channels, self.skip_channels = in_channels, out, skip
        self.spatial_dims = spatial_dims
        self.net = UNet(spatial_dims, in_channels, out, tuple(channels), (2,) * (len(channels) - 1),
                        num_res_units=num_res_units)
        self.loss_type, self.residual = loss, residual

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.net.channels) - 1)

    def fast_path_target(self) -> nn.Module:
        return self.net

    def forward(self, cond: Tensor) -> Tensor:
        out = self.net(cond)
        return cond[:, self.skip_channels] + out if self.skip_channels is not None else out

    def _inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        x = batch[self.input_key]
        check_spatial(x, "input image")
        self.check_input(x, "input image")
        y = batch.get(self.target_key)
        if y is not None and tuple(y.shape) != (x.shape[0], self.out_channels, *x.shape[2:]):
            raise DataError("batch", f"target {tuple(y.shape)} does not match input {tuple(x.shape)} with "
                            f"{self.out_channels} output channel(s)",
                            "pair each input with its target on the same grid")
        return x, y

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        x, y = self._inputs(batch)
        if y is None:
            raise DataError("batch", f"RegressionUNet training needs batch[{self.target_key!r}]",
                            "use a data module that provides it")
        pred = self(x)
        loss = F.l1_loss(pred, y) if self.loss_type == "l1" else F.mse_loss(pred, y)
        return loss, {f"loss_{self.loss_type}": loss.detach()}

    @torch.no_grad()
    def predict(self, batch: dict[str, Any], *, sampler: str | None = None, steps: int | None = None,
                n_samples: int | None = None, generator: Any = None, progress: bool = False) -> dict[str, Tensor]:
        x, _ = self._inputs(batch)
        pred = self(x).clamp(-1, 1)
        return {"prediction": pred, "uncertainty": torch.zeros_like(pred)}
