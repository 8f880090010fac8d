"""Classifier-free guidance (Ho & Salimans 2022) with a learned null condition.

Training drops the condition with probability p by swapping in a *learned* null embedding
(:class:`NullCondition`, :func:`drop_condition`), never a constant fill such as MONAI's -1. At
sampling, :func:`cfg_denoiser` runs the conditional and unconditional branches in one batched forward
and returns pred_null + w (pred_cond - pred_null): w = 0 is the unconditional model, w = 1 the
conditional one, w > 1 extrapolates. ``rescale`` (Lin et al. 2024, diffusers' ``guidance_rescale``)
matches the guided prediction's per-sample std to the conditional one's to undo over-exposure at
large w.

A condition is a tensor (B, ...) or a dict of them; the network is called as ``net(x, t, cond)``.
For a condition concatenated to the image, a NullCondition of shape (C, 1, 1) (one learned value per
channel) or (C, H, W) defines "no condition".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from ..generators import GeneratorLike, rand
from ..samplers.base import Denoiser

Cond = Tensor | Mapping[str, Tensor]


class NullCondition(nn.Module):
    """A learned null condition: one parameter of per-sample ``shape``, broadcast to a condition batch.

    ``init`` is ``"zeros"`` or ``"normal"`` (std ``std``); train it with :func:`drop_condition`.
    """

    def __init__(self, shape: tuple[int, ...] | int, init: str = "normal", std: float = 0.02) -> None:
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if init not in ("zeros", "normal"):
            raise ValueError(f"unknown init {init!r}; choose 'zeros' or 'normal'")
        value = torch.zeros(shape) if init == "zeros" else torch.randn(shape) * std
        self.embedding = nn.Parameter(value)

    def forward(self, like: Tensor) -> Tensor:
        """The null condition shaped like the condition batch ``like`` (B, ...)."""
        emb = self.embedding.to(device=like.device, dtype=like.dtype)
        try:
            target = torch.broadcast_shapes(emb.shape, like.shape[1:])
        except RuntimeError:
            target = None
        if target != tuple(like.shape[1:]):
            raise ValueError(
                f"null condition of shape {tuple(emb.shape)} cannot stand in for conditions of per-sample "
                f"shape {tuple(like.shape[1:])}; build NullCondition with a shape that broadcasts to it"
            )
        return emb.expand(like.shape[1:]).unsqueeze(0).expand(like.shape)


Null = Tensor | NullCondition | Mapping[str, Tensor | NullCondition]


def _null_like(null: Tensor | NullCondition, cond: Tensor, name: str) -> Tensor:
    if isinstance(null, NullCondition):
        return null(cond)
    if not isinstance(null, Tensor):
        raise ValueError(f"null condition for {name} must be a tensor or NullCondition, got {type(null).__name__}")
    try:
        return null.to(device=cond.device, dtype=cond.dtype).expand_as(cond)
    except RuntimeError:
        raise ValueError(
            f"null condition of shape {tuple(null.shape)} does not broadcast to the condition {name} "
            f"{tuple(cond.shape)}; give it the condition's per-sample shape with batch 1"
        ) from None


def _map(cond: Cond, null: Null, fn: Callable[[Tensor, Tensor, str], Tensor]) -> Cond:
    """Apply fn(cond_tensor, null_tensor, name) to a tensor or to each entry of a dict."""
    if isinstance(cond, Mapping):
        if not isinstance(null, Mapping) or set(null) != set(cond):
            raise ValueError(f"a dict condition needs a dict null condition with the same keys {sorted(cond)}")
        return {k: fn(v, _null_like(null[k], v, k), k) for k, v in cond.items()}
    if isinstance(null, Mapping):
        raise ValueError("a tensor condition needs a tensor or NullCondition null, not a dict")
    return fn(cond, _null_like(null, cond, "cond"), "cond")


def _batch_of(cond: Cond) -> int:
    return next(iter(cond.values())).shape[0] if isinstance(cond, Mapping) else cond.shape[0]


def drop_condition(cond: Cond, null: Null, p: float, generator: GeneratorLike = None) -> Cond:
    """Training-time condition dropout: each sample's condition becomes the null with probability p.

    All entries of a dict condition are dropped together. Gradients reach a NullCondition's embedding.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability must lie in [0, 1], got {p}")
    ref = next(iter(cond.values())) if isinstance(cond, Mapping) else cond
    drop = rand((ref.shape[0],), generator, device=ref.device) < p

    def swap(c: Tensor, n: Tensor, name: str) -> Tensor:
        if c.shape[0] != ref.shape[0]:
            raise ValueError(f"condition {name} has batch {c.shape[0]}, expected {ref.shape[0]}")
        return torch.where(drop.reshape(-1, *([1] * (c.ndim - 1))), n, c)

    return _map(cond, null, swap)


def rescale_guidance(guided: Tensor, cond_pred: Tensor, phi: float) -> Tensor:
    """Lin et al. 2024: blend guided * std(cond) / std(guided) with weight phi (per-sample std)."""
    dims = tuple(range(1, guided.ndim))
    ratio = cond_pred.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-12)
    return phi * guided * ratio + (1 - phi) * guided


def cfg_denoiser(
    net: Callable[[Tensor, Tensor, Cond], Tensor],
    cond: Cond,
    null_cond: Null,
    scale: float,
    *,
    rescale: float = 0.0,
    learned_variance: bool = False,
) -> Denoiser:
    """A denoiser ``denoise(x_t, t)`` for any sampler, guided with weight ``scale``.

    Both branches share one forward of batch 2B (``net(cat[x, x], cat[t, t], cat[cond, null])``);
    w = 1 and w = 0 skip the unused branch. ``learned_variance`` guides only the first half of the
    output channels and keeps the conditional branch's variance channels.
    """
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"guidance rescale must lie in [0, 1], got {rescale}")
    batch = _batch_of(cond)
    _map(cond, null_cond, lambda c, n, name: n)  # validate the shapes once, at construction

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        if x.shape[0] != batch:
            raise ValueError(f"the condition has batch {batch} but the sample has {x.shape[0]}; they must match")
        if scale == 1.0:  # the guided prediction is the conditional one (rescale then changes nothing)
            return net(x, t, cond)
        if scale == 0.0:
            return net(x, t, _map(cond, null_cond, lambda c, n, name: n))
        both = _map(cond, null_cond, lambda c, n, name: torch.cat([c, n], 0))
        out = net(torch.cat([x, x], 0), torch.cat([t, t], 0), both)
        out_c, out_u = out[:batch], out[batch:]
        var = None
        if learned_variance:
            if out_c.shape[1] % 2:
                raise ValueError("learned_variance needs an even number of output channels (prediction, variance)")
            half = out_c.shape[1] // 2
            out_c, var = out_c[:, :half], out_c[:, half:]
            out_u = out_u[:, :half]
        guided = out_u + scale * (out_c - out_u)
        if rescale > 0:
            guided = rescale_guidance(guided, out_c, rescale)
        return guided if var is None else torch.cat([guided, var], 1)

    return denoise
