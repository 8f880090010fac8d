"""Helpers shared by the guidance hooks: input checks, the block low-pass filter, forward samples."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..generators import GeneratorLike, randn_like
from ..process import check_spatial


def as_batch(x: Tensor, batch: int, name: str) -> Tensor:
    """Return ``x`` broadcast to batch size ``batch`` (a batch of 1 is expanded)."""
    if x.shape[0] not in (1, batch):
        raise ValueError(
            f"{name} has batch size {x.shape[0]} but the sample has {batch}; pass one {name} per sample or a batch of 1"
        )
    return x.expand(batch, *x.shape[1:]) if x.shape[0] != batch else x


def check_same_image_shape(x: Tensor, ref: Tensor, name: str) -> None:
    """Raise unless ``ref`` has the channel and spatial shape of ``x`` (batch may be 1)."""
    if ref.ndim != x.ndim or ref.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"{name} has shape {tuple(ref.shape)} but the sample is {tuple(x.shape)}; "
            f"{name} must be (B or 1, {', '.join(str(s) for s in x.shape[1:])})"
        )
    as_batch(ref, x.shape[0], name)


def check_binary_mask(mask: Tensor, name: str = "mask") -> Tensor:
    """Validate a {0, 1} mask (1 = known/observed) and return it as float."""
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(mask).__name__}")
    m = mask.float() if mask.dtype == torch.bool else mask
    if not torch.isfinite(m).all() or not ((m == 0) | (m == 1)).all():
        bad = m[~((m == 0) | (m == 1))].flatten()[:3].tolist()
        raise ValueError(
            f"{name} must contain only 0 (unknown) and 1 (known); found values such as {bad}; "
            "threshold it first, e.g. (mask > 0.5).float()"
        )
    return m


def check_factor(shape: tuple[int, ...], factor: int, what: str) -> None:
    """Raise unless every spatial size in ``shape`` (B, C, *spatial) is divisible by ``factor``."""
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"{what} factor must be a positive integer, got {factor!r}")
    spatial = shape[2:]
    if any(s % factor for s in spatial):
        raise ValueError(
            f"{what} factor {factor} does not divide the spatial size {tuple(spatial)}; "
            "crop or pad the image to a multiple of the factor"
        )


def block_lowpass(x: Tensor, factor: int) -> Tensor:
    """phi_N(x) = up(down(x, N)): the mean of each N^d block, repeated over the block.

    Average pooling followed by nearest upsampling is the orthogonal projection onto block-constant
    images, so phi_N(phi_N(y) + x - phi_N(x)) = phi_N(y) exactly (ILVR's low band lands on the
    reference's).
    """
    check_spatial(x, "x")
    check_factor(tuple(x.shape), factor, "low-pass")
    if factor == 1:
        return x
    b, c, *spatial = x.shape
    n = len(spatial)
    split = [b, c]
    for s in spatial:
        split += [s // factor, factor]
    blocks = x.reshape(split)
    mean = blocks.mean(dim=tuple(3 + 2 * k for k in range(n)), keepdim=True)
    return mean.expand(split).reshape(x.shape)


def forward_sample(x0: Tensor, abar: float, generator: GeneratorLike) -> Tensor:
    """A fresh draw of q(x_t | x0) = N(sqrt(abar) x0, (1 - abar) I); exactly x0 when abar = 1."""
    if abar >= 1.0:
        return x0
    noise = randn_like(x0, generator)
    return math.sqrt(abar) * x0 + math.sqrt(1.0 - abar) * noise
