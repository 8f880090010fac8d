"""``medrs-diff quickstart``: the whole path on CPU in a few minutes.

1. SegDiff on synthetic 2-D NIfTI phantoms: ``fit`` with the packaged ``segdiff_phantom2d`` recipe,
   inference on held-out volumes with :class:`~medrs_diff.inference.Predictor` (fused mask, probability
   and uncertainty NIfTI on the input grid), :func:`~medrs_diff.evaluation.evaluate` (Dice, HD95).
2. TCDM x4 on real Sentinel-2 RGB from ``../shared/data/bigearthnet_s1_s2`` when present (its
   synthetic twin otherwise): ``fit``, inference on held-out LR GeoTIFFs (HR GeoTIFF + uncertainty on
   the finer map grid), evaluation (PSNR, SSIM, SAM) beside the bicubic and RRDB-regression baselines.
   TCDM's chain starts at t' = 10 of 100 from the pre-trained RRDB's estimate (SRDiff's residual
   diffusion started from pure noise needs far more than a CPU demo's steps to reach bicubic's PSNR);
   the summary says plainly whether it beat bicubic.

The report folder gets the metrics JSON and PNG panels (input / prediction / reference / uncertainty);
the terminal gets a short summary (Lightning's tips, warnings and per-step progress lines are hidden).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import io
from ..errors import DataError
from .lightning_cli import run_lightning

PathLike = str | os.PathLike


def shared_data() -> Path | None:
    """``../shared/data`` beside the project checkout (or beside the working directory), if present."""
    for base in (Path(__file__).resolve().parents[3], Path.cwd().resolve().parent):
        p = base / "shared" / "data"
        if (p / "bigearthnet_s1_s2").is_dir():
            return p
    return None


def _fit(recipe: str, overrides: list[str]) -> None:
    run_lightning(["fit", "--config", recipe, *overrides], info=False)


def _last_checkpoint(root: Path) -> Path:
    found = sorted(root.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise DataError(root, "no checkpoint was written under this folder", "check the fit log above")
    return found[-1]


def _read(path: Path) -> np.ndarray:
    return np.asarray(io.read(path).data, dtype=np.float32)


def segmentation_part(out: Path, steps: int, seed: int) -> dict[str, Any]:
    from ..datamodules import NiftiSegmentationDataModule
    from ..evaluation import evaluate
    from ..inference import Predictor
    from ..viz.panels import save_panel

    data, run_dir, ho = out / "data" / "phantom2d", out / "runs" / "segdiff", out / "heldout" / "seg"
    _fit("segdiff_phantom2d", ["--data.init_args.root", str(data), "--trainer.default_root_dir", str(run_dir),
                               "--trainer.max_steps", str(steps), "--seed_everything", str(seed)])
    dm = NiftiSegmentationDataModule(str(data), phantoms=24, phantom_size=[32, 32])
    records = dm.records()
    held = records[-max(1, round(len(records) * dm.val_fraction)):]  # the module's validation split
    for sub in ("images", "labels"):
        (ho / sub).mkdir(parents=True, exist_ok=True)
    for rec in held:
        case = Path(rec["image"]).name.replace("_image", "")
        shutil.copy(rec["image"], ho / "images" / case)
        shutil.copy(rec["label"], ho / "labels" / case)
    pred = out / "predictions" / "seg"
    predictor = Predictor.from_checkpoint(_last_checkpoint(run_dir))
    predictor.predict_files(ho / "images", pred, sampler="dpm_solver_pp", steps=20, n_samples=5, seed=seed,
                            progress=False)
    res = evaluate(pred, ho / "labels", "seg", out=out / "report" / "seg")
    names = sorted(p.name for p in (ho / "images").iterdir())
    cols = {k: torch.from_numpy(np.stack([_read(d / n) for n in names]))[:, None] for k, d in (
        ("input", ho / "images"), ("prediction", pred), ("reference", ho / "labels"),
        ("uncertainty", pred / "uncertainty"))}
    panel = save_panel(out / "report" / "segdiff_panel.png", cols, max_rows=4, title="SegDiff on NIfTI phantoms")
    return {"aggregate": res["aggregate"], "panel": str(panel), "cases": len(names)}


def _rrdb_regression(predictor: Any, lr_dn: torch.Tensor) -> torch.Tensor:
    """The SR output of the model's pre-trained RRDB (its LR encoder with the regression head), in DN."""
    from ..data.scaling import reflectance

    scale = int(predictor.method.scale)
    s = reflectance() if predictor.scaling in (None, "reflectance") else None
    if s is None:
        return torch.full_like(F.interpolate(lr_dn, scale_factor=scale), float("nan"))
    with torch.no_grad():
        return s.inverse(predictor.method.sr_head(s.forward(lr_dn, channel_axis=1)).clamp(-1, 1),
                         channel_axis=1).float()


