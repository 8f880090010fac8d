"""SegDiff (Amit et al. 2021, arXiv 2112.00390): diffusion over the segmentation mask.

Faithful to the paper: the mask (scaled to [-1, 1]) is diffused; an RRDB encoder G maps the image
to features that are **added** to the noisy-mask features F(x_t) right after the UNet's first
convolution (not concatenated); eps-MSE with fixed variances; T = 100 steps with the linear
schedule; at test time N stochastic samples (the paper: all 100 ancestral steps) are mapped to
[0, 1] and fused by mean (then 0.5), majority vote or STAPLE, with their per-pixel variance as
uncertainty (``samples`` are returned as (B, N, 1, ...), the ensemble layout). Works in 2D and 3D
(``spatial_dims``). Binary masks (one foreground channel).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..diffusion.ensemble import fuse_mean, majority_vote, staple, variance_map
from ..diffusion.process import DiffusionLoss, check_spatial
from ..diffusion.schedules import make_schedule
from ..nets.rrdb import RRDBEncoder
from ..nets.unet import ConditionedUNet
from ._sampling import sample_with_features
from .base import DiffusionMethod

FUSIONS = ("mean", "majority", "staple")


class SegDiff(DiffusionMethod):
    name = "segdiff"
    task = "seg"
    input_key = "image"
    target_key = "label"

    def __init__(
        self,
        in_channels: int = 1,
        spatial_dims: int = 2,
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
        self._init_args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in locals().items()
                           if k not in ("self", "__class__")}
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {FUSIONS}")
        self.in_channels = in_channels
        self.out_channels = 1
        self.spatial_dims = spatial_dims
        self.unet = ConditionedUNet(
            spatial_dims, 1, 1, channels, attention_levels, num_res_blocks, num_head_channels, norm_num_groups,
            cond_at="conv_in",
        )
        self.encoder = RRDBEncoder(spatial_dims, in_channels, channels[0], rrdb_features, rrdb_growth, rrdb_blocks)
        self.schedule = make_schedule(schedule, timesteps)
        self.objective = DiffusionLoss(self.schedule, prediction_type="eps", loss_type="mse")
        self.n_samples, self.fusion = n_samples, fusion
        self.sampler, self.sampling_steps = sampler, sampling_steps

    # -- training ---------------------------------------------------------------------------------
    def _inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        image = batch[self.input_key]
        check_spatial(image, "image")
        self.check_input(image, "image")
        label = batch.get(self.target_key)
        if label is not None:
            if label.shape[0] != image.shape[0] or label.shape[2:] != image.shape[2:]:
                raise ValueError(
                    f"image {tuple(image.shape)} and label {tuple(label.shape)} differ in batch or spatial shape"
                )
            if label.shape[1] != 1:
                raise ValueError(f"SegDiff segments one foreground channel; the label has {label.shape[1]}")
        return image, label

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        image, label = self._inputs(batch)
        if label is None:
            raise ValueError(f"SegDiff training needs batch[{self.target_key!r}] (the mask)")
        x0 = label.float() * 2 - 1
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
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> dict[str, Tensor]:
        image, _ = self._inputs(batch)
        n = n_samples or self.n_samples
        samples = sample_with_features(
            self, self.encoder(image), (image.shape[0], 1, *image.shape[2:]), n_samples=n, sampler=sampler,
            steps=steps, generator=generator, progress=progress,
        )
        probs = ((samples + 1) / 2).clamp(0, 1)  # (B, n, 1, ...) mask probabilities
        mean = fuse_mean(probs)
        if self.fusion == "majority":
            fused = majority_vote((probs > 0.5).long(), num_classes=2).float()
        elif self.fusion == "staple":
            fused = staple((probs[:, :, 0] > 0.5).long(), num_classes=2).labels[:, None].float()
        else:
            fused = (mean > 0.5).float()
        uncertainty = variance_map(probs) if n > 1 else torch.zeros_like(mean)
        return {"prediction": fused, "probability": mean, "uncertainty": uncertainty, "samples": probs}
