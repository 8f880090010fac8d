"""Latent diffusion (Rombach et al. CVPR 2022): an unconditional DDPM trained in a frozen autoencoder's latent space.

Stage 1 is an :class:`~medrs_diff.methods.autoencoder_kl.AutoencoderKLMethod` (recipe ``autoencoder_kl_phantom2d``)
or an :class:`~medrs_diff.methods.autoencoder_vq.AutoencoderVQMethod` (``autoencoder_vq_phantom2d``, its quantiser
in the decoder) trained by ``medrs-diff fit``. Stage 2, this method, loads that checkpoint's weights (EMA weights
when the run had them) from the local path ``autoencoder`` once, at construction, freezes them and trains
an eps-prediction DDPM (MONAI DiffusionModelUNet) on **scaled** latents ``scale * z``, ``z`` a posterior
sample. ``scale`` is the paper's latent scaling factor, ``1 / std(z)`` over the first training batch
(estimated once, then fixed), or given by ``scale_factor``. It lives in the state dict (so in every
checkpoint) as the float32 bit pattern of an int32 buffer: the EMA callback averages floating buffers,
which would blend the unset value into it, but copies integer ones exactly. The autoencoder loading and the
scale buffer are shared with :class:`~medrs_diff.methods.latent_method.LatentMethod` (:mod:`._latent`).

The autoencoder's architecture is recorded among the method's arguments (``autoencoder_config``) the first
time it is read, so a latent checkpoint rebuilds without the autoencoder file: its weights are part of this
method's state dict. ``autoencoder: null`` with no ``autoencoder_config`` builds a freshly initialised
(untrained) frozen autoencoder: for smoke tests only, its samples are meaningless.

``predict`` draws latents with any engine sampler and decodes them: ``prediction`` has the shape of the
batch's ``image`` (which gives only the shape; each element is an independent unconditional draw, the first
of ``n_samples``; all are in ``samples``, (B, n, C, ...)).

``pyramid`` (null = off, the default): Pyramidal DDPM in latent space (Ryu & Ye 2022, :mod:`._pyramid`), e.g.
``{scales: [0.5, 1.0], t_starts: [500]}``: the UNet also sees coordinate and scale channels, trains on latents
area-downsampled to a random scale and samples latents coarse to fine before decoding them at full size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..data.keys import IMAGE
from ..diffusion.generators import GeneratorLike
from ..diffusion.process import DiffusionLoss, check_spatial
from ..diffusion.schedules import make_schedule
from ..errors import ArgumentError, DataError
from ..nets.unet import ConditionedUNet
from ._latent import LatentSpace
from ._pyramid import check_pyramid, extra_channels, pyramid_draw, pyramid_loss
from ._pyramid import size_multiple as pyramid_size_multiple
from ._sampling import sample_n
from .base import DiffusionMethod, DiffusionPair, check_sampler, no_diffusion_pair


class LatentDDPM(LatentSpace, DiffusionMethod):
    """Unconditional DDPM on a frozen first stage's scaled latents; see the module docstring."""

    name = "latent_ddpm"
    task = "image"
    input_key = IMAGE
    target_key = IMAGE
    outputs = ("prediction",)
    data_space = ("prediction",)
    #: recorded from the autoencoder file at construction, so checkpoints rebuild without it
    resolved_args = ("autoencoder_config",)

    def __init__(
        self,
        autoencoder: str | None = None,
        autoencoder_config: dict[str, Any] | None = None,
        scale_factor: float | None = None,
        channels: Sequence[int] = (32, 64),
        attention_levels: Sequence[bool] = (False, False),
        num_res_blocks: int = 1,
        num_head_channels: int = 16,
        norm_num_groups: int = 8,
        timesteps: int = 1000,
        schedule: str = "linear",
        sampler: str = "ddim",
        sampling_steps: int | None = 50,
        pyramid: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_sampler(sampler)
        if timesteps < 1:
            raise ArgumentError("timesteps", f"must be >= 1, got {timesteps}", "use the paper's 1000")
        self.pyramid = check_pyramid(pyramid, timesteps)
        self.init_latent_space(autoencoder, autoencoder_config, scale_factor)
        self.in_channels = self.out_channels = self.ae.in_channels
        self.spatial_dims = self.ae.spatial_dims
        c = self.ae.latent_channels
        extra = extra_channels(self.pyramid, self.spatial_dims)  # coordinate + scale channels under the pyramid
        self.unet = ConditionedUNet(self.spatial_dims, c + extra, c, channels, attention_levels, num_res_blocks,
                                    num_head_channels, norm_num_groups)
        self.schedule = make_schedule(schedule, timesteps)
        self.objective = DiffusionLoss(self.schedule, prediction_type="eps", loss_type="mse")
        self.sampler, self.sampling_steps = sampler, sampling_steps

    # -- contract ---------------------------------------------------------------------------------
    @property
    def denoiser(self) -> ConditionedUNet:
        return self.unet

    @property
    def size_multiple(self) -> int:
        m = self.unet.size_multiple
        return int(self.ae.downsampling * (m if self.pyramid is None else pyramid_size_multiple(m, self.pyramid[0])))

    def _image(self, batch: Mapping[str, Any]) -> Tensor:
        if self.input_key not in batch:
            raise DataError("batch", f"latent_ddpm needs batch[{self.input_key!r}] (the image)",
                            "use a data module that provides images")
        x = batch[self.input_key]
        check_spatial(x, "image")
        self.check_input(x, "image")
        m = self.size_multiple
        if any(s % m for s in x.shape[2:]):
            raise DataError("image", f"spatial size {tuple(x.shape[2:])} is not a multiple of {m} (autoencoder "
                            "downsampling x UNet levels)", f"crop or pad images to multiples of {m}")
        return x

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        z0 = self.latents(self._image(batch), generator)
        if self.pyramid is not None:
            loss, logs = pyramid_loss(self.objective, self.pyramid[0], self.unet, z0, generator)
        else:
            loss, logs = self.objective(lambda z, t: self.unet(z, t), z0, generator=generator)
        return loss, {**logs, "latent_scale": torch.tensor(self.scale)}

    def pair_refusal(self) -> ArgumentError | None:
        return no_diffusion_pair(self, "pyramid") if self.pyramid is not None else super().pair_refusal()

    def diffusion_pair(self, batch: dict[str, Any]) -> DiffusionPair:
        """The latent UNet and the scaled latents of a batch's images (the chain runs in latent space)."""
        if (err := self.pair_refusal()) is not None:
            raise err
        return DiffusionPair(lambda z, t: self.unet(z, t), self.latents(self._image(batch)), "eps", {})

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
        """Draw latents with the sampler, unscale and decode: ``prediction`` (the first draw per element)
        shaped like ``batch['image']``, and ``samples`` (B, n, C, ...)."""
        x = self._image(batch)
        self.require_scale()
        name = sampler if sampler is not None else self.default_sampler
        check_sampler(name)
        n = 1 if n_samples is None else int(n_samples)
        f = self.ae.downsampling
        shape = (x.shape[0], self.ae.latent_channels, *(s // f for s in x.shape[2:]))
        steps = steps if steps is not None else self.sampling_steps
        if self.pyramid is not None:
            z = pyramid_draw(self.unet, shape, self.schedule, self.pyramid, n_samples=n, sampler=name, steps=steps,
                             generator=generator, device=x.device)
        else:
            z = sample_n(lambda zt, t: self.unet(zt, t), shape, self.schedule, n_samples=n, sampler=name, steps=steps,
                         device=x.device, generator=generator, progress=progress)
        images = self.decode_latents(z.flatten(0, 1))
        images = images.reshape(n, x.shape[0], *images.shape[1:]).transpose(0, 1)
        return {"prediction": images[:, 0], "samples": images}

    def validation_metrics(self, batch: Mapping[str, Any], out: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Unconditional draws have no pixel-wise reference: ``mean_error`` and ``std_error``, the absolute
        differences of the draws' and the batch images' intensity mean and standard deviation (model space)."""
        pred, ref = out["prediction"].float(), batch[self.input_key].float()
        return {"mean_error": (pred.mean() - ref.mean()).abs(), "std_error": (pred.std() - ref.std()).abs()}
