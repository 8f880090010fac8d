"""EI-DDPM (Zhao & Li, MICCAI 2023): evidential fusion of one conditional segmentation DDPM per modality.

No public code exists; every choice the paper leaves open is marked ≈ here and in the reference notes.

- **Branches**: M independent conditional DDPMs (``in_channels`` = M modalities, in the data module's
  modality order), branch m denoising the mask (binary: one channel ``2 * label - 1``; K >= 3 classes:
  K one-hot channels in [-1, 1]) with its own modality concatenated to x_t (≈ concatenation).
- **EIL**: per branch, a 1x1 convolution of the branch's sampled mask to K evidence maps through a
  non-negative activation (``evidence_activation``: softplus (default), exp of clamped logits, or ReLU),
  started as a reading of the mask (class k's logit = ``evidence_init`` x its channel, ≈);
  Dirichlet alpha = e + 1, belief b_k = e_k / S, uncertainty u = K / S (:mod:`medrs_diff.nets.evidential`).
- **CDO**: a learned reliability beta[m, k] in (0, 1) per modality and class (``reliability_init``;
  ``reliability_gain`` rescales its logit so it learns faster than the network weights, ≈) discounts each
  branch's mass function (Mercier's contextual discounting: a low beta[m, k] means modality m cannot rule
  out class k); **Dempster's rule** with conflict normalisation fuses the M discounted opinions; the label
  is the argmax of the fused pignistic probabilities.
- **Loss**: the sum of the branches' eps-MSE plus ``evidential_weight`` x the evidential loss. ≈ The EILs
  and the CDO train on masks the branches actually sample (a short DDIM chain of ``evidence_steps`` steps
  per training batch, no gradient through it), so they see at training what they see at inference: a
  single-step x0 estimate at a small t carries the true mask through x_t, even for a modality that holds
  no information, and would teach every branch to be trusted. Per branch: the Dirichlet-expected
  cross-entropy with the KL penalty on wrong-class evidence (Sensoy et al. 2018), annealed by
  min(1, step / ``kl_anneal_steps``) (≈ step-based), plus the foreground soft Dice of the expected
  probabilities alpha / S (≈, as TBraTS; the cross-entropy alone, dominated by background voxels, leaves
  weak tumour evidence and a fused argmax that misses tumour). After ``reliability_warmup`` steps (≈, so the
  reliabilities do not absorb the EILs' early miscalibration): a class-balanced cross-entropy plus the
  soft Dice of the foreground classes of the fused pignistic probabilities (≈; a plain cross-entropy,
  dominated by background voxels, taught every modality the class prior instead of its reliability, and
  kept an uninformative modality's constant background claims as a useful prior), on detached opinions
  (it trains the CDO only, ≈).
- **Sampling**: each branch draws ``n_samples`` masks with the engine's sampler (default: the DDPM chain;
  x0 clipped, or projected onto the one-hot simplex for K >= 3 classes as in the other segmenters); a
  branch's evidence is the mean of its EIL over its samples. Cost: M times one model.

``predict`` returns ``prediction`` (fused label), ``probability`` (fused pignistic: the foreground for binary
tasks, K classes otherwise), ``uncertainty`` (fused mass on the whole frame: ignorance), ``conflict``
(Dempster's total conflict), ``reliability`` (M channels in modality order: sum_k beta[m, k] p_k, each
modality's reliability for the fused class probabilities), ``branch_uncertainty`` (M channels: each
branch's u) and ``branch_prediction_<m>`` (each branch's own label, one output per modality, m in the
data module's modality order; declared as label outputs, so infer writes them in the data's label values).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from ..diffusion.generators import GeneratorLike
from ..errors import ArgumentError
from ..nets.evidential import (
    ContextualDiscounting,
    EvidenceLayer,
    dempster,
    dirichlet_opinion,
    opinion_masses,
    pignistic,
)
from ..nets.unet import ConditionedUNet
from ._sampling import repeat_batch, sample_n
from ._segmentation import simplex_denoiser
from ._segmenter import DiffusionSegmenter
from .base import DiffusionPair, IOSpec

__all__ = ["EIDDPM", "dirichlet_kl", "evidential_ce"]


def evidential_ce(alpha: Tensor, onehot: Tensor) -> Tensor:
    """Expected cross-entropy under Dir(alpha), sum_k y_k (digamma(S) - digamma(alpha_k)), per voxel (B, *spatial)."""
    strength = alpha.sum(1, keepdim=True)
    return (onehot * (torch.digamma(strength) - torch.digamma(alpha))).sum(1)


def dirichlet_kl(alpha: Tensor, onehot: Tensor) -> Tensor:
    """KL(Dir(alpha~) || Dir(1)) with the true class's evidence removed, alpha~ = y + (1 - y) alpha: the
    penalty on wrong-class evidence, per voxel (B, *spatial)."""
    a = onehot + (1 - onehot) * alpha
    k = a.shape[1]
    s = a.sum(1, keepdim=True)
    return (torch.lgamma(s[:, 0]) - torch.lgamma(torch.tensor(float(k), device=a.device))
            - torch.lgamma(a).sum(1) + ((a - 1) * (torch.digamma(a) - torch.digamma(s))).sum(1))


def _balanced_ce(p: Tensor, onehot: Tensor) -> Tensor:
    """Class-balanced cross-entropy of probabilities (B, K, *spatial), per case (B,): each class present in the
    case weighs the same, whatever its voxel count."""
    counts = onehot.flatten(2).sum(2)  # (B, K)
    nll = -(onehot * p.clamp_min(1e-6).log()).flatten(2).sum(2)  # (B, K)
    present = counts > 0
    return (nll / counts.clamp_min(1)).sum(1) / present.sum(1).clamp_min(1)


def _soft_dice(p: Tensor, onehot: Tensor, eps: float = 1e-5) -> Tensor:
    """1 - mean soft Dice of the foreground classes 1 .. K-1 (the tumour classes), per case (B,)."""
    dims = tuple(range(2, p.ndim))
    inter, total = (p[:, 1:] * onehot[:, 1:]).sum(dims), p[:, 1:].sum(dims) + onehot[:, 1:].sum(dims)
    return 1 - ((2 * inter + eps) / (total + eps)).mean(1)


class EIDDPM(DiffusionSegmenter):
    name = "eiddpm"

    def __init__(
        self,
        in_channels: int = 4,
        spatial_dims: int = 2,
        num_classes: int = 4,
        channels: Sequence[int] = (32, 64, 64, 128),
        attention_levels: Sequence[bool] = (False, False, True, True),
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        timesteps: int = 1000,
        schedule: str = "linear",
        n_samples: int = 1,
        sampler: str = "ddpm",
        sampling_steps: int | None = None,
        evidence_activation: str = "softplus",
        evidential_weight: float = 1.0,
        kl_anneal_steps: int = 1000,
        reliability_init: float = 0.9,
        reliability_gain: float = 10.0,
        reliability_warmup: int = 500,
        evidence_steps: int = 5,
        evidence_init: float = 3.0,
    ) -> None:
        super().__init__()
        self.setup_segmenter(in_channels=in_channels, spatial_dims=spatial_dims, num_classes=num_classes,
                             timesteps=timesteps, schedule=schedule, n_samples=n_samples, fusion="mean",
                             sampler=sampler, sampling_steps=sampling_steps)
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ArgumentError("in_channels", f"must be the number of modalities (>= 1), got {in_channels!r}",
                                "set it to the length of the data module's modalities")
        if isinstance(evidential_weight, bool) or not evidential_weight >= 0:
            raise ArgumentError("evidential_weight", f"must be a number >= 0, got {evidential_weight!r}",
                                "use e.g. 1.0")
        if isinstance(kl_anneal_steps, bool) or not isinstance(kl_anneal_steps, int) or kl_anneal_steps < 1:
            raise ArgumentError("kl_anneal_steps", f"must be an integer >= 1, got {kl_anneal_steps!r}",
                                "use e.g. 1000 (the KL penalty reaches its full weight after that many steps)")
        if isinstance(reliability_warmup, bool) or not isinstance(reliability_warmup, int) or reliability_warmup < 0:
            raise ArgumentError("reliability_warmup", f"must be an integer >= 0, got {reliability_warmup!r}",
                                "use e.g. 500 (training steps before the reliabilities start to learn)")
        if isinstance(evidence_steps, bool) or not isinstance(evidence_steps, int) or evidence_steps < 1:
            raise ArgumentError("evidence_steps", f"must be an integer >= 1, got {evidence_steps!r}",
                                "use e.g. 5 (DDIM steps of the masks the EIL and CDO train on)")
        if isinstance(evidence_init, bool) or not isinstance(evidence_init, int | float) or not evidence_init >= 0:
            raise ArgumentError("evidence_init", f"must be a number >= 0, got {evidence_init!r}", "use e.g. 3.0")
        self.branches = nn.ModuleList(
            ConditionedUNet(spatial_dims, self.out_channels, self.out_channels, channels, attention_levels,
                            num_res_blocks, num_head_channels, norm_num_groups, cond_channels=1)
            for _ in range(in_channels)
        )
        self.evidence = nn.ModuleList(
            EvidenceLayer(spatial_dims, self.out_channels, num_classes, evidence_activation)
            for _ in range(in_channels)
        )
        self.reliability_warmup, self.evidence_steps = reliability_warmup, evidence_steps
        for eil in self.evidence:
            self._init_evidence(eil.proj, evidence_init)
        self.discounting = ContextualDiscounting(in_channels, num_classes, init=reliability_init,
                                                 gain=reliability_gain)
        self.evidential_weight, self.kl_anneal_steps = float(evidential_weight), kl_anneal_steps
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))  # for the KL annealing; resumes

    def _init_evidence(self, proj: nn.Module, gain: float) -> None:
        """Start each EIL as a reading of its branch's mask: class k's logit is ``gain`` times its mask channel
        (binary: -gain x for the background, +gain x for the foreground), no bias (≈)."""
        k = self.num_classes
        w = torch.zeros_like(proj.weight).flatten(2)  # (K, C, 1)
        if k == 2:
            w[0, 0], w[1, 0] = -gain, gain
        else:
            w[torch.arange(k), torch.arange(k)] = gain
        with torch.no_grad():
            proj.weight.copy_(w.reshape(proj.weight.shape))
            proj.bias.zero_()

    @property
    def denoiser(self) -> nn.ModuleList:
        """The M branch UNets (the fast path applies to each)."""
        return self.branches

    @property
    def size_multiple(self) -> int:
        return self.branches[0].size_multiple

    def check_image_size(self, image: Tensor) -> None:
        bad = [s for s in image.shape[2:] if s % self.size_multiple]
        if bad:
            raise ArgumentError("image", f"spatial shape {tuple(image.shape[2:])} has sizes that are not multiples "
                                f"of {self.size_multiple}", f"crop or pad to a multiple of {self.size_multiple}")

    @property
    def io_spec(self) -> IOSpec:
        """The segmenter's outputs plus ``conflict``, ``reliability`` (M channels, modality order),
        ``branch_uncertainty`` (M channels) and one label output ``branch_prediction_<m>`` per modality
        (``extra["label_outputs"]``: stitched as votes and written in the data's label values)."""
        base = super().io_spec
        branches = tuple(f"branch_prediction_{m}" for m in range(self.in_channels))
        return replace(base, outputs=(*base.outputs, "conflict", "reliability", "branch_uncertainty", *branches),
                       extra={**base.extra, "label_outputs": ("prediction", *branches)})

    @property
    def reliability(self) -> Tensor:
        """The learned reliabilities (M modalities, K classes)."""
        return self.discounting.reliability

    # -- evidence -----------------------------------------------------------------------------------
    def branch_evidence(self, masks: Tensor) -> Tensor:
        """The EILs: branch masks (B, M, C, *spatial) -> evidence (B, M, K, *spatial)."""
        return torch.stack([self.evidence[m](masks[:, m]) for m in range(masks.shape[1])], 1)

    def branch_masses(self, masks: Tensor) -> tuple[Tensor, Tensor]:
        """Branch masks (B, M, C, *spatial) -> Dirichlet alphas (B, M, K, *spatial) and mass functions
        (B, M, 2**K, *spatial)."""
        evidence = self.branch_evidence(masks)
        return evidence + 1, self._masses(evidence)

    def _masses(self, evidence: Tensor) -> Tensor:
        return torch.stack([opinion_masses(*dirichlet_opinion(evidence[:, m])) for m in range(evidence.shape[1])], 1)

    def fuse(self, masses: Tensor) -> tuple[Tensor, Tensor]:
        """Discount each modality's masses (B, M, 2**K, ...) by the CDO and combine them: fused masses, conflict."""
        return dempster(self.discounting(masses))

    def panel_columns(self, batch: dict[str, Any], out: dict[str, Tensor]) -> tuple[dict[str, Tensor], tuple[str, ...]]:
        """Panel columns (:func:`~medrs_diff.viz.panels.save_panel`): each modality, each branch's mask, the
        fused mask, the reference and the fused uncertainty; the masks share one range (the second item)."""
        image = batch[self.input_key]
        names = batch.get("modalities")  # the modality names where the caller knows them (infer on case files)
        m_all = range(image.shape[1])
        named = isinstance(names, list | tuple) and len(names) == image.shape[1]
        cols: dict[str, Tensor] = {(str(names[m]) if named else f"modality {m}"): image[:, m:m + 1] for m in m_all}
        branches = {f"branch {names[m] if named else m}": out.get(f"branch_prediction_{m}") for m in m_all}
        cols.update({**branches, "prediction": out.get("prediction"), "reference": batch.get(self.target_key),
                     "uncertainty": out.get("uncertainty")})
        return {k: v for k, v in cols.items() if v is not None}, ("prediction", "reference", *branches)

    # -- training -----------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        image, label, x0 = self.training_pair(batch)
        index = self.objective.sample_index(x0.shape[0], x0.device, generator)
        noise_losses = []
        for m, branch in enumerate(self.branches):
            cond = image[:, m:m + 1]
            loss_m, _ = self.objective(lambda x, t, b=branch, c=cond: b(x, t, cond=c), x0, index=index,
                                       generator=generator)
            noise_losses.append(loss_m)
        noise_loss = torch.stack(noise_losses).sum()
        logs = {"loss_noise": noise_loss.detach()}
        if self.evidential_weight == 0:
            return noise_loss, logs
        samples = self.sample_branches(image, 1, {"sampler": "ddim", "steps": self.evidence_steps,
                                                  "generator": generator, "progress": False})
        evid = self.evidential_loss(samples[0], label)
        logs["loss_evidential"] = evid.detach()
        if self.training:
            self.steps_seen += 1
        return noise_loss + self.evidential_weight * evid, logs

    def diffusion_pair(self, batch: dict[str, Any]) -> DiffusionPair:
        """The M branches as one chain: x0 is the encoded mask repeated once per branch on the channel axis
        (B, M x C, ...), and the denoiser runs branch m, conditioned on modality m (through the simplex projection
        for K-class masks, as sampled), on channel group m. The branches share the schedule and the sampler and
        draw independent chains, so this is exactly the M chains :meth:`sample_branches` walks, and a chain fitted
        to it minimises their summed error."""
        if (err := self.pair_refusal()) is not None:
            raise err
        image, _, x0 = self.training_pair(batch)
        c, schedule, simplex = self.out_channels, self.schedule, self.simplex
        nets = []
        for m, branch in enumerate(self.branches):
            def net(x: Tensor, t: Tensor, b: nn.Module = branch, cond: Tensor = image[:, m:m + 1]) -> Tensor:
                return b(x, t, cond=cond)
            nets.append(simplex_denoiser(net, schedule) if simplex else net)

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            return torch.cat([net(x[:, m * c:(m + 1) * c], t) for m, net in enumerate(nets)], 1)

        return DiffusionPair(denoise, x0.repeat(1, len(nets), *([1] * (x0.ndim - 2))), "eps", {"clip": True})

    @torch.no_grad()
    def sample_branches(self, image: Tensor, n: int, sampling: dict[str, Any]) -> Tensor:
        """``n`` clipped masks of every branch, each conditioned on its own modality: (n, B, M, C, *spatial)."""
        shape = self.mask_shape(image)
        out = []
        for m, branch in enumerate(self.branches):
            cond = repeat_batch(image[:, m:m + 1], n)
            out.append(sample_n(lambda x, t, b=branch, c=cond: b(x, t, cond=c), shape, self.schedule, n_samples=n,
                                device=image.device, clip=True, simplex=self.simplex, **sampling))
        return torch.stack(out, 2)

    def evidential_loss(self, masks: Tensor, label: Tensor) -> Tensor:
        """The evidential part of the loss for sampled branch masks (B, M, C, *spatial) (no gradient reaches
        the branches through them). Per branch (trains the EILs): the Dirichlet-expected CE with the annealed
        KL penalty, plus the foreground soft Dice of the expected probabilities alpha / S (≈ TBraTS-style:
        without it the CE, dominated by background voxels, leaves weak tumour evidence). After
        ``reliability_warmup`` steps (trains the CDO): a class-balanced CE plus the foreground soft Dice of the
        fused pignistic probabilities, on detached opinions."""
        k = self.num_classes
        onehot = nn.functional.one_hot(label[:, 0].long(), k).movedim(-1, 1).to(masks.dtype)
        alpha, masses = self.branch_masses(masks)
        anneal = min(1.0, float(self.steps_seen) / self.kl_anneal_steps)
        per_branch = []
        for m in range(alpha.shape[1]):
            a = alpha[:, m]
            voxel = evidential_ce(a, onehot) + anneal * dirichlet_kl(a, onehot)
            per_branch.append(voxel.flatten(1).mean(1) + _soft_dice(a / a.sum(1, keepdim=True), onehot))
        loss = torch.stack(per_branch, 1).sum(1).mean()
        if int(self.steps_seen) < self.reliability_warmup:
            return loss
        p = pignistic(self.fuse(masses.detach())[0])
        return loss + (_balanced_ce(p, onehot) + _soft_dice(p, onehot)).mean()

    # -- inference ----------------------------------------------------------------------------------
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
        """Sample every branch, turn its masks into evidence, discount and fuse (see the module doc)."""
        image, _ = self._inputs(batch)
        n = n_samples if n_samples is not None else self.n_samples
        sampling = {"sampler": sampler if sampler is not None else self.default_sampler,
                    "steps": steps if steps is not None else self.sampling_steps,
                    "generator": generator, "progress": progress}
        samples = self.sample_branches(image, n, sampling)  # (n, B, M, C, ...)
        flat = samples.reshape(n * image.shape[0], *samples.shape[2:])
        evidence = self.branch_evidence(flat)  # the EIL on every sample; a branch's evidence: its samples' mean
        evidence_t = evidence.reshape(n, image.shape[0], *evidence.shape[1:]).mean(0)  # (B, M, K, ...)
        masses = self._masses(evidence_t)
        fused, conflict = self.fuse(masses)
        p = pignistic(fused)
        beta = self.reliability.to(p.dtype)  # (M, K)
        out = {
            "prediction": p.argmax(1, keepdim=True).float(),
            "uncertainty": fused[:, -1:],
            "probability": p[:, 1:2] if self.num_classes == 2 else p,
            "conflict": conflict,
            "reliability": torch.einsum("mk,bk...->bm...", beta, p),
        }
        branch_u = []
        for m in range(evidence_t.shape[1]):
            belief, u = dirichlet_opinion(evidence_t[:, m])
            out[f"branch_prediction_{m}"] = belief.argmax(1, keepdim=True).float()
            branch_u.append(u)
        out["branch_uncertainty"] = torch.cat(branch_u, 1)
        return out
