"""MedSegDiff V1 (Wu et al., MIDL 2023, arXiv 2211.00611): mask diffusion with dynamic conditional encoding.

Paper-faithful by default. The mask (binary: one channel ``2 * label - 1``; K >= 3 classes: K one-hot
channels in [-1, 1]) is diffused; :class:`~medrs_diff.nets.medsegdiff.MedSegDiffUNet` predicts eps
from x_t, t and the image: at every encoder scale the layer-normed image and (FF-Parser-filtered) mask
features are multiplied and re-weight the image features, ``A = (LN(m_I) ⊙ LN(m_x)) ⊙ m_I``; the two
embeddings are summed at the bottleneck and decoded. Loss: eps-MSE (the paper; the official code adds a
learned-variance term, not used here). Sampling: the 1000-step DDPM chain by default (``sampler`` /
``sampling_steps`` / the ``predict`` arguments choose DDIM or DPM-Solver++ with final x0 clipping;
K-class x0 estimates are projected onto the one-hot simplex, see :mod:`~medrs_diff.methods._segmentation`),
``n_samples`` members fused by STAPLE (the paper) or mean / majority, with the uncertainty map of
:func:`~medrs_diff.methods._segmentation.decode_samples`. The paper fuses about 25 samples; the
default here is 5, the official repository's default, since every member costs a whole chain
(raise ``n_samples`` for the paper's setting). The condition encoder depends on x_t, so it runs at
every step; only its x_t-independent stem is computed once per image.

Repository-faithful switch ``image_in_diffusion_encoder=True`` (off by default; ImprintLab/MedSegDiff,
``UNetModel_newpreview.forward``): the diffusion encoder takes [image, x_t] instead of x_t alone, so
its skips carry the image at full resolution to the decoder (the paper's E_x sees x_t only and the
image reaches the decoder only through the bottleneck sum). Independent of the calibration switch
below; both on is the official code's setup. See :mod:`medrs_diff.nets.medsegdiff`.

Repository-faithful switch ``calibration=True`` (off by default; ImprintLab/MedSegDiff): a
deterministic mask head on the condition network (sigmoid / softmax), trained with
``calibration_weight`` (10, as in the official code) times the MSE to the {0, 1} mask (one-hot for K
classes), added to the eps-MSE. At sampling, each ensemble member's sample probability p = (x0 + 1) / 2
is blended with the head's mask c, evaluated once at t = 0 on that member's final sample (the
official code takes c from its last chain step), by the official rule::

    d = 2 Σ(1[p > 0.5] · c) / (Σ 1[p > 0.5] + Σ c)      (per member and image; 1 when both are empty)
    blend = clip(c + 0.25 p, 0, 1)       if d < 0.65
            clip(0.5 c + 0.5 p, 0, 1)    otherwise

then the blended members are fused like the pure ones. Differences from the official code, on
purpose: its x0 lives in {0, 1} and its agreement thresholds the sample at 0 over the whole batch;
here masks live in [-1, 1], the threshold is the class midpoint (p > 0.5) and the agreement is per
image, so one case does not change another's result; K classes apply the rule channel-wise (the
official code is binary). With calibration on, ``predict`` returns the blended result under the usual
keys (``prediction``, ``probability``, ``uncertainty``, ...) and the pure-diffusion result under
``prediction_diffusion``, ``probability_diffusion`` and ``uncertainty_diffusion``, plus ``calibration``
(the head's mask, mean over members, (B, C, *spatial)) and ``agreement`` (d, (B, N)); report the pure
and blended numbers separately, since the blended ones partly come from a discriminative head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import ArgumentError
from ..nets.medsegdiff import MedSegDiffUNet
from ._sampling import repeat_batch, sample_with_features
from ._segmentation import decode_samples, sample_probabilities
from ._segmenter import DiffusionSegmenter

__all__ = ["AGREEMENT_THRESHOLD", "MedSegDiffV1", "calibration_blend"]

#: the official code's Dice threshold between the diffusion sample and the calibration head
AGREEMENT_THRESHOLD = 0.65


def calibration_blend(probability: Tensor, calibration: Tensor,
                      threshold: float = AGREEMENT_THRESHOLD) -> tuple[Tensor, Tensor]:
    """The official blend of sample probabilities with the calibration head's mask (see the module doc).

    ``probability`` and ``calibration``: (B, N, C, *spatial) in [0, 1]. Returns the blended masks (same
    shape, in [0, 1]) and the agreement Dice d (B, N).
    """
    if probability.shape != calibration.shape or probability.ndim < 4:
        raise ArgumentError("calibration_blend", f"sample probabilities {tuple(probability.shape)} and calibration "
                            f"{tuple(calibration.shape)} must share one (B, N, C, *spatial) shape",
                            "pass the members' probabilities and head masks stacked on axis 1")
    fg = (probability > 0.5).to(calibration.dtype)
    dims = tuple(range(2, fg.ndim))
    inter, total = (fg * calibration).sum(dims), fg.sum(dims) + calibration.sum(dims)
    agreement = torch.where(total > 0, 2 * inter / total.clamp_min(1e-12), torch.ones_like(total))
    low = (agreement < threshold).reshape(*agreement.shape, *([1] * (fg.ndim - 2)))
    blended = torch.where(low, calibration + 0.25 * probability, 0.5 * calibration + 0.5 * probability)
    return blended.clamp(0, 1), agreement


class MedSegDiffV1(DiffusionSegmenter):
    name = "medsegdiff_v1"

    def __init__(
        self,
        in_channels: int = 1,
        spatial_dims: int = 2,
        num_classes: int = 2,
        channels: Sequence[int] = (64, 128, 256, 256),
        attention_levels: Sequence[bool] = (False, False, True, True),
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        ff_parser_levels: int | None = None,
        ff_base_size: int = 64,
        timesteps: int = 1000,
        schedule: str = "linear",
        n_samples: int = 5,
        fusion: str = "staple",
        sampler: str = "ddpm",
        sampling_steps: int | None = None,
        calibration: bool = False,
        calibration_weight: float = 10.0,
        image_in_diffusion_encoder: bool = False,
    ) -> None:
        super().__init__()
        self.setup_segmenter(in_channels=in_channels, spatial_dims=spatial_dims, num_classes=num_classes,
                             timesteps=timesteps, schedule=schedule, n_samples=n_samples, fusion=fusion,
                             sampler=sampler, sampling_steps=sampling_steps)
        if not isinstance(calibration, bool):
            raise ArgumentError("calibration", f"must be true or false, got {calibration!r}",
                                "set calibration: true for the official repository's blend, false for the paper")
        if calibration_weight < 0:
            raise ArgumentError("calibration_weight", f"must be >= 0, got {calibration_weight}",
                                "use 10 (the official code) or another non-negative weight")
        self.net = MedSegDiffUNet(
            spatial_dims, in_channels, self.out_channels, channels, attention_levels, num_res_blocks,
            num_head_channels, norm_num_groups, ff_parser_levels=ff_parser_levels, ff_base_size=ff_base_size,
            calibration_head=calibration, image_in_diffusion_encoder=image_in_diffusion_encoder,
        )
        self.calibration, self.calibration_weight = calibration, float(calibration_weight)
        if calibration:
            self.outputs = (*type(self).outputs, "prediction_diffusion", "calibration")

    @property
    def denoiser(self) -> MedSegDiffUNet:
        return self.net

    def check_image_size(self, image: Tensor) -> None:
        self.net.check_size(image, "image")

    # -- training ---------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        image, _, x0 = self.training_pair(batch)
        features = self.net.image_features(image)
        if not self.calibration:
            return self.objective(lambda x, t: self.net(x, t, features=features), x0, generator=generator)
        held: dict[str, Tensor] = {}

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            eps, held["calibration"] = self.net(x, t, features=features, return_calibration=True)
            return eps

        loss, logs = self.objective(denoise, x0, generator=generator)
        cal_loss = ((held["calibration"] - (x0 + 1) / 2) ** 2).mean()
        logs["loss_calibration"] = cal_loss.detach()
        return loss + self.calibration_weight * cal_loss, logs

    def mask_denoiser(self, image: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        """The eps output only: the calibration head (``calibration: true``) acts after the chain, not in it."""
        features, net = self.net.image_features(image), self.net
        return lambda x, t: net(x, t, features=features)

    # -- inference --------------------------------------------------------------------------------
    def sample_masks(self, image: Tensor, n_samples: int, sampling: dict[str, Any]) -> tuple[Tensor, dict]:
        features = self.net.image_features(image)
        samples = sample_with_features(self, features, self.mask_shape(image), n_samples=n_samples,
                                       simplex=self.simplex, **sampling)
        return samples, {"features": features}

    def extra_outputs(self, out: dict[str, Tensor], samples: Tensor, kept: dict) -> dict[str, Tensor]:
        if not self.calibration:
            return out
        cal = self.calibration_masks(kept["features"], samples)
        blended, agreement = calibration_blend(sample_probabilities(samples), cal)
        result = decode_samples(blended * 2 - 1, self.num_classes, self.fusion)
        for key in ("prediction", "probability", "uncertainty"):
            result[f"{key}_diffusion"] = out[key]
        result["calibration"] = cal.mean(1)
        result["agreement"] = agreement
        return result

    @torch.no_grad()
    def calibration_masks(self, features: Tensor, samples: Tensor) -> Tensor:
        """The calibration head's masks (B, N, C, *spatial) for final samples (B, N, C, *spatial), at t = 0."""
        b, n = samples.shape[:2]
        x = samples.transpose(0, 1).reshape(n * b, *samples.shape[2:])  # sample-major, like the sampler
        t0 = self.schedule.table("timesteps", x.device, torch.long)[:1].expand(n * b)
        _, cal = self.net(x, t0, features=repeat_batch(features, n), return_calibration=True)
        return cal.reshape(n, b, *cal.shape[1:]).transpose(0, 1)
