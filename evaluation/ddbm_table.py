"""DDBM vs a regression UNet on real S1 -> S2 translation (BigEarthNet) and cloud removal (SEN12MS-CR triplets).

    OMP_NUM_THREADS=1 nice -n 10 python evaluation/ddbm_table.py [--steps 600] [--out DIR]

Protocol (seeded; bands B04, B03, B02, B08 = RGB + NIR at 10 m; split by scene, never by crop):

- **S1 -> S2** (``Sar2OptDataModule``): the 6 BigEarthNet S1/S2 pairs sorted by S2 name; train on 0, 1, 2, 5
  (random 48 x 48 crops, flips, 90-degree turns), test on the whole 120 x 120 patches 3 and 4. DDBM: VP
  bridge, y = learned 1x1 projection of (VV, VH). Extra baseline: the mean training spectrum everywhere.
- **Cloudy -> clear** (``CloudPairDataModule``): the 6 SEN12MS-CR triplets sorted by ID; train on 1302, 3968,
  5278, 6553; test on 5254 (36 % cloud) and 6317 (80 %), centre 128 x 128 crops. Input S1 dB + cloudy S2;
  DDBM: VP bridge pinned at the cloudy image (select). Extra baseline: the cloudy input itself.
- **Models**, the same steps, batch 8, data and Adam (the task's, lr 2e-3, EMA 0.99): DDBM (ConditionedUNet
  [32, 64, 64], no attention, 1 res block; 20 bridge steps, churn 0.33, mean of 4 chains), the regression UNet
  (MONAI UNet [32, 64, 128], L1; cloud: residual on the cloudy bands).
- **Scores** on reflectance 0..1 per test image, then the mean: PSNR (data range 1, over all bands), SSIM
  (band mean), SAM (degrees, torchmetrics-style mean angle).

Tiny-net CPU numbers at a smoke budget, not the paper's. Results: ``evaluation/results/ddbm/`` (table.md,
scores.csv, panel_sar2opt.png, panel_cloud.png).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "methods")]

from medrs_diff.data import keys as K  # noqa: E402
from medrs_diff.data.scaling import resolve  # noqa: E402
from medrs_diff.datamodules.translation import CloudPairDataModule, Sar2OptDataModule  # noqa: E402
from medrs_diff.methods import DDBM, RegressionUNet  # noqa: E402
from medrs_diff.metrics.spectral import band_ssim, sam  # noqa: E402
from medrs_diff.viz.panels import save_panel  # noqa: E402

SHARED = ROOT / ".." / "shared" / "data"
BANDS = ["B04", "B03", "B02", "B08"]
#: model space -> reflectance 0..1 (the target scaling is reflectance x 1e4 = DN; divide by 1e4)
TARGET = resolve("reflectance")


def refl(x: torch.Tensor) -> torch.Tensor:
    return (TARGET.inverse(x, channel_axis=1) / 1e4).clamp(0, 1)


def scores(pred: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Reflectance (1, C, H, W) pair -> PSNR (range 1), SSIM (band mean), SAM (degrees)."""
    mse = float(((pred - ref) ** 2).mean())
    return {"psnr": 10 * np.log10(1.0 / max(mse, 1e-12)), "ssim": float(band_ssim(pred, ref, 1.0)[0]),
            "sam_deg": float(sam(pred, ref)[0])}


def ddbm_for(in_ch: int, endpoint: str, channels: list[int] | None) -> DDBM:
    return DDBM(in_channels=in_ch, out_channels=4, endpoint=endpoint, endpoint_channels=channels, bridge="vp",
                channels=(32, 64, 64), attention_levels=(False, False, False), num_res_blocks=1, num_head_channels=16,
                norm_num_groups=8, sampling_steps=20, churn_step_ratio=0.33, n_samples=4)


