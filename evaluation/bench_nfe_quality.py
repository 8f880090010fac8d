"""Dice against network evaluations for one trained diffusion segmenter (issue 12): which sampler, step
count and ensemble size keep the masks of the full ancestral chain.

For every setting (sampler, steps, ensemble size) each validation case is segmented through
:class:`~medrs_diff.inference.Predictor` (as ``medrs-diff infer`` does) and scored with per-image Dice;
the table gives mean Dice, network evaluations per case (steps x samples) and seconds per case on this
machine. The reference is the full DDPM chain (all T training steps) with the largest ensemble; the
note names the cheapest setting within ``--tolerance`` Dice points of it.

    python evaluation/bench_nfe_quality.py                      # trains segdiff_phantom2d first
    python evaluation/bench_nfe_quality.py --checkpoint runs/x/last.ckpt --data path/to/pairs
    python evaluation/bench_nfe_quality.py --smoke              # tiny, for a quick check

Not a timed test: the table goes to stdout and, with ``--out``, to a markdown file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrs_diff.cli import main as cli  # noqa: E402
from medrs_diff.inference import Predictor  # noqa: E402
from medrs_diff.io import read  # noqa: E402
from medrs_diff.metrics import dice  # noqa: E402


def _settings(timesteps: int, smoke: bool) -> list[tuple[str, int, int]]:
    if smoke:
        return [("ddpm", timesteps, 3), ("ddim", 10, 3), ("dpm_solver_pp", 10, 1), ("dpm_solver_pp", 10, 3)]
    full = [("ddpm", timesteps, n) for n in (1, 3, 5, 9)]
    short = [("ddpm", 100, 5)] if timesteps > 100 else []
    fast = [(s, k, n) for s, k in (("ddim", 10), ("ddim", 20), ("ddim", 50), ("dpm_solver_pp", 10),
                                   ("dpm_solver_pp", 20)) for n in (1, 3, 5, 9)]
    return full + short + fast


def _train(recipe: str, root: Path, steps: int) -> Path:
    rc = cli(["fit", "--config", recipe, "--trainer.default_root_dir", str(root / "run"),
              "--data.init_args.root", str(root / "data"), "--trainer.max_steps", str(steps),
              "--trainer.enable_progress_bar", "false"])
    if rc != 0:
        raise SystemExit(f"training {recipe} failed (exit {rc})")
    return next((root / "run").rglob("last.ckpt"))


def _cases(data: Path, n: int, image_suffix: str, label_suffix: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    images = sorted(data.glob(f"*{image_suffix}.nii*"))[-n:]  # the last cases: the data modules' validation split
    if not images:
        raise SystemExit(f"{data}: no <case>{image_suffix}.nii.gz files")
    out = []
    for img in images:
        lab = img.with_name(img.name.replace(image_suffix, label_suffix, 1))
        out.append((img.name, read(img).data.astype(np.float32), read(lab).data))
    return out


def run(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.checkpoint) if args.checkpoint else _train(args.recipe, Path(tmp), args.train_steps)
        data = Path(args.data) if args.data else Path(tmp) / "data"
        predictor = Predictor.from_checkpoint(ckpt, device=args.device)
        timesteps = len(predictor.method.schedule.timesteps)
        cases = _cases(data, args.cases, args.image_suffix, args.label_suffix)
        rows = []
        for sampler, steps, n in _settings(timesteps, args.smoke):
            scores, start = [], time.perf_counter()
            for i, (_, image, label) in enumerate(cases):
                out = predictor.predict_array(image, sampler=sampler, steps=steps, n_samples=n, seed=args.seed + i)
                pred = torch.as_tensor(out["prediction"]).reshape(1, -1)
                scores.append(float(dice(pred, torch.as_tensor(label > 0).reshape(1, -1))[0]))
            secs = (time.perf_counter() - start) / len(cases)
            rows.append((sampler, steps, n, steps * n, float(np.mean(scores)), secs))
            print(f"{sampler:>14} {steps:>5} x {n}: Dice {rows[-1][4]:.4f}  {secs:.2f} s/case", flush=True)
    ref = max((r for r in rows if r[0] == "ddpm" and r[1] == timesteps), key=lambda r: r[2])
    ok = [r for r in rows if r[4] >= ref[4] - args.tolerance]
    cheapest = min(ok, key=lambda r: (r[3], r[5]))
    lines = [f"Checkpoint: {ckpt.name if args.checkpoint else args.recipe + f' ({args.train_steps} steps)'}; "
             f"{len(cases)} cases; T = {timesteps}; device {args.device}; torch {torch.__version__}", "",
             "| sampler | steps | samples | NFE / case | Dice | s / case |", "|---|---|---|---|---|---|"]
    lines += [f"| {s} | {k} | {n} | {nfe} | {d:.4f} | {t:.2f} |" for s, k, n, nfe, d, t in rows]
    lines += ["", f"Reference: ddpm {ref[1]} steps x {ref[2]} samples, Dice {ref[4]:.4f}. Cheapest within "
              f"{args.tolerance:g} Dice: {cheapest[0]} {cheapest[1]} steps x {cheapest[2]} samples "
              f"({cheapest[3]} NFE, Dice {cheapest[4]:.4f}, {cheapest[5]:.2f} s/case)."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="a trained segmenter (.ckpt); default: train --recipe")
    p.add_argument("--recipe", default="segdiff_phantom2d")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--data", default=None, help="folder of <case>_image / <case>_label NIfTI pairs")
    p.add_argument("--image-suffix", default="_image")
    p.add_argument("--label-suffix", default="_label")
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--tolerance", type=float, default=0.01, help="Dice points (as a fraction) from the reference")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="four settings, for a quick check")
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = p.parse_args()
    if args.smoke:
        args.train_steps, args.cases = min(args.train_steps, 20), min(args.cases, 2)
    table = run(args)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
