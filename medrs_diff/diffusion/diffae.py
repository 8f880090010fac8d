"""Diffusion autoencoders (Preechakul et al., CVPR 2022): training loss, encoding, decoding, linear edits.

Works with any ``encoder(x0) -> z_sem`` (B, D) and ``denoiser(x_t, t, z_sem) -> eps`` (e.g.
:mod:`medrs_diff.nets.diffae`). The code of an image is the pair (z_sem, x_T): ``z_sem`` from the encoder,
``x_T`` by deterministic DDIM inversion of x0 under the z_sem-conditioned denoiser (the engine's
:func:`ddim_invert`, "stochastic encoding" in the paper). Decoding is DDIM with eta = 0 on the same steps, so
(z_sem, x_T) reconstructs x0 up to the inversion's fixed-point error: training is not needed for that, but each
step's fixed-point solve converges only while (step's eps coefficient) x Lipschitz(eps) < 1, so rough nets (e.g.
some random initialisations) need more steps / ``fixed_point_iters``, and may fail with few steps.
Edits move z_sem along a linear direction learned from labels and decode with the same x_T.

Unconditional sampling (the paper's latent DDIM): a second diffusion over z_sem normalised per dimension by
the training set's mean / std (:func:`latent_loss` trains its denoiser, e.g.
:class:`~medrs_diff.nets.diffae.LatentMLP`, on its own schedule and loss; the paper: L1 on eps);
:func:`diffae_sample` draws normalised z_sem by DDIM, unnormalises it, draws x_T ~ N(0, I) and decodes. The
latent diffusion runs on the engine's spatial layout: z_sem (B, D) is a (B, D, 1, 1) tensor there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .generators import GeneratorLike, randn
from .process import DiffusionLoss, check_spatial
from .samplers.ddim import ddim, ddim_invert
from .schedules import Schedule, Spacing

__all__ = [
    "class_mean_direction",
    "diffae_decode",
    "diffae_encode",
    "diffae_loss",
    "diffae_sample",
    "latent_loss",
    "logistic_direction",
    "sample_latent",
]

Encoder = Callable[[Tensor], Tensor]
CondDenoiser = Callable[[Tensor, Tensor, Tensor], Tensor]


def _check_z(z: Tensor, batch: int) -> None:
    if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[0] != batch:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"z_sem must be a (B, D) tensor with B = {batch}, got {shape}")
    if not torch.isfinite(z).all():
        raise ValueError("z_sem holds NaN or inf; check the encoder's input and weights")


def _conditioned(denoiser: CondDenoiser, z: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda x, t: denoiser(x, t, z)


def diffae_loss(
    loss: DiffusionLoss,
    encoder: Encoder,
    denoiser: CondDenoiser,
    x0: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The paper's objective: the conditional decoder's eps-MSE with z_sem = encoder(x0), encoder trained jointly."""
    check_spatial(x0, "x0")
    z = encoder(x0)
    _check_z(z, x0.shape[0])
    return loss(denoiser, x0, generator=generator, z=z)


@torch.no_grad()
def diffae_encode(
    encoder: Encoder,
    denoiser: CondDenoiser,
    x0: Tensor,
    schedule: Schedule,
    *,
    steps: int = 50,
    spacing: Spacing = "linspace",
    prediction_type: str = "eps",
    fixed_point_iters: int = 3,
) -> tuple[Tensor, Tensor]:
    """x0 -> (z_sem, x_T): the semantic code, then DDIM inversion of x0 conditioned on it."""
    check_spatial(x0, "x0")
    z = encoder(x0)
    _check_z(z, x0.shape[0])
    x_T = ddim_invert(
        _conditioned(denoiser, z), x0, schedule, steps=steps, spacing=spacing,
        prediction_type=prediction_type, fixed_point_iters=fixed_point_iters,
    )
    return z, x_T


@torch.no_grad()
def diffae_decode(
    denoiser: CondDenoiser,
    z: Tensor,
    x_T: Tensor,
    schedule: Schedule,
    *,
    steps: int = 50,
    spacing: Spacing = "linspace",
    prediction_type: str = "eps",
) -> Tensor:
    """(z_sem, x_T) -> x0 by deterministic DDIM (eta = 0) conditioned on z_sem; use the encoding's steps."""
    check_spatial(x_T, "x_T")
    _check_z(z, x_T.shape[0])
    return ddim(
        _conditioned(denoiser, z), x_T, schedule, steps=steps, spacing=spacing, eta=0.0,
        prediction_type=prediction_type,
    )