def run_task(task: str, dm, ddbm: DDBM, unet: RegressionUNet, extra: str, steps: int, out: Path,
             timing: dict) -> list[dict]:
    from _learning import fit

    dm.setup("fit")
    for name, model in (("ddbm", ddbm), ("unet", unet)):
        torch.manual_seed(0)
        start = time.perf_counter()
        fit(model, dm, steps, 2e-3)
        timing[f"{task}_{name}_train_s"] = time.perf_counter() - start
    mean_spec = torch.stack([torch.from_numpy(t).mean((1, 2)) for _, _, t in dm.train_dataset.scenes])
    mean_spec = mean_spec.mean(0).view(1, -1, 1, 1)
    rows, cols = [], {"start x_T": [], "regression UNet": [], "prediction": [], "reference": [], "uncertainty": []}
    start = time.perf_counter()
    for batch in dm.val_dataloader():
        for i in range(batch[K.COND].shape[0]):
            one = {K.COND: batch[K.COND][i:i + 1], K.IMAGE: batch[K.IMAGE][i:i + 1]}
            ref = refl(one[K.IMAGE])
            o = ddbm.predict(one, generator=torch.Generator().manual_seed(0))
            preds = {"DDBM (VP, mean of 4)": o["prediction"], "regression UNet": unet.predict(one)["prediction"]}
            if extra == "mean":
                preds["mean training spectrum"] = mean_spec.expand_as(one[K.IMAGE])
            else:
                preds["cloudy input (identity)"] = one[K.COND][:, 2:6]
            for method, p in preds.items():
                rows.append({"task": task, "case": batch["case"][i], "method": method, **scores(refl(p), ref)})
            cols["start x_T"].append(refl(ddbm.endpoint(one[K.COND]))[:, :3])
            cols["regression UNet"].append(refl(preds["regression UNet"])[:, :3])
            cols["prediction"].append(refl(o["prediction"])[:, :3])
            cols["reference"].append(ref[:, :3])
            cols["uncertainty"].append(o["uncertainty"][:, :3].mean(1, keepdim=True))
            print(task, batch["case"][i], {r["method"]: round(r["psnr"], 2) for r in rows[-len(preds):]}, flush=True)
    timing[f"{task}_test_s"] = time.perf_counter() - start
    save_panel(out / f"panel_{task}.png", {k: torch.cat(v) for k, v in cols.items()},
               title=f"DDBM {task}: RGB reflectance (x_T, UNet, DDBM, reference), DDBM std",
               shared=("regression UNet", "prediction", "reference"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--out", type=Path, default=ROOT / "evaluation" / "results" / "ddbm")
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is absent: this table needs ../shared/data")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    common = dict(bands=BANDS, patch_size=48, samples_per_epoch=args.steps * 8, batch_size=8, val_batch_size=2)
    sar = Sar2OptDataModule(root=str(SHARED / "bigearthnet_s1_s2"), test_scenes=[3, 4], **common)
    rows = run_task("sar2opt", sar, ddbm_for(2, "project", None),
                    RegressionUNet(in_channels=2, out_channels=4, channels=(32, 64, 128), residual=False),
                    "mean", args.steps, args.out, timing)
    cloud = CloudPairDataModule(root=str(SHARED / "sen12mscr_triplets"), test_scenes=[2, 4], eval_size=128, **common)
    rows += run_task("cloud", cloud, ddbm_for(6, "select", [2, 3, 4, 5]),
                     RegressionUNet(in_channels=6, out_channels=4, channels=(32, 64, 128), skip_channels=[2, 3, 4, 5]),
                     "identity", args.steps, args.out, timing)

    with open(args.out / "scores.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"# DDBM vs regression UNet, real data ({args.steps} training steps each, batch 8, 48 x 48 crops, "
             "this 2-core CPU, shared)", "",
             "Split by scene. S1 -> S2: BigEarthNet pairs 0, 1, 2, 5 train; 3 (S2A 20171221 56_35) and 4 (S2B 20170924 "
             "69_24) test, whole 120 x 120. Cloudy -> clear: SEN12MS-CR triplets 1302, 3968, 5278, 6553 train; 5254 "
             "(36 % cloud) and 6317 (80 %) test, centre 128 x 128. Reflectance 0..1, bands B04, B03, B02, B08.", "",
             "| task | method | n | PSNR (dB) | SSIM | SAM (deg) |", "|---|---|---|---|---|---|"]
    for task in ("sar2opt", "cloud"):
        for method in dict.fromkeys(r["method"] for r in rows if r["task"] == task):
            rs = [r for r in rows if r["task"] == task and r["method"] == method]
            m = {k: np.mean([r[k] for r in rs]) for k in ("psnr", "ssim", "sam_deg")}
            lines.append(f"| {task} | {method} | {len(rs)} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['sam_deg']:.2f} |")
    lines += ["", "## Per case", "", "| task | case | method | PSNR | SSIM | SAM (deg) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['case']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['sam_deg']:.2f} |"
              for r in rows]
    lines += ["", "Timing (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items())]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
