"""The base of the mask-diffusion segmenters (SegDiff, MedSegDiff V1 / V2): one place for the arguments
they share (classes, schedule, ensemble size, fusion, default sampler), their checks, the training
target and the ``predict`` signature. A subclass builds its nets, declares :attr:`denoiser` and
implements :meth:`sample_masks` (and, where it needs more, :meth:`extra_outputs`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..diffusion.generators import GeneratorLike
from ..diffusion.process import DiffusionLoss
from ..diffusion.schedules import make_schedule
from ..errors import ArgumentError, DataError
from ._segmentation import check_fusion, decode_samples, encode_mask, mask_channels, simplex_denoiser
from .base import DiffusionMethod, DiffusionPair, check_sampler, mask_batch

__all__ = ["DiffusionSegmenter"]


class DiffusionSegmenter(DiffusionMethod):
    """A method that diffuses the segmentation mask conditioned on the image (see
    :mod:`medrs_diff.methods._segmentation` for the mask encoding and the ensemble fusion)."""

    task = "seg"
    input_key = "image"
    target_key = "label"
    outputs = ("prediction", "uncertainty", "probability")

    def setup_segmenter(self, *, in_channels: int, spatial_dims: int, num_classes: int, timesteps: int,
                        schedule: str, n_samples: int, fusion: str, sampler: str,
                        sampling_steps: int | None) -> None:
        """Check and store the shared arguments; builds the training schedule and the eps-MSE objective."""
        check_sampler(sampler)
        check_fusion(fusion)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ArgumentError("n_samples", f"must be an integer >= 1, got {n_samples!r}",
                                "draw at least one sample per case (more samples: a finer uncertainty map)")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.out_channels = mask_channels(num_classes)
        self.spatial_dims = spatial_dims
        self.schedule = make_schedule(schedule, timesteps)
        self.objective = DiffusionLoss(self.schedule, prediction_type="eps", loss_type="mse")
        self.n_samples, self.fusion = n_samples, fusion
        self.sampler, self.sampling_steps = sampler, sampling_steps

    @property
    def simplex(self) -> bool:
        """Whether sampling projects each x0 estimate onto the one-hot simplex: K-class masks (see
        :func:`~medrs_diff.methods._segmentation.simplex_denoiser`); binary masks keep the box clip."""
        return self.out_channels > 1

    @property
    def size_multiple(self) -> int:
        return self.denoiser.size_multiple

    # -- shared ----------------------------------------------------------------------------------------
    def check_image_size(self, image: Tensor) -> None:
        """Refuse an image whose spatial size the nets cannot take (default: anything goes)."""

    def _inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        image, label = mask_batch(self, batch)
        self.check_image_size(image)
        return image, label

    def training_pair(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """The checked ``(image, label, x0)`` of a training batch; x0 is the mask encoded in [-1, 1]."""
        image, label = self._inputs(batch)
        if label is None:
            raise DataError("batch", f"{type(self).__name__} training needs batch[{self.target_key!r}] (the mask)",
                            "use a data module that provides it")
        return image, label, encode_mask(label, self.num_classes)  # checks the label values first

    def mask_denoiser(self, image: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        """The eps-denoiser ``(x_t, t) -> eps`` of masks conditioned on ``image`` exactly as :meth:`sample_masks`
        conditions it (one sample per case; the image features computed once)."""
        raise NotImplementedError(f"{type(self).__name__} must implement mask_denoiser")

    def diffusion_pair(self, batch: dict[str, Any]) -> DiffusionPair:
        """The image-conditioned mask denoiser (through the simplex projection for K-class masks, as sampled) and
        the encoded mask x0 of an (image, label) batch."""
        if (err := self.pair_refusal()) is not None:
            raise err
        image, _, x0 = self.training_pair(batch)
        denoise = self.mask_denoiser(image)
        return DiffusionPair(simplex_denoiser(denoise, self.schedule) if self.simplex else denoise, x0, "eps",
                             {"clip": True})

    def mask_shape(self, image: Tensor) -> tuple[int, ...]:
        """The shape (B, mask channels, *spatial) of the masks sampled for ``image``."""
        return (image.shape[0], self.out_channels, *image.shape[2:])

    # -- inference ------------------------------------------------------------------------------------
    def sample_masks(self, image: Tensor, n_samples: int, sampling: dict[str, Any]) -> tuple[Tensor, dict]:
        """``n_samples`` clipped masks per case (B, N, C, *spatial) in [-1, 1], and whatever the subclass
        keeps for :meth:`extra_outputs`. ``sampling``: sampler, steps, generator, progress."""
        raise NotImplementedError(f"{type(self).__name__} must implement sample_masks")

    def extra_outputs(self, out: dict[str, Tensor], samples: Tensor, kept: dict) -> dict[str, Tensor]:
        """The outputs of :meth:`predict` from the fused result ``out`` (default: ``out`` unchanged)."""
        return out

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
        """Segment ``batch["image"]``: ``n_samples`` (default: the method's) sampled masks fused by the method's
        fusion; ``sampler`` / ``steps`` default to the method's. Returns ``prediction`` (class indices),
        ``probability``, ``uncertainty``, ``mutual_information`` and ``samples``."""
        image, _ = self._inputs(batch)
        n = n_samples if n_samples is not None else self.n_samples
        sampling = {"sampler": sampler if sampler is not None else self.default_sampler,
                    "steps": steps if steps is not None else self.sampling_steps,
                    "generator": generator, "progress": progress}
        samples, kept = self.sample_masks(image, n, sampling)
        return self.extra_outputs(decode_samples(samples, self.num_classes, self.fusion), samples, kept)
