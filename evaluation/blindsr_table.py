"""Blind super-resolution per degradation setting: bicubic, RRDB, SRDiff and BlindSRSNF on real Sentinel-2.

    OMP_NUM_THREADS=1 nice -n 10 python evaluation/blindsr_table.py [--steps 600] [--settings cpu|all] [--out DIR]

Protocol (seeded). Data: the 10 m bands B04, B03, B02, B08 of the 6 BigEarthNet-S2 patches in
``../shared/data/bigearthnet_s1_s2`` (uint16 reflectance x 1e4, ``reflectance`` scaling), **held out by scene**
(Sentinel-2 tile): the patches of tiles 29UPU (2) and 35VPK (2) train, those of 29SND and 33UUP test. Training
pairs are made on the fly (``DegradedCrops``: 48 px HR crops, x4): BlindSRSNF and the RRDB regression baseline
(``RegressionSR``, L1) on random anisotropic blurs (kernel 21, lambdas 0.2-4, any angle) + noise up to 25 on the
8-bit scale; SRDiff on bicubic-only LR (its paper's setting: no blur, no noise). Test: each held-out 120 x 120
patch degraded by each named setting of the paper's grid (``--settings all``: bicubic + 18 anisotropic; ``cpu``:
bicubic + 5 of them), LR 30 x 30, noise seeded. Metrics on reflectance (0..1): PSNR (data range 1) and SSIM with
a border crop of ``scale`` pixels, SAM (degrees) and ERGAS (Wald, h/l = 1/4), mean over the 2 test patches.
Samplers: DDIM 20 steps for both diffusion models (BlindSRSNF: its ``leading`` spacing; SRDiff: linspace), one
sample. Tiny nets, CPU budgets: numbers of this protocol, not the paper's. Results: ``evaluation/results/blindsr/``
(table.md, results.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from medrs_diff.data.degradations import TEST_GRID, degrade, setting  # noqa: E402
from medrs_diff.data.scaling import resolve  # noqa: E402
from medrs_diff.datamodules.blindsr import DegradedCrops, bigearthnet_scenes  # noqa: E402
from medrs_diff.methods import BlindSRSNF, RegressionSR, SRDiff  # noqa: E402
from medrs_diff.metrics import ergas, psnr, sam, ssim  # noqa: E402

SHARED = ROOT / ".." / "shared" / "data" / "bigearthnet_s1_s2"
TEST_TILES = ("_56_35", "_87_48")  # 29SND and 33UUP (S1 names of the pairs); the others train
CPU_SETTINGS = ("bicubic", "aniso_1.2_2.4_t0_n0", "aniso_2.4_1.2_t45_n5", "aniso_3.6_2.4_t0_n10",
                "aniso_3.6_2.4_t45_n0", "aniso_1.2_2.4_t45_n10")
SCALE = 4


def train(method, data: DegradedCrops, steps: int, lr: float, log: list[str], name: str) -> float:
    torch.manual_seed(0)
    loader = DataLoader(data, batch_size=8, shuffle=False)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.05, 0.5 * (1 + np.cos(np.pi * s / steps))))
    g = torch.Generator().manual_seed(0)
    start, step = time.perf_counter(), 0
    method.train()
    while step < steps:
        data.set_epoch(step)
        for batch in loader:
            loss, logs = method.loss(batch, generator=g)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(method.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % 100 == 0 or step == steps:
                log.append(f"{name} step {step}: " + ", ".join(f"{k} {float(v):.4f}" for k, v in logs.items()))
                print(log[-1], flush=True)
            if step >= steps:
                break
    method.eval()
    return time.perf_counter() - start


def scores(pred: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
    """Metrics on reflectance (model space [-1, 1] -> [0, 1]), PSNR / SSIM with a border crop of SCALE px."""
    p, r = (pred.clamp(-1, 1) + 1) / 2, (hr + 1) / 2
    c = (slice(None), slice(None), slice(SCALE, -SCALE), slice(SCALE, -SCALE))
    return {"psnr": float(psnr(p[c], r[c], 1.0).mean()), "ssim": float(ssim(p[c], r[c], 1.0).mean()),
            "sam": float(sam(p, r).mean()), "ergas": float(ergas(p, r, 1 / SCALE).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600, help="BlindSRSNF / SRDiff optimizer steps (RRDB: half)")
    ap.add_argument("--settings", choices=("cpu", "all"), default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "evaluation" / "results" / "blindsr")
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is absent: this script needs the shared BigEarthNet-S2 patches")
    ims, names = bigearthnet_scenes(SHARED)
    test = [k for k, n in enumerate(names) if n.endswith(TEST_TILES)]
    train_idx = [k for k in range(len(names)) if k not in test]
    scaling = resolve("reflectance")
    sample = dict(mode="aniso", sigma_range=(0.2, 4.0), noise_max=25.0, downsample="bicubic", jpeg_quality=None)

    def crops(settings):
        return DegradedCrops([ims[k] for k in train_idx], [names[k] for k in train_idx], patch=48, scale=SCALE,
                             length=8 * 50, seed=0, scaling=scaling, fixed=False, settings=settings, sample=sample)

    log: list[str] = []
    log.append(f"train scenes {[names[k] for k in train_idx]}, test scenes {[names[k] for k in test]}")
    blind = BlindSRSNF(in_channels=4, scale=SCALE, channels=(32, 64), num_res_blocks=1, norm_num_groups=8,
                       rrdb_blocks=4, rrdb_features=32, rrdb_growth=16, deg_dim=64, deg_width=32, queue_size=1024,
                       moco_momentum=0.99)
    srdiff = SRDiff(in_channels=4, scale=SCALE, channels=(32, 64), attention_levels=(False, False), num_res_blocks=1,
                    norm_num_groups=8, rrdb_blocks=4, rrdb_features=32, rrdb_growth=16, pretrain_steps=args.steps // 4)
    rrdb = RegressionSR(in_channels=4, scale=SCALE, rrdb_blocks=4, rrdb_features=32, rrdb_growth=16)
    seconds = {
        "blindsrsnf": train(blind, crops(None), args.steps, 1e-3, log, "BlindSRSNF"),
        "srdiff": train(srdiff, crops([setting("bicubic")]), args.steps, 1e-3, log, "SRDiff (bicubic-trained)"),
        "rrdb": train(rrdb, crops(None), args.steps // 2, 1e-3, log, "RRDB (blind-trained)"),
    }
    hr = torch.stack([scaling.forward(torch.from_numpy(ims[k])).float() for k in test])
    chosen = CPU_SETTINGS if args.settings == "cpu" else tuple(TEST_GRID)
    rows: dict[str, dict[str, dict[str, float]]] = {}
    with torch.no_grad():
        for i, name in enumerate(chosen):
            lr = degrade(hr, setting(name, SCALE), np.random.default_rng(100 + i), 2.0, -1.0).clamp(-1, 1)
            gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
            b = blind.predict({"cond": lr}, generator=gen())
            s = srdiff.predict({"cond": lr}, sampler="ddim", steps=20, generator=gen())
            rows[name] = {"bicubic": scores(b["baseline"], hr), "RRDB": scores(rrdb.predict({"cond": lr})["prediction"],
                                                                                hr),
                          "SRDiff": scores(s["prediction"], hr), "BlindSRSNF": scores(b["prediction"], hr),
                          "BlindSRSNF content (RRDB) estimate": scores(b["regression"], hr)}
            print(name, {k: round(v["psnr"], 2) for k, v in rows[name].items()}, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "train_seconds": seconds, "steps": args.steps,
                                                       "log": log}, indent=1))
    lines = ["# Blind SR x4 on held-out Sentinel-2 scenes (BigEarthNet, B04 B03 B02 B08), per degradation setting",
             "", f"`python evaluation/blindsr_table.py --steps {args.steps} --settings {args.settings}` "
             "(this 2-core CPU, shared; tiny nets; see the script's docstring for the protocol).",
             f"Training seconds: {', '.join(f'{k} {v:.0f}' for k, v in seconds.items())}.", "",
             "| setting | method | PSNR (dB) | SSIM | SAM (deg) | ERGAS |", "|---|---|---|---|---|---|"]
    for name, by in rows.items():
        for method, m in by.items():
            lines.append(f"| {name} | {method} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['sam']:.2f} | "
                         f"{m['ergas']:.2f} |")
    keys = ("psnr", "ssim", "sam", "ergas")
    means = {method: {k: float(np.mean([rows[n][method][k] for n in rows])) for k in keys}
             for method in next(iter(rows.values()))}
    lines += ["", "Mean over the settings:", "", "| method | PSNR (dB) | SSIM | SAM (deg) | ERGAS |",
              "|---|---|---|---|---|"]
    lines += [f"| {k} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['sam']:.2f} | {m['ergas']:.2f} |"
              for k, m in means.items()]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
