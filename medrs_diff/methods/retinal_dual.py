"""The retinal dual model (ReTree; Alimanov & Islam, IEEE ICCP 2023, arXiv 2308.08339): two separate DDPMs that
make new vessel-tree / fundus-image pairs.

- :class:`RetinalMaskDDPM` draws vessel trees unconditionally: a 1-channel DDPM on masks in [-1, 1];
  ``predict`` takes the count and size from the batch (``label`` or ``fov``; their values are not used) and
  returns binary masks, cut to the field of view.
- :class:`RetinalImageDDPM` paints a fundus image for a given tree: the noisy RGB image (3 channels) is
  concatenated with the vessel mask (1 channel, {0, 1} -> {-1, 1}), the net predicts the 3-channel eps.

Facts kept from the paper and its code (``../shared/reference/medical.md`` section 6):

- loss: MSE + L1 between the predicted and the drawn eps (:func:`mse_l1_eps_loss`);
- sampler: 1000-step ancestral DDPM (``sampler: ddpm``, ``sampling_steps: null`` = every step); any sampler
  of the registry can be chosen instead (``generate --sampler ddim --steps 50``);
- schedule, T = 1000: the paper's DDPM linear betas from 1e-4 to 0.02 (``schedule: linear``, the default).
  The official code (AAleka/ReTree, ``train_ddpm_mask.py``) names its function "linear" but computes
  ``beta_i = |b1 cos(pi/2 i / (T - 1)) - (b1 - b0)|``, i = 0 .. T - 1: b0 at the start, a dip to about 0 near
  i = 0.064 T, then a cosine-shaped rise to b1 - b0 (and it trains the mask model with T = 800);
  ``schedule: retree_code`` gives those betas (:func:`retree_code_betas`) over ``timesteps``;
- field of view: generated images are black (-1) outside a circular FOV and masks are binarised (x0 > 0)
  inside it. The FOV is the batch's ``fov`` when it has one (training, validation), else a centred disc of
  radius ``fov_radius`` x the image width (:func:`medrs_diff.data.retina_phantoms.circular_fov`).

Nets (``net``): ``light_unet`` (default, the paper's) is :class:`~medrs_diff.nets.light_unet.LightUNet`: two down
stages (``channels`` has three widths), each followed by a locality-self-attention transformer block (``lsa_heads``
heads, tokens of ``attention_patch``^2 pixels), a conv bottleneck and a 256-d sinusoidal time embedding;
``monai`` is the project's :class:`~medrs_diff.nets.unet.ConditionedUNet` (MONAI ``DiffusionModelUNet``, with
``attention_levels``, ``num_res_blocks``, ``num_head_channels``). ``channels`` null takes each net's default.
``pyramid`` (mask model only; null = off, the paper's): Pyramidal DDPM (Ryu & Ye 2022, :mod:`._pyramid`), e.g.
``{scales: [0.25, 0.5, 1.0], t_starts: [500, 500]}``: the net also sees coordinate and scale channels, trains on
masks area-downsampled to a random scale (same MSE + L1 loss) and samples coarse to fine with any sampler of the
registry; image sizes must then be multiples of :attr:`size_multiple` (the net's times the coarsest scale's).
Not implemented: the code's re-stepping of a batch (up to 5 optimizer steps while its loss exceeds the running
minimum) and the least-squares PatchGAN filter of the outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..data.keys import IMAGE, LABEL
from ..data.retina_phantoms import FOV_RADIUS, circular_fov
from ..diffusion.generators import GeneratorLike
from ..diffusion.noise import gaussian_like
from ..diffusion.process import check_spatial, q_sample
from ..diffusion.schedules import Schedule, make_schedule, schedule_from_betas
from ..errors import ArgumentError, DataError
from ..metrics import psnr
from ..nets.light_unet import LightUNet
from ..nets.unet import ConditionedUNet
from ._pyramid import check_pyramid, extra_channels, pyramid_draw, pyramid_loss
from ._pyramid import size_multiple as pyramid_size_multiple
from ._sampling import repeat_batch, sample_n
from .base import PSNR_CAP_DB, DiffusionMethod, DiffusionPair, check_sampler, no_diffusion_pair

#: Batch key of the field of view (as :mod:`medrs_diff.datamodules.clinical2d` names it).
FOV = "fov"
#: ``net`` values and each one's default ``channels``.
RETINAL_NETS = {"light_unet": (64, 128, 256), "monai": (64, 128, 128, 256)}
#: ``schedule`` values: the paper's linear betas, or the official code's cosine-shaped ones.
RETINAL_SCHEDULES = ("linear", "retree_code")


def retree_code_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """The official code's "linear" betas: ``|b1 cos(pi/2 i / (T - 1)) - (b1 - b0)|`` for i = 0 .. T - 1
    (b0 first, about 0 near i = 0.064 T, b1 - b0 last)."""
    if num_steps < 2:
        raise ValueError(f"retree_code_betas: need at least 2 steps, got {num_steps}")
    i = torch.arange(num_steps, dtype=torch.float64)
    return torch.abs(beta_end * torch.cos(math.pi / 2 * i / (num_steps - 1)) - (beta_end - beta_start))


def retinal_schedule(name: str, timesteps: int) -> Schedule:
    """The training schedule ``name`` (:data:`RETINAL_SCHEDULES`) over ``timesteps`` steps."""
    if name not in RETINAL_SCHEDULES:
        raise ArgumentError("schedule", f"unknown schedule {name!r} for the retinal dual model",
                            f"choose one of {', '.join(RETINAL_SCHEDULES)} (paper: linear)")
    if timesteps < 2:
        raise ArgumentError("timesteps", f"must be >= 2, got {timesteps}", "use the paper's 1000")
    if name == "linear":  # DDPM's 1e-4 .. 0.02 as given (no 1000 / T rescaling: the paper uses T = 1000)
        return make_schedule("linear", timesteps, scale=False)
    return schedule_from_betas(retree_code_betas(timesteps))


def mse_l1_eps_loss(
    net: Any, schedule: Schedule, x0: Tensor, generator: torch.Generator | None = None, **net_kwargs: Any,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The paper's loss: ``mean((eps_hat - eps)^2) + mean(|eps_hat - eps|)`` at a uniform training step."""
    check_spatial(x0, "x0")
    index = torch.randint(0, len(schedule), (x0.shape[0],), device=x0.device, generator=generator)
    eps = gaussian_like(x0, generator)
    x_t = q_sample(schedule, x0, index, eps)
    t = schedule.table("timesteps", x0.device, torch.long)[index]
    err = net(x_t, t, **net_kwargs) - eps
    mse, l1 = (err**2).mean(), err.abs().mean()
    return mse + l1, {"loss_mse": mse.detach(), "loss_l1": l1.detach()}


