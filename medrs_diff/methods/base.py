"""The contract every published method implements, so training, inference and the CLI treat them alike.

A method is an ``nn.Module`` composed of a denoiser net, optional condition encoders and an engine
configuration (schedule, prediction type, loss). It never reads files: it takes batch dicts whose
keys are named in :mod:`medrs_diff.data.keys` and returns tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..diffusion.samplers import SAMPLERS

#: Samplers a method's ``predict`` accepts by name.
SAMPLER_NAMES = tuple(SAMPLERS)


def check_sampler(name: str) -> None:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {SAMPLER_NAMES}")


class DiffusionMethod(nn.Module):
    """Base class of methods.

    Subclasses set ``input_key`` (the batch key inference feeds: ``image`` for segmentation,
    ``cond`` for restoration), ``target_key`` (what is generated), ``in_channels`` (channels of the
    input), ``out_channels`` (channels of the prediction) and ``spatial_dims``, and implement
    :meth:`loss` and :meth:`predict`.
    """

    name: str = "method"
    #: what the prediction is, so training and evaluation pick the field's metrics: "seg" or "image"
    task: str = "image"
    input_key: str = "image"
    target_key: str = "label"
    in_channels: int = 1
    out_channels: int = 1
    spatial_dims: int = 2

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss for a batch and a dict of scalar logs."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(
        self,
        batch: dict[str, Any],
        *,
        sampler: str | None = None,
        steps: int | None = None,
        n_samples: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> dict[str, Tensor]:
        """Generate for a batch: ``prediction`` in data space, plus ``uncertainty`` and ``samples``
        where the method draws several samples."""
        raise NotImplementedError

    def check_input(self, x: Tensor, where: str = "input") -> None:
        """Raise a clear error when an input does not have the expected channels or dimensions."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"{where}: expected a {self.spatial_dims}-D image batch of shape (B, C, ...spatial) with "
                f"{self.spatial_dims + 2} axes, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{where}: the {self.name} model expects {self.in_channels} input channel(s) but got "
                f"{x.shape[1]}; pass an image with {self.in_channels} channel(s) (bands/modalities)"
            )

    def hparams(self) -> dict[str, Any]:
        """Constructor arguments, stored in checkpoints so a model can be rebuilt from them."""
        return dict(getattr(self, "_init_args", {}))