#: The SR demo's model: TCDM x4 (its CTNG is SRDiff's pre-trained RRDB; the chain starts from that estimate at
#: t' = 10 of 100 and diffuses SRDiff's residual, rescaled x5 so Sentinel-2's small residuals reach unit scale).
SR_OVERRIDES = ["--model.init_args.method.init_args.scale", "4", "--data.init_args.phantom_scale", "4",
                "--data.init_args.patch_size", "32", "--model.init_args.method.init_args.res_rescale", "5.0",
                "--model.init_args.method.init_args.pretrain_steps", "{pretrain}"]


def super_resolution_part(out: Path, steps: int, seed: int) -> dict[str, Any]:
    """TCDM x4 (a diffusion chain started from the pre-trained RRDB's estimate) beside bicubic and the RRDB."""
    from ..evaluation import evaluate
    from ..inference import Predictor
    from ..metrics import psnr, ssim
    from ..viz.panels import save_panel

    shared = shared_data()
    real = shared is not None
    recipe = "tcdm_sentinel2_x8" if real else "tcdm_synthetic_x8"
    data, run_dir = out / "data" / ("s2_sr" if real else "sr_synthetic"), out / "runs" / "tcdm"
    overrides = ["--data.init_args.root", str(data), "--trainer.default_root_dir", str(run_dir),
                 "--trainer.max_steps", str(steps), "--seed_everything", str(seed),
                 "--trainer.val_check_interval", str(steps),
                 *(o.format(pretrain=steps // 2) for o in SR_OVERRIDES)]
    if real:
        overrides += ["--data.init_args.bigearthnet_root", str(shared / "bigearthnet_s1_s2")]
    _fit(recipe, overrides)
    hr_files = sorted((data / "hr").glob("*.tif"))
    lr_files = sorted((data / "lr").glob("*.tif"))
    n_val = max(1, round(len(hr_files) * 0.34))  # the recipe's val_fraction
    ho = out / "heldout" / "sr"
    for sub in ("lr", "hr"):
        (ho / sub).mkdir(parents=True, exist_ok=True)
    for h, lo in zip(hr_files[-n_val:], lr_files[-n_val:]):
        shutil.copy(h, ho / "hr" / h.name)
        shutil.copy(lo, ho / "lr" / h.name)  # same name so prediction and reference pair up
    pred = out / "predictions" / "sr"
    predictor = Predictor.from_checkpoint(_last_checkpoint(run_dir))
    predictor.predict_files(ho / "lr", pred, sampler="ddpm", n_samples=4, tile=32, seed=seed, progress=False)
    res = evaluate(pred, ho / "hr", "spectral", out=out / "report" / "sr", data_range=10000,
                   resolution_ratio=0.25)
    names = sorted(p.name for p in (ho / "hr").iterdir())
    lr = torch.from_numpy(np.stack([_read(ho / "lr" / n) for n in names]))
    hr = torch.from_numpy(np.stack([_read(ho / "hr" / n) for n in names]))
    sr = torch.from_numpy(np.stack([_read(pred / n) for n in names]))
    bicubic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(min=0)
    regression = _rrdb_regression(predictor, lr)
    crop = (..., slice(4, -4), slice(4, -4))  # border crop = scale (remote_sensing.md 11)
    compare = {name: {"psnr": float(psnr(x[crop], hr[crop], data_range=1e4).mean()),
                      "ssim": float(ssim(x[crop], hr[crop], data_range=1e4).mean())}
               for name, x in (("bicubic", bicubic), ("rrdb_regression", regression), ("tcdm", sr))}
    unc = torch.from_numpy(np.stack([_read(pred / "uncertainty" / n) for n in names]))
    vis = 1.0 / 3000.0  # reflectance x 1e4 -> display range
    panel = save_panel(out / "report" / "sr_panel.png", {
        "input": F.interpolate(lr, scale_factor=4, mode="nearest") * vis, "bicubic": bicubic * vis,
        "rrdb": regression * vis, "prediction": sr * vis, "reference": hr * vis, "uncertainty": unc,
    }, max_rows=4, title="TCDM x4 on " + ("Sentinel-2 (BigEarthNet)" if real else "synthetic GeoTIFF"))
    return {"data": "BigEarthNet Sentinel-2 B04/B03/B02" if real else "synthetic", "aggregate": res["aggregate"],
            "vs_baselines": compare, "panel": str(panel), "cases": len(names), "steps": steps,
            "train_scenes": len(hr_files) - n_val}


def sr_verdict(sr: dict[str, dict[str, float]], steps: int, train_scenes: int) -> str:
    """One plain sentence: whether the diffusion model beat bicubic on the held-out scenes, and by how much."""
    gain = sr["tcdm"]["psnr"] - sr["bicubic"]["psnr"]
    if gain >= 0:
        return f"TCDM is {gain:.2f} dB above bicubic on these held-out scenes."
    rrdb = sr["rrdb_regression"]["psnr"] - sr["bicubic"]["psnr"]
    return (f"TCDM is {-gain:.2f} dB BELOW bicubic on these held-out scenes (the RRDB regression it starts from: "
            f"{rrdb:+.2f} dB): tiny nets trained {steps} CPU steps on {train_scenes} scenes do not beat bicubic at "
            "x4 here; more scenes and steps are needed (evaluation/sr_table.py).")


def run_quickstart(out: PathLike, seed: int = 0, fast: bool = False) -> dict[str, Any]:
    """Train, infer and evaluate both methods into ``out`` (emptied first); prints a summary, returns the report."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)  # a fresh run each time: the folder holds only this quick start's outputs
    (out / "report").mkdir(parents=True)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"segdiff": segmentation_part(out, 20 if fast else 300, seed)}
    t1 = time.perf_counter()
    report["super_resolution"] = super_resolution_part(out, 20 if fast else 400, seed)
    t2 = time.perf_counter()
    report["seconds"] = {"segdiff": round(t1 - t0, 1), "super_resolution": round(t2 - t1, 1),
                         "total": round(t2 - t0, 1)}
    path = io.atomic_write_text(out / "report" / "metrics.json", json.dumps(report, indent=2, default=str) + "\n")
    seg = next(iter(report["segdiff"]["aggregate"].values()))
    part = report["super_resolution"]
    sr = part["vs_baselines"]
    print("\n=== medrs-diff quick start ===")
    print(f"SegDiff, {report['segdiff']['cases']} held-out NIfTI phantoms: Dice {seg['dice_mean']:.3f}  "
          f"IoU {seg['iou_mean']:.3f}  HD95 {seg['hd95_mm_mean']:.2f} mm")
    print(f"Super-resolution x4, {part['cases']} held-out scenes ({part['data']}), PSNR / SSIM:")
    for k, v in sr.items():
        print(f"  {k:<16} {v['psnr']:6.2f} dB / {v['ssim']:.3f}")
    print("  " + sr_verdict(sr, part["steps"], part["train_scenes"]))
    print("(tiny CPU models trained for a few hundred steps: a smoke run of the whole path, not a benchmark)")
    print(f"time: {report['seconds']}")
    print(f"report: {path.parent.resolve()}")
    return report
