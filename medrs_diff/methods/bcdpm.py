"""BC-DPM (Shen et al. 2023): full-dose PET from low-dose PET with a bidirectional condition.

No official code is public, so every detail below follows the paper's description (≈ where a choice
is ours). An eps-prediction DDPM generates the full-dose image x0 (``image``, model space) from the
low-dose image LD (``cond``) under two conditions, switched by ``condition``:

- **spatial** (``"spatial"`` or ``"both"``): LD concatenated to x_t as an input channel of the UNet
  (spatial only = the spatial-only conditional DDPM baseline of the paper);
- **diffusion-domain** (``"diffusion"`` or ``"both"``): after every reverse step the condition block
  draws LD_{t-1} ~ q(LD_{t-1} | LD) and moves x_{t-1} toward it in one frequency band,
  ``x_{t-1} <- x_{t-1} + w B(LD_{t-1} - x_{t-1})`` (the engine's
  :class:`~medrs_diff.diffusion.guidance.DataConsistency` hook; diffusion only = an unconditional
  net, trained on full-dose images, with the block).

Default block (≈): ``dd_band="low"``, ``dd_factor=4``, ``dd_weight=1`` (ILVR-style low-pass
replacement of the 4^d block means). Why: counts thinning preserves the mean, so LD's low band is an
unbiased estimate of the full-dose activity whose noise variance is divided by the block size, while
the high band is where the Poisson noise lives; replacing the low band keeps regional SUV (the paper's
"quantitative intensity") and leaves the texture to the network. ``dd_band="all"`` with ``dd_weight``
< 1 is the weighted data-consistency alternative; ``dd_stop_t`` frees the last steps. 2-D slices or
3-D patches (``spatial_dims``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ..diffusion.ensemble import fuse_mean, variance_map
from ..diffusion.generators import GeneratorLike
from ..diffusion.guidance import DataConsistency
from ..diffusion.guidance.consistency import BANDS
from ..diffusion.process import DiffusionLoss, check_spatial
from ..diffusion.schedules import make_schedule
from ..errors import ArgumentError, DataError
from ..nets.unet import ConditionedUNet
from ._sampling import repeat_batch, sample_n
from .base import DiffusionMethod, DiffusionPair, check_sampler

Condition = Literal["spatial", "diffusion", "both"]
CONDITIONS = ("spatial", "diffusion", "both")


class BCDPM(DiffusionMethod):
    """Low-dose -> full-dose PET (``cond`` -> ``image``), conditions as the module describes."""

    name = "bcdpm"
    task = "image"
    input_key = "cond"
    target_key = "image"
    outputs = ("prediction", "uncertainty")
    data_space = ("prediction",)

    def __init__(
        self,
        spatial_dims: int = 2,
        condition: Condition = "both",
        channels: Sequence[int] = (64, 128, 256, 256),
        attention_levels: Sequence[bool] = (False, False, True, True),
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        timesteps: int = 1000,
        schedule: str = "linear",
        dd_weight: float = 1.0,
        dd_band: str = "low",
        dd_factor: int = 4,
        dd_stop_t: int = 0,
        n_samples: int = 1,
        sampler: str = "ddpm",
        sampling_steps: int | None = None,
    ) -> None:
        super().__init__()
        check_sampler(sampler)
        if condition not in CONDITIONS:
            raise ArgumentError("condition", f"unknown condition {condition!r}", f"choose one of {CONDITIONS}")
        if spatial_dims not in (2, 3):
            raise ArgumentError("spatial_dims", f"must be 2 or 3, got {spatial_dims}", "use 2 (slices) or 3 (patches)")
        if not 0.0 <= dd_weight <= 1.0:
            raise ArgumentError("dd_weight", f"must lie in [0, 1], got {dd_weight}", "use 1 (replace the band) or less")
        if dd_band not in BANDS:
            raise ArgumentError("dd_band", f"unknown band {dd_band!r}", f"choose one of {BANDS}")
        if not isinstance(dd_factor, int) or dd_factor < 1:
            raise ArgumentError("dd_factor", f"must be a positive integer, got {dd_factor!r}", "use e.g. 4")
        if n_samples < 1:
            raise ArgumentError("n_samples", f"must be >= 1, got {n_samples}", "draw at least one sample")
        self.in_channels = self.out_channels = 1
        self.spatial_dims = spatial_dims
        self.condition = condition
        self.unet = ConditionedUNet(
            spatial_dims, 1, 1, channels, attention_levels, num_res_blocks, num_head_channels, norm_num_groups,
            cond_channels=1 if self.spatial else 0,
        )
        self.schedule = make_schedule(schedule, timesteps)
        self.objective = DiffusionLoss(self.schedule, prediction_type="eps", loss_type="mse")
        self.dd_weight, self.dd_band, self.dd_factor, self.dd_stop_t = float(dd_weight), dd_band, dd_factor, dd_stop_t
        self.n_samples, self.sampler, self.sampling_steps = n_samples, sampler, sampling_steps

    @property
    def spatial(self) -> bool:
        return self.condition in ("spatial", "both")

    @property
    def diffusion_domain(self) -> bool:
        return self.condition in ("diffusion", "both")

    @property
    def denoiser(self) -> ConditionedUNet:
        return self.unet

    @property
    def size_multiple(self) -> int:
        m = self.unet.size_multiple
        if self.diffusion_domain and self.dd_band != "all":
            m = m * self.dd_factor // math.gcd(m, self.dd_factor)
        return m

    def _inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        ld = batch[self.input_key]
        check_spatial(ld, "low-dose image")
        self.check_input(ld, "low-dose image")
        fd = batch.get(self.target_key)
        if fd is not None and fd.shape != ld.shape:
            raise DataError("batch", f"full-dose {tuple(fd.shape)} and low-dose {tuple(ld.shape)} differ in shape",
                            "pair each low-dose image with its full-dose image on the same grid")
        return ld, fd

    def block(self, low_dose: Tensor, enabled: bool | None = None) -> DataConsistency:
        """The diffusion-domain condition block for a (batch of) low-dose image(s) in model space."""
        return DataConsistency(low_dose, weight=self.dd_weight, band=self.dd_band, factor=self.dd_factor,
                               stop_t=self.dd_stop_t, enabled=self.diffusion_domain if enabled is None else enabled)

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        ld, fd = self._inputs(batch)
        if fd is None:
            raise DataError("batch", f"BC-DPM training needs batch[{self.target_key!r}] (the full-dose image)",
                            "use a data module that provides it (PETDoseDataModule)")
        cond = ld if self.spatial else None
        return self.objective(lambda x, t: self.unet(x, t, cond=cond), fd, generator=generator)

    def diffusion_pair(self, batch: dict[str, Any]) -> DiffusionPair:
        """The (spatially LD-conditioned, or unconditional) UNet and the full-dose image; with the diffusion-domain
        condition the pair's options carry the LD condition block, so a fitted chain is scored with the block
        acting on every step of it, as ``predict`` samples (the block reads each step's alpha-bar, so it follows
        any chain)."""
        if (err := self.pair_refusal()) is not None:
            raise err
        ld, fd = self._inputs(batch)
        if fd is None:
            raise DataError("batch", f"BC-DPM's diffusion pair needs batch[{self.target_key!r}] (the full-dose image)",
                            "use a data module that provides it (PETDoseDataModule)")
        cond, net = (ld if self.spatial else None), self.unet
        options: dict[str, Any] = {"clip": True}
        if self.diffusion_domain:
            options["hooks"] = [self.block(ld)]
        return DiffusionPair(lambda x, t: net(x, t, cond=cond), fd, "eps", options)

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
        ld, _ = self._inputs(batch)
        n = n_samples if n_samples is not None else self.n_samples
        if n < 1:
            raise ArgumentError("n_samples", f"must be >= 1, got {n}", "draw at least one sample")
        cond = repeat_batch(ld, n) if self.spatial else None
        hooks = [self.block(repeat_batch(ld, n))] if self.diffusion_domain else []
        net = self.unet
        out = sample_n(
            lambda x, t: net(x, t, cond=cond), tuple(ld.shape), self.schedule, n_samples=n,
            sampler=sampler if sampler is not None else self.default_sampler,
            steps=steps if steps is not None else self.sampling_steps, device=ld.device, generator=generator,
            progress=progress, clip=True, hooks=hooks,
        ).transpose(0, 1).clamp(-1, 1)  # (B, n, C, ...)
        mean = fuse_mean(out)
        return {"prediction": mean, "uncertainty": variance_map(out) if n > 1 else torch.zeros_like(mean),
                "samples": out}
