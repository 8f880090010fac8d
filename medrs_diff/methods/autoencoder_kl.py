"""KL-regularised autoencoder (the first stage of latent diffusion, Rombach et al. CVPR 2022).

MONAI's :class:`~monai.networks.nets.AutoencoderKL` (2-D or 3-D) encodes an image to a Gaussian
posterior ``N(mu, sigma^2)`` on a grid ``2^(len(channels) - 1)`` times coarser with ``latent_channels``
channels; a reparameterised sample is decoded back. Loss: L1 reconstruction (mean over pixels) plus
``kl_weight`` (default 1e-6, the value of MONAI's latent-diffusion tutorials; the LDM paper uses a
similarly small weight, ~1e-6) times the KL divergence to N(0, I) summed over the latent and averaged
over the batch. The paper's perceptual and patch-adversarial terms are not included (small phantoms and
CPU tests; a recipe switch for them is left open). ``predict`` decodes the posterior mean:
``prediction`` is the reconstruction, in data space. :class:`~medrs_diff.methods.latent_ddpm.LatentDDPM`
trains a diffusion model in this latent space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.nets import AutoencoderKL
from torch import Tensor

from ..data.keys import IMAGE
from ..diffusion.generators import GeneratorLike, randn_like
from ..diffusion.process import check_spatial
from ..errors import ArgumentError, DataError
from .base import Method


class AutoencoderKLMethod(Method):
    """Image -> latent posterior -> image; see the module docstring. Trains on ``image``; ``predict`` returns
    ``prediction``, the reconstruction from the posterior mean (model space, mapped back to data units)."""

    name = "autoencoder_kl"
    task = "image"
    input_key = IMAGE
    target_key = IMAGE
    outputs = ("prediction",)
    data_space = ("prediction",)

    def __init__(
        self,
        in_channels: int = 1,
        spatial_dims: int = 2,
        channels: Sequence[int] = (32, 64, 64),
        attention_levels: Sequence[bool] = (False, False, False),
        num_res_blocks: int = 1,
        latent_channels: int = 3,
        norm_num_groups: int = 16,
        nonlocal_attention: bool = False,
        kl_weight: float = 1e-6,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ArgumentError("spatial_dims", f"must be 2 or 3, got {spatial_dims}", "use 2 (slices) or 3 (volumes)")
        if len(channels) != len(attention_levels) or len(channels) < 1:
            raise ArgumentError("channels / attention_levels", f"need one attention flag per level, got "
                                f"{len(channels)} channels and {len(attention_levels)} flags",
                                "give attention_levels the length of channels")
        if not (isinstance(kl_weight, int | float) and 0.0 <= float(kl_weight) < float("inf")):
            raise ArgumentError("kl_weight", f"must be a finite number >= 0, got {kl_weight!r}", "use 1e-6")
        if latent_channels < 1:
            raise ArgumentError("latent_channels", f"must be >= 1, got {latent_channels}", "use 3 or 4")
        self.in_channels = self.out_channels = int(in_channels)
        self.spatial_dims = int(spatial_dims)
        self.latent_channels = int(latent_channels)
        self.kl_weight = float(kl_weight)
        self.autoencoder = AutoencoderKL(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=in_channels,
            num_res_blocks=num_res_blocks, channels=tuple(channels), attention_levels=tuple(attention_levels),
            latent_channels=latent_channels, norm_num_groups=norm_num_groups,
            with_encoder_nonlocal_attn=nonlocal_attention, with_decoder_nonlocal_attn=nonlocal_attention,
        )
        self._factor = 2 ** (len(channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Spatial sizes must be multiples of the encoder's downsampling factor."""
        return int(self._factor)

    @property
    def downsampling(self) -> int:
        """Image pixels per latent pixel along each spatial axis."""
        return int(self._factor)

    # -- encode / decode --------------------------------------------------------------------------
    def _image(self, batch: Mapping[str, Any]) -> Tensor:
        if self.input_key not in batch:
            raise DataError("batch", f"the autoencoder needs batch[{self.input_key!r}] (the image)",
                            "use a data module that provides images")
        x = batch[self.input_key]
        check_spatial(x, "image")
        self.check_input(x, "image")
        bad = [s for s in x.shape[2:] if s % self._factor]
        if bad:
            raise DataError("image", f"spatial size {tuple(x.shape[2:])} is not a multiple of the autoencoder's "
                            f"downsampling factor {self._factor}", f"crop or pad images to multiples of {self._factor}")
        return x

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)`` of the latent posterior of ``x``."""
        return self.autoencoder.encode(x)

    def encode(self, x: Tensor, generator: GeneratorLike = None, sample: bool = True) -> Tensor:
        """A latent of ``x``: a posterior sample ``mu + sigma * eps`` (``sample=True``) or the mean."""
        mu, sigma = self.posterior(x)
        return mu + sigma * randn_like(mu, generator) if sample else mu

    def decode(self, z: Tensor) -> Tensor:
        """Image from a latent."""
        return self.autoencoder.decode(z)

    # -- contract ---------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        x = self._image(batch)
        mu, sigma = self.posterior(x)
        z = mu + sigma * randn_like(mu, generator)
        recon = self.decode(z)
        l1 = (recon - x).abs().mean()
        var = sigma.pow(2).clamp(min=1e-12)
        kl = 0.5 * (mu.pow(2) + var - var.log() - 1.0).flatten(1).sum(1).mean()
        total = l1 + self.kl_weight * kl
        return total, {"l1": l1.detach(), "kl": kl.detach()}

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
        """``prediction``: the decoded posterior mean (deterministic; sampler / steps / n_samples do not apply)."""
        x = self._image(batch)
        recon = self.decode(self.encode(x, sample=False))
        if not bool(torch.isfinite(recon).all()):
            raise DataError("autoencoder_kl", "the reconstruction holds NaN or Inf values",
                            "check the input (finite, scaled as in training) and the checkpoint")
        return {"prediction": recon}