def latent_loss(
    loss: DiffusionLoss,
    latent_denoiser: Callable[[Tensor, Tensor], Tensor],
    z_normalised: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The latent DDIM's objective on normalised z_sem (B, D) (detach it: the encoder is not trained by it)."""
    _check_z(z_normalised, z_normalised.shape[0])
    return loss(latent_denoiser, z_normalised[:, :, None, None], generator=generator)


@torch.no_grad()
def sample_latent(
    latent_denoiser: Callable[[Tensor, Tensor], Tensor],
    n: int,
    z_dim: int,
    schedule: Schedule,
    *,
    steps: int = 100,
    generator: GeneratorLike = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` normalised z_sem (n, z_dim) by deterministic DDIM (eta = 0) from z_T ~ N(0, I)."""
    z_T = randn((n, z_dim, 1, 1), generator, device=device)
    return ddim(latent_denoiser, z_T, schedule, steps=steps, eta=0.0).flatten(1)


@torch.no_grad()
def diffae_sample(
    latent_denoiser: Callable[[Tensor, Tensor], Tensor],
    denoiser: CondDenoiser,
    shape: tuple[int, ...],
    schedule: Schedule,
    latent_schedule: Schedule,
    z_mean: Tensor,
    z_std: Tensor,
    *,
    steps: int = 50,
    latent_steps: int = 100,
    generator: GeneratorLike = None,
) -> tuple[Tensor, Tensor]:
    """Unconditional images: z_sem = mean + std * latent DDIM sample, x_T ~ N(0, I) of ``shape`` (B, C, H, W),
    decoded by DDIM (eta = 0). Returns (x0, z_sem). Noise order per generator: z_T first, then x_T."""
    if len(shape) not in (4, 5):
        raise ValueError(f"shape must be (B, C, H, W) or (B, C, D, H, W), got {tuple(shape)}")
    if z_mean.ndim != 1 or z_std.shape != z_mean.shape or not bool((z_std > 0).all()):
        raise ValueError("z_mean and z_std must be (D,) tensors with std > 0 (the training z_sem statistics)")
    device = z_mean.device
    zn = sample_latent(latent_denoiser, shape[0], z_mean.numel(), latent_schedule, steps=latent_steps,
                       generator=generator, device=device)
    z = zn * z_std + z_mean
    _check_z(z, shape[0])
    x_T = randn(shape, generator, device=device)
    return diffae_decode(denoiser, z, x_T, schedule, steps=steps), z


def _check_labels(z: Tensor, labels: Tensor) -> Tensor:
    if not isinstance(z, Tensor) or z.ndim != 2:
        raise ValueError("z_sem must be a (N, D) tensor of codes")
    _check_z(z, z.shape[0])
    labels = torch.as_tensor(labels).flatten()
    if labels.numel() != z.shape[0]:
        raise ValueError(f"labels has {labels.numel()} entries for {z.shape[0]} codes; give one 0/1 label per code")
    if not bool(((labels == 0) | (labels == 1)).all()) or labels.min() == labels.max():
        raise ValueError("labels must be 0/1 with both classes present")
    return labels.bool()


def class_mean_direction(z: Tensor, labels: Tensor) -> Tensor:
    """Unit direction mean(z | label 1) - mean(z | label 0) in z_sem space."""
    y = _check_labels(z, labels)
    d = z[y].mean(0) - z[~y].mean(0)
    norm = d.norm()
    if norm == 0:
        raise ValueError("the two classes have the same mean code; no direction to learn")
    return d / norm


def logistic_direction(z: Tensor, labels: Tensor, *, steps: int = 500, lr: float = 0.1, l2: float = 1e-3) -> Tensor:
    """Unit normal of an L2-regularised logistic regression on standardised z_sem (the paper's linear classifier).

    As in the paper, the edit moves the *standardised* code along the weight w; in z_sem space that is the
    direction w * std (per dimension), returned here with unit norm.
    """
    y = _check_labels(z, labels).to(z.dtype)
    z = z.detach()
    mu, sd = z.mean(0), z.std(0).clamp(min=1e-8)
    zn = (z - mu) / sd
    w = torch.zeros(z.shape[1], dtype=z.dtype, requires_grad=True)
    b = torch.zeros((), dtype=z.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=lr, max_iter=steps)

    def closure() -> Tensor:
        opt.zero_grad()
        out = torch.nn.functional.binary_cross_entropy_with_logits(zn @ w + b, y) + l2 * (w**2).sum()
        out.backward()
        return out

    with torch.enable_grad():
        opt.step(closure)
    d = w.detach() * sd
    return d / d.norm().clamp(min=1e-12)
