"""BC-DPM ablation on PET phantoms per dose fraction, and the real FLT slice restored by the phantom model.

For each dose fraction, four models train on the same 2-D phantom pairs (32 x 32, SUV, low dose simulated
on the fly by counts thinning with ``--counts`` counts per voxel per SUV) for the same ``--steps``: BC-DPM
with the spatial condition only (the spatial-only conditional DDPM), the diffusion-domain condition only
(an unconditional DDPM + the block), both, and the UNet regression baseline (L1, residual; also trained
``--baseline-steps`` steps, its own row, since a regression at 300 steps is far from converged). They are
scored with the low-dose input on ``--test`` held-out phantoms (seeds never trained on, fixed low-dose
draws), in SUV, inside the phantom's body mask:

- PSNR with the fixed data range 10 SUV (the model-space range of the ``pet`` scaling);
- SSIM (Gaussian window sigma 1.5, 11 taps, data range 10 SUV), mean over window centres in the body;
- NRMSE = RMSE / sqrt(mean(ref^2)) in the body (the ``euclidean`` normaliser);
- lesion SUVmax / SUVmean bias (%) against the noise-free full-dose phantom, mean over lesions
  (signed; mean |bias| in brackets).

Real slice: ``../shared/data/pet_tcia_slice/1.dcm`` (18F-FLT) in SUV from its header, 1/20 dose simulated
with the same counts per SUV (the slice's true counts are unknown), restored whole (168 x 168) by the
2-D models **trained on phantoms only** at 1/20; PSNR / SSIM / NRMSE in its body mask (threshold 5 % of
the 99th percentile) and the slice's SUVmax bias. Writes ``evaluation/results/bcdpm/README.md`` (tables)
and ``panel.png``.

Usage: OMP_NUM_THREADS=1 python evaluation/bcdpm_table.py [--steps 300] [--doses 0.25 0.1 0.05 0.02 0.01]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch

from medrs_diff.data.pet import body_mask, read_pet, simulate_low_dose
from medrs_diff.data.pet_phantoms import pet_phantom
from medrs_diff.data.scaling import pet_suv
from medrs_diff.datamodules.pet import PETDoseDataModule
from medrs_diff.methods import BCDPM, RegressionUNet
from medrs_diff.metrics import nrmse, psnr, ssim
from medrs_diff.train import EMA, DiffusionTask

OUT = Path(__file__).parent / "results" / "bcdpm"
REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pet_tcia_slice" / "1.dcm"
SUV_RANGE = 10.0
SCALING = pet_suv(SUV_RANGE)
NET = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, num_head_channels=16,
           norm_num_groups=8, timesteps=100)
ROWS = ["low-dose input", "UNet regression (L1)", "BC-DPM spatial only", "BC-DPM diffusion-domain only",
        "BC-DPM both"]
LONG = "UNet regression (L1), {} steps"


def make_models(baseline_steps: int) -> dict[str, tuple[Callable[[], torch.nn.Module], int | None]]:
    """name -> (builder, steps or None for the common ``--steps``); each model is built right after
    ``torch.manual_seed(0)``, so its initial weights do not depend on the models trained before it."""
    models: dict[str, tuple[Callable[[], torch.nn.Module], int | None]] = {
        "UNet regression (L1)": (lambda: RegressionUNet(channels=(16, 32, 64), num_res_units=1), None),
        "BC-DPM spatial only": (lambda: BCDPM(condition="spatial", **NET), None),
        "BC-DPM diffusion-domain only": (lambda: BCDPM(condition="diffusion", **NET), None),
        "BC-DPM both": (lambda: BCDPM(condition="both", **NET), None)}
    if baseline_steps:
        models[LONG.format(baseline_steps)] = (lambda: RegressionUNet(channels=(16, 32, 64), num_res_units=1),
                                               baseline_steps)
    return models


def fit(method, dm, steps: int, lr: float = 2e-3):
    task = DiffusionTask(method, lr=lr, warmup_steps=20)
    ema = EMA(decay=0.99)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[ema], gradient_clip_val=1.0)
    trainer.fit(task, dm)
    ema.swap_in(task)
    return method.eval()


@torch.no_grad()
def restore(method, low_suv: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, H, W) low-dose SUV -> restored SUV with ``method`` (DDPM 100 steps for BC-DPM)."""
    x = SCALING.forward(torch.from_numpy(low_suv[:, None]).float())
    kw = {"sampler": "ddpm", "steps": 100} if isinstance(method, BCDPM) else {}
    out = method.predict({"cond": x}, generator=torch.Generator().manual_seed(seed), **kw)["prediction"]
    return SCALING.inverse(out)[:, 0].numpy()


