"""Super-resolution table on real data held out by scene: PSNR / SSIM / SAM of bicubic, RRDB, SRDiff and TCDM
at x4 and x8, and TCDM's seconds against the full chain.

    OMP_NUM_THREADS=1 nice -n 10 python evaluation/sr_table.py [--data sentinel2 landsat] [--scales 4 8]
        [--methods bicubic rrdb srdiff tcdm] [--steps 600] [--out evaluation/results/sr]

Protocol (seeded, tiny CPU nets, not the paper's numbers): HR = BigEarthNet Sentinel-2 10 m RGB patches
(120 x 120, reflectance x 1e4, the last 2 of 6 scenes held out) or 120 x 120 tiles of the rasterio Landsat 7
RGB scene (8-bit DN; tiles holding nodata skipped; the last third of the tiles in row order, the south of the
scene, held out); LR = ``scale`` x block mean (``data/sr_pairs.py``). Each diffusion method trains
``--steps`` optimizer steps on random HR patches of max(32, 6 x scale) px (batch 8) with EMA weights; its RRDB
(CTNG) is pre-trained for the first third. ``rrdb`` is SRDiff's pre-trained RRDB regression head. ``tcdm`` samples
from t' = 10 of T = 100 (11 DDPM steps); ``tcdm_full`` is a TCDM trained on every timestep, sampled both
from t' = 10 and with the full 100-step chain (the same weights: the seconds and the quality of the
truncated start against the full chain). ``srdiff`` samples its full 100-step chain. Metrics on whole
held-out images in data units, ``scale`` border pixels cropped: PSNR / SSIM (data range 1e4 for
reflectance, 255 for 8-bit), SAM in degrees. ``--methods`` picks rows (new methods register in
:data:`BUILDERS`). Results: ``<out>/table.md`` and ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "methods")]

from medrs_diff.data.scaling import resolve  # noqa: E402
from medrs_diff.data.sr_pairs import bigearthnet_sr_pairs, raster_sr_pairs  # noqa: E402
from medrs_diff.datamodules import GeoTiffSRDataModule  # noqa: E402
from medrs_diff.io.geotiff import read_geotiff  # noqa: E402
from medrs_diff.methods import TCDM, SRDiff  # noqa: E402
from medrs_diff.metrics import psnr, sam, ssim  # noqa: E402

SHARED = ROOT / ".." / "shared" / "data"
TINY = dict(in_channels=3, channels=(16, 32), attention_levels=(False, False), num_res_blocks=1,
            norm_num_groups=8, rrdb_blocks=2, rrdb_features=16, rrdb_growth=8)
DATA = {  # name -> (scaling, data range, residual rescale)
    "sentinel2": ("reflectance", 1e4, 5.0),
    "landsat": ("dn8", 255.0, 2.0),
}
T_TRUNC = 10


def make_pairs(name: str, out: Path, scale: int) -> None:
    if name == "sentinel2":
        bigearthnet_sr_pairs(SHARED / "bigearthnet_s1_s2", out, scale=scale)
    else:
        raster_sr_pairs(SHARED / "landsat_rasterio" / "RGB.byte.tif", out, tile=120, scale=scale)


def datamodule(root: Path, scaling: str, steps: int, scale: int) -> GeoTiffSRDataModule:
    dm = GeoTiffSRDataModule(str(root), scaling=scaling, patch_size=max(32, 6 * scale), samples_per_epoch=steps * 8,
                             val_fraction=0.34, batch_size=8)
    dm.prepare_data()
    return dm


def heldout(root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, LR, HR) of the held-out scenes: the last 34 % of the sorted files, as the data module splits."""
    hr = sorted((root / "hr").glob("*.tif"))
    n_val = max(1, round(len(hr) * 0.34))
    return [(h.stem, read_geotiff(root / "lr" / h.name).data.astype(np.float32),
             read_geotiff(h).data.astype(np.float32)) for h in hr[-n_val:]]


