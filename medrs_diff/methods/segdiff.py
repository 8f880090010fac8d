"""SegDiff (Amit et al. 2021, arXiv 2112.00390): diffusion over the segmentation mask.

Faithful to the paper: the mask (scaled to [-1, 1]) is diffused; an RRDB encoder G maps the image
to features that are **added** to the noisy-mask features F(x_t) right after the UNet's first
convolution (not concatenated); eps-MSE with fixed variances; T = 100 steps with the linear
schedule; at test time N stochastic samples (the paper: all 100 ancestral steps) are mapped to
[0, 1] and fused by mean (then 0.5), majority vote or STAPLE, with their per-pixel variance as
uncertainty (``samples`` are returned as (B, N, C, ...), the ensemble layout). Works in 2D and 3D
(``spatial_dims``). Binary masks diffuse one foreground channel; ``num_classes`` K >= 3 diffuses K
one-hot channels in [-1, 1] and fuses by argmax / multi-class vote / STAPLE, with the predictive
entropy as uncertainty (:mod:`medrs_diff.methods._segmentation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..diffusion.generators import GeneratorLike
from ..diffusion.process import DiffusionLoss
from ..diffusion.schedules import make_schedule
from ..errors import DataError
from ..nets.rrdb import RRDBEncoder
from ..nets.unet import ConditionedUNet
from ._sampling import sample_with_features
from ._segmentation import FUSIONS, check_fusion, decode_samples, encode_mask, mask_channels
from .base import DiffusionMethod, check_sampler, mask_batch

__all__ = ["FUSIONS", "SegDiff"]


class SegDiff(DiffusionMethod):
    name = "segdiff"
    task = "seg"
    input_key = "image"
    target_key = "label"
    outputs = ("prediction", "uncertainty", "probability")

    def __init__(
        self,
        in_channels: int = 1,
        spatial_dims: int = 2,
        num_classes: int = 2,
        channels: Sequence[int] = (128, 128, 256, 256),
        attention_levels: Sequence[bool] = (False, False, True, True),
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        rrdb_blocks: int = 10,
        rrdb_features: int = 64,
        rrdb_growth: int = 32,
        timesteps: int = 100,
        schedule: str = "linear",
        n_samples: int = 9,
        fusion: str = "mean",
        sampler: str = "ddpm",
        sampling_steps: int | None = None,
    ) -> None:
        super().__init__()
        check_sampler(sampler)
        check_fusion(fusion)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.out_channels = mask_channels(num_classes)
        self.spatial_dims = spatial_dims
        self.unet = ConditionedUNet(
            spatial_dims, self.out_channels, self.out_channels, channels, attention_levels, num_res_blocks,
            num_head_channels, norm_num_groups,
            cond_at="conv_in",
        )
        self.encoder = RRDBEncoder(spatial_dims, in_channels, channels[0], rrdb_features, rrdb_growth, rrdb_blocks)
        self.schedule = make_schedule(schedule, timesteps)
        self.objective = DiffusionLoss(self.schedule, prediction_type="eps", loss_type="mse")
        self.n_samples, self.fusion = n_samples, fusion
        self.sampler, self.sampling_steps = sampler, sampling_steps

    @property
    def denoiser(self) -> ConditionedUNet:
        return self.unet

    @property
    def size_multiple(self) -> int:
        return self.unet.size_multiple

    # -- training ---------------------------------------------------------------------------------
    def _inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        return mask_batch(self, batch)

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        image, label = self._inputs(batch)
        if label is None:
            raise DataError("batch", f"SegDiff training needs batch[{self.target_key!r}] (the mask)",
                            "use a data module that provides it")
        x0 = encode_mask(label, self.num_classes)
        features = self.encoder(image)
        return self.objective(lambda x, t: self.unet(x, t, features=features), x0, generator=generator)

    # -- inference --------------------------------------------------------------------------------
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
        image, _ = self._inputs(batch)
        n = n_samples if n_samples is not None else self.n_samples
        samples = sample_with_features(
            self, self.encoder(image), (image.shape[0], self.out_channels, *image.shape[2:]), n_samples=n,
            sampler=sampler, steps=steps, generator=generator, progress=progress,
        )
        return decode_samples(samples, self.num_classes, self.fusion)