def scores(pred: np.ndarray, ref: np.ndarray, body: np.ndarray, lesions: list[np.ndarray] | None) -> dict:
    p, r, m = (torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in (pred, ref, body))
    out = {"psnr": float(psnr(p[:, None], r[:, None], data_range=SUV_RANGE, mask=m[:, None] > 0).mean()),
           "ssim": float(ssim(p[:, None], r[:, None], data_range=SUV_RANGE, mask=m > 0).mean()),
           "nrmse": float(nrmse(p[:, None], r[:, None], "euclidean", mask=m[:, None] > 0).mean())}
    if lesions is not None:
        mx, mn = [], []
        for i, lab in enumerate(lesions):
            for k in range(1, int(lab.max()) + 1):
                les = lab == k
                mx.append(100 * (pred[i][les].max() - ref[i][les].max()) / ref[i][les].max())
                mn.append(100 * (pred[i][les].mean() - ref[i][les].mean()) / ref[i][les].mean())
        out.update(suvmax_bias=float(np.mean(mx)), suvmax_abs=float(np.mean(np.abs(mx))),
                   suvmean_bias=float(np.mean(mn)), suvmean_abs=float(np.mean(np.abs(mn))))
    return out


def test_set(n: int, dose: float, counts: float, size: int = 32):
    phs = [pet_phantom((size, size), seed=100_000 + i) for i in range(n)]
    full = np.stack([p.image for p in phs])
    low = np.stack([simulate_low_dose(p.image, dose, counts, rng=7_000 + i) for i, p in enumerate(phs)])
    return full, low, np.stack([p.body for p in phs]), [p.lesions for p in phs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--doses", type=float, nargs="+", default=[0.25, 0.1, 0.05, 0.02, 0.01])
    ap.add_argument("--counts", type=float, default=50.0)
    ap.add_argument("--test", type=int, default=16)
    ap.add_argument("--work", default="/tmp/bcdpm_table")
    ap.add_argument("--baseline-steps", type=int, default=3000,
                    help="also train the UNet regression this long (its own row; 0: no extra row)")
    args = ap.parse_args()
    if args.baseline_steps:
        ROWS.insert(2, LONG.format(args.baseline_steps))
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict]] = {}
    kept: dict[str, torch.nn.Module] = {}
    example: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    for dose in args.doses:
        key = f"1/{round(1 / dose)}"
        full, low, body, lesions = test_set(args.test, dose, args.counts)
        results[key] = {"low-dose input": scores(low, full, body, lesions)}
        for name, (build, own_steps) in make_models(args.baseline_steps).items():
            steps = own_steps or args.steps
            torch.manual_seed(0)
            model = build()
            dm = PETDoseDataModule(f"{args.work}/phantoms", phantoms=16, phantom_size=(32, 32), patch_size=32,
                                   samples_per_epoch=steps * 8, val_samples=1, val_fraction=0.25,
                                   batch_size=8, dose_fraction=dose, counts_per_unit=args.counts)
            start = time.perf_counter()
            fit(model, dm, steps)
            pred = restore(model, low)
            results[key][name] = scores(pred, full, body, lesions)
            results[key][name]["seconds"] = time.perf_counter() - start
            print(f"{key} {name}: {results[key][name]}", flush=True)
            if dose == 0.05:
                kept[name] = model
                example[name] = pred[0]
        if dose == 0.05:
            example.update({"full dose": full[0], "low-dose input": low[0]})
    real = real_slice(kept, args.counts) if kept and REAL.is_file() else None
    write(results, real, example, args, time.perf_counter() - t0)


