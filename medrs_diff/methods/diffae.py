"""Diffusion autoencoder (Preechakul et al., CVPR 2022) as a method: image -> (z_sem, x_T) -> reconstruction.

Training: the z_sem-conditioned DDIM decoder's eps-MSE, encoder trained jointly (one loss, as in the paper).
``predict`` encodes each image (z_sem by the encoder, x_T by DDIM inversion conditioned on it) and decodes
(z_sem, x_T) by DDIM with eta = 0 on the same steps; it returns the reconstruction (``prediction``, in data
units) and the stochastic code x_T (``stochastic_code``, model space). Only DDIM applies (inversion is
DDIM's); ``z_sem`` itself and linear edits are the library functions of :mod:`medrs_diff.diffusion.diffae`.

Latent DDIM (``latent: true``, the paper's unconditional sampler): an MLP-with-skips eps-denoiser
(:class:`~medrs_diff.nets.diffae.LatentMLP`) over z_sem normalised per dimension by the training set's mean /
std, on its own schedule (constant beta = ``latent_beta``, T = ``latent_timesteps``; the official configs:
0.008, 1000) with an L1 eps loss (paper). Trained in the same ``fit`` run, in two phases counted in training
batches (``latent_step``, an integer buffer, so checkpoints and resumes keep it):

- batches ``[0, latent_start_step)``: the autoencoder alone (stage 1);
- the next ``latent_stats_batches``: the mean / std of the (detached) z_sem are accumulated (the training
  set's statistics when this covers an epoch), then fixed;
- afterwards: the latent DDIM on normalised, detached z_sem.

With ``latent_freeze_autoencoder: true`` (default) the encoder and decoder stop training at
``latent_start_step`` (no gradient reaches them), which is the paper's two-stage procedure (the latent DDIM
is fitted to the frozen encoder's z_sem) inside one run; ``false`` keeps training the autoencoder on its
loss while the latent DDIM follows the moving z_sem (a deviation: cheaper, the statistics then lag).
The statistics live in the state dict as float64 bit patterns in int64 buffers (the EMA callback averages
floating buffers but copies integer ones), so EMA weights and checkpoints carry them exactly.
:meth:`sample` draws z_sem by DDIM (eta 0, ``latent_sampling_steps``), x_T ~ N(0, I), and decodes
(``medrs-diff generate`` on a DiffAE checkpoint). The EMA callback averages the latent net from the start
of the run, so its EMA weights hold the untrained initial ones until the latent stage is long against
1 / (1 - decay); ``latent_ema: false`` makes generation use the raw latent weights instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..data.keys import IMAGE
from ..diffusion.diffae import diffae_decode, diffae_encode, diffae_loss, diffae_sample, latent_loss
from ..diffusion.generators import GeneratorLike
from ..diffusion.process import DiffusionLoss, check_spatial
from ..diffusion.schedules import Schedule, make_schedule, schedule_from_betas
from ..errors import ArgumentError, CheckpointError, DataError
from ..nets.diffae import DiffAEDenoiser, LatentMLP, SemanticEncoder
from .base import DiffusionMethod

__all__ = ["DiffAE"]


class DiffAE(DiffusionMethod):
    name = "diffae"
    input_key = IMAGE
    target_key = IMAGE  # validation: PSNR of the reconstruction against its input
    outputs = ("prediction", "stochastic_code")
    data_space = ("prediction",)

    no_learned_chain = ("predict encodes by DDIM inversion and decodes by DDIM on evenly spaced steps, and generate "
                        "decodes the same way, so no sampler would walk a learned chain")

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
        latent: bool = False,
        latent_hidden: int = 2048,
        latent_layers: int = 10,
        latent_t_dim: int = 64,
        latent_timesteps: int = 1000,
        latent_beta: float = 0.008,
        latent_loss: str = "l1",
        latent_start_step: int = 0,
        latent_stats_batches: int = 100,
        latent_freeze_autoencoder: bool = True,
        latent_sampling_steps: int = 200,
        latent_ema: bool = True,
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
        self.latent = bool(latent)
        #: False: generation uses the latent net's raw training weights even when the checkpoint has EMA ones
        #: (a latent stage short against the EMA horizon 1 / (1 - decay) leaves the untrained initial weights
        #: in the EMA average); read by ``medrs-diff generate``, which has the checkpoint
        self.latent_ema = bool(latent_ema)
        if self.latent:
            self._setup_latent(z_dim, latent_hidden, latent_layers, latent_t_dim, latent_timesteps, latent_beta,
                               latent_loss, latent_start_step, latent_stats_batches, latent_freeze_autoencoder,
                               latent_sampling_steps)

    def _setup_latent(self, z_dim: int, hidden: int, layers: int, t_dim: int, timesteps: int, beta: float,
                      loss: str, start: int, stats_batches: int, freeze: bool, sampling_steps: int) -> None:
        ints = (("latent_hidden", hidden, 1), ("latent_layers", layers, 2), ("latent_t_dim", t_dim, 2),
                ("latent_timesteps", timesteps, 1), ("latent_start_step", start, 0),
                ("latent_stats_batches", stats_batches, 2), ("latent_sampling_steps", sampling_steps, 1))
        for name, value, low in ints:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ArgumentError(name, f"must be an integer >= {low}, got {value!r}", f"set {name}: {low} or more")
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0.0 < float(beta) < 1.0:
            raise ArgumentError("latent_beta", f"must be a number in (0, 1), got {beta!r}", "use the official 0.008")
        if loss not in ("l1", "mse"):
            raise ArgumentError("latent_loss", f"must be 'l1' or 'mse', got {loss!r}", "use the paper's l1")
        self.latent_net = LatentMLP(z_dim, hidden, layers, t_dim)
        self.latent_schedule: Schedule = schedule_from_betas(torch.full((timesteps,), float(beta), dtype=torch.float64))
        self.latent_objective = DiffusionLoss(self.latent_schedule, loss_type=loss)
        self.latent_start_step, self.latent_stats_batches = int(start), int(stats_batches)
        self.latent_freeze_autoencoder, self.latent_sampling_steps = bool(freeze), int(sampling_steps)
        self.register_buffer("latent_step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("z_count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("z_moments_bits", torch.zeros(2, z_dim, dtype=torch.float64).view(torch.int64))

    # -- latent DDIM: statistics ---------------------------------------------------------------------
    @property
    def latent_ready(self) -> bool:
        """Whether the latent DDIM has fixed statistics and has started training."""
        return self.latent and int(self.latent_step) > self.latent_start_step + self.latent_stats_batches

    def z_stats(self) -> tuple[Tensor, Tensor]:
        """(mean, std) of the training z_sem per dimension (float32), from the accumulated moments."""
        n = int(self.z_count)
        if n < 2:
            raise CheckpointError("diffae", f"the z_sem statistics hold {n} code(s)",
                                  "train past latent_start_step + latent_stats_batches")
        s, sq = self.z_moments_bits.view(torch.float64)
        mean = s / n
        var = (sq - n * mean**2).clamp(min=0) / (n - 1)
        std = var.sqrt().clamp(min=1e-6)
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise CheckpointError("diffae", "the z_sem statistics are not finite", "retrain the latent stage")
        return mean.float(), std.float()

    @torch.no_grad()
    def _accumulate(self, z: Tensor) -> None:
        zd = z.detach().double()
        moments = self.z_moments_bits.view(torch.float64) + torch.stack([zd.sum(0), (zd**2).sum(0)])
        self.z_moments_bits.copy_(moments.view(torch.int64))
        self.z_count.add_(zd.shape[0])

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
        x = self._image(batch)
        if not (self.latent and self.training):
            return diffae_loss(self.objective, self.encoder, self.net, x, generator=generator)
        step = int(self.latent_step)
        self.latent_step.add_(1)
        if step < self.latent_start_step:
            return diffae_loss(self.objective, self.encoder, self.net, x, generator=generator)
        if self.latent_freeze_autoencoder:  # stage 2 of the paper: the autoencoder is fixed
            with torch.no_grad():
                z = self.encoder(x)
            loss, logs = None, {}
        else:
            z = self.encoder(x)
            loss, logs = self.objective(self.net, x, generator=generator, z=z)
        if not bool(torch.isfinite(z).all()):
            raise DataError("diffae", "the encoder returned NaN / inf z_sem", "check the batch and the weights")
        if step < self.latent_start_step + self.latent_stats_batches:
            self._accumulate(z)
            if loss is None:  # nothing to train on this batch: a zero loss that reaches the latent net
                loss = sum(p.sum() for p in self.latent_net.parameters()) * 0.0
            return loss, {**logs, "latent_stats_codes": self.z_count.detach().float()}
        mean, std = self.z_stats()
        lat, lat_logs = latent_loss(self.latent_objective, self.latent_net, (z.detach() - mean) / std,
                                    generator=generator)
        logs = {**logs, "latent_loss": lat_logs["loss_simple"]}
        return (lat if loss is None else loss + lat), logs

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
    def sample(
        self,
        shape: tuple[int, ...],
        *,
        steps: int | None = None,
        latent_steps: int | None = None,
        generator: GeneratorLike = None,
    ) -> dict[str, Tensor]:
        """Unconditional images of ``shape`` (B, C, H, W): z_sem from the latent DDIM, x_T ~ N(0, I), DDIM decoding.
        Returns ``prediction`` (model space) and ``z_sem`` (B, D)."""
        self.check_sampling_ready()
        if len(shape) != 4 or shape[1] != self.in_channels or any(s % self.size_multiple for s in shape[2:]):
            raise ArgumentError("shape", f"must be (B, {self.in_channels}, H, W) with even H, W, got {tuple(shape)}",
                                "pass an even image size")
        mean, std = self.z_stats()
        dev = next(self.parameters()).device
        x, z = diffae_sample(
            self.latent_net, self.net, tuple(shape), self.schedule, self.latent_schedule, mean.to(dev), std.to(dev),
            steps=self._steps(steps),
            latent_steps=self.latent_sampling_steps if latent_steps is None else self._steps(latent_steps),
            generator=generator,
        )
        if not bool(torch.isfinite(x).all()):
            raise DataError("diffae", "the generated images hold NaN / inf values", "check the checkpoint")
        return {"prediction": x, "z_sem": z}

    def check_sampling_ready(self) -> None:
        """:class:`CheckpointError` unless the latent DDIM exists and has been trained."""
        if not self.latent:
            raise CheckpointError(
                "diffae", "this DiffAE was trained without the latent DDIM (latent: false), so it cannot sample z_sem",
                "retrain with model.init_args.method.init_args.latent: true (as recipe diffae_brain_phantom does); "
                "encode / decode images with `medrs-diff infer` meanwhile")
        if not self.latent_ready:
            raise CheckpointError(
                "diffae", f"its latent DDIM was never trained (training stopped at batch {int(self.latent_step)}, "
                f"before latent_start_step + latent_stats_batches = "
                f"{self.latent_start_step + self.latent_stats_batches})",
                "train longer (trainer.max_steps) or lower latent_start_step")

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
