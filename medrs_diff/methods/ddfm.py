"""DDFM (Zhao et al., ICCV 2023): training-free fusion of two registered modalities with an unconditional prior.

Training is only the prior: an unconditional eps-prediction DDPM (MSE) on single-channel images of the
target domain, here the channels ``prior_channels`` of each training case (the gradient source b, e.g.
MRI slices, by default), which medrs-diff trains itself (no downloaded weights: the paper used OpenAI's
ImageNet model; the prior's provenance is the checkpoint ``fit`` wrote). Fusion is sampler-side only:
``predict`` takes ``image`` (B, 2, ...) = [a, b] (a: the intensity source, PET / SPECT / CT / infrared;
b: the gradient source, MRI / visible) and runs DDIM (100 steps, eta 0) from noise with the
:class:`~medrs_diff.diffusion.guidance.DDFMFusion` hook, which refines every step's x0 estimate by one EM
iteration (lambda 0.5, rho 0.01; ``official_code``: which EM model, see
:mod:`medrs_diff.diffusion.guidance.ddfm`). The fused image is returned in [0, 1] (model space [-1, 1] mapped
linearly; the two sources' units differ, so it is not mapped back to either).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..data.colour import fuse_on_luminance
from ..diffusion.ensemble import fuse_mean, variance_map
from ..diffusion.generators import GeneratorLike
from ..diffusion.guidance.ddfm import DDFM_ETA, DDFM_LAMBDA, DDFM_RHO, DDFM_STEPS, DDFMFusion
from ..diffusion.process import DiffusionLoss, check_spatial
from ..diffusion.schedules import make_schedule
from ..errors import ArgumentError, DataError
from ..metrics.fusion import mutual_information
from ..nets.unet import ConditionedUNet
from ._sampling import repeat_batch, sample_n
from .base import DiffusionMethod, DiffusionPair, check_sampler


class DDFM(DiffusionMethod):
    name = "ddfm"
    task = "image"
    input_key = "image"
    target_key = "fused"  # no reference fused image exists; validation scores MI to both sources
    outputs = ("prediction", "uncertainty")

    def __init__(
        self,
        spatial_dims: int = 2,
        prior_channels: Sequence[int] | None = (1,),
        intensity_channel: int = 0,
        channels: Sequence[int] = (32, 64, 64, 128),
        attention_levels: Sequence[bool] = (False, False, False, True),
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        timesteps: int = 1000,
        schedule: str = "linear",
        lam: float = DDFM_LAMBDA,
        rho: float = DDFM_RHO,
        official_code: bool = True,
        eta: float = DDFM_ETA,
        n_samples: int = 1,
        sampler: str = "ddim",
        sampling_steps: int | None = DDFM_STEPS,
    ) -> None:
        super().__init__()
        check_sampler(sampler)
        if intensity_channel not in (0, 1):
            raise ArgumentError("intensity_channel", f"must be 0 or 1, got {intensity_channel}",
                                "give the channel of the intensity source a (the other one is b)")
        if prior_channels is not None and (not prior_channels or any(c not in (0, 1) for c in prior_channels)):
            raise ArgumentError("prior_channels", f"must be a non-empty subset of [0, 1], got {prior_channels}",
                                "name the channels the prior trains on ([1]: the gradient source b), or null for both")
        for name, v in (("lam", lam), ("rho", rho), ("eta", eta)):
            if not v >= 0:
                raise ArgumentError(name, f"must be >= 0, got {v}", f"use the paper's value ({name} 0.5 / 0.01 / 0)")
        if rho == 0:
            raise ArgumentError("rho", "must be > 0 (the half-quadratic-splitting penalty)", "use the paper's 0.01")
        self.in_channels, self.out_channels, self.spatial_dims = 2, 1, spatial_dims
        self.prior_channels = None if prior_channels is None else [int(c) for c in prior_channels]
        self.intensity_channel = int(intensity_channel)
        self.unet = ConditionedUNet(spatial_dims, 1, 1, channels, attention_levels, num_res_blocks, num_head_channels,
                                    norm_num_groups)
        self.schedule = make_schedule(schedule, timesteps)
        self.objective = DiffusionLoss(self.schedule, prediction_type="eps", loss_type="mse")
        self.lam, self.rho, self.official_code, self.eta = float(lam), float(rho), bool(official_code), float(eta)
        self.n_samples, self.sampler, self.sampling_steps = n_samples, sampler, sampling_steps

    @property
    def denoiser(self) -> ConditionedUNet:
        return self.unet

    @property
    def size_multiple(self) -> int:
        return self.unet.size_multiple

    # -- training: the unconditional prior ------------------------------------------------------------
    def prior_images(self, image: Tensor) -> Tensor:
        """The single-channel training images of a batch: each case's ``prior_channels``, stacked on the batch axis."""
        check_spatial(image, "image")
        if image.ndim != self.spatial_dims + 2:
            raise DataError("batch", f"expected {self.spatial_dims}-D images (B, C, ...), got {tuple(image.shape)}",
                            f"pass {self.spatial_dims}-D images")
        chans = self.prior_channels if self.prior_channels is not None else list(range(image.shape[1]))
        if max(chans) >= image.shape[1]:
            raise DataError("batch", f"the prior trains on channel(s) {chans} but the images have {image.shape[1]}",
                            "give the two modalities as channels, or set prior_channels to the channels present")
        x = image[:, chans]
        return x.reshape(-1, 1, *x.shape[2:])

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        x0 = self.prior_images(batch[self.input_key])
        return self.objective(lambda x, t: self.unet(x, t), x0, generator=generator)

    def diffusion_pair(self, batch: dict[str, Any]) -> DiffusionPair:
        """The unconditional prior and its training images (each case's ``prior_channels``). A fitted chain is the
        prior's: ``predict`` walks it with the DDFM fusion hook refining every x0 estimate, which has no clean
        target to fit against, so the fit scores chains on the prior alone."""
        if (err := self.pair_refusal()) is not None:
            raise err
        net = self.unet
        return DiffusionPair(lambda x, t: net(x, t), self.prior_images(batch[self.input_key]), "eps", {"clip": True})

    # -- fusion ------------------------------------------------------------------------------------------
    def sources(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` (B, 1, ...) from a two-channel batch, refusing anything else before any compute."""
        check_spatial(image, "image")
        self.check_input(image, "image")
        a = image[:, self.intensity_channel : self.intensity_channel + 1]
        b = image[:, 1 - self.intensity_channel : 2 - self.intensity_channel]
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise DataError("image", "the fusion inputs hold NaN / inf values", "fill or mask them first")
        return a, b

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
        a, b = self.sources(batch[self.input_key])
        n = n_samples if n_samples is not None else self.n_samples
        name = sampler if sampler is not None else self.default_sampler
        check_sampler(name)
        hook = DDFMFusion(repeat_batch(a, n), repeat_batch(b, n), lam=self.lam, rho=self.rho,
                          official_code=self.official_code)
        extra: dict[str, Any] = {"eta": self.eta} if name == "ddim" else {}
        samples = sample_n(
            lambda x, t: self.unet(x, t), tuple(a.shape), self.schedule, n_samples=n, sampler=name,
            steps=steps if steps is not None else self.sampling_steps, device=a.device, generator=generator,
            progress=progress, clip=True, hooks=[hook], **extra,
        ).clamp(-1, 1)
        fused = (samples + 1) / 2  # (n, B, 1, ...) in [0, 1]
        mean = fuse_mean(fused.transpose(0, 1))
        return {"prediction": mean,
                "uncertainty": variance_map(fused.transpose(0, 1)) if n > 1 else torch.zeros_like(mean)}

    @torch.no_grad()
    def fuse_colour(self, colour: Tensor, grey: Tensor, **predict_kwargs: Any) -> Tensor:
        """Fuse a colour image (B, 3, H, W) in [0, 1] (e.g. colour-coded PET / SPECT, a visible photo) with a
        grey one (B, 1, H, W) in [0, 1] on luminance: the colour image's Y is the intensity source a when
        ``intensity_channel`` is 0 (else the gradient source b), the fused Y gets its Cb / Cr back
        (:func:`~medrs_diff.data.colour.fuse_on_luminance`, BT.601 full range); returns RGB in [0, 1]."""

        def fuse(y: Tensor, g: Tensor) -> Tensor:
            pair = [y, g] if self.intensity_channel == 0 else [g, y]
            image = torch.cat(pair, 1).float() * 2 - 1
            return self.predict({self.input_key: image}, **predict_kwargs)["prediction"].to(y.dtype)

        return fuse_on_luminance(colour, grey, fuse)

    def validation_metrics(self, batch: dict[str, Any], out: dict[str, Tensor]) -> dict[str, Tensor]:
        """MI(F, A) + MI(F, B) in bits (256 bins, :mod:`medrs_diff.metrics.fusion`), mean over the 2-D batch."""
        a, b = self.sources(batch[self.input_key])
        f = out["prediction"]
        if self.spatial_dims != 2:
            return {}
        vals = [mutual_information(f[i, 0], (a[i, 0] + 1) / 2) + mutual_information(f[i, 0], (b[i, 0] + 1) / 2)
                for i in range(f.shape[0])]
        return {"mi": torch.tensor(sum(vals) / len(vals))}
