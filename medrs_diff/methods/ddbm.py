"""DDBM (Zhou, Lou, Khanna, Ermon; ICLR 2024) as a method: paired image-to-image translation with a diffusion bridge.

The bridge (:mod:`medrs_diff.diffusion.bridge`) is pinned at ``x_T = y`` (the condition) and ends at the
target ``x_0`` (``image``): ``q(x_t | x_0, y) = N(a_t y + b_t x_0, c_t I)``. The net is the project's
:class:`~medrs_diff.nets.unet.ConditionedUNet` called as ``F(c_in x_t, c_noise, cond)`` with the condition
concatenated as channels, inside DDBM's EDM-style preconditioning ``D = c_skip x_t + c_out F``; the loss is
bridge score matching (:class:`~medrs_diff.diffusion.bridge.BridgeLoss`, weight ``1 / c_out^2``);
``predict`` runs DDBM's hybrid sampler (:func:`~medrs_diff.diffusion.bridge.ddbm_sample`: Heun ODE steps,
each preceded by an Euler-Maruyama SDE step over ``churn_step_ratio`` of the interval) from ``x_T = y``.

Paper defaults (``bridge``): **VP** ``beta_d = 2``, ``beta_min = 0.1``, t in (1e-4, 1]; **VE**
``sigma_max = 80``, ``sigma_min = 0.002``; both ``sigma_data = 0.5``, ``cov_xy = 0``, 40 steps on the Karras
grid (rho = 7), churn ratio 0.33 (NFE 118), guidance w = 1, denoised estimates clipped to [-1, 1].
``c_noise = log(t) / 4`` is fed to the UNet's sinusoidal time embedding times 1000, as DDBM's code
(ADM convention) rescales it.

The endpoint ``y`` must have the target's channels (``endpoint``):

- ``"select"`` (the paper: pin at the condition image itself): ``y = cond[:, endpoint_channels]``, e.g.
  the cloudy S2 bands of an [S1, cloudy S2] input; the whole ``cond`` (S1 included) is still concatenated
  to the net's input.
- ``"project"`` (a deviation, for inputs of another modality and channel count, SAR -> optical): ``y`` is a
  learned 1x1 convolution of ``cond`` trained jointly with the bridge loss. The bridge theory holds for
  any fixed map; training the map with the denoiser moves the start point towards what the condition
  predicts linearly, per pixel.

Ensembles: ``n_samples`` chains per input (sample-major batch); ``prediction`` is their mean and
``uncertainty`` their per-pixel standard deviation (model space; 0 with one chain). ``sampler`` names of
the shared registry do not apply: DDBM has its own sampler, and ``steps`` sets its number of steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..data import keys as K
from ..diffusion.bridge import BridgeLoss, BridgePreconditioner, BridgeProcess, ddbm_sample
from ..diffusion.generators import GeneratorLike
from ..diffusion.process import check_spatial
from ..errors import ArgumentError, DataError
from ..nets.unet import ConditionedUNet
from ._sampling import repeat_batch
from .base import Method

#: DDBM's code rescales c_noise = log(t) / 4 by 1000 before the ADM sinusoidal embedding.
NOISE_EMBED_SCALE = 1000.0


class DDBM(Method):
    """Paired translation ``cond`` (B, C_in, H, W) -> ``image`` (B, C_out, H, W) by a VP or VE diffusion bridge."""

    name = "ddbm"
    task = "spectral"
    input_key = K.COND
    target_key = K.IMAGE
    outputs = ("prediction", "uncertainty")
    data_space = ("prediction",)

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 4,
        endpoint: str = "project",
        endpoint_channels: Sequence[int] | None = None,
        bridge: str = "vp",
        sigma_max: float | None = None,
        sigma_min: float | None = None,
        beta_d: float = 2.0,
        beta_min: float = 0.1,
        sigma_data: float = 0.5,
        sigma_data_end: float | None = None,
        cov_xy: float = 0.0,
        channels: Sequence[int] = (64, 128, 256, 256),
        attention_levels: Sequence[bool] = (False, False, True, True),
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        sampling_steps: int = 40,
        churn_step_ratio: float = 0.33,
        rho: float = 7.0,
        guidance: float = 1.0,
        n_samples: int = 1,
        rgb: Sequence[int] = (0, 1, 2),
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ArgumentError("in_channels / out_channels", f"must be >= 1, got {in_channels}, {out_channels}",
                                "give the input's and the target's channel counts")
        if bridge not in ("vp", "ve"):
            raise ArgumentError("bridge", f"unknown bridge {bridge!r}", "use vp or ve (DDBM's two bridges)")
        if endpoint not in ("select", "project"):
            raise ArgumentError("endpoint", f"unknown endpoint map {endpoint!r}",
                                "use select (pin at condition channels) or project (learned 1x1 map)")
        if endpoint == "select":
            idx = list(range(out_channels)) if endpoint_channels is None else [int(c) for c in endpoint_channels]
            if len(idx) != out_channels or any(not 0 <= c < in_channels for c in idx):
                raise ArgumentError("endpoint_channels", f"{idx} are not {out_channels} input channel indices below "
                                    f"{in_channels}", "list one input channel per target channel, e.g. [2, 3, 4, 5], "
                                    "or use endpoint: project")
            self.endpoint_channels: list[int] | None = idx
            self.project = None
        else:
            if endpoint_channels is not None:
                raise ArgumentError("endpoint_channels", "applies to endpoint: select only", "drop it, or use select")
            self.endpoint_channels = None
            self.project = nn.Conv2d(in_channels, out_channels, 1)
        if isinstance(sampling_steps, bool) or int(sampling_steps) != sampling_steps or sampling_steps < 1:
            raise ArgumentError("sampling_steps", f"must be an integer >= 1, got {sampling_steps!r}", "use e.g. 40")
        if not 0 <= churn_step_ratio < 1:
            raise ArgumentError("churn_step_ratio", f"must lie in [0, 1), got {churn_step_ratio}",
                                "use 0.33 (the paper's), or 0 for the deterministic ODE")
        if n_samples < 1:
            raise ArgumentError("n_samples", f"must be >= 1, got {n_samples}", "use 1, or more for an uncertainty")
        if len(rgb) != 3 or any(not 0 <= c < out_channels for c in rgb):
            raise ArgumentError("rgb", f"{list(rgb)} are not 3 target channel indices below {out_channels}",
                                "e.g. [0, 1, 2]")
        if not (sigma_data > 0 and (sigma_data_end is None or sigma_data_end > 0)):
            raise ArgumentError("sigma_data / sigma_data_end", "must be > 0", "use 0.5 (the paper's)")
        try:
            self.process = BridgeProcess(bridge, t_max=sigma_max, t_min=sigma_min, beta_d=beta_d, beta_min=beta_min)
        except ValueError as err:
            raise ArgumentError("sigma_max / sigma_min / beta_d / beta_min", str(err),
                                "leave them unset for the paper's defaults") from err
        self.precond = BridgePreconditioner(self.process, sigma_data, sigma_data_end, cov_xy)
        self.objective = BridgeLoss(self.precond)
        self.in_channels, self.out_channels, self.spatial_dims = int(in_channels), int(out_channels), 2
        self.unet = ConditionedUNet(2, out_channels, out_channels, channels, attention_levels, num_res_blocks,
                                    num_head_channels, norm_num_groups, cond_channels=in_channels)
        self.sampling_steps, self.churn_step_ratio = int(sampling_steps), float(churn_step_ratio)
        self.rho, self.guidance, self.n_samples = float(rho), float(guidance), int(n_samples)
        self.rgb = [int(c) for c in rgb]

    @property
    def denoiser(self) -> ConditionedUNet:
        return self.unet

    @property
    def size_multiple(self) -> int:
        return self.unet.size_multiple

    def fast_path_target(self) -> nn.Module:
        return self.unet

    # -- pieces ---------------------------------------------------------------------------------------
    def endpoint(self, cond: Tensor) -> Tensor:
        """The bridge's start ``x_T = y`` on the target's channels (see the module notes)."""
        if self.project is not None:
            return self.project(cond)
        return cond[:, self.endpoint_channels]

    def denoise_fn(self, cond: Tensor) -> Any:
        """``D(x_t, t, y)`` with ``cond`` (already repeated to the chains' batch) concatenated to the net input."""
        return self.precond.denoiser(lambda x, c_noise, y: self.unet(x, NOISE_EMBED_SCALE * c_noise, cond=cond))

    def _inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        cond = batch[self.input_key]
        check_spatial(cond, "cond")
        self.check_input(cond, "cond")
        if not bool(torch.isfinite(cond).all()):
            raise DataError("cond", "holds NaN or inf", "fill nodata before translation")
        target = batch.get(self.target_key)
        if target is not None:
            want = (cond.shape[0], self.out_channels, *cond.shape[2:])
            if tuple(target.shape) != want:
                raise DataError("image", f"target {tuple(target.shape)} does not match {want} (batch, the model's "
                                f"{self.out_channels} output channel(s), the input's size)",
                                "pair each input with a target of the model's bands on the same grid")
        return cond, target

    # -- contract -------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        cond, x0 = self._inputs(batch)
        if x0 is None:
            raise DataError("batch", "DDBM training needs batch['image'] (the target)",
                            "use a paired data module (Sar2OptDataModule, CloudPairDataModule)")
        y = self.endpoint(cond)
        net = lambda x, c_noise, _y: self.unet(x, NOISE_EMBED_SCALE * c_noise, cond=cond)  # noqa: E731
        return self.objective(net, x0, y, generator=generator)

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
        """``prediction`` (mean of ``n_samples`` bridge chains) and ``uncertainty`` (their std), model space."""
        cond, _ = self._inputs(batch)
        n = self.n_samples if n_samples is None else int(n_samples)
        if n < 1:
            raise ArgumentError("n_samples", f"must be >= 1, got {n}", "draw at least one sample")
        k = self.sampling_steps if steps is None else steps
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ArgumentError("steps", f"must be an integer >= 1, got {k!r}", "give e.g. 40 bridge steps")
        cond_n = repeat_batch(cond, n)
        out, _ = ddbm_sample(self.denoise_fn(cond_n), self.endpoint(cond_n), self.process, steps=int(k),
                             churn_step_ratio=self.churn_step_ratio, rho=self.rho, guidance=self.guidance, clip=True,
                             generator=generator)
        out = out.clamp(-1, 1).reshape(n, *cond.shape[:1], *out.shape[1:])
        pred = out.mean(0)
        unc = out.std(0, unbiased=False) if n > 1 else torch.zeros_like(pred)
        return {"prediction": pred, "uncertainty": unc}

    def panel_columns(self, batch: dict[str, Any], out: dict[str, Tensor]) -> tuple[dict[str, Tensor], tuple[str, ...]]:
        """RGB (``rgb`` target channels) of the bridge start x_T = y, the prediction and the reference."""
        with torch.no_grad():
            cols = {"start x_T": self.endpoint(batch[K.COND])[:, self.rgb],
                    "prediction": out["prediction"][:, self.rgb]}
        if isinstance(batch.get(self.target_key), Tensor):
            cols["reference"] = batch[self.target_key][:, self.rgb]
        return cols, ("start x_T", "prediction", "reference")


__all__ = ["DDBM", "NOISE_EMBED_SCALE"]
