"""KL-regularised autoencoder (the first stage of latent diffusion, Rombach et al. CVPR 2022).

MONAI's :class:`~monai.networks.nets.AutoencoderKL` (2-D or 3-D) encodes an image to a Gaussian
posterior ``N(mu, sigma^2)`` on a grid ``2^(len(channels) - 1)`` times coarser with ``latent_channels``
channels; a reparameterised sample is decoded back. Loss: L1 reconstruction (mean over pixels) plus
``kl_weight`` (default 1e-6, the value of MONAI's latent-diffusion tutorials; the LDM paper uses a
similarly small weight, ~1e-6) times the KL divergence to N(0, I) summed over the latent and averaged
over the batch. The paper's perceptual and patch-adversarial terms are not included (small phantoms and
CPU tests; a recipe switch for them is left open). ``contrastive_weight`` > 0 adds D2C's contrastive
latent regulariser (Sinha et al. NeurIPS 2021): that weight times InfoNCE (temperature
``contrastive_temperature``) between the posterior means of two augmented views of the batch (random crop
of ``1 - augment_crop`` of each side resized back, random flips, Gaussian noise ``augment_noise``; the
batch's other images are the negatives, :mod:`medrs_diff.diffusion.contrastive`); 0 (default) is off and
leaves the loss and the random draws exactly as without it. ``predict`` decodes the posterior mean:
``prediction`` is the reconstruction, in data space. :class:`~medrs_diff.methods.latent_ddpm.LatentDDPM`
trains a diffusion model in this latent space.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import AutoencoderKL
from torch import Tensor

from ..diffusion.contrastive import augment_views, info_nce
from ..diffusion.generators import GeneratorLike, randn_like
from ..errors import ArgumentError, DataError
from ._autoencoder import ImageAutoencoder


class AutoencoderKLMethod(ImageAutoencoder):
    """Image -> latent posterior -> image; see the module docstring. Trains on ``image``; ``predict`` returns
    ``prediction``, the reconstruction from the posterior mean (model space, mapped back to data units)."""

    name = "autoencoder_kl"

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
        contrastive_weight: float = 0.0,
        contrastive_temperature: float = 0.1,
        augment_crop: float = 0.125,
        augment_noise: float = 0.05,
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
        if not (isinstance(contrastive_weight, int | float) and 0.0 <= float(contrastive_weight) < float("inf")):
            raise ArgumentError("contrastive_weight", f"must be a finite number >= 0, got {contrastive_weight!r}",
                                "use 0 (off) or a small weight such as 0.01 (D2C's contrastive regulariser)")
        if not (isinstance(contrastive_temperature, int | float) and 0.0 < float(contrastive_temperature) < 1e6):
            raise ArgumentError("contrastive_temperature", f"must be a number > 0, got {contrastive_temperature!r}",
                                "use 0.1 (InfoNCE temperature)")
        if not (0.0 <= float(augment_crop) < 1.0 and 0.0 <= float(augment_noise) < float("inf")):
            raise ArgumentError("augment_crop / augment_noise", f"need 0 <= crop < 1 and noise >= 0, got "
                                f"{augment_crop!r} and {augment_noise!r}", "use 0.125 and 0.05")
        if latent_channels < 1:
            raise ArgumentError("latent_channels", f"must be >= 1, got {latent_channels}", "use 3 or 4")
        self.in_channels = self.out_channels = int(in_channels)
        self.spatial_dims = int(spatial_dims)
        self.latent_channels = int(latent_channels)
        self.kl_weight = float(kl_weight)
        self.contrastive_weight = float(contrastive_weight)
        self.contrastive_temperature = float(contrastive_temperature)
        self.augment_crop, self.augment_noise = float(augment_crop), float(augment_noise)
        self.autoencoder = AutoencoderKL(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=in_channels,
            num_res_blocks=num_res_blocks, channels=tuple(channels), attention_levels=tuple(attention_levels),
            latent_channels=latent_channels, norm_num_groups=norm_num_groups,
            with_encoder_nonlocal_attn=nonlocal_attention, with_decoder_nonlocal_attn=nonlocal_attention,
        )
        self._factor = 2 ** (len(channels) - 1)

    # -- encode / decode --------------------------------------------------------------------------
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
        logs = {"l1": l1.detach(), "kl": kl.detach()}
        if self.contrastive_weight > 0:  # off: no extra draws, the loss is exactly L1 + w KL
            nce = self.contrastive_loss(x, generator)
            total = total + self.contrastive_weight * nce
            logs["contrastive"] = nce.detach()
        return total, logs

    def contrastive_loss(self, x: Tensor, generator: GeneratorLike = None) -> Tensor:
        """D2C's regulariser: InfoNCE between the posterior means of two augmented views of ``x`` (the other
        images of the batch are the negatives; :mod:`medrs_diff.diffusion.contrastive`)."""
        if x.shape[0] < 2:
            raise DataError("batch", f"the contrastive regulariser needs >= 2 images per batch, got {x.shape[0]}",
                            "raise data.init_args.batch_size or set contrastive_weight: 0")
        a = augment_views(x, generator, self.augment_crop, self.augment_noise)
        b = augment_views(x, generator, self.augment_crop, self.augment_noise)
        return info_nce(self.posterior(a)[0], self.posterior(b)[0], self.contrastive_temperature)
