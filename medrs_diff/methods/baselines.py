"""Discriminative baselines, trained and evaluated exactly like the diffusion methods (same task, recipes,
inference and metrics), so every results table can carry a baseline row measured the same way.

- :class:`SMPUNet`: binary segmentation with a segmentation-models-pytorch UNet (any encoder; random
  initialisation by default, a local ``.pth`` for a pretrained encoder; nothing downloads), Dice + BCE.
  ``predict`` returns ``prediction`` (thresholded mask), ``probability`` and ``uncertainty`` = p(1 - p)
  (the Bernoulli variance, SegDiff's ensemble variance counterpart).
- :class:`RegressionSR`: single-image super-resolution with ESRGAN's RRDB network trained with L1
  (the regression SRDiff pre-trains), ``uncertainty`` zero.

Neither samples: ``predict`` accepts and ignores ``sampler`` / ``steps`` / ``n_samples`` / ``generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ArgumentError, DataError
from ..nets.rrdb import RRDBNet
from ..nets.smp import build_unet, load_encoder_weights
from .base import Method, mask_batch, sr_batch


class SMPUNet(Method):
    """2-D binary segmentation with ``smp.Unet``.

    ``encoder_name``: any smp encoder (``resnet18``, ``resnet34``, ``efficientnet-b0``, ``tu-*`` timm
    encoders, ...). ``encoder_weights`` must stay None (smp would download named weights); for a
    pretrained encoder pass ``encoder_weights_path``, a local state dict (RGB weights are adapted to
    ``in_channels`` as smp does). Inputs whose height or width is not a multiple of the encoder's
    output stride are padded (replicate) and the outputs cropped back. ``threshold`` turns the
    probability into the mask; the loss is ``dice_weight * Dice + bce_weight * BCE``.
    """

    name = "smp_unet"
    task = "seg"
    input_key = "image"
    target_key = "label"
    outputs = ("prediction", "uncertainty", "probability")

    def __init__(
        self,
        in_channels: int = 1,
        encoder_name: str = "resnet18",
        encoder_depth: int = 5,
        decoder_channels: Sequence[int] | None = None,
        encoder_weights: str | None = None,
        encoder_weights_path: str | None = None,
        threshold: float = 0.5,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if encoder_weights is not None:
            raise ArgumentError(
                "encoder_weights", f"{encoder_weights!r} would make segmentation-models-pytorch download weights",
                "leave encoder_weights null and pass encoder_weights_path=<local .pth state dict of the encoder>",
            )
        if not 0.0 < threshold < 1.0:
            raise ArgumentError("threshold", f"must lie in (0, 1), got {threshold}", "use e.g. 0.5")
        if dice_weight < 0 or bce_weight < 0 or dice_weight + bce_weight == 0:
            raise ArgumentError("dice_weight / bce_weight", f"got {dice_weight} and {bce_weight}",
                                "give non-negative weights, at least one of them > 0")
        from segmentation_models_pytorch.losses import DiceLoss

        self.in_channels = in_channels
        self.out_channels = 1
        self.spatial_dims = 2
        self.net = build_unet(encoder_name, in_channels, 1, encoder_depth, decoder_channels)
        if encoder_weights_path is not None:
            load_encoder_weights(self.net, encoder_weights_path, encoder_name, in_channels, encoder_depth)
        self.threshold, self.dice_weight, self.bce_weight = threshold, dice_weight, bce_weight
        self.dice_loss = DiceLoss(mode="binary", from_logits=True)

    @property
    def stride(self) -> int:
        """Height and width the UNet needs to be divisible by (the encoder's output stride)."""
        return int(self.net.encoder.output_stride)

    def fast_path_target(self) -> nn.Module:
        return self.net

    def logits(self, image: Tensor) -> Tensor:
        """Foreground logits (B, 1, H, W) for any H, W (padded to the stride inside, cropped back)."""
        h, w = image.shape[-2:]
        s = self.stride
        ph, pw = (-h) % s, (-w) % s
        x = F.pad(image, (0, pw, 0, ph), mode="replicate") if ph or pw else image
        return self.net(x)[..., :h, :w]

    def _inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        return mask_batch(self, batch)

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        image, label = self._inputs(batch)
        if label is None:
            raise DataError("batch", f"SMPUNet training needs batch[{self.target_key!r}] (the mask)",
                            "use a data module that provides it")
        target = (label > 0.5).float()
        logits = self.logits(image)
        dice = self.dice_loss(logits, target)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        loss = self.dice_weight * dice + self.bce_weight * bce
        return loss, {"loss_dice": dice.detach(), "loss_bce": bce.detach()}

    @torch.no_grad()
    def predict(
        self,
        batch: dict[str, Any],
        *,
        sampler: str | None = None,
        steps: int | None = None,
        n_samples: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> dict[str, Tensor]:
        image, _ = self._inputs(batch)
        p = torch.sigmoid(self.logits(image).float())
        return {"prediction": (p > self.threshold).float(), "probability": p, "uncertainty": p * (1 - p)}


class RegressionSR(Method):
    """Super-resolution by ``scale`` with ESRGAN's RRDB network (:class:`~medrs_diff.nets.rrdb.RRDBNet`), L1 loss.

    Reads ``cond`` (the LR image, model space) and predicts ``image`` (HR); 2-D or 3-D.
    """

    name = "regression_sr"
    task = "image"
    input_key = "cond"
    target_key = "image"
    outputs = ("prediction", "uncertainty")
    data_space = ("prediction",)

    def __init__(
        self,
        in_channels: int = 3,
        scale: int = 4,
        spatial_dims: int = 2,
        rrdb_blocks: int = 8,
        rrdb_features: int = 32,
        rrdb_growth: int = 16,
    ) -> None:
        super().__init__()
        if scale < 1:
            raise ArgumentError("scale", f"must be >= 1, got {scale}", "use the super-resolution factor, e.g. 4")
        self.in_channels = self.out_channels = in_channels
        self.spatial_dims, self.scale = spatial_dims, scale
        self.net = RRDBNet(spatial_dims, in_channels, in_channels, scale, rrdb_features, rrdb_growth, rrdb_blocks)

    @property
    def grid_factor(self) -> int:
        return int(self.scale)

    def fast_path_target(self) -> nn.Module:
        return self.net

    def upsample(self, lr: Tensor) -> Tensor:
        mode = "bicubic" if self.spatial_dims == 2 else "trilinear"
        return F.interpolate(lr, scale_factor=self.scale, mode=mode, align_corners=False)

    def _inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        return sr_batch(self, batch, self.scale)

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        lr, hr = self._inputs(batch)
        if hr is None:
            raise DataError("batch", f"RegressionSR training needs batch[{self.target_key!r}] (the HR image)",
                            "use a data module that provides it")
        loss = F.l1_loss(self.net(lr), hr)
        return loss, {"loss_l1": loss.detach()}

    @torch.no_grad()
    def predict(
        self,
        batch: dict[str, Any],
        *,
        sampler: str | None = None,
        steps: int | None = None,
        n_samples: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> dict[str, Tensor]:
        lr, _ = self._inputs(batch)
        pred = self.net(lr).clamp(-1, 1)
        return {"prediction": pred, "uncertainty": torch.zeros_like(pred), "baseline": self.upsample(lr).clamp(-1, 1)}
