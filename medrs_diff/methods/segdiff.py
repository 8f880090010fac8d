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

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..nets.rrdb import RRDBEncoder
from ..nets.unet import ConditionedUNet, check_downsample
from ._sampling import sample_with_features
from ._segmentation import FUSIONS
from ._segmenter import DiffusionSegmenter

__all__ = ["FUSIONS", "SegDiff"]


class SegDiff(DiffusionSegmenter):
    name = "segdiff"

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
        downsample: str = "conv",
    ) -> None:
        super().__init__()
        check_downsample(downsample)
        self.setup_segmenter(in_channels=in_channels, spatial_dims=spatial_dims, num_classes=num_classes,
                             timesteps=timesteps, schedule=schedule, n_samples=n_samples, fusion=fusion,
                             sampler=sampler, sampling_steps=sampling_steps)
        self.unet = ConditionedUNet(
            spatial_dims, self.out_channels, self.out_channels, channels, attention_levels, num_res_blocks,
            num_head_channels, norm_num_groups,
            cond_at="conv_in", downsample=downsample,
        )
        self.encoder = RRDBEncoder(spatial_dims, in_channels, channels[0], rrdb_features, rrdb_growth, rrdb_blocks)

    @property
    def denoiser(self) -> ConditionedUNet:
        return self.unet

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        image, _, x0 = self.training_pair(batch)
        features = self.encoder(image)
        return self.objective(lambda x, t: self.unet(x, t, features=features), x0, generator=generator)

    def mask_denoiser(self, image: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        features, net = self.encoder(image), self.unet
        return lambda x, t: net(x, t, features=features)

    def sample_masks(self, image: Tensor, n_samples: int, sampling: dict[str, Any]) -> tuple[Tensor, dict]:
        return sample_with_features(self, self.encoder(image), self.mask_shape(image), n_samples=n_samples,
                                    simplex=self.simplex, **sampling), {}