def _srdiff(scale: int, rescale: float, steps: int) -> SRDiff:
    return SRDiff(scale=scale, res_rescale=rescale, pretrain_steps=steps // 3, **TINY)


def _tcdm(scale: int, rescale: float, steps: int, up_to_trunc: bool = True) -> TCDM:
    return TCDM(scale=scale, res_rescale=rescale, pretrain_steps=steps // 3, t_trunc=T_TRUNC,
                train_up_to_trunc=up_to_trunc, **TINY)


#: method row -> (model builder, [(row name, predict kwargs, t_trunc override or None)])
BUILDERS: dict[str, tuple[Callable[..., Any], list[tuple[str, dict, int | None]]]] = {
    "srdiff": (_srdiff, [("srdiff (100 steps)", {"sampler": "ddpm"}, None)]),
    "tcdm": (_tcdm, [(f"tcdm (t'={T_TRUNC}, {T_TRUNC + 1} steps)", {"sampler": "ddpm"}, None)]),
    "tcdm_full": (lambda s, r, n: _tcdm(s, r, n, up_to_trunc=False),
                  [(f"tcdm all-t (t'={T_TRUNC}, {T_TRUNC + 1} steps)", {"sampler": "ddpm"}, None),
                   ("tcdm all-t (full chain, 100 steps)", {"sampler": "ddpm"}, 100)]),
}


def scores(pred: torch.Tensor, hr: torch.Tensor, scale: int, data_range: float) -> dict[str, float]:
    p, r = pred[..., scale:-scale, scale:-scale], hr[..., scale:-scale, scale:-scale]
    return {"psnr": float(psnr(p, r, data_range=data_range).mean()),
            "ssim": float(ssim(p, r, data_range=data_range).mean()), "sam": float(sam(p, r).mean())}


def run(name: str, scale: int, methods: list[str], steps: int, work: Path,
        save: Callable[[dict[str, Any]], None]) -> None:
    from _learning import fit

    scaling_name, data_range, rescale = DATA[name]
    sc = resolve(scaling_name)
    root = work / f"{name}_x{scale}"
    make_pairs(name, root, scale)
    cases = heldout(root)
    to_model = lambda x: sc.forward(torch.from_numpy(x)[None], channel_axis=1).float()  # noqa: E731
    to_data = lambda y: sc.inverse(y, channel_axis=1).float()  # noqa: E731

    def add(row: str, preds: list[torch.Tensor], seconds: float, **extra: Any) -> None:
        per = [scores(p, torch.from_numpy(h)[None], scale, data_range) for p, (_, _, h) in zip(preds, cases)]
        r = {"data": name, "scale": scale, "method": row, "seconds": round(seconds, 2), "cases": len(per),
             **{k: float(np.mean([s[k] for s in per])) for k in ("psnr", "ssim", "sam")}, **extra}
        print(r, flush=True)
        save(r)

    if "bicubic" in methods:
        t0 = time.perf_counter()
        up = [F.interpolate(torch.from_numpy(lo)[None], scale_factor=scale, mode="bicubic", align_corners=False)
              for _, lo, _ in cases]
        add("bicubic", [u.clamp(min=0) for u in up], time.perf_counter() - t0)
    for key in [m for m in methods if m in BUILDERS]:
        build, evals = BUILDERS[key]
        torch.manual_seed(0)
        model = build(scale, rescale, steps)
        t0 = time.perf_counter()
        fit(model, datamodule(root, scaling_name, steps, scale), steps, lr=2e-3, ema_decay=0.999)
        train_s = time.perf_counter() - t0
        if key == "srdiff" and "rrdb" in methods:
            with torch.no_grad():
                t0 = time.perf_counter()
                preds = [to_data(model.sr_head(to_model(lo)).clamp(-1, 1)) for _, lo, _ in cases]
            add("rrdb (SRDiff's pre-trained head)", preds, time.perf_counter() - t0)
        for row, kw, t_trunc in evals:
            if t_trunc is not None:
                model.t_trunc = t_trunc
            g = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            preds = [to_data(model.predict({"cond": to_model(lo)}, generator=g, n_samples=1, **kw)["prediction"])
                     for _, lo, _ in cases]
            add(row, preds, time.perf_counter() - t0, train_seconds=round(train_s, 1))


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| data | scale | method | PSNR dB | SSIM | SAM deg | infer s (all held-out) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['data']} | x{r['scale']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['sam']:.2f} "
              f"| {r['seconds']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["sentinel2", "landsat"], choices=sorted(DATA))
    ap.add_argument("--scales", nargs="+", type=int, default=[4, 8])
    ap.add_argument("--methods", nargs="+", default=["bicubic", "rrdb", "srdiff", "tcdm", "tcdm_full"])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--out", type=Path, default=ROOT / "evaluation" / "results" / "sr")
    args = ap.parse_args()
    unknown = [m for m in args.methods if m not in BUILDERS and m not in ("bicubic", "rrdb")]
    if unknown:
        ap.error(f"--methods: unknown {unknown}; known: bicubic, rrdb, {', '.join(BUILDERS)}")
    if "rrdb" in args.methods and "srdiff" not in args.methods:
        ap.error("--methods: the rrdb row is SRDiff's pre-trained head; list srdiff too")
    torch.set_num_threads(1)
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp())
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []

    def save(row: dict[str, Any] | None = None) -> None:  # after every row, so a cut run keeps what it has
        if row is not None:
            rows.append(row)
        (args.out / "results.json").write_text(json.dumps({"steps": args.steps, "rows": rows,
                                                           "seconds": round(time.perf_counter() - start)}, indent=2))
        (args.out / "table.md").write_text(table(rows))

    for d in args.data:
        for s in args.scales:
            run(d, s, args.methods, args.steps, work, save)
    save()
    print(table(rows))


if __name__ == "__main__":
    main()