def _fov_of(batch: Mapping[str, Any], ref: Tensor, radius: float) -> Tensor:
    """(B, 1, H, W) bool field of view: the batch's ``fov`` or a centred disc."""
    fov = batch.get(FOV)
    b, h, w = ref.shape[0], ref.shape[-2], ref.shape[-1]
    if isinstance(fov, Tensor):
        if fov.shape[0] != b or tuple(fov.shape[-2:]) != (h, w):
            raise DataError("batch", f"fov {tuple(fov.shape)} does not match the batch {tuple(ref.shape)}",
                            "give each case a field-of-view mask on its grid")
        return (fov.reshape(b, 1, h, w) > 0.5).to(ref.device)
    disc = torch.from_numpy(circular_fov(h, w, radius)).to(ref.device)
    return disc.expand(b, 1, h, w)


class _RetinalDDPM(DiffusionMethod):
    """What both models share: the net, the schedule, the sampler defaults and the FOV."""

    spatial_dims = 2

    def _setup(self, *, data_channels: int, cond_channels: int, net: str, channels: Sequence[int] | None,
               attention_levels: Sequence[bool] | None, num_res_blocks: int, num_head_channels: int,
               norm_num_groups: int, lsa_heads: int, attention_patch: int, timesteps: int, schedule: str, sampler: str,
               sampling_steps: int | None, fov_radius: float, pyramid: Any = None) -> None:
        check_sampler(sampler)
        self.pyramid = check_pyramid(pyramid, timesteps)
        extra = extra_channels(self.pyramid, 2)
        if sampling_steps is not None and sampling_steps < 1:
            raise ArgumentError("sampling_steps", f"must be >= 1 or null, got {sampling_steps}",
                                "use null for every step of the chain (the paper's 1000-step ancestral sampling)")
        if not 0 < fov_radius <= 1:
            raise ArgumentError("fov_radius", f"must lie in (0, 1], got {fov_radius}",
                                f"give the FOV radius as a fraction of the image width (default {FOV_RADIUS})")
        if net not in RETINAL_NETS:
            raise ArgumentError("net", f"unknown net {net!r}", f"choose one of {', '.join(RETINAL_NETS)} "
                                "(paper: light_unet)")
        ch = tuple(RETINAL_NETS[net] if channels is None else channels)
        if len(ch) < 2 or any(int(c) < 1 for c in ch):
            raise ArgumentError("channels", f"needs two or more positive widths, got {list(ch)}",
                                "e.g. [64, 128, 256] (light_unet: input width and one per down stage)")
        if net == "light_unet":
            if lsa_heads < 1 or any(int(c) * attention_patch**2 % lsa_heads for c in ch[1:]):
                raise ArgumentError("lsa_heads", f"{lsa_heads} heads do not split the attention widths "
                                    f"{[int(c) * attention_patch**2 for c in ch[1:]]}",
                                    "choose a head count dividing every down-stage width")
            if attention_patch < 1:
                raise ArgumentError("attention_patch", f"must be >= 1, got {attention_patch}",
                                    "use 1 (one token per pixel) or a small patch size such as 2")
            self.unet = LightUNet(data_channels + extra, data_channels, ch, cond_channels=cond_channels,
                                  heads=lsa_heads, attention_patch=attention_patch, norm_num_groups=norm_num_groups)
        else:
            levels = (False,) * (len(ch) - 1) + (True,) if attention_levels is None else tuple(attention_levels)
            if len(levels) != len(ch):
                raise ArgumentError("attention_levels", f"{len(levels)} values for {len(ch)} levels",
                                    "give one attention flag per entry of channels")
            self.unet = ConditionedUNet(2, data_channels + extra, data_channels, ch, levels, num_res_blocks,
                                        num_head_channels, norm_num_groups, cond_channels=cond_channels)
        self.schedule = retinal_schedule(schedule, timesteps)
        self.sampler, self.sampling_steps, self.fov_radius = sampler, sampling_steps, float(fov_radius)

    @property
    def denoiser(self) -> LightUNet | ConditionedUNet:
        return self.unet

    @property
    def size_multiple(self) -> int:
        m = self.unet.size_multiple
        return m if self.pyramid is None else pyramid_size_multiple(m, self.pyramid[0])

    def _check_size(self, x: Tensor, where: str) -> None:
        m = self.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise DataError(where, f"size {tuple(x.shape[-2:])} is not a multiple of {m} (the UNet's downsampling)",
                            f"use image sizes that are multiples of {m} (data.init_args.resize)")

    def _draw(self, shape: tuple[int, ...], n: int, sampler: str | None, steps: int | None, generator: GeneratorLike,
              progress: bool, device: torch.device, cond: Tensor | None = None) -> Tensor:
        """(B, n, C, H, W) clipped samples (x0 in [-1, 1])."""
        net = self.unet
        name = sampler if sampler is not None else self.sampler
        steps = steps if steps is not None else self.sampling_steps
        if self.pyramid is not None:  # unconditional only (the mask model)
            out = pyramid_draw(net, shape, self.schedule, self.pyramid, n_samples=n, sampler=name, steps=steps,
                               generator=generator, device=device, clip=True)
            return out.transpose(0, 1)
        if cond is None:
            denoise = net
        else:
            rep = repeat_batch(cond, n)
            def denoise(x: Tensor, t: Tensor) -> Tensor:
                return net(x, t, cond=rep)
        out = sample_n(denoise, shape, self.schedule, n_samples=n, sampler=name, steps=steps, device=device,
                       generator=generator, progress=progress, clip=True)
        return out.transpose(0, 1)


