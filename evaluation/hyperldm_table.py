"""HyperLDM vs the per-pixel linear RGB -> HSI regression on Jasper Ridge and Samson (held-out spatial block).

    OMP_NUM_THREADS=1 nice -n 10 python evaluation/hyperldm_table.py [--ae-steps 1200] [--diff-steps 600] \
        [--scenes samson]

Protocol (seeded, one scene at a time): the cube (Jasper Ridge: Y / maxValue; Samson: as stored) is read through
:class:`~medrs_diff.datamodules.HyperspectralSynthesisDataModule` (the recipe's data module), its RGB is three bands
(Jasper Ridge [32, 15, 5]: AVIRIS bands 36 / 19 / 9, the paper's [35, 18, 8] 0-based, inside the 198 kept bands;
Samson [76, 48, 19]: about 640 / 550 / 460 nm at 401-889 nm), the held-out block is the top 32 rows
(``--holdout-side``, the data module's default and why: see its notes; the block is cropped to multiples of 8) and
training uses 32 x 32 crops of the rest minus 4 pixels next to the block. Library: the scene's endmembers on the
cube's scale. A CPU-sized HyperLDM (latent 4 x 1/4, ``--width`` 16: autoencoder and condition widths 16, UNet [16,
32]) trains ``--ae-steps`` autoencoder steps then ``--diff-steps`` latent-diffusion steps (Adam, batch ``--batch``);
the test block is sampled with ``--seeds`` seeds (100-step DDPM, the paper's sampler). Scores on the block
(reflectance, data range 1; over the bands other than the three RGB bands, which the linear baseline reproduces
exactly, with infinite PSNR): RMSE, MRAE, SAM (degrees), mPSNR, mSSIM of each seed's cube (mean over seeds), of the
seeds' mean, of the autoencoder's reconstruction (the decoder's ceiling) and of the linear baseline fitted on the
training pixels. Diversity: mean pairwise RMSE and SAM between the seeds' cubes, and the mean per-pixel standard
deviation over seeds. Results: ``evaluation/results/hyperldm/`` (table.md, one ``<scene>.json`` each; scenes may run
as separate processes, the table is rebuilt from the JSON files present).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medrs_diff.data.hsi_synthesis import LinearRGBToHSI, render_rgb  # noqa: E402
from medrs_diff.datamodules import HyperspectralSynthesisDataModule  # noqa: E402
from medrs_diff.methods import HyperLDM  # noqa: E402
from medrs_diff.metrics.spectral import spectral_scores  # noqa: E402

SHARED = ROOT / ".." / "shared" / "data" / "hyperspectral_unmixing"
SCENES = {
    "jasper_ridge": dict(root=SHARED / "jasper_ridge_r198.mat", endmember_key="M", abundance_key=None, num_endmembers=4,
                         rgb_bands=[32, 15, 5]),
    "samson": dict(root=SHARED / "samson.mat", endmember_key="GT", abundance_key="S_GT", num_endmembers=3,
                   rgb_bands=[76, 48, 19]),
}
KEYS = ("rmse", "mrae", "sam_deg", "mpsnr", "mssim")


def scores(pred: np.ndarray, ref: np.ndarray, skip: list[int] | None = None) -> dict[str, float]:
    """Scores over the bands not in ``skip`` (the RGB bands, which the linear baseline copies exactly: their PSNR
    would be infinite)."""
    keep = [b for b in range(pred.shape[0]) if b not in (skip or [])]
    s = spectral_scores(torch.as_tensor(pred[keep])[None], torch.as_tensor(ref[keep])[None], 1.0, include=KEYS)
    return {k: float(v[0]) for k, v in s.items()}


def run_scene(name: str, cfg: dict, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    dm = HyperspectralSynthesisDataModule(str(cfg["root"]), endmember_key=cfg["endmember_key"],
                                          abundance_key=cfg["abundance_key"],
                                          num_endmembers=cfg["num_endmembers"], rgb_bands=cfg["rgb_bands"],
                                          patch_size=32,
                                          samples_per_epoch=args.batch * (args.ae_steps + args.diff_steps + 1),
                                          batch_size=args.batch, seed=args.seed, holdout_side=args.holdout_side)
    dm.setup("fit")
    cube, lib = dm.train_dataset.cubes[0], dm.library
    bands = cube.shape[0]
    ys, xs = dm.val_dataset.regions[0]
    test = cube[:, ys, xs]
    test = test[:, : test.shape[1] - test.shape[1] % 8, : test.shape[2] - test.shape[2] % 8]
    train_region = (slice(None), *dm.train_dataset.regions[0])
    lin = LinearRGBToHSI().fit(render_rgb(cube[train_region], cfg["rgb_bands"]), cube[train_region])
    rgb_test = render_rgb(test, cfg["rgb_bands"])
    wd = args.width
    m = HyperLDM(bands=bands, num_endmembers=lib.shape[1], latent_channels=4, codebook_size=256, ae_channels=wd,
                 cond_channels=wd, channels=(wd, 2 * wd), num_head_channels=wd, norm_num_groups=8, timesteps=100,
                 pretrain_steps=args.ae_steps, sam_loss=args.sam_loss, n_samples=args.seeds)
    opt = torch.optim.Adam(m.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    loader = iter(dm.train_dataloader())
    t0, logs = time.time(), []
    m.train()
    for step in range(args.ae_steps + args.diff_steps):
        if step == args.ae_steps:
            opt = torch.optim.Adam([p for n, p in m.named_parameters() if not n.startswith("autoencoder.")],
                                   lr=args.lr)
        batch = next(loader)
        loss, _ = m.loss(batch, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.ae_steps + args.diff_steps - 1:
            logs.append((step, float(loss)))
            print(f"{name} step {step} loss {float(loss):.4f} ({time.time() - t0:.0f} s)", flush=True)
    train_s = time.time() - t0
    m.eval()
    rgb_t = torch.from_numpy(rgb_test)[None]
    rec = m.reconstruct(torch.from_numpy(np.ascontiguousarray(test))[None], rgb_t)[0][0].numpy()
    out = m.predict({"cond": rgb_t}, n_samples=args.seeds, generator=torch.Generator().manual_seed(args.seed + 1))
    samples = out["samples"][0].numpy()  # (n, bands, H, W)
    rgb = cfg["rgb_bands"]
    per_seed = [scores(s, test, rgb) for s in samples]
    rows = {
        "HyperLDM, one seed (mean over seeds)": {k: float(np.mean([d[k] for d in per_seed])) for k in KEYS},
        f"HyperLDM, mean of {args.seeds} seeds": scores(samples.mean(0), test, rgb),
        "autoencoder reconstruction (ceiling)": scores(rec, test, rgb),
        "linear regression RGB -> HSI": scores(lin.predict(rgb_test), test, rgb),
    }
    pairs = list(itertools.combinations(range(len(samples)), 2))
    diversity = {
        "pairwise_rmse": float(np.mean([np.sqrt(((samples[i] - samples[j]) ** 2).mean()) for i, j in pairs])),
        "pairwise_sam_deg": float(np.mean([scores(samples[i], samples[j])["sam_deg"] for i, j in pairs])),
        "per_pixel_std": float(samples.std(0).mean()),
        "per_seed_sam_deg": [d["sam_deg"] for d in per_seed],
    }
    block = [ys.start, ys.start + test.shape[1], xs.start, xs.start + test.shape[2]]
    return {"rows": rows, "diversity": diversity, "train_seconds": train_s, "test_block": block,
            "bands": bands, "losses": logs, "library_scale_note": "scene endmembers, one global factor"}


def write_table(out: Path) -> str:
    """table.md from every ``<scene>.json`` in ``out``."""
    lines = ["# HyperLDM vs linear RGB -> HSI on the held-out block (this 2-core CPU, shared)", ""]
    for path in sorted(out.glob("*.json")):
        r = json.loads(path.read_text())
        st = r["settings"]
        y0, y1, x0, x1 = r["test_block"]
        lines += [f"## {path.stem} ({r['bands']} bands, held-out block rows {y0}-{y1 - 1} x columns {x0}-{x1 - 1};"
                  f" {st['ae_steps']} AE + {st['diff_steps']} diffusion steps, "
                  f"batch {st['batch']}, width {st['width']}, lr {st['lr']}, {st['seeds']} seeds, "
                  f"training {r['train_seconds']:.0f} s)", "",
                  "| method | RMSE | MRAE | SAM (deg) | mPSNR (dB) | mSSIM |", "|---|---|---|---|---|---|"]
        for row, s in r["rows"].items():
            lines.append(f"| {row} | {s['rmse']:.4f} | {s['mrae']:.3f} | {s['sam_deg']:.2f} | {s['mpsnr']:.2f} | "
                         f"{s['mssim']:.3f} |")
        d = r["diversity"]
        lines += ["", f"Seed diversity: pairwise RMSE {d['pairwise_rmse']:.4f}, pairwise SAM "
                  f"{d['pairwise_sam_deg']:.2f} deg, per-pixel std {d['per_pixel_std']:.4f}; SAM per seed "
                  + ", ".join(f"{v:.2f}" for v in d["per_seed_sam_deg"]), ""]
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ae-steps", type=int, default=1200)
    ap.add_argument("--diff-steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--sam-loss", default="cosine")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--holdout-side", default="top", choices=("top", "bottom", "left", "right"))
    ap.add_argument("--scenes", nargs="+", default=list(SCENES))
    ap.add_argument("--out", type=Path, default=ROOT / "evaluation" / "results" / "hyperldm")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    for name in args.scenes:
        result = {"settings": settings, **run_scene(name, SCENES[name], args)}
        suffix = "" if args.holdout_side == "top" else f"_{args.holdout_side}"
        (args.out / f"{name}{suffix}.json").write_text(json.dumps(result, indent=1))
    print(write_table(args.out))


if __name__ == "__main__":
    main()
