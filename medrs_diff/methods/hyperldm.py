"""HyperLDM (Liu et al., TGRS 2023): diverse hyperspectral cubes from one RGB image by a physics-informed
latent diffusion model.

Two stages, one ``fit`` (the SRDiff pattern: a step counter in the checkpoint):

1. **Conditional VQ autoencoder** (the first ``pretrain_steps`` optimizer steps): cube -> latent at 1/4 resolution
   -> codebook; the decoder takes the latent and the RGB (its 1/4 level concatenated, its 1/2 and full levels
   added as skips) and outputs **softmax abundances over a fixed endmember library** (bands x K, taken from
   the data: the scene's endmembers or an ATGP / VCA-style extraction, see
   :mod:`medrs_diff.data.hsi_synthesis`) times a **learnable per-band gain**. Loss:
   ``l1_weight * L1 + sam_weight * spectral term + codebook + beta * commitment`` (paper: 10, 100, beta 0.25;
   ``sam_loss: cosine`` is the paper's per-pixel ``1 - cos``, ``angle`` the angle itself in radians).
   The paper's spatial / spectral discriminators are not implemented (the paper's GAN terms; off on CPU).
2. **Latent DDPM conditioned on RGB** (later steps, the autoencoder frozen): the quantised latent divided by
   its standard deviation (**latent scaling**, estimated on the first diffusion batch and stored in the
   checkpoint; the paper divides by 0.24) is diffused with eps-MSE; the UNet sees the noisy latent
   concatenated with an RGB condition branch (conv + ResBlock + two stride-2 stages to 1/4 resolution,
   ``cond_channels`` features). Paper: T = 100, linear betas, 100-step ancestral fixed-small sampling.
   Deviation (≈): the paper's condition blocks also take the time embedding; here the branch is computed
   once per sample, without it.

Sampling: each draw of the latent chain is snapped to the codebook (``quantize_samples``) and decoded with the
RGB, so several seeds give several cubes. ``predict`` returns ``prediction`` (mean of the draws),
``uncertainty`` (per-band variance over them), ``sample_0 .. sample_{n-1}`` (``n_samples`` cubes, each one
seed's plausible cube; ``infer`` writes each as its own file), ``samples`` (B, n, bands, H, W) and
``abundances`` (of the mean draw).

Data: cubes in reflectance (``scaling: none``), RGB rendered from three bands of the cube in the same units;
the data module puts the endmember library in every batch (``endmembers``), which the method stores on its
first training step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..diffusion.ensemble import variance_map
from ..diffusion.generators import GeneratorLike
from ..diffusion.process import DiffusionLoss, check_spatial
from ..diffusion.schedules import make_schedule
from ..errors import ArgumentError, CheckpointError, DataError
from ..metrics import psnr
from ..metrics.spectral import sam
from ..nets.hyperldm import FrozenFloat, HyperVQAE, RGBPyramid, spectral_angle
from ..nets.unet import ConditionedUNet
from ._sampling import repeat_batch, sample_n
from .base import DiffusionMethod, DiffusionPair, IOSpec, check_sampler

#: batch key of the endmember library (bands, K) or (B, bands, K)
ENDMEMBERS = "endmembers"


def _bad_bands(x: Tensor) -> list[int]:
    return torch.nonzero(~torch.isfinite(x).transpose(0, 1).flatten(1).all(1)).flatten().tolist()


class HyperLDM(DiffusionMethod):
    name = "hyperldm"
    task = "spectral"
    input_key = "cond"
    target_key = "image"

    def __init__(
        self,
        bands: int = 198,
        num_endmembers: int = 4,
        rgb_channels: int = 3,
        latent_channels: int = 4,
        codebook_size: int = 256,
        ae_channels: int = 32,
        cond_channels: int = 32,
        channels: Sequence[int] = (64, 128),
        attention_levels: Sequence[bool] = (False, False),
        num_res_blocks: int = 1,
        num_head_channels: int = 32,
        norm_num_groups: int = 8,
        timesteps: int = 100,
        schedule: str = "linear",
        l1_weight: float = 10.0,
        sam_weight: float = 100.0,
        sam_loss: str = "cosine",
        commitment: float = 0.25,
        pretrain_steps: int = 1000,
        quantize_samples: bool = True,
        n_samples: int = 3,
        sampler: str = "ddpm",
        sampling_steps: int | None = None,
    ) -> None:
        super().__init__()
        check_sampler(sampler)
        if sam_loss not in ("cosine", "angle"):
            raise ArgumentError("sam_loss", f"unknown spectral loss {sam_loss!r}", "use 'cosine' (paper) or 'angle'")
        for k, v in (("bands", bands), ("num_endmembers", num_endmembers), ("n_samples", n_samples),
                     ("latent_channels", latent_channels), ("codebook_size", codebook_size)):
            if int(v) < 1:
                raise ArgumentError(k, f"must be >= 1, got {v}", f"set {k} to a positive integer")
        if pretrain_steps < 0:
            raise ArgumentError("pretrain_steps", f"must be >= 0, got {pretrain_steps}",
                                "give the number of autoencoder-stage steps")
        self.bands, self.num_endmembers = int(bands), int(num_endmembers)
        self.in_channels, self.out_channels = int(rgb_channels), int(bands)
        self.autoencoder = HyperVQAE(bands, num_endmembers, latent_channels, ae_channels, codebook_size,
                                     commitment, rgb_channels)
        self.cond_encoder = RGBPyramid(cond_channels, in_ch=rgb_channels)
        self.unet = ConditionedUNet(2, latent_channels, latent_channels, channels, attention_levels, num_res_blocks,
                                    num_head_channels, norm_num_groups, cond_channels=cond_channels)
        self.latent_std = FrozenFloat(1)
        self.schedule = make_schedule(schedule, timesteps)
        self.objective = DiffusionLoss(self.schedule, prediction_type="eps", loss_type="mse")
        self.l1_weight, self.sam_weight, self.sam_loss = float(l1_weight), float(sam_weight), sam_loss
        self.pretrain_steps, self.quantize_samples = int(pretrain_steps), bool(quantize_samples)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.n_samples, self.sampler, self.sampling_steps = int(n_samples), sampler, sampling_steps

    # -- contract -------------------------------------------------------------------------------------
    @property
    def denoiser(self) -> ConditionedUNet:
        return self.unet

    @property
    def size_multiple(self) -> int:
        return 4 * self.unet.size_multiple

    @property
    def outputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("prediction", "uncertainty", *(f"sample_{i}" for i in range(self.n_samples)))

    @property
    def io_spec(self) -> IOSpec:
        return IOSpec(inputs={self.input_key: self.in_channels}, outputs=self.outputs, spatial_dims=2,
                      grid_factor=1, task=self.task, data_space=(),
                      extra={"size_multiple": self.size_multiple, "bands": self.bands})

    @property
    def library(self) -> Tensor:
        """The endmember library (bands, K) (zeros until set from the data)."""
        return self.autoencoder.head.library.value

    def set_library(self, endmembers: Tensor) -> None:
        """Store the endmember library (bands, K) the unmixing decoder mixes."""
        e = self._check_library(endmembers)
        self.autoencoder.head.library.set(e)

    @property
    def autoencoder_stage(self) -> bool:
        return int(self.steps_done) < self.pretrain_steps

    # -- checks ---------------------------------------------------------------------------------------
    def _check_library(self, endmembers: Any) -> Tensor:
        e = torch.as_tensor(endmembers, dtype=torch.float32)
        if e.ndim == 3:
            e = e[0]
        if tuple(e.shape) != (self.bands, self.num_endmembers):
            raise DataError(ENDMEMBERS, f"library of shape {tuple(e.shape)}, the model has {self.bands} bands and "
                            f"{self.num_endmembers} endmembers", "give a (bands, K) library matching the model")
        if not torch.isfinite(e).all():
            raise DataError(ENDMEMBERS, "the endmember library holds NaN / inf", "give finite endmember spectra")
        return e

    def check_cube(self, hsi: Tensor, where: str = "image") -> None:
        """A (B, bands, H, W) cube of this model's band count with no NaN / inf band."""
        check_spatial(hsi, where)
        if hsi.shape[1] != self.bands:
            raise DataError(where, f"cube has {hsi.shape[1]} bands but the model (checkpoint) has {self.bands}",
                            f"give cubes of the model's sensor ({self.bands} bands) or train a model on these")
        bad = _bad_bands(hsi)
        if bad:
            raise DataError(where, f"cube holds NaN / inf in {len(bad)} band(s) (0-based: {bad[:8]})",
                            "drop or fill those bands before training / scoring")

    def _rgb(self, batch: Mapping[str, Any]) -> Tensor:
        rgb = batch[self.input_key]
        check_spatial(rgb, "RGB")
        self.check_input(rgb, "RGB")
        if not torch.isfinite(rgb).all():
            raise DataError("RGB", "holds NaN / inf pixels", "fill them before inference (e.g. --nan-policy fill)")
        m = self.size_multiple
        if rgb.shape[-1] % m or rgb.shape[-2] % m:
            raise DataError("RGB", f"size {tuple(rgb.shape[-2:])} is not a multiple of {m}",
                            f"crop or tile to multiples of {m} (inference tiles do this)")
        return rgb

    def _pair(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        rgb = self._rgb(batch)
        hsi = batch.get(self.target_key)
        if hsi is None:
            raise DataError("batch", f"HyperLDM training needs batch[{self.target_key!r}] (the cube)",
                            "use a data module that provides it (HyperspectralSynthesisDataModule)")
        self.check_cube(hsi)
        if hsi.shape[0] != rgb.shape[0] or hsi.shape[-2:] != rgb.shape[-2:]:
            raise DataError("batch", f"cube {tuple(hsi.shape)} and RGB {tuple(rgb.shape)} differ in batch or size",
                            "pair each cube with its RGB rendering on the same grid")
        return rgb, hsi

    def _library_for(self, batch: Mapping[str, Any], store: bool) -> Tensor | None:
        """The stored library; set from ``batch['endmembers']`` on the first training batch (``store``)."""
        given = batch.get(ENDMEMBERS)
        if self.autoencoder.head.library.is_set:
            if given is not None:
                self._check_library(given)
            return None
        if given is None:
            raise CheckpointError("HyperLDM", "has no endmember library (it was never trained) and the batch "
                                  f"has no {ENDMEMBERS!r}", "train it with a data module that supplies the library "
                                  f"or pass batch[{ENDMEMBERS!r}] (bands x K)")
        e = self._check_library(given).to(self.library.device)
        if store:
            self.set_library(e)
            return None
        return e

    # -- losses ---------------------------------------------------------------------------------------
    def spectral_loss(self, pred: Tensor, ref: Tensor) -> Tensor:
        """Mean per-pixel ``1 - cos`` (``sam_loss: cosine``) or angle in radians (``angle``)."""
        if self.sam_loss == "angle":
            return spectral_angle(pred, ref).mean()
        return (1 - F.cosine_similarity(pred, ref, dim=1, eps=1e-8)).mean()

    def autoencoder_loss(self, rgb: Tensor, hsi: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z, vq = self.autoencoder.encode(hsi)
        rec, _ = self.autoencoder.decode(z, rgb)
        l1 = F.l1_loss(rec, hsi)
        spec = self.spectral_loss(rec, hsi)
        loss = self.l1_weight * l1 + self.sam_weight * spec + vq
        return loss, {"loss_l1": l1.detach(), "loss_spectral": spec.detach(), "loss_vq": vq.detach()}

    @torch.no_grad()
    def latents(self, hsi: Tensor) -> Tensor:
        """Quantised latents of cubes (not scaled)."""
        return self.autoencoder.quantizer.lookup(self.autoencoder.quantizer.indices(self.autoencoder.encoder(hsi)))

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        rgb, hsi = self._pair(batch)
        self._library_for(batch, store=True)
        stage_ae = self.autoencoder_stage
        if self.training:
            self.steps_done += 1
        if stage_ae:
            return self.autoencoder_loss(rgb, hsi)
        self.autoencoder.requires_grad_(False)
        z = self.latents(hsi)
        if not self.latent_std.is_set:  # latent scaling: estimated once, on the first diffusion batch
            std = z.float().std()
            if not torch.isfinite(std) or std <= 0:
                raise DataError("batch", f"latent standard deviation {float(std)} is not positive",
                                "train the autoencoder longer (pretrain_steps) or check the cubes")
            self.latent_std.set(std)
        x0 = z / self.latent_std.value
        feats = self.cond_encoder(rgb)[-1]
        return self.objective(lambda x, t: self.unet(x, t, cond=feats), x0, generator=generator)

    def diffusion_pair(self, batch: dict[str, Any]) -> DiffusionPair:
        """The latent stage: the RGB-conditioned UNet and the batch's scaled quantised latents (no clipping, as
        sampled; the chain runs in latent space). Refused until the latent stage has run (no latent scale)."""
        if (err := self.pair_refusal()) is not None:
            raise err
        if not self.latent_std.is_set:  # checked here, not in pair_refusal: a recipe's callback checks before training
            raise ArgumentError(f"method {self.name}", "has no latent scale yet (its latent diffusion stage never "
                                "ran), so its latent chain cannot be fitted", "train past pretrain_steps first")
        rgb, hsi = self._pair(batch)
        feats, net = self.cond_encoder(rgb)[-1], self.unet
        return DiffusionPair(lambda x, t: net(x, t, cond=feats), self.latents(hsi) / self.latent_std.value, "eps",
                             {"clip": False})

    # -- inference ------------------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, hsi: Tensor, rgb: Tensor) -> tuple[Tensor, Tensor]:
        """Autoencoder round trip: (cube, abundances)."""
        self.check_cube(hsi)
        return self.autoencoder.decode(self.latents(hsi), rgb)

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
        rgb = self._rgb(batch)
        library = self._library_for(batch, store=False)
        n = max(int(n_samples) if n_samples is not None else self.n_samples, self.n_samples)
        b, _, h, w = rgb.shape
        feats = repeat_batch(self.cond_encoder(rgb)[-1], n)
        lat = self.autoencoder.quantizer.codebook.weight.shape[1]
        z = sample_n(
            lambda x, t: self.unet(x, t, cond=feats), (b, lat, h // 4, w // 4), self.schedule, n_samples=n,
            sampler=sampler if sampler is not None else self.default_sampler,
            steps=steps if steps is not None else self.sampling_steps, device=rgb.device, generator=generator,
            progress=progress, clip=False,
        )  # (n, B, D, h/4, w/4)
        std = self.latent_std.value if self.latent_std.is_set else torch.ones(1, device=rgb.device)
        z = z.flatten(0, 1) * std
        if self.quantize_samples:
            z = self.autoencoder.quantizer.lookup(self.autoencoder.quantizer.indices(z))
        cube, ab = self.autoencoder.decode(z, repeat_batch(rgb, n), library)
        cube = cube.reshape(n, b, *cube.shape[1:]).transpose(0, 1)  # (B, n, bands, H, W)
        ab = ab.reshape(n, b, *ab.shape[1:]).mean(0)
        out = {"prediction": cube.mean(1), "uncertainty": variance_map(cube) if n > 1 else torch.zeros_like(cube[:, 0]),
               "samples": cube, "abundances": ab}
        for i in range(self.n_samples):
            out[f"sample_{i}"] = cube[:, i]
        return out

    def validation_metrics(self, batch: Mapping[str, Any], out: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Mean SAM (degrees) and PSNR (data range 1, reflectance) of the mean prediction."""
        ref = batch.get(self.target_key)
        if not isinstance(ref, Tensor):
            return {}
        pred = out["prediction"].float()
        return {"sam_deg": torch.nan_to_num(sam(pred, ref.float()), nan=0.0).mean(),
                "psnr": psnr(pred, ref.float(), data_range=1.0).clamp(max=100.0).float().mean()}