class RetinalMaskDDPM(_RetinalDDPM):
    """Unconditional vessel-tree DDPM (1 channel); see the module notes. Trains on ``label`` (vessel masks,
    {0, 1}); ``predict`` returns ``prediction`` (B, 1, H, W) binary masks (the first sample), ``samples``
    (B, n, 1, H, W) and ``fov``."""

    name = "retinal_mask_ddpm"
    task = "seg"
    input_key = LABEL  # only its count and size are used: the model is unconditional
    target_key = LABEL
    in_channels = out_channels = 1
    outputs = ("prediction",)

    def __init__(
        self,
        net: str = "light_unet",
        channels: Sequence[int] | None = None,
        attention_levels: Sequence[bool] | None = None,
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 8,
        lsa_heads: int = 4,
        attention_patch: int = 1,
        timesteps: int = 1000,
        schedule: str = "linear",
        sampler: str = "ddpm",
        sampling_steps: int | None = None,
        fov_radius: float = FOV_RADIUS,
        pyramid: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._setup(data_channels=1, cond_channels=0, pyramid=pyramid, net=net, channels=channels,
                    attention_levels=attention_levels, num_res_blocks=num_res_blocks,
                    num_head_channels=num_head_channels, norm_num_groups=norm_num_groups, lsa_heads=lsa_heads,
                    attention_patch=attention_patch, timesteps=timesteps, schedule=schedule, sampler=sampler,
                    sampling_steps=sampling_steps, fov_radius=fov_radius)

    def _shape_source(self, batch: Mapping[str, Any]) -> Tensor:
        for key in (LABEL, FOV, IMAGE):
            x = batch.get(key)
            if isinstance(x, Tensor):
                if x.ndim != 4:
                    raise DataError("batch", f"{key} has shape {tuple(x.shape)}; expected (B, C, H, W)",
                                    "pass 2-D images with batch and channel axes")
                self._check_size(x, key)
                return x
        raise DataError("batch", "the mask model takes the count and size of the masks to draw from batch['label'] "
                        "(or 'fov')", "pass e.g. {'label': torch.zeros(n, 1, H, W)}")

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        label = batch.get(LABEL)
        if not isinstance(label, Tensor):
            raise DataError("batch", "the mask DDPM trains on batch['label'] (vessel masks)",
                            "use a data module that provides vessel masks")
        self.check_input(label, "label")
        self._check_size(label, "label")
        fov = _fov_of(batch, label, self.fov_radius)
        x0 = torch.where(fov & (label > 0.5), 1.0, -1.0).to(label.dtype)
        if self.pyramid is not None:
            def objective(model: Any, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
                return mse_l1_eps_loss(model, self.schedule, x, generator)
            return pyramid_loss(objective, self.pyramid[0], self.unet, x0, generator)
        return mse_l1_eps_loss(self.unet, self.schedule, x0, generator)

    def pair_refusal(self) -> ArgumentError | None:
        return no_diffusion_pair(self, "pyramid") if self.pyramid is not None else super().pair_refusal()

    def diffusion_pair(self, batch: dict[str, Any]) -> DiffusionPair:
        """The (unconditional) mask UNet and the batch's masks in {-1, 1} (vessel inside the FOV)."""
        if (err := self.pair_refusal()) is not None:
            raise err
        label = batch.get(LABEL)
        if not isinstance(label, Tensor):
            raise DataError("batch", "the mask DDPM's diffusion pair needs batch['label'] (vessel masks)",
                            "use a data module that provides vessel masks")
        self.check_input(label, "label")
        self._check_size(label, "label")
        fov = _fov_of(batch, label, self.fov_radius)
        x0 = torch.where(fov & (label > 0.5), 1.0, -1.0).to(label.dtype)
        return DiffusionPair(self.unet, x0, "eps", {"clip": True})

    @torch.no_grad()
    def predict(self, batch: dict[str, Any], *, sampler: str | None = None, steps: int | None = None,
                n_samples: int | None = None, generator: GeneratorLike = None,
                progress: bool = False) -> dict[str, Tensor]:
        ref = self._shape_source(batch)
        n = 1 if n_samples is None else int(n_samples)
        fov = _fov_of(batch, ref, self.fov_radius)
        b, h, w = ref.shape[0], ref.shape[-2], ref.shape[-1]
        x = self._draw((b, 1, h, w), n, sampler, steps, generator, progress, ref.device)
        samples = ((x > 0) & fov[:, None]).float()
        return {"prediction": samples[:, 0], "samples": samples, "fov": fov.float()}

    def validation_metrics(self, batch: Mapping[str, Any], out: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``vessel_fraction`` of the drawn masks inside the FOV and ``fraction_score`` = 1 - |f - f_ref| / f_ref
        (clipped to [0, 1]) against the batch's masks: unconditional draws have no pixel-wise reference."""
        fov = out["fov"] > 0.5
        got = (out["prediction"] > 0.5)[fov].float().mean()
        ref = batch.get(LABEL)
        metrics = {"vessel_fraction": got}
        if isinstance(ref, Tensor):
            want = (ref > 0.5)[fov].float().mean().clamp(min=1e-6)
            metrics["fraction_score"] = (1 - (got - want).abs() / want).clamp(0, 1)
        return metrics


class RetinalImageDDPM(_RetinalDDPM):
    """Mask-conditioned fundus DDPM: x_t (3) concatenated with the vessel mask (1), 3-channel eps; see the module
    notes. Trains on ``image`` (RGB in [-1, 1]) and ``label`` (vessel masks, {0, 1}); ``predict`` paints
    ``prediction`` (B, 3, H, W) in [-1, 1] (black outside the FOV; the first sample), ``samples`` and ``fov``."""

    name = "retinal_image_ddpm"
    task = "image"
    input_key = LABEL
    target_key = IMAGE
    in_channels = 1
    out_channels = 3
    outputs = ("prediction",)
    data_space = ("prediction",)

    def __init__(
        self,
        net: str = "light_unet",
        channels: Sequence[int] | None = None,
        attention_levels: Sequence[bool] | None = None,
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 8,
        lsa_heads: int = 4,
        attention_patch: int = 1,
        timesteps: int = 1000,
        schedule: str = "linear",
        sampler: str = "ddpm",
        sampling_steps: int | None = None,
        fov_radius: float = FOV_RADIUS,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        if image_channels < 1:
            raise ArgumentError("image_channels", f"must be >= 1, got {image_channels}", "use 3 for RGB fundus images")
        self.out_channels = int(image_channels)
        self._setup(data_channels=self.out_channels, cond_channels=1, net=net, channels=channels,
                    attention_levels=attention_levels, num_res_blocks=num_res_blocks,
                    num_head_channels=num_head_channels, norm_num_groups=norm_num_groups, lsa_heads=lsa_heads,
                    attention_patch=attention_patch, timesteps=timesteps, schedule=schedule, sampler=sampler,
                    sampling_steps=sampling_steps, fov_radius=fov_radius)

    def _mask(self, batch: Mapping[str, Any]) -> Tensor:
        label = batch.get(LABEL)
        if not isinstance(label, Tensor):
            raise DataError("batch", "the image DDPM is conditioned on batch['label'] (a vessel mask)",
                            "pass the vessel masks to paint images for")
        self.check_input(label, "label")
        self._check_size(label, "label")
        if not torch.isfinite(label).all():
            raise DataError("label", "holds NaN or Inf values", "pass binary vessel masks ({0, 1})")
        return label

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        label = self._mask(batch)
        image = batch.get(IMAGE)
        if not isinstance(image, Tensor) or image.shape[1] != self.out_channels or image.shape[2:] != label.shape[2:]:
            got = tuple(image.shape) if isinstance(image, Tensor) else None
            raise DataError("batch", f"the image DDPM trains on batch['image'] with {self.out_channels} channels on "
                            f"the mask's grid {tuple(label.shape[2:])}, got {got}", "use RGB images (channels: rgb)")
        fov = _fov_of(batch, label, self.fov_radius)
        x0 = torch.where(fov, image, -1.0)
        cond = torch.where(fov & (label > 0.5), 1.0, -1.0).to(image.dtype)
        return mse_l1_eps_loss(self.unet, self.schedule, x0, generator, cond=cond)

    def diffusion_pair(self, batch: dict[str, Any]) -> DiffusionPair:
        """The mask-conditioned image UNet and the batch's images (background -1 outside the FOV)."""
        label = self._mask(batch)
        image = batch.get(IMAGE)
        if not isinstance(image, Tensor) or image.shape[1] != self.out_channels or image.shape[2:] != label.shape[2:]:
            got = tuple(image.shape) if isinstance(image, Tensor) else None
            raise DataError("batch", f"the image DDPM needs batch['image'] with {self.out_channels} channels on "
                            f"the mask's grid {tuple(label.shape[2:])}, got {got}", "use RGB images (channels: rgb)")
        fov = _fov_of(batch, label, self.fov_radius)
        x0 = torch.where(fov, image, -1.0)
        cond = torch.where(fov & (label > 0.5), 1.0, -1.0).to(image.dtype)
        return DiffusionPair(lambda x, t: self.unet(x, t, cond=cond), x0, "eps", {"clip": True})

    @torch.no_grad()
    def predict(self, batch: dict[str, Any], *, sampler: str | None = None, steps: int | None = None,
                n_samples: int | None = None, generator: GeneratorLike = None,
                progress: bool = False) -> dict[str, Tensor]:
        label = self._mask(batch)
        n = 1 if n_samples is None else int(n_samples)
        fov = _fov_of(batch, label, self.fov_radius)
        cond = torch.where(fov & (label > 0.5), 1.0, -1.0).to(label.dtype)
        b, h, w = label.shape[0], label.shape[-2], label.shape[-1]
        x = self._draw((b, self.out_channels, h, w), n, sampler, steps, generator, progress, label.device, cond)
        samples = torch.where(fov[:, None], x, -1.0)
        return {"prediction": samples[:, 0], "samples": samples, "fov": fov.float()}

    def validation_metrics(self, batch: Mapping[str, Any], out: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``psnr`` against the real image of the same mask (model space, data range 2, capped at 100 dB) and
        ``vessel_contrast``: mean brightness inside the FOV off the vessels minus on them (> 0: vessels darker)."""
        pred = out["prediction"].float()
        fov = out["fov"] > 0.5
        vessel = (batch[LABEL] > 0.5) & fov
        grey = pred.mean(1, keepdim=True)
        on, off = grey[vessel], grey[fov & ~vessel]
        contrast = (off.mean() - on.mean()) if on.numel() and off.numel() else torch.zeros((), device=pred.device)
        metrics = {"vessel_contrast": contrast}
        ref = batch.get(IMAGE)
        if isinstance(ref, Tensor) and ref.shape == pred.shape:
            metrics["psnr"] = psnr(pred, ref.float(), data_range=2.0).clamp(max=PSNR_CAP_DB).float().mean()
        return metrics
