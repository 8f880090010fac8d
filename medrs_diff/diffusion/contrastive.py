"""D2C's contrastive latent regulariser (Sinha et al., NeurIPS 2021): InfoNCE between the latents of two
augmented views of the same images.

:func:`info_nce` is the InfoNCE loss with in-batch negatives: for L2-normalised embeddings ``q_i`` and
``k_i`` (two views of image ``i``) it is the mean over ``i`` of
``-log( exp(q_i . k_i / tau) / sum_j exp(q_i . k_j / tau) )``, i.e. a cross-entropy whose right class is
the other view of the same image. D2C trains MoCo-v2 (a momentum key encoder and a queue of past keys
as negatives); here the negatives are the other images of the batch and both views go through the same
encoder (SimCLR-style), which needs no extra state in the checkpoint. :func:`augment_views` draws
the two views: a random crop of ``1 - crop`` of every spatial side resized back to the image size, a
random flip per spatial axis (probability 1/2) and Gaussian noise of standard deviation ``noise``, each
image on its own, from the given generator (reproducible).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .generators import GeneratorLike, rand, randn_like


def info_nce(q: Tensor, k: Tensor, temperature: float = 0.1) -> Tensor:
    """InfoNCE of paired embeddings ``q``, ``k`` (B, ...), flattened and L2-normalised; positives on the diagonal."""
    qf, kf = q.flatten(1).float(), k.flatten(1).float()
    if qf.shape != kf.shape or qf.shape[0] < 2:
        raise ValueError(f"info_nce needs two batches of >= 2 embeddings of one size, got {tuple(q.shape)} "
                         f"and {tuple(k.shape)}")
    qn, kn = F.normalize(qf, dim=1), F.normalize(kf, dim=1)
    logits = qn @ kn.T / float(temperature)
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


def augment_views(x: Tensor, generator: GeneratorLike = None, crop: float = 0.125, noise: float = 0.05) -> Tensor:
    """One augmented view of every image of ``x`` (B, C, *spatial): random crop (``1 - crop`` of each side,
    resized back), random flips, Gaussian noise (see the module docstring). Same shape as ``x``."""
    dims = x.ndim - 2
    mode = "bilinear" if dims == 2 else "trilinear"
    size = tuple(x.shape[2:])
    u = rand((x.shape[0], 2 * dims), generator, device=x.device)  # per image: crop offsets, then flips
    views = []
    for i in range(x.shape[0]):
        view = x[i:i + 1]
        if crop > 0:
            keep = [max(1, round(s * (1.0 - crop))) for s in size]
            starts = [int(float(u[i, a]) * (s - c + 1)) for a, (s, c) in enumerate(zip(size, keep, strict=True))]
            index = tuple(slice(o, o + c) for o, c in zip(starts, keep, strict=True))
            view = F.interpolate(view[(..., *index)], size=size, mode=mode, align_corners=False)
        flips = [2 + a for a in range(dims) if float(u[i, dims + a]) < 0.5]
        if flips:
            view = torch.flip(view, flips)
        views.append(view)
    out = torch.cat(views)
    return out + noise * randn_like(out, generator) if noise > 0 else out
