"""What every latent-diffusion method shares: the frozen first stage and the stored latent scale.

The first stage is an ``autoencoder_kl`` (:class:`~medrs_diff.methods.autoencoder_kl.AutoencoderKLMethod`) or an
``autoencoder_vq`` (:class:`~medrs_diff.methods.autoencoder_vq.AutoencoderVQMethod`, quantised in its decoder).
:func:`read_autoencoder` takes ``(init_args, weights)`` of such a ``fit`` checkpoint through
:mod:`medrs_diff.io.checkpoint_file` (EMA weights when the run had them) and records which of the two it is under
:data:`STAGE1_KEY`. :class:`LatentSpace` is a mixin for a :class:`~medrs_diff.methods.base.Method`:
:meth:`LatentSpace.init_latent_space` builds the frozen autoencoder as ``self.ae`` (from the file, or from the
``autoencoder_config`` a checkpoint recorded, so it rebuilds without the file; a config without :data:`STAGE1_KEY`
is an autoencoder_kl's) and registers ``scale_bits``, the latent scaling factor stored as the float32 bit pattern of
an int32 buffer: the EMA callback averages floating buffers, which would blend the unset value 0 into it, but copies
integer ones exactly. The factor is ``target_std / std(z)`` over the first batch encoded (estimated once, then
fixed; LDM: ``target_std = 1``), or given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..diffusion.generators import GeneratorLike
from ..errors import ArgumentError, CheckpointError, DataError
from ..io.checkpoint_file import method_weights, read_checkpoint_file, stored_method
from .autoencoder_kl import AutoencoderKLMethod
from .autoencoder_vq import AutoencoderVQMethod
from .base import Method

AE_FIX = ("pass the last.ckpt of a `medrs-diff fit --config autoencoder_kl_phantom2d` (or autoencoder_vq_phantom2d, "
          "or another autoencoder_kl / autoencoder_vq) run")
#: the first-stage methods latent diffusion runs on, by registry name
STAGE1: dict[str, type[Method]] = {AutoencoderKLMethod.name: AutoencoderKLMethod,
                                   AutoencoderVQMethod.name: AutoencoderVQMethod}
#: the key of a recorded ``autoencoder_config`` naming its first-stage method (absent: autoencoder_kl)
STAGE1_KEY = "stage1_method"


def stage1_class(config: Mapping[str, Any] | None) -> tuple[type[Method], dict[str, Any]]:
    """The first-stage class a recorded ``autoencoder_config`` names, and its init arguments."""
    args = dict(config or {})
    name = args.pop(STAGE1_KEY, AutoencoderKLMethod.name)
    if name not in STAGE1:
        raise ArgumentError("autoencoder_config", f"names first stage {name!r}; known: {sorted(STAGE1)}",
                            "record one of them (or retrain the first stage)")
    return STAGE1[name], args


def read_autoencoder(path: str | os.PathLike, where: str = "autoencoder") -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, state_dict)`` of the autoencoder_kl / autoencoder_vq method stored in a local training checkpoint
    (EMA weights when present; ``config``: its init arguments plus :data:`STAGE1_KEY`), else
    :class:`CheckpointError` naming the file (or ``where``) and the fix."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(p, f"the {where} checkpoint does not exist", AE_FIX)
    try:
        ckpt = read_checkpoint_file(p)
    except CheckpointError as err:
        raise CheckpointError(p, err.problem, AE_FIX) from err
    name, cfg = stored_method(ckpt)
    class_path = str((cfg or {}).get("class_path") or "")
    stage1 = next((k for k, c in STAGE1.items() if name == k or class_path.endswith(c.__name__)), None)
    if stage1 is None:
        raise CheckpointError(p, f"holds {name or 'no medrs-diff method'!r}, not an autoencoder_kl / autoencoder_vq "
                              "model", AE_FIX)
    state = method_weights(ckpt, ema=True)
    if not state or not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
        raise CheckpointError(p, "holds no autoencoder weights or non-finite ones", AE_FIX)
    return {**dict((cfg or {}).get("init_args") or {}), STAGE1_KEY: stage1}, state


def check_scale_factor(scale_factor: Any) -> None:
    """``scale_factor`` must be null or a finite number > 0."""
    if scale_factor is not None and not (isinstance(scale_factor, int | float) and not isinstance(scale_factor, bool)
                                         and 0.0 < float(scale_factor) < float("inf")):
        raise ArgumentError("scale_factor", f"must be a finite number > 0 or null, got {scale_factor!r}",
                            "use null to estimate it from the latents of the first training batch")


class LatentSpace:
    """Mixin of latent-diffusion methods: ``self.ae`` (frozen first stage) and the stored latent scale."""

    ae: AutoencoderKLMethod | AutoencoderVQMethod
    scale_bits: Tensor
    #: the scaled latents' standard deviation the estimate aims at (LDM: 1)
    latent_std: float = 1.0

    def init_latent_space(self, autoencoder: str | None, autoencoder_config: Mapping[str, Any] | None,
                          scale_factor: float | None, latent_std: float = 1.0) -> None:
        """Build the frozen autoencoder (from ``autoencoder_config`` when given, else read from the file
        ``autoencoder`` and recorded as the ``autoencoder_config`` argument) and the scale buffer."""
        check_scale_factor(scale_factor)
        if not (isinstance(latent_std, int | float) and 0.0 < float(latent_std) < float("inf")):
            raise ArgumentError("latent_std", f"must be a finite number > 0, got {latent_std!r}",
                                "use 1.0 (LDM: unit-variance latents)")
        state = None
        if autoencoder_config is None and autoencoder is not None:
            autoencoder_config, state = read_autoencoder(autoencoder)
            self._hparams["autoencoder_config"] = dict(autoencoder_config)  # rebuilds without the file
        cls, args = stage1_class(autoencoder_config)
        self.ae = cls(**args)
        if state is not None:
            try:
                self.ae.load_state_dict(state, strict=True)
            except RuntimeError as err:
                detail = " ".join(str(err).split())[:200]
                raise CheckpointError(autoencoder, f"its weights do not fit its stored arguments ({detail})",
                                      AE_FIX) from err
        self.ae.requires_grad_(False)
        self.ae.eval()
        self.latent_std = float(latent_std)
        bits = torch.tensor([0.0 if scale_factor is None else float(scale_factor)], dtype=torch.float32)
        self.register_buffer("scale_bits", bits.view(torch.int32))

    @property
    def scale(self) -> float | None:
        """The latent scaling factor; None until estimated."""
        value = float(self.scale_bits.view(torch.float32)[0])
        return value if value > 0 else None

    def set_scale(self, value: float) -> None:
        if not 0.0 < value < float("inf"):
            raise DataError(self.name, f"the latent scaling factor {self.latent_std:g}/std(z) is {value}",
                            "check the autoencoder checkpoint and the training images (constant or non-finite?)")
        bits = torch.tensor([float(value)], dtype=torch.float32).view(torch.int32)
        self.scale_bits.copy_(bits.to(self.scale_bits.device))

    def require_scale(self) -> float:
        """The scale, or :class:`CheckpointError` when it was never estimated (an untrained model)."""
        if self.scale is None:
            raise CheckpointError(self.name, "the latent scaling factor was never estimated (untrained model)",
                                  "train the model (the first batch sets it) or give scale_factor")
        return float(self.scale)

    @torch.no_grad()
    def latents(self, x: Tensor, generator: GeneratorLike = None, sample: bool = True) -> Tensor:
        """Scaled latents ``scale * z`` of images (a posterior sample, or the mean); the first call
        estimates ``scale = latent_std / std(z)``."""
        z = self.ae.encode(x, generator, sample=sample)
        if self.scale is None:
            self.set_scale(self.latent_std / float(z.float().std()))
        return z * self.scale

    @torch.no_grad()
    def decode_latents(self, z: Tensor) -> Tensor:
        """Images of scaled latents: ``decode(z / scale)``; NaN / Inf refused."""
        images = self.ae.decode(z / self.require_scale())
        if not bool(torch.isfinite(images).all()):
            raise DataError(self.name, "the decoded images hold NaN or Inf values", "check the checkpoint")
        return images

    def train(self, mode: bool = True):  # noqa: ANN201 - returns self, as nn.Module.train
        """Train mode for the trainable parts; the frozen autoencoder stays in eval mode."""
        super().train(mode)
        self.ae.eval()
        return self
