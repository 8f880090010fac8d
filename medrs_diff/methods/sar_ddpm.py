"""SAR-DDPM (Perera, Nair, Bandara, Patel; IEEE GRSL 2023): SAR despeckling with a conditional DDPM.

An eps-prediction DDPM generates the clean image x0 (``image``) with the speckled image (``cond``)
concatenated to x_t as an input channel of the UNet (SR3-style). T = 1000, linear schedule. Loss:
the paper's hybrid with learned sigma (IDDPM ``L_simple + 0.001 L_vlb``; the net outputs eps and the
variance interpolation weight) by default, ``learn_sigma=False`` for plain eps-MSE with fixed variance.

**Cycle spinning** at inference (the paper's defining step): the speckled input is circularly shifted
by every (dy, dx) on a ``cycle_shifts`` x ``cycle_shifts`` grid, each shifted copy is denoised, the
shift is undone exactly (``torch.roll`` back) and the results are averaged. The paper uses 3 x 3 = 9
shifts in 100-px steps on 256 x 256 tiles; here the step is ``shift_fraction`` (100/256) of the tile
side, so the same geometry scales to any tile. ``cycle_shifts=1`` switches it off.

Units: the method works in model space [-1, 1]; which SAR quantity that is (dB = log-intensity,
intensity or amplitude) is the data module's ``domain`` and ``scaling``, so predictions go back to the
input's units through ``data_space``. The recipes' default is dB (see
:mod:`medrs_diff.datamodules.speckle`).

``process: rddm`` (default ``ddpm``, the paper's) switches the chain to RDDM (Liu et al. CVPR 2024;
:mod:`medrs_diff.methods._rddm`): ``I_in`` is the speckled image, ``I_0`` the clean one; residual and noise are
diffused with separate schedules (``rddm_alpha``, ``rddm_beta2``, ``sum_scale``), the UNet (speckled image
concatenated, as before) returns residual and noise (2 channels, L1 on both), and each cycle-spinning chain
runs RDDM's sampler from ``I_in + betabar_T eps`` (``ddim``: eta 0, ``ddpm``: eta 1; ``sampling_steps`` null =
the paper's 10). The hybrid loss's learned sigma has no meaning there: ``learn_sigma`` must be false.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..diffusion.generators import GeneratorLike
from ..diffusion.process import DiffusionLoss, check_spatial
from ..diffusion.schedules import make_schedule
from ..errors import ArgumentError, DataError
from ..nets.unet import ConditionedUNet
from ._rddm import build_rddm, check_process, check_rddm_steps, rddm_eta, rddm_restore
from ._sampling import sample_n
from .base import DiffusionMethod, DiffusionPair, check_sampler, no_diffusion_pair

#: the paper's shift step (100 px) as a fraction of its tile side (256 px)
PAPER_SHIFT_FRACTION = 100 / 256


def spin_shifts(size: Sequence[int], cycle_shifts: int, shift_fraction: float = PAPER_SHIFT_FRACTION
                ) -> list[tuple[int, int]]:
    """The (dy, dx) circular shifts of cycle spinning on an (H, W) tile: a ``cycle_shifts``^2 grid, step
    ``round(shift_fraction * side)`` per axis ((0, 100, 200)^2 on 256 x 256 with the paper's values)."""
    if cycle_shifts < 1:
        raise ArgumentError("cycle_shifts", f"must be >= 1, got {cycle_shifts}",
                            "use 3 (the paper's 9 shifts) or 1 (off)")
    if not 0 < shift_fraction < 1:
        raise ArgumentError("shift_fraction", f"must lie in (0, 1), got {shift_fraction}", "use 100/256 (the paper)")
    steps = [round(shift_fraction * s) for s in size[-2:]]
    grid = range(cycle_shifts)
    return [(i * steps[0] % size[-2], j * steps[1] % size[-1]) for i in grid for j in grid]


def cycle_spin(denoise: Callable[[Tensor], Tensor], x: Tensor, shifts: Sequence[tuple[int, int]]) -> Tensor:
    """Mean over ``shifts`` of ``roll(denoise(roll(x, s)), -s)``; all shifted copies go through ``denoise`` as one
    batch (copy-major: rows ``k*B .. (k+1)*B`` are shift ``k``). The mean is taken in float64, so an identity
    ``denoise`` returns ``x`` bit for bit."""
    b = x.shape[0]
    rolled = torch.cat([torch.roll(x, s, dims=(-2, -1)) for s in shifts])
    out = denoise(rolled)
    back = [torch.roll(out[k * b:(k + 1) * b], (-s[0], -s[1]), dims=(-2, -1)) for k, s in enumerate(shifts)]
    return torch.stack(back).double().mean(0).to(out.dtype)  # float64 sum: identical copies average back exactly


class SARDDPM(DiffusionMethod):
    """Speckled SAR -> despeckled SAR (``cond`` -> ``image``), 2-D, one channel."""

    name = "sar_ddpm"
    task = "image"
    input_key = "cond"
    target_key = "image"
    outputs = ("prediction",)
    data_space = ("prediction",)

    def __init__(
        self,
        channels: Sequence[int] = (64, 128, 256, 256),
        attention_levels: Sequence[bool] = (False, False, True, True),
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        timesteps: int = 1000,
        schedule: str = "linear",
        learn_sigma: bool = True,
        cycle_shifts: int = 3,
        shift_fraction: float = PAPER_SHIFT_FRACTION,
        sampler: str = "ddpm",
        sampling_steps: int | None = None,
        process: str = "ddpm",
        rddm_alpha: str = "decreased",
        rddm_beta2: str = "increased",
        sum_scale: float = 0.01,
    ) -> None:
        super().__init__()
        check_sampler(sampler)
        spin_shifts((256, 256), cycle_shifts, shift_fraction)  # argument checks before building anything
        check_process(process)
        self.process = process
        if process == "rddm":
            if learn_sigma:
                raise ArgumentError("learn_sigma", "the hybrid loss's learned sigma does not apply under process: "
                                    "rddm (the net returns residual and noise)", "set learn_sigma: false")
            rddm_eta(sampler)
            self.rddm_schedule, self.rddm_objective = build_rddm(timesteps, rddm_alpha, rddm_beta2, sum_scale)
            check_rddm_steps(sampling_steps, self.rddm_schedule, "sampling_steps")
        self.in_channels = self.out_channels = 1
        self.spatial_dims = 2
        self.learn_sigma = bool(learn_sigma)
        out = 2 if self.learn_sigma or process == "rddm" else 1  # learned sigma, or RDDM's residual + noise
        self.unet = ConditionedUNet(2, 1, out, channels, attention_levels, num_res_blocks,
                                    num_head_channels, norm_num_groups, cond_channels=1)
        self.schedule = make_schedule(schedule, timesteps)
        self.variance = "learned" if self.learn_sigma else "fixed_small"
        self.objective = DiffusionLoss(self.schedule, prediction_type="eps", variance=self.variance, loss_type="mse")
        self.cycle_shifts, self.shift_fraction = int(cycle_shifts), float(shift_fraction)
        self.sampler, self.sampling_steps = sampler, sampling_steps

    @property
    def denoiser(self) -> ConditionedUNet:
        return self.unet

    @property
    def size_multiple(self) -> int:
        return self.unet.size_multiple

    def _inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        speckled = batch[self.input_key]
        check_spatial(speckled, "speckled image")
        self.check_input(speckled, "speckled image")
        if not bool(torch.isfinite(speckled).all()):
            raise DataError("speckled image", "holds NaN or inf", "fill or mask the scene's nodata before despeckling")
        clean = batch.get(self.target_key)
        if clean is not None and clean.shape != speckled.shape:
            raise DataError("batch", f"clean {tuple(clean.shape)} and speckled {tuple(speckled.shape)} differ in shape",
                            "pair each speckled image with its clean image on the same grid")
        return speckled, clean

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        speckled, clean = self._inputs(batch)
        if clean is None:
            raise DataError("batch", f"SAR-DDPM training needs batch[{self.target_key!r}] (the clean image)",
                            "use a data module that provides it (SpeckleDataModule)")
        if self.process == "rddm":
            return self.rddm_objective(lambda x, t: self.unet(x, t, cond=speckled), clean, speckled,
                                       generator=generator)
        return self.objective(lambda x, t: self.unet(x, t, cond=speckled), clean, generator=generator)

    def pair_refusal(self) -> ArgumentError | None:
        return no_diffusion_pair(self, "process: rddm") if self.process == "rddm" else super().pair_refusal()

    def diffusion_pair(self, batch: dict[str, Any]) -> DiffusionPair:
        """The speckle-conditioned UNet (eps channels only) and the clean image of a (speckled, clean) batch."""
        if (err := self.pair_refusal()) is not None:
            raise err
        speckled, clean = self._inputs(batch)
        if clean is None:
            raise DataError("batch", f"SAR-DDPM's diffusion pair needs batch[{self.target_key!r}] (the clean image)",
                            "use a data module that provides it (SpeckleDataModule)")
        net, c = self.unet, self.out_channels
        return DiffusionPair(lambda x, t: net(x, t, cond=speckled)[:, :c], clean, "eps", {"clip": True})

    def denoise(self, speckled: Tensor, *, sampler: str | None = None, steps: int | None = None,
                generator: GeneratorLike = None, progress: bool = False) -> Tensor:
        """One reverse chain per image of a (B, 1, H, W) batch in model space: the despeckled estimate."""
        name = sampler if sampler is not None else self.default_sampler
        net, c = self.unet, self.out_channels
        if self.process == "rddm":
            return rddm_restore(lambda x, t: net(x, t, cond=speckled), speckled, self.rddm_schedule, sampler=name,
                                steps=steps if steps is not None else self.sampling_steps, generator=generator)
        if self.learn_sigma and name != "ddpm":  # other samplers use a fixed variance: drop the sigma channel
            def fn(x: Tensor, t: Tensor) -> Tensor:
                return net(x, t, cond=speckled)[:, :c]
            kw: dict[str, Any] = {}
        else:
            def fn(x: Tensor, t: Tensor) -> Tensor:
                return net(x, t, cond=speckled)
            kw = {"variance": self.variance} if name == "ddpm" else {}
        out = sample_n(fn, tuple(speckled.shape), self.schedule, n_samples=1, sampler=name,
                       steps=steps if steps is not None else self.sampling_steps, device=speckled.device,
                       generator=generator, progress=progress, clip=True, **kw)
        return out[0].clamp(-1, 1)

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
        cycle_shifts: int | None = None,
    ) -> dict[str, Tensor]:
        """Despeckled ``prediction``: the cycle-spinning mean (``cycle_shifts``^2 shifted chains; ``n_samples`` is
        not used, the spins are the ensemble)."""
        speckled, _ = self._inputs(batch)
        if self.process == "rddm":  # argument checks before any compute
            rddm_eta(sampler if sampler is not None else self.default_sampler)
            check_rddm_steps(steps if steps is not None else self.sampling_steps, self.rddm_schedule)
        k = self.cycle_shifts if cycle_shifts is None else cycle_shifts
        shifts = spin_shifts(speckled.shape, k, self.shift_fraction)
        pred = cycle_spin(lambda x: self.denoise(x, sampler=sampler, steps=steps, generator=generator,
                                                 progress=progress), speckled, shifts)
        return {"prediction": pred}


__all__ = ["PAPER_SHIFT_FRACTION", "SARDDPM", "cycle_spin", "spin_shifts"]
