"""Diffusion autoencoder (Preechakul et al., CVPR 2022) as a method: image -> (z_sem, x_T) -> reconstruction.

Training: the z_sem-conditioned DDIM decoder's eps-MSE, encoder trained jointly (one loss, as in the paper).
``predict`` encodes each image (z_sem by the encoder, x_T by DDIM inversion conditioned on it) and decodes
(z_sem, x_T) by DDIM with eta = 0 on the same steps; it returns the reconstruction (``prediction``, in data
units) and the stochastic code x_T (``stochastic_code``, model space). Only DDIM applies (inversion is
DDIM's); ``z_sem`` itself and linear edits are the library functions of :mod:`medrs_diff.diffusion.diffae`.
The paper's latent DDIM that samples z_sem for unconditional generation is not part of this method.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..data.keys import IMAGE
from ..diffusion.diffae import diffae_decode, diffae_encode, diffae_loss
from ..diffusion.generators import GeneratorLike
from ..diffusion.process import DiffusionLoss, check_spatial
from ..diffusion.schedules import make_schedule
from ..errors import ArgumentError
from ..nets.diffae import DiffAEDenoiser, SemanticEncoder
from .base import DiffusionMethod

__all__ = ["DiffAE"]


class DiffAE(DiffusionMethod):
    name = "diffae"
    input_key = IMAGE
    target_key = IMAGE  # validation: PSNR of the reconstruction against its input
    outputs = ("prediction", "stochastic_code")
    data_space = ("prediction",)

    def __init__(
        self,
        in_channels: int = 1,
        z_dim: int = 32,
        encoder_base: int = 16,
        encoder_levels: int = 3,
        base: int = 32,
        t_dim: int = 64,
        timesteps: int = 1000,
        schedule: str = "linear",
        sampler: str = "ddim",
        sampling_steps: int | None = 50,
        fixed_point_iters: int = 3,
    ) -> None:
        super().__init__()
        if sampler != "ddim":
            raise ArgumentError("sampler", f"DiffAE encodes by DDIM inversion, got sampler {sampler!r}",
                                "set sampler: ddim")
        if fixed_point_iters < 1:
            raise ArgumentError("fixed_point_iters", f"must be >= 1, got {fixed_point_iters}", "use 1 to 10")
        self.in_channels = self.out_channels = in_channels
        self.sampler, self.sampling_steps, self.fixed_point_iters = sampler, sampling_steps, fixed_point_iters
        self.schedule = make_schedule(schedule, timesteps)
        self.encoder = SemanticEncoder(in_channels, z_dim, encoder_base, encoder_levels)
        self.net = DiffAEDenoiser(in_channels, z_dim, base, t_dim)
        self.objective = DiffusionLoss(self.schedule)

    @property
    def denoiser(self) -> DiffAEDenoiser:
        return self.net

    @property
    def size_multiple(self) -> int:
        return 2

    def _image(self, batch: dict[str, Any]) -> Tensor:
        x = batch[self.input_key]
        check_spatial(x, "image")
        self.check_input(x, "image")
        return x

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        return diffae_loss(self.objective, self.encoder, self.net, self._image(batch), generator=generator)

    def encode(self, x0: Tensor, steps: int | None = None) -> tuple[Tensor, Tensor]:
        """x0 -> (z_sem, x_T)."""
        return diffae_encode(self.encoder, self.net, x0, self.schedule, steps=self._steps(steps),
                             fixed_point_iters=self.fixed_point_iters)

    def decode(self, z_sem: Tensor, x_T: Tensor, steps: int | None = None) -> Tensor:
        """(z_sem, x_T) -> x0 by DDIM, eta = 0."""
        return diffae_decode(self.net, z_sem, x_T, self.schedule, steps=self._steps(steps))

    def _steps(self, steps: int | None = None) -> int:
        """``steps`` as given (>= 1), else the recipe's ``sampling_steps``, else every training step."""
        if steps is not None:
            if isinstance(steps, bool) or int(steps) != steps or steps < 1:
                raise ArgumentError("steps", f"must be an integer >= 1, got {steps!r}", "give e.g. 50 DDIM steps")
            return int(steps)
        return len(self.schedule) if self.sampling_steps is None else int(self.sampling_steps)

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
        """Reconstruction by encode -> decode (deterministic: ``n_samples`` and ``generator`` do not apply)."""
        if sampler is not None and sampler != "ddim":
            raise ArgumentError("sampler", f"DiffAE reconstructs with DDIM only, got {sampler!r}", "use --sampler ddim")
        x = self._image(batch)
        z, x_T = self.encode(x, steps)
        return {"prediction": self.decode(z, x_T, steps), "stochastic_code": x_T}
