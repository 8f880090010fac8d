"""Vector-quantised autoencoder (VQ-VAE, van den Oord et al. 2017), the other first stage of latent diffusion.

MONAI's :class:`~monai.networks.nets.VQVAE` (2-D or 3-D): an encoder to a grid ``2^len(channels)`` times coarser
with ``embedding_dim`` channels, a codebook of ``num_embeddings`` vectors updated by exponential moving averages
(decay ``codebook_decay``, MONAI's default 0.5; no gradient reaches it) and a decoder. With 0.99 the codebook
collapsed to a single code on the brain phantoms (measured: 1 code, 17 dB after 500 steps, against 155 codes and 23
dB at 0.5); the ``perplexity`` logged in training (the effective number of codes a batch uses) shows a collapse.
Loss (MONAI's tutorials, the paper's with an EMA codebook): L1 reconstruction (mean over pixels) plus the
quantiser's commitment term ``commitment_cost`` x ||z - sg(e)||^2.

For latent diffusion the quantiser belongs to the decoder, as in the LDM paper's "VQ-reg" models (Rombach et al.
2022, Sec. 3.1): :meth:`AutoencoderVQMethod.encode` returns the encoder's continuous output and
:meth:`AutoencoderVQMethod.decode` quantises (nearest codebook vector) then decodes, so a diffusion model trained on
encodings may land between codes and the decoder snaps its sample to the codebook. ``predict`` returns the
reconstruction ``decode(encode(x))``. :class:`~medrs_diff.methods.latent_ddpm.LatentDDPM` and the ``latent`` wrapper
take this method's checkpoint as their ``autoencoder`` as they take an ``autoencoder_kl`` one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import VQVAE
from torch import Tensor

from ..diffusion.generators import GeneratorLike
from ..errors import ArgumentError
from ._autoencoder import ImageAutoencoder

__all__ = ["AutoencoderVQMethod"]


class AutoencoderVQMethod(ImageAutoencoder):
    """Image -> encodings -> nearest codebook vectors -> image; see the module docstring. Trains on ``image``;
    ``predict`` returns ``prediction``, the reconstruction (model space, mapped back to data units)."""

    name = "autoencoder_vq"

    def __init__(
        self,
        in_channels: int = 1,
        spatial_dims: int = 2,
        channels: Sequence[int] = (32, 64),
        num_res_layers: int = 1,
        num_res_channels: Sequence[int] | None = None,
        num_embeddings: int = 256,
        embedding_dim: int = 3,
        commitment_cost: float = 0.25,
        codebook_decay: float = 0.5,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ArgumentError("spatial_dims", f"must be 2 or 3, got {spatial_dims}", "use 2 (slices) or 3 (volumes)")
        if len(channels) < 1 or any(int(c) < 1 for c in channels):
            raise ArgumentError("channels", f"need one width >= 1 per downsampling level, got {list(channels)}",
                                "e.g. [32, 64] (4 x downsampling)")
        res = list(channels) if num_res_channels is None else list(num_res_channels)
        if len(res) != len(channels):
            raise ArgumentError("num_res_channels", f"need one width per level ({len(channels)}), got {res}",
                                "leave it null (= channels)")
        if not (isinstance(num_embeddings, int) and num_embeddings >= 2):
            raise ArgumentError("num_embeddings", f"must be an integer >= 2, got {num_embeddings!r}",
                                "use 256 (codebook size)")
        if not (isinstance(embedding_dim, int) and embedding_dim >= 1):
            raise ArgumentError("embedding_dim", f"must be an integer >= 1, got {embedding_dim!r}",
                                "use 3 or 4 (latent channels)")
        if not (isinstance(commitment_cost, int | float) and 0.0 <= float(commitment_cost) < float("inf")):
            raise ArgumentError("commitment_cost", f"must be a finite number >= 0, got {commitment_cost!r}", "use 0.25")
        if not (isinstance(codebook_decay, int | float) and 0.0 <= float(codebook_decay) < 1.0):
            raise ArgumentError("codebook_decay", f"must lie in [0, 1), got {codebook_decay!r}",
                                "use 0.5 (MONAI's default; 0.99 collapsed to one code on phantoms)")
        if num_res_layers < 1:
            raise ArgumentError("num_res_layers", f"must be >= 1, got {num_res_layers}", "use 1 or 2")
        self.in_channels = self.out_channels = int(in_channels)
        self.spatial_dims = int(spatial_dims)
        self.latent_channels = int(embedding_dim)
        self.num_embeddings = int(num_embeddings)
        levels = len(channels)
        self.vqvae = VQVAE(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=in_channels, channels=tuple(channels),
            num_res_layers=num_res_layers, num_res_channels=tuple(res),
            downsample_parameters=((2, 4, 1, 1),) * levels, upsample_parameters=((2, 4, 1, 1, 0),) * levels,
            num_embeddings=num_embeddings, embedding_dim=embedding_dim, commitment_cost=float(commitment_cost),
            decay=float(codebook_decay),
        )
        self._factor = 2 ** levels

    # -- encode / decode --------------------------------------------------------------------------
    def encode(self, x: Tensor, generator: GeneratorLike = None, sample: bool = True) -> Tensor:
        """The encoder's continuous output (before quantisation); ``generator`` and ``sample`` do not apply (the
        encoder is deterministic; the arguments match the KL stage's)."""
        return self.vqvae.encode(x)

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(nearest codebook vectors, commitment loss)`` of encodings ``z`` (the codebook's EMA update runs in
        training mode only)."""
        e, loss = self.vqvae.quantize(z)
        return e, loss

    def codes(self, z: Tensor) -> Tensor:
        """Codebook indices (B, *latent grid) of encodings ``z`` (no codebook update)."""
        return self.vqvae.quantizer.quantizer.quantize(z)[2]

    def decode(self, z: Tensor) -> Tensor:
        """Image from encodings: quantised to the nearest codebook vectors, then decoded."""
        return self.vqvae.decode(self.quantize(z)[0])

    # -- contract ---------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        x = self._image(batch)
        z = self.encode(x)
        e, commitment = self.quantize(z)
        recon = self.vqvae.decode(e)
        l1 = (recon - x).abs().mean()
        # perplexity: the effective number of codes this batch used (exp of the code histogram's entropy)
        return l1 + commitment, {"l1": l1.detach(), "commitment": commitment.detach(),
                                 "perplexity": self.vqvae.quantizer.perplexity.detach()}
