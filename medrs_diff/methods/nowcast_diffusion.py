"""Precipitation nowcasting by conditional diffusion with a spatiotemporal transformer (Zhao, Dong, Wang, Hu;
IEEE TGRS 2024).

The future radar frames ``image`` (B, M, 1, H, W) are generated from noise given the past frames ``cond``
(B, N, 1, H, W), both in the data layer's log-rain model space
(:func:`~medrs_diff.data.radar_sequence.rain_to_model`: log10(mm/h) / 2 in [-1, 1]). The denoiser is
:class:`~medrs_diff.nets.spacetime_transformer.SpaceTimeTransformer` (the paper found UNet denoisers gave
poor CSI); the past frames are its conditioning tokens.

``objective="ddgan"`` (the paper's default): Denoising-Diffusion-GAN training of a few large reverse steps
(``timesteps`` = 4, DD-GAN's discretised VP chain with beta_min 0.1, beta_max 20). The generator predicts x0
from (x_t, t, past); x_{t-1} is drawn from the posterior q(x_{t-1} | x_t, x0'), and a conditional
discriminator D(x_{t-1}, x_t, t | past) is trained with the non-saturating GAN loss and an R1 penalty on
real pairs (``r1_gamma``). Both players are updated from one loss per step (simultaneous gradient steps;
the generator's adversarial term sees the discriminator's weights detached, its discriminator term sees
detached fakes), so the project's single-optimizer training loop runs it unchanged. ``recon_weight``
(default 0, the paper's objective) adds an x0 MSE term to the generator: an explicit switch, not DD-GAN.
Sampling is the engine's ``ddpm`` sampler on the 4-step chain with x0 prediction: that *is* DD-GAN's
sampler (x0' = G(x_t), then x_{t-1} ~ q(x_{t-1} | x_t, x0')).
Not carried over from DD-GAN: its latent z input to the generator (the posterior noise of each step is the
only stochasticity here), its separate optimizers and learning rates, and lazy R1 (here every step).

``objective="ddpm"`` (the alternative): the same net trained as an eps-prediction DDPM (``timesteps``
training steps, linear schedule), sampled with any engine sampler (``ddpm``, ``dpm_solver_pp``, ...).

``predict`` returns ``members`` (B, K, M, 1, H, W), K = ``n_samples`` ensemble members, and ``prediction``
(B, M, 1, H, W), their mean in model space. The method needs at least ``past_frames`` past frames and uses
the last ``past_frames`` of them (the net would take any number; the discriminator is built for this one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.keys import COND, IMAGE
from ..diffusion.generators import GeneratorLike, randn_like
from ..diffusion.process import DiffusionLoss
from ..diffusion.schedules import Schedule, make_schedule, schedule_from_betas
from ..errors import ArgumentError, DataError
from ..metrics import psnr
from ..nets.spacetime_transformer import SequenceDiscriminator, SpaceTimeTransformer
from ._sampling import repeat_batch, sample_n
from .base import DiffusionMethod, DiffusionPair, IOSpec, check_sampler, no_diffusion_pair

OBJECTIVES = ("ddgan", "ddpm")


def ddgan_schedule(steps: int = 4, beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
    """DD-GAN's discretised VP-SDE chain of ``steps`` large steps:
    beta_i = 1 - exp(-beta_min / T - (beta_max - beta_min) (2i - 1) / (2 T^2)), i = 1..T."""
    if steps < 1:
        raise ArgumentError("timesteps", f"must be >= 1, got {steps}", "use 4 (the paper's few-step default)")
    i = torch.arange(1, steps + 1, dtype=torch.float64)
    betas = 1 - torch.exp(-beta_min / steps - 0.5 * (beta_max - beta_min) * (2 * i - 1) / steps**2)
    return schedule_from_betas(betas)


class NowcastDiffusion(DiffusionMethod):
    """Past radar frames -> ensemble of future frames (``cond`` -> ``image``), (B, T, 1, H, W)."""

    name = "nowcast_diffusion"
    task = "forecast"
    input_key = COND
    target_key = IMAGE
    outputs = ("prediction", "members")

    def __init__(
        self,
        past_frames: int = 4,
        future_frames: int = 12,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        objective: str = "ddgan",
        timesteps: int = 4,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        disc_width: int = 32,
        disc_depth: int = 3,
        r1_gamma: float = 0.05,
        recon_weight: float = 0.0,
        n_members: int = 4,
        sampler: str = "ddpm",
        sampling_steps: int | None = None,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ArgumentError("objective", f"unknown {objective!r}", f"choose one of {', '.join(OBJECTIVES)}")
        check_sampler(sampler)
        for arg, v in (("past_frames", past_frames), ("future_frames", future_frames), ("n_members", n_members)):
            if int(v) < 1:
                raise ArgumentError(arg, f"must be >= 1, got {v}", "pass a positive integer")
        if r1_gamma < 0 or recon_weight < 0:
            raise ArgumentError("r1_gamma/recon_weight", f"must be >= 0, got {r1_gamma}/{recon_weight}",
                                "use 0.05 / 0 (DD-GAN)")
        self.past_frames, self.future_frames = int(past_frames), int(future_frames)
        self.in_channels = self.out_channels = 1
        self.objective_name = objective
        self.net = SpaceTimeTransformer(1, patch_size, dim, depth, heads, mlp_ratio)
        self.r1_gamma, self.recon_weight, self.n_members = float(r1_gamma), float(recon_weight), int(n_members)
        if objective == "ddgan":
            self.schedule = ddgan_schedule(timesteps, beta_min, beta_max)
            self.prediction_type = "x0"
            self.disc = SequenceDiscriminator(self.past_frames + 2 * self.future_frames, 1, disc_width, disc_depth)
        else:
            self.schedule = make_schedule("linear", timesteps)
            self.prediction_type = "eps"
            self.disc = None
            self.objective = DiffusionLoss(self.schedule, prediction_type="eps", variance="fixed_small")
        self.sampler, self.sampling_steps = sampler, sampling_steps

    # -- contract -----------------------------------------------------------------------------------
    @property
    def denoiser(self) -> SpaceTimeTransformer:
        return self.net

    @property
    def size_multiple(self) -> int:
        return self.net.patch_size

    @property
    def io_spec(self) -> IOSpec:
        return IOSpec(inputs={COND: 1}, outputs=self.outputs, spatial_dims=2, task=self.task,
                      extra={"size_multiple": self.size_multiple, "past_frames": self.past_frames,
                             "future_frames": self.future_frames, "layout": "(B, T, C, H, W)",
                             "model_space": "log10(mm/h) / 2 (data.radar_sequence.rain_to_model)"})

    def _inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        past = batch[COND]
        if not isinstance(past, Tensor) or past.ndim != 5 or past.shape[2] != 1:
            shape = tuple(past.shape) if isinstance(past, Tensor) else type(past).__name__
            raise DataError("past frames", f"expected (B, N, 1, H, W), got {shape}", "stack the past frames on axis 1")
        if past.shape[1] < self.past_frames:
            raise DataError("past frames", f"{past.shape[1]} past frame(s); the model needs {self.past_frames}",
                            f"give at least {self.past_frames} consecutive past frames")
        if not bool(torch.isfinite(past).all()):
            raise DataError("past frames", "hold NaN or inf", "fill missing radar pixels (no rain) first")
        h, w = past.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise DataError("past frames", f"grid {h}x{w} is not a multiple of {m}",
                            f"crop or pad to a multiple of {m}")
        past = past[:, -self.past_frames:]
        fut = batch.get(IMAGE)
        if fut is not None:
            want = (past.shape[0], self.future_frames, 1, h, w)
            if tuple(fut.shape) != want:
                raise DataError("future frames", f"shape {tuple(fut.shape)}, expected {want}",
                                f"give {self.future_frames} future frames on the grid of the past")
        return past, fut

    # -- training -----------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        past, fut = self._inputs(batch)
        if fut is None:
            raise DataError("batch", f"training needs batch[{IMAGE!r}] (the future frames)",
                            "use a radar window data module (NowcastDataModule)")
        if self.disc is None:
            b, m = fut.shape[:2]
            flat = fut.reshape(b, m, *fut.shape[3:])

            def model(x: Tensor, t: Tensor) -> Tensor:
                return self.net(x.reshape(fut.shape), t, past).reshape(flat.shape)
            return self.objective(model, flat, generator=generator)
        d_loss, g_loss, logs = self.ddgan_terms(past, fut, generator)
        return d_loss + g_loss, logs

    def pair_refusal(self) -> ArgumentError | None:
        if self.objective_name == "ddgan":
            return no_diffusion_pair(self, "objective: ddgan (a few large GAN-trained reverse steps, not a denoiser "
                                     "trained at every timestep)")
        return super().pair_refusal()

    def diffusion_pair(self, batch: dict[str, Any]) -> DiffusionPair:
        """``objective: ddpm`` only: the past-conditioned transformer on the future frames as channels (B, M, H, W)
        and those frames, as ``predict`` samples them."""
        if (err := self.pair_refusal()) is not None:
            raise err
        past, fut = self._inputs(batch)
        if fut is None:
            raise DataError("batch", f"the diffusion pair needs batch[{IMAGE!r}] (the future frames)",
                            "use a radar window data module (NowcastDataModule)")
        net, m = self.net, self.future_frames

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            return net(x.reshape(x.shape[0], m, 1, *x.shape[2:]), t, past).reshape(x.shape)

        return DiffusionPair(denoise, fut.reshape(fut.shape[0], m, *fut.shape[3:]), self.prediction_type,
                             {"clip": True})

    def ddgan_terms(self, past: Tensor, x0: Tensor, generator: torch.Generator | None = None
                    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """DD-GAN's (discriminator loss, generator loss, logs) of one batch; the first reaches only D's weights,
        the second only G's (their sum is the training loss)."""
        if self.disc is None:
            raise ArgumentError("objective", "ddgan_terms needs objective='ddgan'", "build the method with it")
        s, b = self.schedule, x0.shape[0]
        i = torch.randint(0, len(s), (b,), device=x0.device, generator=generator)

        def at(name: str) -> Tensor:
            return s.gather(name, i, x0.ndim)

        # real pair: x_{t-1} ~ q(x_{t-1} | x0) (x0 itself at the first step), x_t = sqrt(1-beta) x_{t-1} + sqrt(beta) e
        abar_prev = at("alphas_cumprod_prev").to(x0.device)
        x_prev = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * randn_like(x0, generator)
        beta = at("betas").to(x0.device)
        x_t = (1 - beta).sqrt() * x_prev + beta.sqrt() * randn_like(x0, generator)
        # fake pair: x0' = G(x_t, t | past), x_{t-1}' ~ q(x_{t-1} | x_t, x0')
        x0_hat = self.net(x_t, i, past)
        x_prev_fake = (at("posterior_mean_coef_x0").to(x0.device) * x0_hat
                       + at("posterior_mean_coef_xt").to(x0.device) * x_t
                       + at("posterior_variance").to(x0.device).sqrt() * randn_like(x0, generator))
        # discriminator: non-saturating loss on real / detached fake pairs, R1 on the real x_{t-1}
        real = x_prev.detach().requires_grad_(self.r1_gamma > 0)
        d_real = self.disc(real, x_t, i, past)
        d_fake = self.disc(x_prev_fake.detach(), x_t, i, past)
        d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        r1 = torch.zeros((), device=x0.device)
        if self.r1_gamma > 0:
            (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            d_loss = d_loss + 0.5 * self.r1_gamma * r1
        # generator: non-saturating loss through a frozen copy of D's weights (no gradient reaches D)
        frozen = {k: v.detach() for k, v in self.disc.named_parameters()}
        g_adv = F.softplus(-torch.func.functional_call(self.disc, frozen, (x_prev_fake, x_t, i, past))).mean()
        recon = F.mse_loss(x0_hat, x0)
        g_loss = g_adv + self.recon_weight * recon if self.recon_weight > 0 else g_adv
        logs = {"loss_d": d_loss.detach(), "loss_g": g_adv.detach(), "r1": r1.detach(), "mse_x0": recon.detach()}
        return d_loss, g_loss, logs

    # -- sampling -----------------------------------------------------------------------------------
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
        """``members`` (B, K, M, 1, H, W) and their mean ``prediction`` (B, M, 1, H, W), model space."""
        past, _ = self._inputs(batch)
        k = self.n_members if n_samples is None else int(n_samples)
        name = sampler if sampler is not None else self.default_sampler
        b, m = past.shape[0], self.future_frames
        shape = (b, m, *past.shape[3:])  # frames as channels for the engine: (B, M, H, W)
        cond = repeat_batch(past, k)
        net = self.net

        def fn(x: Tensor, t: Tensor) -> Tensor:
            return net(x.reshape(x.shape[0], m, 1, *x.shape[2:]), t, cond).reshape(x.shape)

        kw: dict[str, Any] = {"prediction_type": self.prediction_type}
        out = sample_n(fn, shape, self.schedule, n_samples=k, sampler=name,
                       steps=steps if steps is not None else self.sampling_steps, device=past.device,
                       generator=generator, progress=progress, clip=True, **kw)
        members = out.clamp(-1, 1).transpose(0, 1).reshape(b, k, m, 1, *past.shape[3:])
        return {"prediction": members.mean(1), "members": members}

    def validation_metrics(self, batch: dict[str, Any], out: dict[str, Tensor]) -> dict[str, Tensor]:
        """PSNR of the member mean (model space, range 2) and CSI at 1 mm/h (model value 0) of member 0."""
        fut = batch.get(IMAGE)
        if not isinstance(fut, Tensor):
            return {}
        pred = out["prediction"]
        b = pred.shape[0]
        p = psnr(pred.reshape(b, -1, *pred.shape[-2:]).float(), fut.reshape(b, -1, *fut.shape[-2:]).float(),
                 data_range=2.0).clamp(max=100.0).mean()
        f, o = out["members"][:, 0] >= 0, fut >= 0
        hits, union = (f & o).sum(), (f | o).sum()
        csi = hits.float() / union.float() if int(union) > 0 else torch.tensor(float("nan"))
        return {"psnr": p, "csi@1": csi}

    def panel_columns(self, batch: dict[str, Any], out: dict[str, Tensor]) -> tuple[dict[str, Tensor], tuple]:
        """Training panels: last past frame, member 0 and the truth at the first and last lead."""
        past, fut, mem = batch[COND], batch.get(IMAGE), out["members"]
        cols = {"past_last": past[:, -1], "pred_first": mem[:, 0, 0], "pred_last": mem[:, 0, -1]}
        if isinstance(fut, Tensor):
            cols |= {"truth_first": fut[:, 0], "truth_last": fut[:, -1]}
        return cols, tuple(cols)


def seconds_per_forecast(method: NowcastDiffusion, past: Tensor, n_members: int, sampler: str | None = None,
                         steps: int | None = None, repeats: int = 1) -> float:
    """Mean wall seconds of one ``predict`` (all members) on ``past`` (1, N, 1, H, W)."""
    import time

    g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        method.predict({COND: past}, sampler=sampler, steps=steps, n_samples=n_members, generator=g)
        times.append(time.perf_counter() - t0)
    return float(np.mean(times))


__all__ = ["OBJECTIVES", "NowcastDiffusion", "ddgan_schedule", "seconds_per_forecast"]
