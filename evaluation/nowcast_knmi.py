"""Nowcasting on the real KNMI composites (issue 18): pysteps baselines scored per lead time.

Data: the 92 consecutive 5-minute KNMI composites of 2010-08-26 (``../shared/data/radar_knmi/2010/08``), read
as mm/h by :func:`medrs_diff.data.radar_sequence.read_radar`. For a CPU-feasible run the 765x700 1-km grid
is **scored on rows 256:512, columns 256:512** (the 256x256 window fully inside radar range with the most
>= 1 mm/h rain in the first 60 frames; chosen on those frames only), kept at 1 km (``--factor 2`` averages
2x2). Forecasts are made on the larger box rows 192:576, columns 128:512 so that rain upwind of the scored
window (it moves about 8 km per 5 minutes eastward here) can be advected into it.

Split (issue 18): frames 0-59 are training / motion context, test windows come from frames 60-91 only:
``--past`` (4) past frames and ``--leads`` (12, i.e. 60 min) future frames, windows starting at frames
60, 62, ... (``--stride`` 2) up to the last that fits; no test frame is in a training window
(:func:`~medrs_diff.data.radar_sequence.split_windows`). The baselines need no training.

Scores per lead time, contingency tables and FSS sums accumulated over all test windows (ratios taken once):
CSI / POD / FAR / HSS at 0.5, 1, 5, 10 mm/h, FSS at 1 mm/h over 1, 4, 16 pixel neighbourhoods
(1, 4, 16 km at ``--factor 1``; and at 5 mm/h), CRPS of the STEPS ensemble (pooled over pixels, mm/h).
Deterministic scores of STEPS are those of its **ensemble mean** (row ``steps_mean``), kept apart from its
CRPS. Seconds per forecast: mean wall time of one forecast (all leads; all members for STEPS) on this CPU.

    OMP_NUM_THREADS=1 python evaluation/nowcast_knmi.py                    # writes evaluation/results/nowcast_knmi/
    python evaluation/nowcast_knmi.py --methods persistence extrapolation --members 4 --out-dir /tmp/nc

A new method adds an entry to ``FORECASTERS``: a function (past DataArray, leads, seed, members) -> mm/h
DataArray (lead, y, x) or (member, lead, y, x); it then gets its own row with ``--methods``.

``diffusion`` (the diffusion nowcast, :class:`~medrs_diff.methods.NowcastDiffusion`, DD-GAN 4 steps) is
**trained by this script on the training windows of frames 0-59 only** (every start, stride 1) on the
forecast box averaged ``--diffusion-factor`` x ``--diffusion-factor`` (8 km at the default 8), for
``--diffusion-train-steps`` steps (CPU-sized), then forecasts ``--members`` members per test window on that grid,
repeated back to the 1-km grid for scoring. ``--diffusion-checkpoint`` saves the trained weights there, or
loads them when the file exists (no retraining). Seconds per forecast of the same net with a DDPM chain
(1000 steps, timed on ``--ddpm-timing-steps`` and scaled) and DPM-Solver++ (20 steps) are timed on the first
window (untrained DDPM weights: timing only, no scores).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrs_diff.data.radar_sequence import read_radar, split_windows, window  # noqa: E402
from medrs_diff.errors import ArgumentError, MedrsError  # noqa: E402
from medrs_diff.evaluation.nowcast_baselines import nowcast  # noqa: E402
from medrs_diff.evaluation.nowcast_model import diffusion_nowcast, fit_nowcast  # noqa: E402
from medrs_diff.metrics import forecast as MF  # noqa: E402
from medrs_diff.metrics.crps import crps_sums, pooled_crps  # noqa: E402
from medrs_diff.metrics.spectrum import ralsd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "radar_knmi" / "2010" / "08"
CROP = (slice(256, 512), slice(256, 512))  # scored
CONTEXT = (slice(192, 576), slice(128, 512))  # forecast on this larger box so rain can flow into CROP
THRESHOLDS = (0.5, 1.0, 5.0, 10.0)
SCALES = (1, 4, 16)
CUT = 60


def _baseline(name: str, **fixed: Any) -> Callable[..., xr.DataArray]:
    def run(past: xr.DataArray, leads: list[int], seed: int, members: int) -> xr.DataArray:
        kw = {"n_members": members, "seed": seed} if name == "steps" else {}
        return nowcast(name, past, leads, **kw, **fixed)
    return run


_DIFFUSION: dict[str, Any] = {}  # the trained method and its grid factor, set by prepare_diffusion


def _diffusion(past: xr.DataArray, leads: list[int], seed: int, members: int) -> xr.DataArray:
    if "method" not in _DIFFUSION:
        raise ArgumentError("--methods diffusion", "the diffusion nowcast is not trained", "call prepare_diffusion")
    return diffusion_nowcast(_DIFFUSION["method"], past, leads, seed, members, factor=_DIFFUSION["factor"])


FORECASTERS: dict[str, Callable[..., xr.DataArray]] = {
    "persistence": _baseline("persistence"), "extrapolation": _baseline("extrapolation"),
    "sprog": _baseline("sprog"), "steps": _baseline("steps"), "diffusion": _diffusion}

#: the CPU-sized diffusion nowcast of this script (8-km grid: 48 x 48 on the forecast box, 4-px patches = 32 km)
DIFFUSION_NET = dict(patch_size=4, dim=48, depth=3, heads=4, disc_width=24, disc_depth=3)


def prepare_diffusion(da: xr.DataArray, past: int, leads: int, factor: int, steps: int, recon: float,
                      checkpoint: Path | None, seed: int) -> str:
    """Train (or load) the diffusion nowcast on the training windows of frames 0..CUT-1; returns a description."""
    import torch

    from medrs_diff.data.radar_sequence import rain_to_model
    from medrs_diff.methods import NowcastDiffusion

    torch.manual_seed(seed)
    method = NowcastDiffusion(past, leads, recon_weight=recon, **DIFFUSION_NET)
    train = split_windows(da.sizes["time"], past, leads, CUT, stride=1).train
    if checkpoint is not None and checkpoint.is_file():
        method.load_state_dict(torch.load(checkpoint, map_location="cpu"))
        how = f"loaded from {checkpoint.name}"
    else:
        v = np.nan_to_num(da.values[:CUT], nan=0.0)
        t, h, w = v.shape
        seq = rain_to_model(v.reshape(t, h // factor, factor, w // factor, factor).mean((2, 4)))
        t0 = time.perf_counter()
        fit_nowcast(method, seq, train, steps, batch_size=4, seed=seed, log=lambda m: print("diffusion " + m,
                                                                                              flush=True))
        how = f"trained {steps} steps in {time.perf_counter() - t0:.0f} s"
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save(method.state_dict(), checkpoint)
    method.eval()
    _DIFFUSION.update(method=method, factor=factor)
    return (f"Diffusion nowcast: DD-GAN, 4 large steps, spatiotemporal transformer ({DIFFUSION_NET}), x0 MSE "
            f"weight {recon:g} beside the adversarial loss, {len(train)} training windows (starts 0-{max(train)}, "
            f"frames < {CUT}) on the forecast box averaged {factor}x{factor} ({factor} km), batch 4; {how}; "
            f"forecasts repeated {factor}x{factor} back to 1 km for scoring.")


def time_chains(past: xr.DataArray, leads: list[int], members: int, factor: int, ddpm_steps: int
                ) -> dict[str, float]:
    """Seconds per forecast of the diffusion net under DDPM (1000 steps, timed on ``ddpm_steps`` and scaled) and
    DPM-Solver++ (20 steps): the same net built for eps prediction (untrained: timing only)."""
    import torch

    from medrs_diff.methods import NowcastDiffusion

    torch.manual_seed(0)
    ddpm = NowcastDiffusion(past.sizes["time"], len(leads), objective="ddpm", timesteps=1000, **DIFFUSION_NET).eval()
    out = {}
    for name, sampler, steps, scale in ((f"diffusion DDPM 1000 steps (timed on {ddpm_steps}, scaled)", "ddpm",
                                         ddpm_steps, 1000 / ddpm_steps),
                                        ("diffusion DPM-Solver++ 20 steps", "dpm_solver_pp", 20, 1.0)):
        t0 = time.perf_counter()
        diffusion_nowcast(ddpm, past, leads, 0, members, factor=factor, sampler=sampler, steps=steps)
        out[name] = (time.perf_counter() - t0) * scale
    return out


def load(folder: Path, factor: int = 1, box: tuple[slice, slice] = CONTEXT) -> xr.DataArray:
    """The KNMI sequence, cropped to ``box`` and averaged ``factor`` x ``factor``."""
    da = read_radar(folder)
    da = da.isel(y=box[0], x=box[1])
    out = da.coarsen(y=factor, x=factor).mean()
    out.attrs = dict(da.attrs)
    out.attrs.pop("files", None)
    return out


def score(forecasts: dict[str, list[xr.DataArray]], truths: list[np.ndarray], leads: list[int],
          thresholds=THRESHOLDS, scales=SCALES) -> dict[str, dict[str, list[float]]]:
    """Per method, per score name, one value per lead (tables / sums accumulated over the windows)."""
    obs = np.stack(truths)  # (W, L, H, W)
    out: dict[str, dict[str, list[float]]] = {}
    for name, fcs in forecasts.items():
        f = np.stack([fc.values for fc in fcs])
        ens = f.ndim == 5  # (W, member, L, H, W)
        det = f.mean(1) if ens else f
        res: dict[str, list[float]] = {}
        for li in range(len(leads)):
            cat = MF.categorical_scores(MF.contingency_table(det[:, li], obs[:, li], thresholds))
            for s in ("csi", "pod", "far", "hss"):
                for t, v in zip(thresholds, cat[s]):
                    res.setdefault(f"{s}@{t:g}", []).append(float(v))
            fss = MF.fss(det[:, li], obs[:, li], (1.0, 5.0), scales)
            for i, t in enumerate((1.0, 5.0)):
                for j, n in enumerate(scales):
                    res.setdefault(f"fss_{n}@{t:g}", []).append(float(fss[i, j]))
            res.setdefault("ralsd", []).append(_mean_ralsd(det[:, li], obs[:, li]))
        out[name + ("_mean" if ens else "")] = res
        if ens:  # ensemble scores on their own row: CRPS (plain and average-pooled), RALSD of one member
            sums = [crps_sums(f[:, :, li], obs[:, li]) for li in range(len(leads))]
            row = {"crps": [float(s.sum() / n.sum()) for s, n in sums],
                   "ralsd": [_mean_ralsd(f[:, 0, li], obs[:, li]) for li in range(len(leads))]}
            for k in [k for k in scales if 1 < k <= min(obs.shape[-2:])]:
                row[f"crps_avgpool{k}"] = [float(pooled_crps(f[:, :, li], obs[:, li], (k,))[k].mean())
                                           for li in range(len(leads))]
            out[name] = row
    return out


def _mean_ralsd(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean RALSD (dB) over the windows' fields with a defined spectrum (an all-dry field has none); pixels a
    forecast leaves undefined (NaN: advected in from outside the domain) count as dry, as for the other scores."""
    v = ralsd(np.nan_to_num(pred, nan=0.0), np.nan_to_num(ref, nan=0.0)).numpy()
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def write_table(scores: dict, seconds: dict, leads: list[int], step: float, out: Path, info: str) -> Path:
    minutes = [f"{int(lead * step)}" for lead in leads]
    lines = ["# Nowcasting on KNMI 2010-08-26 (issue 18): pysteps baselines and the diffusion nowcast", "", info, "",
             "| method | seconds per forecast |", "|---|---|"]
    lines += [f"| {m} | {s:.2f} |" for m, s in seconds.items()]
    keys = ["csi@0.5", "csi@1", "csi@5", "csi@10", "pod@1", "far@1", "hss@1", "fss_1@1", "fss_4@1", "fss_16@1",
            "fss_4@5", "ralsd", "crps", "crps_avgpool4", "crps_avgpool16"]
    for key in keys:
        rows = [(m, r[key]) for m, r in scores.items() if key in r]
        if not rows:
            continue
        lines += ["", f"## {key} per lead time (minutes)", "",
                  "| method | " + " | ".join(minutes) + " |", "|---" * (len(leads) + 1) + "|"]
        lines += [f"| {m} | " + " | ".join("nan" if np.isnan(v) else f"{v:.3f}" for v in vals) + " |"
                  for m, vals in rows]
    path = out / "nowcast_knmi.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_scores(scores: dict, leads: list[int], step: float, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["csi@1", "csi@5", "hss@1", "fss_4@1", "crps"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4))
    minutes = np.asarray(leads) * step
    for ax, key in zip(axes, keys):
        for m, r in scores.items():
            if key in r:  # one colour per method (steps and steps_mean share it)
                c = f"C{list(dict.fromkeys(k.removesuffix('_mean') for k in scores)).index(m.removesuffix('_mean'))}"
                ax.plot(minutes, r[key], marker="o", ms=3, label=m, color=c)
        ax.set_title(key + (" (mm/h)" if key == "crps" else "")), ax.set_xlabel("lead (min)"), ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "nowcast_knmi_scores.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_panel(past: xr.DataArray, truth: np.ndarray, fcs: dict[str, xr.DataArray], leads: list[int],
               show: list[int], step: float, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    rows = ["past", "truth", *fcs]
    fig, axes = plt.subplots(len(rows), len(show), figsize=(2.2 * len(show), 2.2 * len(rows)), squeeze=False)
    norm = LogNorm(0.1, 50)
    for r, row in enumerate(rows):
        for c, lead in enumerate(show):
            li = leads.index(lead)
            if row == "past":
                i = max(0, past.sizes["time"] - len(show) + c)
                img, title = past.values[i], f"t-{(past.sizes['time'] - 1 - i) * step:g} min"
            elif row == "truth":
                img, title = truth[li], f"truth +{lead * step:g}"
            else:
                v = fcs[row].values
                img, title = (v[0, li] if v.ndim == 4 else v[li]), f"{row} +{lead * step:g}"
            axes[r, c].imshow(np.where(img >= 0.1, img, np.nan), norm=norm, cmap="viridis")
            axes[r, c].set_title(title + (" (member 0)" if v_is_ens(fcs, row) else ""), fontsize=7)
            axes[r, c].axis("off")
    fig.tight_layout()
    path = out / "nowcast_knmi_panel.png"
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path


