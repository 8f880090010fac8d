"""TCDM (Zhang et al. 2024): large-factor (x8, x16) remote-sensing super-resolution by a diffusion chain
that starts at a truncated point instead of at pure noise.

From the paper's text (no public code): a **conditional truncated noise generator** (CTNG) predicts,
from the LR image alone, the posterior mean of p(x_t' | LR) and a truncated-noise image x_t', and the
reverse chain runs only from t' to 0 (the engine's truncated start,
:func:`~medrs_diff.diffusion.samplers.truncated.sample_from_estimate`); training adds **pixel-wise
texture-consistency** constraints between the SR estimate and the HR image.

Here (choices stated, each a constructor argument):

- the diffused quantity is SRDiff's residual ``(HR - bicubic_up(LR)) * res_rescale`` and the denoiser is
  SRDiff's conditioned UNet fed by the frozen RRDB LR encoder (this class extends :class:`SRDiff`);
- the CTNG is the RRDB regression head: it predicts ``x0_hat`` (the residual estimate); the posterior
  mean of x_t' is ``sqrt(abar_t') * x0_hat`` and the truncated-noise image is that mean plus
  ``sqrt(1 - abar_t') * eps`` (ES-DDPM's q(x_t' | x0_hat)); ``t_trunc = timesteps`` is the plain chain
  from pure noise (no estimate used);
- the CTNG is trained first (``pretrain_steps``, L1 + texture consistency), then frozen; the denoiser is
  trained on timesteps ``0 .. t_trunc`` only (``train_up_to_trunc``; False trains every timestep), with
  L1 on eps plus ``tc_weight`` x the texture-consistency loss of its x0 estimate;
- texture consistency (:func:`texture_consistency_loss`): per-pixel L1 between SR and HR plus per-pixel
  L1 between their horizontal and vertical finite differences (the local texture), in HR model space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..diffusion.ensemble import fuse_mean, variance_map
from ..diffusion.generators import GeneratorLike, randn
from ..diffusion.process import q_sample, to_x0_eps
from ..diffusion.samplers import SAMPLERS
from ..diffusion.samplers.truncated import sample_from_estimate
from ..errors import ArgumentError, DataError
from ._sampling import repeat_batch, sample_with_features
from .base import check_sampler, no_diffusion_pair
from .srdiff import SRDiff

#: LR values (model space) above this are outside any range the model can have been trained on.
MAX_MODEL_VALUE = 1.5


def texture_consistency_loss(sr: Tensor, hr: Tensor, gradient_weight: float = 1.0) -> Tensor:
    """Pixel-wise texture consistency: mean |SR - HR| + ``gradient_weight`` x mean |d SR - d HR| over the
    horizontal and vertical finite differences (the last two axes). Zero iff SR = HR (up to a constant
    offset for the gradient term, which the pixel term rules out)."""
    if sr.shape != hr.shape:
        raise ValueError(f"SR {tuple(sr.shape)} and HR {tuple(hr.shape)} differ in shape")
    pixel = (sr - hr).abs().mean()
    d = sr - hr
    grad = (d.diff(dim=-1).abs().mean() + d.diff(dim=-2).abs().mean()) / 2
    return pixel + gradient_weight * grad


class TCDM(SRDiff):
    name = "tcdm"

    def __init__(
        self,
        in_channels: int = 3,
        scale: int = 8,
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
        t_trunc: int = 10,
        train_up_to_trunc: bool = True,
        tc_weight: float = 1.0,
        tc_gradient_weight: float = 1.0,
        min_lr_size: int = 4,
        n_samples: int = 1,
        sampler: str = "ddpm",
        sampling_steps: int | None = None,
    ) -> None:
        if scale not in (2, 4, 8, 16):
            raise ArgumentError("scale", f"TCDM is built for x2 / x4 / x8 / x16, got {scale}", "use 4, 8 or 16")
        if not 1 <= t_trunc <= timesteps:
            raise ArgumentError("t_trunc", f"must lie in 1..timesteps ({timesteps}), got {t_trunc}",
                                "use about timesteps / 10 (the paper's ~90% saving) or timesteps for the full chain")
        if tc_weight < 0 or tc_gradient_weight < 0:
            raise ArgumentError("tc_weight", f"weights must be >= 0, got {tc_weight}, {tc_gradient_weight}",
                                "use 0 to switch the texture-consistency term off")
        if min_lr_size < 1:
            raise ArgumentError("min_lr_size", f"must be >= 1, got {min_lr_size}", "use the LR receptive field, e.g. 4")
        super().__init__(
            in_channels, scale, spatial_dims, channels, attention_levels, num_res_blocks, num_head_channels,
            norm_num_groups, rrdb_blocks, rrdb_features, rrdb_growth, timesteps, schedule, res_rescale,
            pretrain_steps, n_samples, sampler, sampling_steps,
        )
        self.t_trunc, self.train_up_to_trunc = int(t_trunc), bool(train_up_to_trunc)
        self.tc_weight, self.tc_gradient_weight = float(tc_weight), float(tc_gradient_weight)
        self.min_lr_size = int(min_lr_size)

    # -- checks ---------------------------------------------------------------------------------------
    @property
    def full_chain(self) -> bool:
        return self.t_trunc >= self.schedule.num_train_timesteps

    @property
    def trunc_index(self) -> int:
        """Schedule index where sampling starts (the last index for the full chain)."""
        if self.full_chain:
            return len(self.schedule) - 1
        return self.schedule.index_of_timestep(self.t_trunc)

    def pair_refusal(self) -> ArgumentError | None:
        if not self.full_chain:
            return no_diffusion_pair(self, f"t_trunc: {self.t_trunc} (the chain starts at the CTNG's truncated "
                                     "estimate, not at pure noise; t_trunc = timesteps is the plain chain)")
        return super().pair_refusal()

    def check_scale(self, scale: Any) -> None:
        """Refuse a requested factor (an int, or a batch's per-item factors) other than the trained one."""
        if scale is None:
            return
        for s in {int(v) for v in torch.as_tensor(scale).flatten().tolist()}:
            if s != self.scale:
                raise ArgumentError("scale", f"this TCDM checkpoint was trained for x{self.scale}, not x{s}",
                                    f"use a checkpoint trained at x{s} (fit a TCDM recipe with scale {s}) "
                                    f"or ask for x{self.scale}")

    def check_lr(self, lr: Tensor) -> None:
        """LR tiles at least the receptive field, and values in the model's range (16-bit data through an
        unclipped scaling lands far above it; through a clipping scaling such as ``dn8`` the raw values are
        checked by the Predictor, :func:`~medrs_diff.data.scaling.check_bit_depth`: a saturated tile of a real
        8-bit scene, e.g. cloud, is valid here)."""
        small = [s for s in lr.shape[2:] if s < self.min_lr_size]
        if small:
            raise DataError("LR image", f"tile {'x'.join(map(str, lr.shape[2:]))} px is smaller than the model's "
                            f"receptive field ({self.min_lr_size} LR px per side)",
                            f"use LR tiles of at least {self.min_lr_size} px (--tile) or a larger image")
        top = float(lr.detach().amax()) if lr.numel() else 0.0
        if not math.isfinite(top) or top > MAX_MODEL_VALUE:
            raise DataError("LR image", f"values reach {top:.3g} in model space, far above the range the model was "
                            "trained on (about [-1, 1]): the input looks like 16-bit data fed to a model trained on "
                            "8-bit / reflectance data",
                            "rescale the input to the training data's units (e.g. 8-bit DN or reflectance x 1e4) "
                            "or use a checkpoint trained on 16-bit data")


    def _inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        self.check_scale(batch.get("scale"))
        lr, hr = super()._inputs(batch)
        self.check_lr(lr)
        return lr, hr

    # -- the CTNG -------------------------------------------------------------------------------------
    def ctng(self, lr: Tensor, n_samples: int = 1, generator: GeneratorLike = None) -> tuple[Tensor, Tensor]:
        """(posterior mean of x_t' given LR, truncated-noise image x_t'), both (n*B, C, ...) sample-major."""
        base = self.upsample(lr)
        x0_hat = repeat_batch(self.residual.encode(self.sr_head(lr).clamp(-1, 1), base), n_samples)
        abar = float(self.schedule.alphas_cumprod[self.trunc_index])
        mean = math.sqrt(abar) * x0_hat
        eps = randn(tuple(x0_hat.shape), generator, device=x0_hat.device, dtype=x0_hat.dtype)
        return mean, mean + math.sqrt(1.0 - abar) * eps

    # -- training -------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        lr, hr = self._inputs(batch)
        if hr is None:
            raise DataError("batch", f"TCDM training needs batch[{self.target_key!r}] (the HR image)",
                            "use a data module that provides it")
        pretraining = self.pretraining
        if self.training:
            self.steps_done += 1
        if pretraining:
            sr = self.sr_head(lr)
            l1 = F.l1_loss(sr, hr)
            tc = texture_consistency_loss(sr, hr, self.tc_gradient_weight)
            return l1 + self.tc_weight * tc, {"loss_ctng": l1.detach(), "loss_tc": tc.detach()}
        self.encoder.requires_grad_(False)
        self.sr_head.requires_grad_(False)
        base = self.upsample(lr)
        x0 = self.residual.encode(hr, base)
        hi = self.trunc_index + 1 if self.train_up_to_trunc else len(self.schedule)
        index = torch.randint(0, hi, (x0.shape[0],), device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = q_sample(self.schedule, x0, index, eps)
        t_model = self.schedule.table("timesteps", x0.device, torch.long)[index]
        pred = self.unet(x_t, t_model, features=self.condition(lr))
        loss_eps = (pred - eps).abs().mean()
        abar = self.schedule.gather("alphas_cumprod", index, x0.ndim, dtype=pred.dtype)
        x0_pred, _ = to_x0_eps(pred, x_t, abar, "eps")
        sr = self.residual.decode(x0_pred.clamp(-1, 1), base)
        tc = texture_consistency_loss(sr, hr, self.tc_gradient_weight)
        return loss_eps + self.tc_weight * tc, {"loss_simple": loss_eps.detach(), "loss_tc": tc.detach()}

    # -- inference ------------------------------------------------------------------------------------
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
        if n < 1:
            raise ArgumentError("n_samples", f"must be >= 1, got {n}", "draw at least one sample")
        name = sampler if sampler is not None else self.default_sampler
        check_sampler(name)
        steps = steps if steps is not None else self.sampling_steps
        if steps is not None and not 1 <= steps <= self.trunc_index + 1:
            raise ArgumentError("steps", f"TCDM samples from t' = {self.t_trunc}: 1..{self.trunc_index + 1} steps, "
                                f"got {steps}", f"use at most {self.trunc_index + 1} steps (or none: all of them)")
        base = self.upsample(lr)
        features = self.condition(lr)
        b = lr.shape[0]
        if self.full_chain:  # t' = T: the plain chain from pure noise
            res = sample_with_features(self, features, tuple(base.shape), n_samples=n, sampler=name, steps=steps,
                                       generator=generator, progress=progress)
        else:
            feats = repeat_batch(features, n)
            net = self.unet
            x0_hat = repeat_batch(self.residual.encode(self.sr_head(lr).clamp(-1, 1), base), n)
            eps = randn(tuple(x0_hat.shape), generator, device=x0_hat.device, dtype=x0_hat.dtype)
            out = sample_from_estimate(
                SAMPLERS[name], lambda x, t: net(x, t, features=feats), x0_hat, self.schedule, t_start=self.t_trunc,
                generator=generator, noise=eps, steps=steps, progress=progress, clip=True,
            )
            res = out.reshape(n, b, *out.shape[1:]).transpose(0, 1)
        hr = self.residual.decode(res, base[:, None]).clamp(-1, 1)
        mean = fuse_mean(hr)
        return {
            "prediction": mean,
            "uncertainty": variance_map(hr) if n > 1 else torch.zeros_like(mean),
            "samples": hr,
            "baseline": base.clamp(-1, 1),
            "regression": self.sr_head(lr).clamp(-1, 1),
        }
