"""SRDiff (Li et al., Neurocomputing 2022): residual diffusion for single-image super-resolution.

Faithful to the paper and its code's facts: the diffused quantity is the residual
``(HR - bicubic_up(LR)) * res_rescale``; an RRDB LR encoder (8 blocks, 32 features) is first
pre-trained as a regression SR network (L1) and then **frozen**; every third of its block features
is concatenated, lifted to HR size by a stride-``scale`` transposed conv and **added** after the
UNet's first residual block; eps is learned with L1; cosine schedule with T = 100 and full
ancestral sampling by default. Here both phases run in one ``fit``: the first ``pretrain_steps``
optimizer steps train the RRDB, later ones the diffusion model with the RRDB frozen.

``process: rddm`` (default ``ddpm``, the paper's) switches the diffusion to RDDM (Liu et al. CVPR 2024;
:mod:`medrs_diff.methods._rddm`): ``I_in`` is the up-sampled LR (the base of SRDiff's residual), ``I_0`` the HR
image, the residual ``I_in - I_0`` and the noise are diffused with separate schedules (``rddm_alpha``,
``rddm_beta2``, ``sum_scale``), the UNet sees ``cat(I_t, I_in)`` plus the frozen RRDB features and returns
residual and noise (2C channels, L1 on both); sampling starts at ``I_in + betabar_T eps`` and runs RDDM's sampler
(``ddim``: eta 0, ``ddpm``: eta 1; ``sampling_steps`` null = the paper's 10). ``res_rescale`` is not used there
(a value other than its default 2.0 is refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..diffusion.ensemble import fuse_mean, variance_map
from ..diffusion.generators import GeneratorLike
from ..diffusion.process import DiffusionLoss, Residual
from ..diffusion.schedules import make_schedule
from ..errors import ArgumentError, DataError
from ..nets.conv import conv_transpose
from ..nets.rrdb import RRDBEncoder, RRDBUpsampler
from ..nets.unet import ConditionedUNet, check_downsample
from ._rddm import build_rddm, check_process, check_rddm_steps, rddm_channels, rddm_eta, rddm_restore
from ._sampling import repeat_batch, sample_with_features
from .base import DiffusionMethod, DiffusionPair, check_sampler, no_diffusion_pair, sr_batch, sr_size_multiple


class SRDiff(DiffusionMethod):
    name = "srdiff"
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
        channels: Sequence[int] = (64, 128, 128, 256),
        attention_levels: Sequence[bool] = (False, False, False, False),
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        rrdb_blocks: int = 8,
        rrdb_features: int = 32,
        rrdb_growth: int = 16,
        timesteps: int = 100,
        schedule: str = "cosine",
        res_rescale: float = 2.0,
        pretrain_steps: int = 1000,
        n_samples: int = 1,
        sampler: str = "ddpm",
        sampling_steps: int | None = None,
        downsample: str = "conv",
        process: str = "ddpm",
        rddm_alpha: str = "decreased",
        rddm_beta2: str = "increased",
        sum_scale: float = 0.01,
    ) -> None:
        super().__init__()
        check_downsample(downsample)
        check_sampler(sampler)
        check_process(process)
        self.process = process
        if process == "rddm":
            rddm_eta(sampler)
            self.rddm_schedule, self.rddm_objective = build_rddm(timesteps, rddm_alpha, rddm_beta2, sum_scale)
            check_rddm_steps(sampling_steps, self.rddm_schedule, "sampling_steps")
            if res_rescale != 2.0:
                raise ArgumentError("res_rescale", f"is not used under process: rddm (got {res_rescale}); RDDM "
                                    "diffuses the residual HR - up(LR) with its own schedules", "drop res_rescale")
        if scale < 1:
            raise ArgumentError("scale", f"must be >= 1, got {scale}", "use the super-resolution factor, e.g. 4")
        self.in_channels = self.out_channels = in_channels
        self.spatial_dims, self.scale = spatial_dims, scale
        self.encoder = RRDBEncoder(spatial_dims, in_channels, in_channels, rrdb_features, rrdb_growth, rrdb_blocks)
        self.sr_head = RRDBUpsampler(self.encoder, spatial_dims, in_channels, scale)
        n_taps = len(range(2, rrdb_blocks + 1, 3))
        if n_taps == 0:
            raise ArgumentError("rrdb_blocks", f"must be >= 2 for SRDiff, got {rrdb_blocks}",
                                "use 2 or more blocks (SRDiff taps every third block feature)")
        self.cond_proj = conv_transpose(spatial_dims, rrdb_features * n_taps, channels[0], scale)
        self.unet = ConditionedUNet(
            spatial_dims, in_channels, rddm_channels(process, in_channels), channels, attention_levels,
            num_res_blocks, num_head_channels, norm_num_groups, cond_at="first_block", downsample=downsample,
            cond_channels=in_channels if process == "rddm" else 0,
        )
        self.schedule = make_schedule(schedule, timesteps)
        self.objective = DiffusionLoss(self.schedule, prediction_type="eps", loss_type="l1")
        self.residual = Residual(res_rescale)
        self.pretrain_steps = pretrain_steps
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.n_samples, self.sampler, self.sampling_steps = n_samples, sampler, sampling_steps

    @property
    def denoiser(self) -> ConditionedUNet:
        return self.unet

    @property
    def grid_factor(self) -> int:
        return int(self.scale)

    @property
    def size_multiple(self) -> int:
        """LR sizes whose HR size (x scale) the UNet can take."""
        return sr_size_multiple(self.unet.size_multiple, self.scale)

    # -- helpers ----------------------------------------------------------------------------------
    def upsample(self, lr: Tensor) -> Tensor:
        mode = "bicubic" if self.spatial_dims == 2 else "trilinear"
        return F.interpolate(lr, scale_factor=self.scale, mode=mode, align_corners=False)

    def condition(self, lr: Tensor) -> Tensor:
        """Frozen-encoder features: every third block output, concatenated, lifted to HR size."""
        with torch.no_grad():
            _, feats = self.encoder(lr, return_features=True)
        return self.cond_proj(torch.cat(feats[2::3], 1))

    def _inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        return sr_batch(self, batch, self.scale)

    @property
    def pretraining(self) -> bool:
        return int(self.steps_done) < self.pretrain_steps

    # -- training ---------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        lr, hr = self._inputs(batch)
        if hr is None:
            raise DataError("batch", f"SRDiff training needs batch[{self.target_key!r}] (the HR image)",
                            "use a data module that provides it")
        pretraining = self.pretraining
        if self.training:
            self.steps_done += 1
        if pretraining:
            loss = F.l1_loss(self.sr_head(lr), hr)
            return loss, {"loss_rrdb": loss.detach()}
        self.encoder.requires_grad_(False)
        self.sr_head.requires_grad_(False)
        features = self.condition(lr)
        if self.process == "rddm":
            up = self.upsample(lr)
            return self.rddm_objective(lambda x, t: self.unet(x, t, cond=up, features=features), hr, up,
                                       generator=generator)
        x0 = self.residual.encode(hr, self.upsample(lr))
        return self.objective(lambda x, t: self.unet(x, t, features=features), x0, generator=generator)

    def pair_refusal(self) -> ArgumentError | None:
        return no_diffusion_pair(self, "process: rddm") if self.process == "rddm" else super().pair_refusal()

    def diffusion_pair(self, batch: dict[str, Any]) -> DiffusionPair:
        """The frozen-encoder-conditioned UNet and the scaled residual x0 of an (LR, HR) batch."""
        if (err := self.pair_refusal()) is not None:
            raise err
        lr, hr = self._inputs(batch)
        if hr is None:
            raise DataError("batch", f"SRDiff's diffusion pair needs batch[{self.target_key!r}] (the HR image)",
                            "use a data module that provides it")
        x0 = self.residual.encode(hr, self.upsample(lr))
        features = self.condition(lr)
        return DiffusionPair(lambda x, t: self.unet(x, t, features=features), x0, "eps", {"clip": True})

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
        lr, _ = self._inputs(batch)
        n = n_samples if n_samples is not None else self.n_samples
        base = self.upsample(lr)
        if self.process == "rddm":
            hr = self._rddm_predict(lr, base, n, sampler, steps, generator)
        else:
            hr = self._ddpm_predict(lr, base, n, sampler, steps, generator, progress)
        mean = fuse_mean(hr)
        return {
            "prediction": mean,
            "uncertainty": variance_map(hr) if n > 1 else torch.zeros_like(mean),
            "samples": hr,
            "baseline": base.clamp(-1, 1),
            "regression": self.sr_head(lr).clamp(-1, 1),
        }

    def _ddpm_predict(self, lr: Tensor, base: Tensor, n: int, sampler: str | None, steps: int | None,
                      generator: GeneratorLike, progress: bool) -> Tensor:
        res = sample_with_features(  # clipped: SRDiff clips the predicted residual to [-1, 1]
            self, self.condition(lr), tuple(base.shape), n_samples=n, sampler=sampler, steps=steps,
            generator=generator, progress=progress,
        )
        return self.residual.decode(res, base[:, None]).clamp(-1, 1)  # (B, n, C, ...)

    def _rddm_predict(self, lr: Tensor, base: Tensor, n: int, sampler: str | None, steps: int | None,
                      generator: GeneratorLike) -> Tensor:
        """(B, n, C, ...) HR samples from RDDM's sampler started at the up-sampled LR (plus noise)."""
        name = sampler if sampler is not None else self.default_sampler
        steps = steps if steps is not None else self.sampling_steps
        rddm_eta(name)
        check_rddm_steps(steps, self.rddm_schedule)
        if n < 1:
            raise ArgumentError("n_samples", f"must be >= 1, got {n}", "draw at least one sample")
        feats, up = repeat_batch(self.condition(lr), n), repeat_batch(base, n)
        net = self.unet
        hr = rddm_restore(lambda x, t: net(x, t, cond=up, features=feats), up, self.rddm_schedule,
                          sampler=name, steps=steps, generator=generator)
        return hr.reshape(n, *base.shape).transpose(0, 1)
