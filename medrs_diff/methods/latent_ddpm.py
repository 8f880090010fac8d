"""Latent diffusion (Rombach et al. CVPR 2022): an unconditional DDPM trained in a frozen autoencoder's latent space.

Stage 1 is an :class:`~medrs_diff.methods.autoencoder_kl.AutoencoderKLMethod` trained by ``medrs-diff fit``
(recipe ``autoencoder_kl_phantom2d``). Stage 2, this method, loads that checkpoint's weights (EMA weights
when the run had them) from the local path ``autoencoder`` once, at construction, freezes them and trains
an eps-prediction DDPM (MONAI DiffusionModelUNet) on **scaled** latents ``scale * z``, ``z`` a posterior
sample. ``scale`` is the paper's latent scaling factor, ``1 / std(z)`` over the first training batch
(estimated once, then fixed), or given by ``scale_factor``. It lives in the state dict (so in every
checkpoint) as the float32 bit pattern of an int32 buffer: the EMA callback averages floating buffers,
which would blend the unset value into it, but copies integer ones exactly.

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

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.keys import IMAGE
from ..diffusion.generators import GeneratorLike
from ..diffusion.process import DiffusionLoss, check_spatial
from ..diffusion.schedules import make_schedule
from ..errors import ArgumentError, CheckpointError, DataError
from ..nets.unet import ConditionedUNet
from ._pyramid import check_pyramid, extra_channels, pyramid_draw, pyramid_loss
from ._pyramid import size_multiple as pyramid_size_multiple
from ._sampling import sample_n
from .autoencoder_kl import AutoencoderKLMethod
from .base import DiffusionMethod, DiffusionPair, check_sampler, no_diffusion_pair

_AE_FIX = "pass the last.ckpt of a `medrs-diff fit --config autoencoder_kl_phantom2d` (or other autoencoder_kl) run"


def read_autoencoder_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(init_args, state_dict)`` of the autoencoder_kl method stored in a local training checkpoint
    (EMA weights when present), else :class:`CheckpointError` naming the file and the fix."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(p, "the autoencoder checkpoint does not exist", _AE_FIX)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, truncated, pickled classes
        raise CheckpointError(p, f"cannot be read as a checkpoint ({type(err).__name__})", _AE_FIX) from err
    record = ckpt.get("medrs_diff") if isinstance(ckpt, Mapping) else None
    method = record.get("method") if isinstance(record, Mapping) else None
    class_path = method.get("class_path", "") if isinstance(method, Mapping) else ""
    if not (isinstance(record, Mapping) and (record.get("method_name") == AutoencoderKLMethod.name
                                             or str(class_path).endswith(AutoencoderKLMethod.__name__))):
        found = record.get("method_name", "?") if isinstance(record, Mapping) else "no medrs-diff method"
        raise CheckpointError(p, f"holds {found!r}, not an autoencoder_kl model", _AE_FIX)
    state: dict[str, Tensor] | None = None
    for cb in (ckpt.get("callbacks") or {}).values():
        if isinstance(cb, Mapping) and isinstance(cb.get("shadow"), Mapping) and cb["shadow"]:
            state = {k: v.detach().cpu() for k, v in cb["shadow"].items()}
    if state is None:
        raw = ckpt.get("state_dict") or {}
        state = {k[len("method."):]: v for k, v in raw.items() if k.startswith("method.")}
    if not state or not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
        raise CheckpointError(p, "holds no autoencoder weights or non-finite ones", _AE_FIX)
    return dict(method.get("init_args") or {}), state


class LatentDDPM(DiffusionMethod):
    """Unconditional DDPM on a frozen autoencoder_kl's scaled latents; see the module docstring."""

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
        if scale_factor is not None and not (isinstance(scale_factor, int | float)
                                             and 0.0 < float(scale_factor) < float("inf")):
            raise ArgumentError("scale_factor", f"must be a finite number > 0 or null, got {scale_factor!r}",
                                "use null to estimate 1/std of the latents on the first training batch")
        state = None
        if autoencoder_config is None and autoencoder is not None:
            autoencoder_config, state = read_autoencoder_checkpoint(autoencoder)
            self._hparams["autoencoder_config"] = dict(autoencoder_config)  # rebuilds without the file
        self.ae = AutoencoderKLMethod(**(autoencoder_config or {}))
        if state is not None:
            try:
                self.ae.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise CheckpointError(autoencoder, f"its weights do not fit its stored arguments ({err})",
                                      _AE_FIX) from err
        self.ae.requires_grad_(False)
        self.ae.eval()
        self.in_channels = self.out_channels = self.ae.in_channels
        self.spatial_dims = self.ae.spatial_dims
        c = self.ae.latent_channels
        extra = extra_channels(self.pyramid, self.spatial_dims)  # coordinate + scale channels under the pyramid
        self.unet = ConditionedUNet(self.spatial_dims, c + extra, c, channels, attention_levels, num_res_blocks,
                                    num_head_channels, norm_num_groups)
        self.schedule = make_schedule(schedule, timesteps)
        self.objective = DiffusionLoss(self.schedule, prediction_type="eps", loss_type="mse")
        bits = torch.tensor([0.0 if scale_factor is None else float(scale_factor)], dtype=torch.float32)
        self.register_buffer("scale_bits", bits.view(torch.int32))
        self.sampler, self.sampling_steps = sampler, sampling_steps

    # -- contract ---------------------------------------------------------------------------------
    @property
    def denoiser(self) -> ConditionedUNet:
        return self.unet

    @property
    def size_multiple(self) -> int:
        m = self.unet.size_multiple
        return int(self.ae.downsampling * (m if self.pyramid is None else pyramid_size_multiple(m, self.pyramid[0])))

    def train(self, mode: bool = True) -> LatentDDPM:
        """Train mode for the UNet; the frozen autoencoder stays in eval mode."""
        super().train(mode)
        self.ae.eval()
        return self

    @property
    def scale(self) -> float | None:
        """The latent scaling factor; None until estimated."""
        value = float(self.scale_bits.view(torch.float32)[0])
        return value if value > 0 else None

    def set_scale(self, value: float) -> None:
        if not 0.0 < value < float("inf"):
            raise DataError("latent_ddpm", f"the latent scaling factor 1/std(z) is {value}",
                            "check the autoencoder checkpoint and the training images (constant or non-finite?)")
        bits = torch.tensor([float(value)], dtype=torch.float32).view(torch.int32)
        self.scale_bits.copy_(bits.to(self.scale_bits.device))

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

    @torch.no_grad()
    def latents(self, x: Tensor, generator: GeneratorLike = None) -> Tensor:
        """Scaled latents ``scale * z`` of images; the first call estimates ``scale = 1 / std(z)``."""
        z = self.ae.encode(x, generator)
        if self.scale is None:
            self.set_scale(1.0 / float(z.float().std()))
        return z * self.scale

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        z0 = self.latents(self._image(batch), generator)
        if self.pyramid is not None:
            loss, logs = pyramid_loss(self.objective, self.pyramid[0], self.unet, z0, generator)
        else:
            loss, logs = self.objective(lambda z, t: self.unet(z, t), z0, generator=generator)
        return loss, {**logs, "latent_scale": torch.tensor(self.scale)}

    def diffusion_pair(self, batch: dict[str, Any]) -> DiffusionPair:
        """The latent UNet and the scaled latents of a batch's images (the chain runs in latent space)."""
        if self.pyramid is not None:
            raise no_diffusion_pair(self, "pyramid")
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
        if self.scale is None:
            raise CheckpointError("latent_ddpm", "the latent scaling factor was never estimated (untrained model)",
                                  "train the model (the first batch sets it) or give scale_factor")
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
        images = self.ae.decode(z.flatten(0, 1) / self.scale)
        images = images.reshape(n, x.shape[0], *images.shape[1:]).transpose(0, 1)
        if not bool(torch.isfinite(images).all()):
            raise DataError("latent_ddpm", "the decoded samples hold NaN or Inf values", "check the checkpoint")
        return {"prediction": images[:, 0], "samples": images}

    def validation_metrics(self, batch: Mapping[str, Any], out: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Unconditional draws have no pixel-wise reference: ``mean_error`` and ``std_error``, the absolute
        differences of the draws' and the batch images' intensity mean and standard deviation (model space)."""
        pred, ref = out["prediction"].float(), batch[self.input_key].float()
        return {"mean_error": (pred.mean() - ref.mean()).abs(), "std_error": (pred.std() - ref.std()).abs()}
