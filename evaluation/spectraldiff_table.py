"""SpectralDiff vs an SVM on raw spectra vs a small 2-D CNN on Jasper Ridge and Samson, disjoint and random splits.

    OMP_NUM_THREADS=1 nice -n 10 python evaluation/spectraldiff_table.py [--diffusion-steps 300] [--out DIR]

Protocol (seeded, ``medrs_diff.evaluation.hsi_classification``): per-pixel classes = the dominant endmember of the
scene's reference abundances where it is >= 0.5 (mixed pixels unlabelled; Jasper: tree / water / dirt / road,
Samson: soil / tree / water). Split: spatially disjoint blocks (4 x patch, half test; patches never straddle) or
random pixels (half test). 30 labelled training pixels per class from the training region for every model.
Cube in reflectance, [0, 1] -> [-1, 1] (nothing fitted). SpectralDiff: a tiny 3-D spectral UNet ([8, 16],
kernels (4, 3, 3) / (3, 3, 3)), T = 500 linear, L1 on eps, trained without labels on 9 x 9 windows of the whole
scene (the paper's transductive unsupervised stage; no labels), features at t = {5, 10, 50, 100, 200, 400},
4 spectral bins, whitened PCA to 32 components on the training-region pixels only, the cross-attention classifier
on 9 x 9 patches. Tiny-net CPU numbers, not the paper's. Results: ``evaluation/results/spectraldiff/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from medrs_diff.data.hsi_classes import load_unmixing_scene, scene_path  # noqa: E402
from medrs_diff.evaluation.hsi_classification import ExperimentConfig, run_experiment  # noqa: E402

SHARED = ROOT / ".." / "shared" / "data" / "hyperspectral_unmixing"
SPLITS = ("disjoint", "random")


def table(results: dict) -> str:
    lines = ["| scene | split | model | OA | AA | kappa | per-class recall | train / test px | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for scene, by_split in results.items():
        classes = by_split["classes"]
        for split in SPLITS:
            r = by_split.get(split)
            if r is None:
                continue
            for model, s in r["models"].items():
                per = ", ".join(f"{c} {s[f'recall_{i}']:.3f}" for i, c in enumerate(classes))
                lines.append(f"| {scene} | {split} | {model} | {s['overall_accuracy']:.3f} | "
                             f"{s['average_accuracy']:.3f} | {s['kappa']:.3f} | {per} | "
                             f"{r['n_train']} / {r['n_test']} | {s['seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, default=ROOT / "evaluation" / "results" / "spectraldiff")
    ap.add_argument("--scenes", nargs="+", default=["jasper", "samson"])
    ap.add_argument("--diffusion-steps", type=int, default=300)
    ap.add_argument("--train-per-class", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--merge", action="store_true", help="only write table.md from the results_<scene>.json there")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = ExperimentConfig(diffusion_steps=args.diffusion_steps, train_per_class=args.train_per_class, seed=args.seed)
    if not args.merge:  # one results_<scene>.json per scene, so scenes can run as separate processes
        for scene in args.scenes:
            t0 = time.perf_counter()
            sc = load_unmixing_scene(scene_path(args.root, scene))
            res = {"classes": list(sc.classes), **run_experiment(sc.cube, sc.labels, cfg, SPLITS),
                   "wall_seconds": round(time.perf_counter() - t0)}
            (args.out / f"results_{scene}.json").write_text(json.dumps(res, indent=1, default=str))
            print(f"{scene} done in {res['wall_seconds']} s", flush=True)
    results = {p.stem[len("results_"):]: json.loads(p.read_text()) for p in sorted(args.out.glob("results_*.json"))}
    md = table(results)
    settings = {k: v for k, v in vars(cfg).items() if k not in ("extra", "split")}
    walls = ", ".join(f"{k} {v.get('wall_seconds')} s" for k, v in results.items())
    (args.out / "table.md").write_text(
        "# SpectralDiff vs SVM vs 2-D CNN (per-pixel classes = dominant endmember >= 0.5)\n\n"
        f"Settings (both splits): {json.dumps(settings, default=str)}\n\n"
        f"Wall time per scene ({walls}) on a shared 2-core CPU (other jobs running), one thread, niced.\n\n{md}\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
