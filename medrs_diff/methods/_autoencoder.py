"""What the first-stage autoencoders share (``autoencoder_kl``, ``autoencoder_vq``): the image contract, the
downsampling factor and the reconstruction ``predict``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..data.keys import IMAGE
from ..diffusion.generators import GeneratorLike
from ..diffusion.process import check_spatial
from ..errors import DataError
from .base import Method


class ImageAutoencoder(Method):
    """Image -> latent -> image. Subclasses set ``_factor`` (image pixels per latent pixel) and define
    ``encode(x, generator=None, sample=True)`` and ``decode(z)``; ``predict`` returns ``prediction``, the
    reconstruction of the deterministic latent (model space, mapped back to data units)."""

    task = "image"
    input_key = IMAGE
    target_key = IMAGE
    outputs = ("prediction",)
    data_space = ("prediction",)
    _factor: int

    def encode(self, x: Tensor, generator: GeneratorLike = None, sample: bool = True) -> Tensor:
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def size_multiple(self) -> int:
        """Spatial sizes must be multiples of the encoder's downsampling factor."""
        return int(self._factor)

    @property
    def downsampling(self) -> int:
        """Image pixels per latent pixel along each spatial axis."""
        return int(self._factor)

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
        """``prediction``: the decoded deterministic latent (the posterior mean of a KL stage); sampler / steps /
        n_samples do not apply."""
        x = self._image(batch)
        recon = self.decode(self.encode(x, sample=False))
        if not bool(torch.isfinite(recon).all()):
            raise DataError(self.name, "the reconstruction holds NaN or Inf values",
                            "check the input (finite, scaled as in training) and the checkpoint")
        return {"prediction": recon}
