"""The diffusion nowcast beside the pysteps baselines: train it on a radar sequence (plain loop, CPU-sized) and
forecast mm/h DataArrays in the baselines' layout.

:func:`fit_nowcast` trains a :class:`~medrs_diff.methods.NowcastDiffusion` on (past, future) windows of one
model-space sequence (window starts given, e.g. the training windows of a split by time) with Adam
(DD-GAN's betas 0.5, 0.9), linear warm-up, batches of whole windows drawn by a seeded generator.
:func:`diffusion_nowcast` forecasts from a (time, y, x) mm/h past sequence: averaged ``factor`` x ``factor``
to the model's grid, mapped to log-rain model space, sampled (``members`` members), mapped back to mm/h and
brought back to the input grid by nearest-neighbour repetition; returns (member, lead, y, x) with
``time`` = last input + lead x step and ``attrs["seconds"]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import xarray as xr

from ..data.radar_sequence import model_to_rain, rain_to_model
from ..errors import ArgumentError, DataError
from ..methods.nowcast_diffusion import NowcastDiffusion


def fit_nowcast(method: NowcastDiffusion, seq: np.ndarray, starts: Sequence[int], steps: int, batch_size: int = 4,
                lr: float = 5e-4, warmup: int = 50, seed: int = 0,
                log: Callable[[str], None] | None = None, log_every: int = 50) -> list[float]:
    """Train ``method`` on windows of ``seq`` (T, H, W) model space starting at ``starts``; returns the losses."""
    if steps < 0 or batch_size < 1 or not starts:
        raise ArgumentError("fit_nowcast", f"steps {steps}, batch_size {batch_size}, {len(starts)} windows",
                            "give steps >= 0, batch_size >= 1 and at least one training window")
    n, m = method.past_frames, method.future_frames
    if max(starts) + n + m > seq.shape[0]:
        raise DataError("fit_nowcast", f"window at {max(starts)} runs past the {seq.shape[0]} frames",
                        "give starts of windows inside the sequence")
    data = torch.from_numpy(np.ascontiguousarray(seq, dtype=np.float32))
    wins = torch.stack([data[s:s + n + m] for s in starts])[:, :, None]  # (W, n + m, 1, H, W)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(method.parameters(), lr=lr, betas=(0.5, 0.9))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / max(1, warmup)))
    method.train()
    losses = []
    t0 = time.perf_counter()
    for k in range(steps):
        idx = torch.randint(0, len(wins), (batch_size,), generator=g)
        loss, logs = method.loss({"cond": wins[idx, :n], "image": wins[idx, n:]}, generator=g)
        if not torch.isfinite(loss):
            raise DataError("fit_nowcast", f"loss is {float(loss)} at step {k}", "lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(method.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log is not None and (k % log_every == 0 or k == steps - 1):
            log(f"step {k}: " + ", ".join(f"{a} {float(v):.3f}" for a, v in logs.items())
                + f" ({time.perf_counter() - t0:.0f} s)")
    method.eval()
    return losses


def diffusion_nowcast(method: NowcastDiffusion, past: xr.DataArray, leads: Sequence[int], seed: int, members: int,
                      factor: int = 1, sampler: str | None = None, steps: int | None = None) -> xr.DataArray:
    """Ensemble forecast in mm/h (member, lead, y, x) on the grid of ``past`` (see the module notes)."""
    if list(leads) != list(range(1, len(leads) + 1)) or len(leads) > method.future_frames:
        raise ArgumentError("leads", f"{list(leads)[:3]}...: the model forecasts leads 1..{method.future_frames}",
                            f"ask for leads 1..k with k <= {method.future_frames}")
    t0 = time.perf_counter()
    h, w = past.sizes["y"], past.sizes["x"]
    if h % factor or w % factor:
        raise DataError("past", f"grid {h}x{w} is not divisible by factor {factor}", "crop it to a multiple")
    vals = np.nan_to_num(np.asarray(past.values, np.float64), nan=0.0)
    coarse = vals.reshape(vals.shape[0], h // factor, factor, w // factor, factor).mean((2, 4))
    x = torch.from_numpy(rain_to_model(coarse))[None, :, None]
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        out = method.predict({"cond": x}, sampler=sampler, steps=steps, n_samples=members, generator=g)
    mem = out["members"][0, :, : len(leads), 0].numpy()  # (K, L, h', w')
    rain = model_to_rain(mem).repeat(factor, axis=-2).repeat(factor, axis=-1).astype(np.float32)
    step = np.timedelta64(int(round(float(past.attrs["timestep_minutes"]) * 60)), "s")
    times = past["time"].values[-1] + np.asarray(leads) * step
    da = xr.DataArray(rain, dims=("member", "lead", "y", "x"),
                      coords={"lead": list(leads), "time": ("lead", times), "y": past["y"], "x": past["x"]},
                      attrs={**{k: v for k, v in past.attrs.items() if k != "files"}, "units": "mm/h"})
    da.attrs["seconds"] = time.perf_counter() - t0
    return da


__all__ = ["diffusion_nowcast", "fit_nowcast"]
