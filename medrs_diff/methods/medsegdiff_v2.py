"""MedSegDiff-V2 (Wu et al., AAAI 2024, arXiv 2301.11798), **paper-faithful**.

The official repository's default path (``--version new``, "based on V2") has neither the SS-Former
nor the FF-Parser; this follows the paper instead (nets and every ≈ choice:
:mod:`medrs_diff.nets.medsegdiff_v2`). The mask is diffused (binary: one channel ``2 * label - 1``;
K >= 3 classes: K one-hot channels in [-1, 1]). A separately supervised **condition model** (a
BasicUNet over the image) gives segmentation logits, its last decoded feature (the **anchor**,
smoothed by uncertain spatial attention with a learnable-variance Gaussian and injected into the
diffusion UNet's first full-resolution feature, see ``anchor_at``; ``usa_gate="auto"``: one spatial
attention map for a binary task, the paper's, and one map per feature channel for K >= 3 classes, since
one map orders the classes on a line, see :mod:`medrs_diff.nets.medsegdiff_v2`) and its deepest embedding (the
**semantic** condition, fused with the diffusion bottleneck by the SS-Former in the Fourier domain
with the neural band-pass filter).

Loss: ``eps-MSE + anchor_weight * anchor loss``; the anchor loss is Dice + ``anchor_ce_weight`` x
cross-entropy on the condition model's logits against the label (binary: one logit channel, BCE +
Dice on the sigmoid; K classes: CE + Dice on the softmax of K channels; MONAI ``DiceCELoss``, Dice
over the whole batch). Both parts are logged (``loss_noise``, ``loss_anchor``). The paper sums the
two; its loss also gates the anchor term by an indicator ``1[t ≡ 0 mod α]`` on the diffusion step and
weights the CE term (≈: we could not check the values of α and that weight against the paper text):
``anchor_every`` is that α (the anchor loss then covers only the batch elements whose sampled step is
a multiple of it; default 1: every element) and ``anchor_ce_weight`` the CE weight (default 1).

Sampling: as V1, the 1000-step DDPM chain by default (``sampler`` / ``sampling_steps`` / the
``predict`` arguments choose DDIM or DPM-Solver++ with final x0 clipping; K-class x0 estimates are
projected onto the one-hot simplex, see :mod:`~medrs_diff.methods._segmentation`), ``n_samples`` members
(default 5, the official repository's) fused by STAPLE (default) or mean / majority, with the
uncertainty maps of :func:`~medrs_diff.methods._segmentation.decode_samples`. The condition model
does not see x_t, so it runs once per case, not per step. ``predict`` also returns ``anchor_probability``
(the condition model's own mask probabilities, (B, C, *spatial)), a discriminative by-product: report
the diffusion numbers, not these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.losses import DiceCELoss
from torch import Tensor

from ..errors import ArgumentError, DataError
from ..nets.medsegdiff_v2 import CONDITION_POOLINGS, USA_GATES, ConditionUNet, MedSegDiffV2Net
from ._sampling import repeat_batch, sample_n
from ._segmenter import DiffusionSegmenter

__all__ = ["MedSegDiffV2"]


def _check_weight(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ArgumentError(name, f"must be a number >= 0, got {value!r}", "use e.g. 1.0")
    return float(value)


class MedSegDiffV2(DiffusionSegmenter):
    name = "medsegdiff_v2"

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
        cond_features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        cond_norm: str = "instance",
        usa_kernel_size: int = 5,
        usa_sigma: float = 1.0,
        ssformer_depth: int = 1,
        ssformer_heads: int = 4,
        nbp_bands: int = 4,
        anchor_at: str = "first_block",
        usa_gate: str = "auto",
        timesteps: int = 1000,
        schedule: str = "linear",
        n_samples: int = 5,
        fusion: str = "staple",
        sampler: str = "ddpm",
        sampling_steps: int | None = None,
        anchor_weight: float = 1.0,
        anchor_ce_weight: float = 1.0,
        anchor_every: int = 1,
    ) -> None:
        super().__init__()
        self.setup_segmenter(in_channels=in_channels, spatial_dims=spatial_dims, num_classes=num_classes,
                             timesteps=timesteps, schedule=schedule, n_samples=n_samples, fusion=fusion,
                             sampler=sampler, sampling_steps=sampling_steps)
        if isinstance(anchor_every, bool) or not isinstance(anchor_every, int) or anchor_every < 1:
            raise ArgumentError("anchor_every", f"must be an integer >= 1, got {anchor_every!r}",
                                "use 1 (anchor loss on every element) or the paper's interval alpha")
        self.condition = ConditionUNet(spatial_dims, in_channels, self.out_channels, cond_features, cond_norm)
        self.net = MedSegDiffV2Net(
            spatial_dims, self.out_channels, self.out_channels, self.condition.anchor_channels,
            self.condition.embed_channels, channels, attention_levels, num_res_blocks, num_head_channels,
            norm_num_groups, usa_kernel_size, usa_sigma, ssformer_depth, ssformer_heads, nbp_bands,
            anchor_at=anchor_at, usa_gate=self.resolve_usa_gate(usa_gate),
        )
        self.anchor_weight = _check_weight("anchor_weight", anchor_weight)
        ce = _check_weight("anchor_ce_weight", anchor_ce_weight)
        binary = self.out_channels == 1
        self.anchor_loss = DiceCELoss(sigmoid=binary, softmax=not binary, to_onehot_y=not binary, batch=True,
                                      lambda_ce=ce)
        self.anchor_every = anchor_every

    def resolve_usa_gate(self, usa_gate: str) -> str:
        """``auto``: one spatial map for a binary task, one map per feature channel for K >= 3 classes."""
        if usa_gate == "auto":
            return "spatial" if self.out_channels == 1 else "channel"
        if usa_gate not in USA_GATES:
            raise ArgumentError("usa_gate", f"unknown U-SA gate {usa_gate!r}",
                                f"choose auto or one of {', '.join(USA_GATES)}")
        return usa_gate

    @property
    def denoiser(self) -> MedSegDiffV2Net:
        return self.net

    # -- shared ----------------------------------------------------------------------------------------
    def check_image_size(self, image: Tensor) -> None:
        bad = [s for s in image.shape[2:] if s % self.size_multiple]
        if bad:
            raise DataError("image", f"spatial shape {tuple(image.shape[2:])} has sizes that are not multiples of "
                            f"{self.size_multiple} (the condition UNet pools 4 times, the diffusion UNet "
                            f"{len(self.net.unet.block_out_channels) - 1})",
                            f"crop or pad the image / patch to a multiple of {self.size_multiple}")
        bottleneck = [s // 2**CONDITION_POOLINGS for s in image.shape[2:]]
        if self.condition.norm == "instance" and torch.Size(bottleneck).numel() < 2:
            raise DataError("image", f"image / patch {tuple(image.shape[2:])} leaves one voxel at the condition "
                            "UNet's bottleneck, which instance norm cannot normalise",
                            "use images / patches of at least 32 along one axis, or set cond_norm: group")

    def conditions(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The condition model on ``image``: (logits, anchor feature, semantic embedding)."""
        return self.condition(image)

    # -- training ---------------------------------------------------------------------------------
    def _anchor_term(self, logits: Tensor, label: Tensor, index: Tensor) -> Tensor:
        keep = (index % self.anchor_every) == 0
        if not bool(keep.any()):
            return logits.sum() * 0.0  # no element at a multiple of alpha: a zero that keeps the graph
        target = label[keep].float() if self.out_channels == 1 else label[keep].long()
        return self.anchor_loss(logits[keep], target)

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        image, label, x0 = self.training_pair(batch)
        logits, anchor, semantic = self.conditions(image)
        index = self.objective.sample_index(x0.shape[0], x0.device, generator)
        noise_loss, logs = self.objective(
            lambda x, t: self.net(x, t, anchor=anchor, semantic=semantic), x0, index=index, generator=generator,
        )
        anchor_loss = self._anchor_term(logits, label, index)
        logs["loss_noise"] = noise_loss.detach()
        logs["loss_anchor"] = anchor_loss.detach()
        return noise_loss + self.anchor_weight * anchor_loss, logs

    def mask_denoiser(self, image: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        _, anchor, semantic = self.conditions(image)
        net = self.net
        return lambda x, t: net(x, t, anchor=anchor, semantic=semantic)

    # -- inference --------------------------------------------------------------------------------
    def sample_masks(self, image: Tensor, n_samples: int, sampling: dict[str, Any]) -> tuple[Tensor, dict]:
        logits, anchor, semantic = self.conditions(image)  # once per case, not per step
        anchors, semantics = repeat_batch(anchor, n_samples), repeat_batch(semantic, n_samples)
        net = self.net
        samples = sample_n(lambda x, t: net(x, t, anchor=anchors, semantic=semantics), self.mask_shape(image),
                           self.schedule, n_samples=n_samples, device=image.device, clip=True, simplex=self.simplex,
                           **sampling)
        return samples.transpose(0, 1), {"logits": logits}

    def extra_outputs(self, out: dict[str, Tensor], samples: Tensor, kept: dict) -> dict[str, Tensor]:
        logits = kept["logits"]
        out["anchor_probability"] = torch.sigmoid(logits) if self.out_channels == 1 else torch.softmax(logits, 1)
        return out