def real_slice(models: dict[str, torch.nn.Module], counts: float):
    pet = read_pet(REAL)
    full = pet.data[0]
    low = simulate_low_dose(full, 0.05, counts, rng=0)
    body = body_mask(full)
    rows = {"low-dose input": low}
    for name, m in models.items():
        rows[name] = restore(m, low[None])[0]
    table = {}
    for name, img in rows.items():
        s = scores(img[None], full[None], body[None], None)
        s["suvmax"] = float(img[body].max())
        s["suvmax_bias"] = 100 * (s["suvmax"] - float(full[body].max())) / float(full[body].max())
        table[name] = s
    return {"table": table, "images": {"full dose": full, **rows}, "suvmax_full": float(full[body].max())}


def _fmt(s: dict) -> str:
    return f"{s['psnr']:.2f} | {s['ssim']:.3f} | {s['nrmse']:.3f}"


def write(results, real, example, args, seconds) -> None:
    lines = ["# BC-DPM ablation on PET phantoms and the real FLT slice", "",
             f"Produced by `evaluation/bcdpm_table.py --steps {args.steps}` on a shared 2-core CPU "
             f"(OMP_NUM_THREADS=1), {seconds / 60:.1f} min in all. Every model: {args.steps} steps, batch 8, "
             "32 x 32 phantoms, lr 2e-3, EMA 0.99; BC-DPM tiny UNet (16, 32), T = 100, ancestral DDPM 100 steps, "
             "one sample; diffusion-domain block = low band (4 x 4 block means) replaced, weight 1. "
             f"Low dose by binomial counts thinning, {args.counts:g} counts / voxel / SUV at full dose. "
             f"Scores on {args.test} held-out phantoms, in SUV, inside the body mask: PSNR (data range 10 SUV), "
             "SSIM (Gaussian 11 taps, sigma 1.5, range 10), NRMSE (RMSE / RMS of the reference in the body); "
             "lesion SUVmax / SUVmean bias % vs the noise-free phantom, mean over lesions (mean |bias|). "
             f"The UNet regression also with {args.baseline_steps} steps (its own row).", ""]
    for key, rows in results.items():
        lines += [f"## Dose {key}", "", "| method | PSNR dB | SSIM | NRMSE | SUVmax bias % | SUVmean bias % |",
                  "|---|---|---|---|---|---|"]
        for name in ROWS:
            s = rows[name]
            lines.append(f"| {name} | {_fmt(s)} | {s['suvmax_bias']:+.1f} ({s['suvmax_abs']:.1f}) | "
                         f"{s['suvmean_bias']:+.1f} ({s['suvmean_abs']:.1f}) |")
        lines.append("")
    if real is not None:
        lines += ["## Real slice (TCIA ACRIN-FLT-Breast 029, 168 x 168, 18F-FLT), 1/20 dose simulated", "",
                  "Models trained on 32 x 32 phantoms only (never on real PET), applied to the whole slice. "
                  f"Full-dose SUVmax in the body {real['suvmax_full']:.2f}.", "",
                  "| method | PSNR dB | SSIM | NRMSE | SUVmax | SUVmax bias % |", "|---|---|---|---|---|---|"]
        for name in ROWS:
            s = real["table"][name]
            lines.append(f"| {name} | {_fmt(s)} | {s['suvmax']:.2f} | {s['suvmax_bias']:+.1f} |")
        lines.append("")
    lines += ["![panel](panel.png)", ""]
    (OUT / "README.md").write_text("\n".join(lines))
    (OUT / "results.json").write_text(json.dumps({"phantoms": results, "real": real and real["table"]}, indent=1))
    panel(example, real)
    print("\n".join(lines))


def panel(example: dict, real) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["full dose", "low-dose input", *[r for r in ROWS if r.startswith("UNet")], "BC-DPM spatial only",
            "BC-DPM diffusion-domain only", "BC-DPM both"]
    rows = [("phantom, 1/20", example)] + ([("real FLT slice, 1/20", real["images"])] if real else [])
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.4 * len(cols), 2.6 * len(rows)), squeeze=False)
    for r, (title, imgs) in enumerate(rows):
        ref = imgs["full dose"]
        vmax = float(np.percentile(ref[ref > 0.05 * ref.max()], 99.5))
        for c, name in enumerate(cols):
            ax = axes[r, c]
            if name in imgs:
                ax.imshow(imgs[name], cmap="gray_r", vmin=0, vmax=vmax)
            ax.set_title(f"{name}\n{title}" if c == 0 else name, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(OUT / "panel.png", dpi=110)


if __name__ == "__main__":
    main()