def v_is_ens(fcs: dict[str, xr.DataArray], row: str) -> bool:
    return row in fcs and fcs[row].ndim == 4


def truths_shape(inner: tuple[slice, slice]) -> str:
    return f"{inner[0].stop - inner[0].start}x{inner[1].stop - inner[1].start}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--methods", nargs="+", default=list(FORECASTERS))
    ap.add_argument("--past", type=int, default=4)
    ap.add_argument("--leads", type=int, default=12, help="number of 5-minute lead times")
    ap.add_argument("--stride", type=int, default=2, help="frames between test-window starts")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--factor", type=int, default=1, help="average factor x factor pixels of the crop")
    ap.add_argument("--diffusion-factor", type=int, default=8, help="grid averaging of the diffusion nowcast")
    ap.add_argument("--diffusion-train-steps", type=int, default=700, help="training steps of the diffusion nowcast")
    ap.add_argument("--diffusion-recon", type=float, default=1.0, help="x0 MSE weight beside the GAN loss")
    ap.add_argument("--diffusion-checkpoint", type=Path, default=None, help="save / load its trained weights")
    ap.add_argument("--ddpm-timing-steps", type=int, default=20, help="DDPM steps timed (scaled to 1000)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "evaluation" / "results" / "nowcast_knmi")
    a = ap.parse_args(argv)
    try:
        unknown = [m for m in a.methods if m not in FORECASTERS]
        if unknown:
            raise ArgumentError("--methods", f"unknown {unknown}", f"pick from {sorted(FORECASTERS)}")
        for name in ("past", "leads", "stride", "members", "factor", "diffusion_factor", "ddpm_timing_steps"):
            if getattr(a, name) < 1:
                raise ArgumentError(f"--{name.replace('_', '-')}", f"must be >= 1, got {getattr(a, name)}",
                                    "pass a positive integer")
        da = load(a.data, a.factor)
        split = split_windows(da.sizes["time"], a.past, a.leads, CUT, stride=a.stride)
    except MedrsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    leads = list(range(1, a.leads + 1))
    inner = tuple(slice((c.start - b.start) // a.factor, (c.stop - b.start) // a.factor) for c, b in zip(CROP, CONTEXT))
    step = float(da.attrs["timestep_minutes"])
    times = da["time"].values
    info = (f"Grid: forecasts made on rows 192:576, columns 128:512 of the 765x700 1-km KNMI grid (upwind "
            f"context), scored on rows 256:512, columns 256:512; averaged {a.factor}x{a.factor} (scored "
            f"{truths_shape(inner)} pixels of {a.factor} km). Frames 0-{CUT - 1} training/motion context "
            f"(unused by the baselines); {len(split.test)} test windows of {a.past} past + {a.leads} future "
            f"frames starting at frames {split.test} (first target {str(times[split.test[0] + a.past])[:16]}, "
            f"last {str(times[split.test[-1] + a.past + a.leads - 1])[:16]}). STEPS: {a.members} members, seed "
            f"{a.seed}; deterministic STEPS scores are of the ensemble mean (steps_mean). Motion: scikit-image "
            f"iterative Lucas-Kanade on 10 log10 R. Thresholds in mm/h, FSS scales in pixels of {a.factor} km. "
            f"Seconds on this 2-core CPU (shared), OMP_NUM_THREADS=1.")
    if "diffusion" in a.methods:
        try:
            if any(n % a.diffusion_factor for n in da.shape[1:]):
                raise ArgumentError("--diffusion-factor", f"{a.diffusion_factor} does not divide the grid "
                                    f"{da.shape[1:]}", "pick a divisor (4 at --factor 1)")
        except MedrsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        info += " " + prepare_diffusion(da, a.past, a.leads, a.diffusion_factor, a.diffusion_train_steps,
                                        a.diffusion_recon, a.diffusion_checkpoint, a.seed)
    print(info)
    forecasts: dict[str, list[xr.DataArray]] = {m: [] for m in a.methods}
    seconds: dict[str, float] = {}
    truths = []
    for k, s in enumerate(split.test):
        past, fut = window(da, s, a.past, a.leads)
        truths.append(fut.values[:, inner[0], inner[1]])
        for m in a.methods:
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # pysteps prints its progress
                fc = FORECASTERS[m](past, leads, a.seed + k, a.members)
            forecasts[m].append(fc.isel(y=inner[0], x=inner[1]))
            seconds[m] = seconds.get(m, 0.0) + (time.perf_counter() - t0) / len(split.test)
        print(f"window {s}: " + ", ".join(f"{m} {forecasts[m][-1].attrs.get('seconds', 0):.1f}s" for m in a.methods),
              flush=True)
    if "diffusion" in a.methods:
        past0, _ = window(da, split.test[0], a.past, a.leads)
        seconds.update(time_chains(past0, leads, a.members, a.diffusion_factor, a.ddpm_timing_steps))
    scores = score(forecasts, truths, leads)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    table = write_table(scores, seconds, leads, step, a.out_dir, info)
    plot_scores(scores, leads, step, a.out_dir)
    show = [lead for lead in (1, 3, 6, 12) if lead <= a.leads]
    past0, _ = window(da, split.test[0], a.past, a.leads)
    plot_panel(past0.isel(y=inner[0], x=inner[1]), truths[0], {m: forecasts[m][0] for m in a.methods}, leads,
               show, step, a.out_dir)
    print(table.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
