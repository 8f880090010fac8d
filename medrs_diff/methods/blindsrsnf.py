"""BlindSRSNF / CSNF (Wu, Ni, Wang, Zhang; TGRS 2023): blind super-resolution as a conditional diffusion chain
with an implicit, contrastively learned degradation representation.

Faithful to the paper and the facts of its code (``../shared/reference/remote_sensing.md`` §6):

- **content encoder**: an RRDB network maps the LR image to an SR estimate (``RRDBUpsampler``, trained with
  an L1 consistency loss to the HR) and features ``ctx`` (its last block + first conv, LR grid); both are
  concatenated after the first conv of the pixel-unshuffled (fold 2) noisy HR (:mod:`..nets.blindsrsnf`);
- **degradation encoder**: a MoCo pair (query encoder trained, key encoder its momentum copy, ``moco_momentum``
  0.999, a queue of ``queue_size`` keys) gives a ``deg_dim`` = 64-d code, trained with InfoNCE
  (temperature 0.07): the positive of an LR patch is another patch with the **same** degradation (batch key
  ``cond_key``, another crop of the same source degraded alike, from :class:`~medrs_diff.datamodules.blindsr.
  BlindSRDataModule`; without it, the left and right halves of the LR), negatives are the other patches of the
  batch (other degradations) and the queue;
- **degradation-aware dynamic convolutions** (DASR's DA_conv) in every residual block of the denoiser;
- **loss**: x0-prediction of the HR (MSE, the ELBO's x0 form) + ``sr_weight`` x L1(SR estimate, HR) +
  ``contrast_weight`` (0.05) x InfoNCE; the engine's cosine schedule, T = 1000;
- **sampling**: DDIM, 20 steps, eta 0, ``leading`` spacing (the code's ``skip: 50``: t = 0, 50, ..., 950).

Not from the paper: the InfoNCE also uses the in-batch keys as negatives (every other batch element has
another degradation), and the positive is a patch of another scene (content cannot identify it). The
degradation encoder sees the LR minus its 3 x 3 local mean (``deg_high_pass: true``; ``false`` = the paper's raw
LR): on phantoms the raw-LR encoder's codes followed the scene's colour, not the degradation (InfoNCE stuck at
chance for 150 steps), the high-passed one separated degradations within 100 steps (tests/methods).

Bad input (one error each, before compute): an LR/HR pair or ``scale=`` at another factor than the model's
(:meth:`check_scale`); an LR tile smaller than :attr:`min_lr_size` (one blur kernel footprint on the LR grid,
the least the degradation encoder needs); an input outside model space [-1, 1] (raw 8-/16-bit numbers given
without the scaling; the Predictor refuses 16-bit files for an 8-bit (``dn8``) model by range).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..diffusion.ensemble import fuse_mean, variance_map
from ..diffusion.generators import GeneratorLike
from ..diffusion.process import DiffusionLoss
from ..diffusion.schedules import make_schedule
from ..errors import ArgumentError, DataError
from ..nets.blindsrsnf import BlindSRDenoiser, DegradationEncoder
from ..nets.rrdb import RRDBEncoder, RRDBUpsampler
from ._sampling import repeat_batch, sample_n
from .base import DiffusionMethod, DiffusionPair, check_sampler, sr_size_multiple

#: batch key of a second LR patch with the same degradation as ``cond`` (the MoCo positive)
COND_KEY = "cond_key"
#: model-space inputs may exceed [-1, 1] by noise; beyond this they are not model space
MODEL_SPACE_LIMIT = 1.5
BLUR_KERNEL = 21


class BlindSRSNF(DiffusionMethod):
    name = "blindsrsnf"
    task = "image"
    input_key = "cond"
    target_key = "image"
    outputs = ("prediction", "uncertainty")
    data_space = ("prediction",)

    def __init__(
        self,
        in_channels: int = 3,
        scale: int = 4,
        channels: Sequence[int] = (64, 128, 256),
        num_res_blocks: int = 2,
        norm_num_groups: int = 32,
        rrdb_blocks: int = 23,
        rrdb_features: int = 64,
        rrdb_growth: int = 32,
        deg_dim: int = 64,
        deg_width: int = 64,
        deg_high_pass: bool = True,
        queue_size: int = 8192,
        moco_momentum: float = 0.999,
        temperature: float = 0.07,
        contrast_weight: float = 0.05,
        sr_weight: float = 1.0,
        timesteps: int = 1000,
        schedule: str = "cosine",
        n_samples: int = 1,
        sampler: str = "ddim",
        sampling_steps: int | None = 20,
        spacing: str = "leading",
    ) -> None:
        super().__init__()
        check_sampler(sampler)
        if not isinstance(scale, int) or scale < 1:
            raise ArgumentError("scale", f"must be an integer >= 1, got {scale!r}", "use the SR factor, e.g. 4")
        for name, v in (("queue_size", queue_size), ("deg_dim", deg_dim), ("timesteps", timesteps)):
            if v < 1:
                raise ArgumentError(name, f"must be >= 1, got {v}", f"set {name} to a positive integer")
        if not 0 <= moco_momentum < 1 or temperature <= 0 or contrast_weight < 0 or sr_weight < 0:
            raise ArgumentError("moco_momentum / temperature / contrast_weight / sr_weight",
                                f"got {moco_momentum}, {temperature}, {contrast_weight}, {sr_weight}",
                                "use 0 <= momentum < 1, temperature > 0, weights >= 0 (paper: 0.999, 0.07, 0.05, 1)")
        self.in_channels = self.out_channels = in_channels
        self.spatial_dims, self.scale = 2, scale
        self.encoder = RRDBEncoder(2, in_channels, in_channels, rrdb_features, rrdb_growth, rrdb_blocks)
        self.sr_head = RRDBUpsampler(self.encoder, 2, in_channels, scale)
        self.deg_encoder = DegradationEncoder(in_channels, deg_dim, deg_width, deg_high_pass)
        self.deg_encoder_key = DegradationEncoder(in_channels, deg_dim, deg_width, deg_high_pass)
        self.deg_encoder_key.load_state_dict(self.deg_encoder.state_dict())
        self.deg_encoder_key.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, deg_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.unet = BlindSRDenoiser(in_channels, rrdb_features, channels, num_res_blocks, deg_dim, norm_num_groups)
        self.schedule = make_schedule(schedule, timesteps)
        self.objective = DiffusionLoss(self.schedule, prediction_type="x0", loss_type="mse")
        self.moco_momentum, self.temperature = moco_momentum, temperature
        self.contrast_weight, self.sr_weight = contrast_weight, sr_weight
        self.n_samples, self.sampler, self.sampling_steps, self.spacing = n_samples, sampler, sampling_steps, spacing

    @property
    def denoiser(self) -> BlindSRDenoiser:
        return self.unet

    @property
    def grid_factor(self) -> int:
        return int(self.scale)

    @property
    def size_multiple(self) -> int:
        """LR sizes whose HR size (x scale) the denoiser can take."""
        return sr_size_multiple(self.unet.size_multiple, self.scale)

    @property
    def min_lr_size(self) -> int:
        """The smallest LR tile side: one blur kernel footprint (21 HR px) on the LR grid, a size multiple."""
        need = max(math.ceil(BLUR_KERNEL / self.scale), 4)
        return -(-need // self.size_multiple) * self.size_multiple

    # -- checks -----------------------------------------------------------------------------------
    def check_scale(self, scale: int, where: str = "scale") -> None:
        """Refuse a super-resolution factor the model was not trained for."""
        if int(scale) != int(self.scale):
            raise ArgumentError(where, f"x{scale} was asked, but this BlindSRSNF model was trained for x{self.scale} "
                                "(the content encoder's upsampler and the degradation code are factor-specific)",
                                f"use a checkpoint trained at x{scale}, or run this one at x{self.scale}")

    def check_input(self, x: Tensor, where: str = "input") -> None:
        super().check_input(x, where)
        h, w = x.shape[-2:]
        m = self.min_lr_size
        if min(h, w) < m:
            raise DataError(where, f"LR tile {h}x{w} is smaller than {m}x{m}, the blur kernel's footprint at "
                            f"x{self.scale} that the degradation encoder needs to see",
                            f"give tiles of at least {m} LR pixels (--tile {m} or more) or a larger image")
        big = float(x.detach().abs().amax()) if x.numel() else 0.0
        if not math.isfinite(big):
            raise DataError(where, "holds NaN or inf", "fill or mask non-finite pixels first")
        if big > MODEL_SPACE_LIMIT:
            raise DataError(where, f"values reach {big:g}, far outside model space [-1, 1]: raw 8-/16-bit numbers "
                            "were given without the training scaling", "scale the input as in training (the "
                            "Predictor does it from the checkpoint; 16-bit data need a model trained on 16-bit data)")

    def _pair(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        lr = batch[self.input_key]
        if lr.ndim != 4:
            raise DataError("LR image", f"expected (B, C, H, W), got shape {tuple(lr.shape)}", "pass 2-D images")
        self.check_input(lr, "LR image")
        hr = batch.get(self.target_key)
        if hr is not None:
            ratio = hr.shape[-1] / lr.shape[-1]
            if hr.shape[-2] / lr.shape[-2] == ratio and ratio.is_integer() and int(ratio) != self.scale:
                self.check_scale(int(ratio), "batch (HR / LR size)")
            if tuple(hr.shape[2:]) != tuple(s * self.scale for s in lr.shape[2:]) or hr.shape[:2] != lr.shape[:2]:
                raise DataError("batch", f"HR {tuple(hr.shape)} does not match LR {tuple(lr.shape)} at scale "
                                f"{self.scale}", "pair each LR image with its HR image")
        return lr, hr

    # -- conditioning -----------------------------------------------------------------------------
    def content(self, lr: Tensor) -> tuple[Tensor, Tensor]:
        """The RRDB's SR estimate (HR grid) and features ``ctx`` (LR grid)."""
        _, feats = self.encoder(lr, return_features=True)
        ctx = feats[-1] + feats[0]
        h = F.interpolate(ctx, scale_factor=self.scale, mode="nearest")
        base = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return base + self.sr_head.up(h), ctx

    def degradation(self, lr: Tensor) -> Tensor:
        """The degradation code (B, deg_dim) of LR images."""
        return self.deg_encoder(lr)[0]

    def degradation_similarity(self, a: Tensor, b: Tensor) -> Tensor:
        """Cosine similarity of the (projected, as in InfoNCE) degradation codes of two LR batches, (B,)."""
        return F.cosine_similarity(self.deg_encoder(a)[1], self.deg_encoder(b)[1], dim=1)

    @torch.no_grad()
    def _momentum_update(self) -> None:
        m = self.moco_momentum
        for pk, pq in zip(self.deg_encoder_key.parameters(), self.deg_encoder.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1 - m)

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        n, size = keys.shape[0], self.queue.shape[0]
        idx = (int(self.queue_ptr) + torch.arange(n, device=keys.device)) % size
        self.queue[idx] = keys[-size:] if n > size else keys
        self.queue_ptr.fill_((int(self.queue_ptr) + n) % size)

    def info_nce(self, q_lr: Tensor, k_lr: Tensor) -> tuple[Tensor, Tensor]:
        """MoCo InfoNCE of queries ``q_lr`` against their positives ``k_lr`` (same degradations, row by row),
        the other rows' keys and the queue; returns (loss, the query codes)."""
        rep, proj = self.deg_encoder(q_lr)
        q = F.normalize(proj, dim=1)
        if self.training:
            self._momentum_update()
        with torch.no_grad():
            k = F.normalize(self.deg_encoder_key(k_lr)[1], dim=1)
        logits = torch.cat([q @ k.t(), q @ self.queue.clone().t()], 1) / self.temperature
        target = torch.arange(q.shape[0], device=q.device)  # the diagonal: each query's own key
        loss = F.cross_entropy(logits, target)
        if self.training:
            self._enqueue(k)
        return loss, rep

    # -- training ---------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        lr, hr = self._pair(batch)
        if hr is None:
            raise DataError("batch", f"BlindSRSNF training needs batch[{self.target_key!r}] (the HR image)",
                            "use a data module that provides it (BlindSRDataModule)")
        key = batch.get(COND_KEY)
        if key is not None:
            if key.shape != lr.shape:
                raise DataError("batch", f"{COND_KEY} {tuple(key.shape)} differs from the LR {tuple(lr.shape)}",
                                "give the positive patch the LR's shape")
            nce, rep = self.info_nce(lr, key)
        else:  # no second patch: the two halves of each LR share its degradation
            half = lr.shape[-1] // 2
            nce, _ = self.info_nce(lr[..., :half], lr[..., half:2 * half])
            rep = self.degradation(lr)
        sr, ctx = self.content(lr)
        l_sr = F.l1_loss(sr, hr)
        l_diff, logs = self.objective(lambda x, t: self.unet(x, t, sr=sr, ctx=ctx, rep=rep), hr, generator=generator)
        total = l_diff + self.sr_weight * l_sr + self.contrast_weight * nce
        logs = {**logs, "loss_sr": l_sr.detach(), "loss_infonce": nce.detach()}
        return total, logs

    def diffusion_pair(self, batch: dict[str, Any]) -> DiffusionPair:
        """The x0-predicting denoiser conditioned on the LR's content (SR estimate, features) and degradation code,
        as ``predict`` conditions it, and the HR image."""
        if (err := self.pair_refusal()) is not None:
            raise err
        lr, hr = self._pair(batch)
        if hr is None:
            raise DataError("batch", f"BlindSRSNF's diffusion pair needs batch[{self.target_key!r}] (the HR image)",
                            "use a data module that provides it (BlindSRDataModule)")
        sr, ctx = self.content(lr)
        rep, net = self.degradation(lr), self.unet
        return DiffusionPair(lambda x, t: net(x, t, sr=sr, ctx=ctx, rep=rep), hr, "x0", {"clip": True})

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
        scale: int | None = None,
    ) -> dict[str, Tensor]:
        """HR samples of the LR ``batch['cond']``: ``prediction`` (mean of ``n_samples``), ``uncertainty``
        (their variance), ``samples``, the RRDB's ``regression`` and the ``baseline`` (bicubic). ``scale``,
        when given, must be the model's."""
        if scale is not None:
            self.check_scale(scale)
        lr, _ = self._pair(batch)
        n = n_samples if n_samples is not None else self.n_samples
        sampler = sampler if sampler is not None else self.default_sampler
        check_sampler(sampler)
        sr, ctx = self.content(lr)
        rep = self.degradation(lr)
        sr_n, ctx_n, rep_n = (repeat_batch(v, n) for v in (sr, ctx, rep))
        extra = {"spacing": self.spacing} if sampler == "ddim" else {}
        out = sample_n(lambda x, t: self.unet(x, t, sr=sr_n, ctx=ctx_n, rep=rep_n), tuple(sr.shape), self.schedule,
                       n_samples=n, sampler=sampler, steps=steps if steps is not None else self.sampling_steps,
                       device=lr.device, generator=generator, progress=progress, clip=True, prediction_type="x0",
                       **extra)
        hr = out.transpose(0, 1).clamp(-1, 1)  # (B, n, C, H, W)
        mean = fuse_mean(hr)
        return {
            "prediction": mean,
            "uncertainty": variance_map(hr) if n > 1 else torch.zeros_like(mean),
            "samples": hr,
            "regression": sr.clamp(-1, 1),
            "baseline": F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(-1, 1),
        }
