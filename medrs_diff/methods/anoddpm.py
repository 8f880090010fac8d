"""AnoDDPM (Wyatt et al., CVPR-W NTIRE 2022): unsupervised anomaly detection by partial diffusion.

Faithful to the paper: an unconditional DDPM (UNet, eps-MSE, T = 1000, linear betas) is trained on
**healthy** images only, with multi-octave **simplex noise** as eps (6 octaves, persistence 0.8, start
frequency 2^-6 cycles per pixel; zero mean, unit variance per sample, the engine's batched
:func:`~medrs_diff.diffusion.noise.simplex_noise`) or Gaussian noise (``noise: gaussian``, the paper's
baseline). At test an image is forward-diffused to ``lam`` (lambda << T; paper ~250, the official
evaluation code uses 200) with the same noise type, denoised back to 0 by the ancestral chain whose
per-step noise is again of that type, and the anomaly map is the squared (``error: l1``: absolute)
reconstruction error, averaged over channels unless ``channel_mean: false``. ``mask`` is
``anomaly_map >= threshold``; the threshold is chosen on a validation split
(:func:`medrs_diff.metrics.anomaly.select_threshold`, ``medrs-diff evaluate --task anomaly
--threshold-from``), never on the test set, and reaches the method as the ``threshold`` recipe key or
``medrs-diff infer --threshold``; without one the method declares no ``mask`` output.

Lambda counts steps: the image is noised to the training timestep ``lam - 1`` (0-based), i.e. x_lam
of the paper's 1-based chain, and ``lam`` ancestral steps lead back to x_0 (``sampling_steps`` respaces
them, trailing spacing, beside the paper). Other registered samplers run from the same start without
the per-step noise type (DDIM with eta = 0 has none): beside the paper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..data.keys import IMAGE, LABEL
from ..diffusion.generators import GeneratorLike
from ..diffusion.noise import gaussian_like, simplex_like, simplex_noise_fn
from ..diffusion.process import DiffusionLoss, check_spatial
from ..diffusion.samplers import SAMPLERS
from ..diffusion.samplers.truncated import sample_from_estimate
from ..diffusion.schedules import make_schedule
from ..errors import ArgumentError, DataError
from ..metrics.anomaly import auprc
from ..metrics.pixel import auroc
from ..nets.unet import ConditionedUNet
from ._sampling import repeat_batch
from .base import DiffusionMethod, IOSpec, check_sampler

NOISE_TYPES = ("simplex", "gaussian")
ERRORS = ("squared", "l1")


class AnoDDPM(DiffusionMethod):
    name = "anoddpm"
    task = "anomaly"
    input_key = IMAGE
    target_key = LABEL
    data_space = ("reconstruction",)

    def __init__(
        self,
        in_channels: int = 1,
        spatial_dims: int = 2,
        channels: Sequence[int] = (64, 128, 256, 256),
        attention_levels: Sequence[bool] = (False, False, True, True),
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        timesteps: int = 1000,
        schedule: str = "linear",
        noise: str = "simplex",
        octaves: int = 6,
        persistence: float = 0.8,
        frequency: float = 2.0**-6,
        lam: int = 250,
        error: str = "squared",
        channel_mean: bool = True,
        threshold: float | None = None,
        n_samples: int = 1,
        sampler: str = "ddpm",
        sampling_steps: int | None = None,
    ) -> None:
        super().__init__()
        check_sampler(sampler)
        if noise not in NOISE_TYPES:
            raise ArgumentError("noise", f"unknown noise type {noise!r}", f"choose one of {', '.join(NOISE_TYPES)}")
        if error not in ERRORS:
            raise ArgumentError("error", f"unknown reconstruction error {error!r}",
                                f"choose one of {', '.join(ERRORS)}")
        if timesteps < 1:
            raise ArgumentError("timesteps", f"must be >= 1, got {timesteps}", "use the paper's 1000")
        self.check_lam(lam, timesteps)
        if noise == "simplex":
            if octaves < 1:
                raise ArgumentError("octaves", f"must be >= 1, got {octaves}", "use the paper's 6")
            if not 0.0 < persistence or not 0.0 < frequency:
                raise ArgumentError("persistence / frequency", f"must be > 0, got {persistence} / {frequency}",
                                    "use the paper's 0.8 and 2^-6 = 0.015625")
        if threshold is not None and not (isinstance(threshold, int | float) and abs(float(threshold)) < float("inf")):
            raise ArgumentError("threshold", f"must be a finite number or null, got {threshold!r}",
                                "give the threshold chosen on validation (evaluate --task anomaly --threshold-from)")
        if n_samples < 1:
            raise ArgumentError("n_samples", f"must be >= 1, got {n_samples}", "use 1 (the paper)")
        self.in_channels = self.out_channels = in_channels
        self.spatial_dims = spatial_dims
        self.unet = ConditionedUNet(spatial_dims, in_channels, in_channels, channels, attention_levels,
                                    num_res_blocks, num_head_channels, norm_num_groups)
        self.schedule = make_schedule(schedule, timesteps)
        self.noise = noise
        self.simplex_kwargs = {"octaves": octaves, "persistence": persistence, "frequency": frequency}
        self.objective = DiffusionLoss(
            self.schedule, prediction_type="eps", loss_type="mse",
            noise_fn=simplex_noise_fn(**self.simplex_kwargs) if noise == "simplex" else None,
        )
        self.lam, self.error, self.channel_mean = int(lam), error, bool(channel_mean)
        self.threshold = None if threshold is None else float(threshold)
        self.n_samples, self.sampler, self.sampling_steps = n_samples, sampler, sampling_steps

    no_learned_chain = ("its chain starts at lam from the noised image (partial diffusion), not at pure noise, and "
                        "walks simplex noise by default")

    # -- contract ---------------------------------------------------------------------------------
    @property
    def denoiser(self) -> ConditionedUNet:
        return self.unet

    @property
    def size_multiple(self) -> int:
        return int(self.unet.size_multiple)

    @property
    def outputs(self) -> tuple[str, ...]:  # type: ignore[override]
        """``anomaly_map``, ``reconstruction`` and, once a threshold is set, ``mask``."""
        base = ("anomaly_map", "reconstruction")
        return base + ("mask",) if self.threshold is not None else base

    @property
    def io_spec(self) -> IOSpec:
        spec = super().io_spec
        extra = dict(spec.extra, label_outputs=("mask",) if self.threshold is not None else ())
        return IOSpec(inputs=spec.inputs, outputs=spec.outputs, spatial_dims=spec.spatial_dims,
                      grid_factor=spec.grid_factor, task=spec.task, data_space=spec.data_space, extra=extra)

    @staticmethod
    def check_lam(lam: Any, timesteps: int) -> int:
        """``lam`` as an int in [1, T], else :class:`ArgumentError`."""
        if isinstance(lam, bool) or not isinstance(lam, int) or not 1 <= lam <= timesteps:
            raise ArgumentError("lam", f"must be an integer in [1, T={timesteps}], got {lam!r}",
                                "use a partial-diffusion depth lambda << T (paper: 250; official evaluation code: 200)")
        return int(lam)

    def set_threshold(self, threshold: float | None) -> None:
        """Set (or clear, with None) the mask threshold chosen on validation."""
        if threshold is not None and not abs(float(threshold)) < float("inf"):
            raise ArgumentError("threshold", f"must be finite, got {threshold}", "give a finite number")
        self.threshold = None if threshold is None else float(threshold)

    # -- noise ------------------------------------------------------------------------------------
    def draw_noise(self, x: Tensor, generator: GeneratorLike = None) -> Tensor:
        """Unit-variance noise of the method's type shaped like ``x``."""
        if self.noise == "simplex":
            return simplex_like(x, generator, **self.simplex_kwargs)
        return gaussian_like(x, generator)

    # -- training ---------------------------------------------------------------------------------
    def _image(self, batch: Mapping[str, Any]) -> Tensor:
        if self.input_key not in batch:
            raise DataError("batch", f"AnoDDPM needs batch[{self.input_key!r}] (the image)",
                            "use a data module that provides images (BrainAnomalyDataModule)")
        x = batch[self.input_key]
        check_spatial(x, "image")
        self.check_input(x, "image")
        return x

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        x0 = self._image(batch)
        return self.objective(lambda x, t: self.unet(x, t), x0, generator=generator)

    # -- inference --------------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, x: Tensor, *, lam: int | None = None, sampler: str | None = None,
                    steps: int | None = None, generator: GeneratorLike = None, progress: bool = False) -> Tensor:
        """Partial diffusion of ``x`` to ``lam`` and back; ``lam=0`` returns ``x`` unchanged (no diffusion)."""
        lam = self.lam if lam is None else lam
        if lam == 0:
            return x.clone()
        lam = self.check_lam(lam, self.schedule.num_train_timesteps)
        name = sampler if sampler is not None else self.default_sampler
        check_sampler(name)
        steps = steps if steps is not None else self.sampling_steps
        if steps is not None and not 1 <= int(steps) <= lam:
            raise ArgumentError("steps", f"must lie in [1, lam={lam}], got {steps}", "use at most lam steps, or null")
        kwargs: dict[str, Any] = {"progress": progress}
        if steps is not None and steps != lam:
            kwargs.update(steps=int(steps), spacing="trailing")
        if name == "ddpm":
            kwargs["noise_fn"] = lambda z, index, gen: self.draw_noise(z, gen)
        net = self.unet
        return sample_from_estimate(SAMPLERS[name], lambda z, t: net(z, t), x, self.schedule, t_start=lam - 1,
                                    generator=generator, noise=self.draw_noise(x, generator), **kwargs)

    def anomaly_map(self, x: Tensor, recon: Tensor) -> Tensor:
        """Per-pixel reconstruction error (squared or absolute), channel-averaged unless ``channel_mean`` is off."""
        err = (x - recon) ** 2 if self.error == "squared" else (x - recon).abs()
        return err.mean(1, keepdim=True) if self.channel_mean else err

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
        lam: int | None = None,
    ) -> dict[str, Tensor]:
        """``anomaly_map``, ``reconstruction`` (means over ``n_samples`` reconstructions) and ``mask``
        (with a threshold); ``lam`` overrides the method's depth for this call."""
        x = self._image(batch)
        n = n_samples if n_samples is not None else self.n_samples
        if n < 1:
            raise ArgumentError("n_samples", f"must be >= 1, got {n}", "use 1 (the paper)")
        xs = repeat_batch(x, n) if n > 1 else x
        recon = self.reconstruct(xs, lam=lam, sampler=sampler, steps=steps, generator=generator, progress=progress)
        maps = self.anomaly_map(xs, recon)
        b = x.shape[0]
        recon = recon.reshape(n, b, *recon.shape[1:]).mean(0)
        maps = maps.reshape(n, b, *maps.shape[1:]).mean(0)
        if not bool(torch.isfinite(maps).all()):
            raise DataError("AnoDDPM", "the reconstruction holds NaN or Inf values",
                            "check the input (finite, scaled as in training) and the checkpoint")
        out = {"anomaly_map": maps, "reconstruction": recon, "prediction": maps}  # prediction: the main output
        if self.threshold is not None:
            out["mask"] = (maps >= self.threshold).to(maps.dtype)
        return out

    def panel_columns(self, batch: Mapping[str, Any], out: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], tuple]:
        """Panel columns: input and reconstruction (one range), anomaly map, reference lesion and mask."""
        cols = {"input": batch.get(self.input_key), "reconstruction": out.get("reconstruction"),
                "anomaly_map": out.get("anomaly_map"), "reference": batch.get(self.target_key),
                "mask": out.get("mask")}
        return {k: v for k, v in cols.items() if isinstance(v, Tensor)}, ("input", "reconstruction")

    def validation_metrics(self, batch: Mapping[str, Any], out: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``error``: the mean anomaly-map value (on healthy data, the reconstruction error); with lesion
        labels in the batch, pixel ``auroc`` / ``auprc`` pooled over the batch (NaN without a lesion pixel)."""
        maps = out["anomaly_map"].float()
        metrics = {"error": maps.mean()}
        ref = batch.get(self.target_key)
        if isinstance(ref, Tensor):
            lesion = (ref > 0.5).expand_as(maps) if ref.shape[1] == 1 else ref > 0.5
            m, y = maps.detach().cpu(), lesion.detach().cpu()
            metrics["auroc"] = torch.tensor(auroc(m, y))
            metrics["auprc"] = torch.tensor(auprc(m, y))
        return metrics
