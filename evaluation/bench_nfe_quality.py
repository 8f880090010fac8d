"""Dice against network evaluations for one trained diffusion segmenter (issue 12): which sampler, step
count and ensemble size keep the masks of the full ancestral chain.

For every setting (sampler, steps, ensemble size) each validation case is segmented through
:class:`~medrs_diff.inference.Predictor` (as ``medrs-diff infer`` does) and scored with per-image Dice;
the table gives mean Dice, network evaluations per case (steps x samples), seconds per case on this
machine and the fraction of non-binary pixels (in each sampled member and in the fused probability). The
reference is the full DDPM chain (all T training steps) with the largest ensemble; the note names the
cheapest setting within ``--tolerance`` Dice points of it.

    python evaluation/bench_nfe_quality.py                      # trains segdiff_phantom2d first
    python evaluation/bench_nfe_quality.py --method medsegdiff_v1 --train-steps 2000 --noise 0.35 \
        --out evaluation/results/nfe_quality.md                 # MedSegDiff V1, T = 1000 (the note's table)
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
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrs_diff.cli import main as cli  # noqa: E402
from medrs_diff.data.synthetic import make_segmentation_phantoms  # noqa: E402
from medrs_diff.inference import Predictor  # noqa: E402
from medrs_diff.io import read  # noqa: E402
from medrs_diff.metrics import dice  # noqa: E402
from medrs_diff.train.recipe import resolve_recipe  # noqa: E402

#: a small MedSegDiff V1 with the paper's T = 1000 linear chain (CPU-sized widths)
V1_METHOD = {"class_path": "MedSegDiffV1", "init_args": {
    "in_channels": 1, "spatial_dims": 2, "num_classes": 2, "channels": [16, 32], "attention_levels": [False, False],
    "num_res_blocks": 1, "num_head_channels": 16, "norm_num_groups": 8, "ff_base_size": 32, "timesteps": 1000,
    "n_samples": 5, "fusion": "staple", "sampler": "dpm_solver_pp", "sampling_steps": 20}}
#: a pixel of a probability map is non-binary when it lies in (NON_BINARY, 1 - NON_BINARY): |2p - 1| < 0.5, a
#: pixel a small error flips (a tighter 0.05 margin counts the DDPM chain's background at p ~ 0.05 as non-binary)
NON_BINARY = 0.25

Row = tuple[str, int, int, int, float, float, float, float]  # sampler, steps, n, NFE, Dice, s/case, %nb sample, fused


def reference_row(rows: list[Row], timesteps: int) -> Row:
    """The full chain: DDPM over all ``timesteps`` with the largest ensemble."""
    full = [r for r in rows if r[0] == "ddpm" and r[1] == timesteps]
    if not full:
        raise SystemExit(f"bench_nfe_quality.py: no ddpm {timesteps}-step row to compare with; run the full settings")
    return max(full, key=lambda r: r[2])


def select_cheapest(rows: list[Row], reference: Row, tolerance: float) -> Row:
    """The setting with the fewest network evaluations (then the fewest seconds) whose Dice is at most
    ``tolerance`` below the reference's."""
    ok = [r for r in rows if r[4] >= reference[4] - tolerance]
    return min(ok, key=lambda r: (r[3], r[5]))


def _settings(timesteps: int, smoke: bool) -> list[tuple[str, int, int]]:
    if smoke:
        return [("ddpm", timesteps, 3), ("ddim", 10, 3), ("dpm_solver_pp", 10, 1), ("dpm_solver_pp", 10, 3)]
    full = [("ddpm", timesteps, n) for n in (1, 3, 5, 9)]
    short = [("ddpm", 100, 5)] if timesteps > 100 else []
    fast = [(s, k, n) for s, k in (("ddim", 10), ("ddim", 20), ("ddim", 50), ("dpm_solver_pp", 10),
                                   ("dpm_solver_pp", 20)) for n in (1, 3, 5, 9)]
    return full + short + fast


def _recipe(args: argparse.Namespace, root: Path) -> str:
    """The recipe to train: ``--recipe`` as is, or with ``--method medsegdiff_v1`` its method replaced by
    :data:`V1_METHOD` (written next to the run)."""
    if args.method is None:
        return args.recipe
    cfg = yaml.safe_load(resolve_recipe(args.recipe).read_text())
    cfg["model"]["init_args"]["method"] = V1_METHOD
    cfg["model"]["init_args"].pop("fast_path", None)
    path = root / f"{args.method}_phantom.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


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
        train_start = time.perf_counter()
        if not args.checkpoint and args.noise is not None:  # the data module then finds these and makes none
            make_segmentation_phantoms(Path(tmp) / "data", n=args.phantoms, size=[args.phantom_size] * 2,
                                       noise=args.noise, seed=args.seed)
        ckpt = Path(args.checkpoint) if args.checkpoint else _train(_recipe(args, Path(tmp)), Path(tmp),
                                                                    args.train_steps)
        train_s = time.perf_counter() - train_start
        data = Path(args.data) if args.data else Path(tmp) / "data"
        predictor = Predictor.from_checkpoint(ckpt, device=args.device)
        method = predictor.method
        timesteps = len(method.schedule.timesteps)
        cases = _cases(data, args.cases, args.image_suffix, args.label_suffix)
        held: dict[str, torch.Tensor] = {}
        plain_predict = method.predict

        def predict(*a, **kw):  # keeps the members' probabilities for the non-binary fraction
            out = plain_predict(*a, **kw)
            held["samples"] = out["samples"]
            return out

        method.predict = predict
        rows: list[Row] = []
        bench_start = time.perf_counter()
        for sampler, steps, n in _settings(timesteps, args.smoke):
            scores, nb_sample, nb_fused, secs = [], [], [], 0.0
            for i, (_, image, label) in enumerate(cases):
                start = time.perf_counter()
                out = predictor.predict_array(image, sampler=sampler, steps=steps, n_samples=n, seed=args.seed + i)
                secs += time.perf_counter() - start
                pred = torch.as_tensor(out["prediction"]).reshape(1, -1)
                scores.append(float(dice(pred, torch.as_tensor(label > 0).reshape(1, -1))[0]))
                nb_sample.append(_non_binary(held["samples"]))
                nb_fused.append(_non_binary(torch.as_tensor(out["probability"])))
            rows.append((sampler, steps, n, steps * n, float(np.mean(scores)), secs / len(cases),
                         float(np.mean(nb_sample)), float(np.mean(nb_fused))))
            print(f"{sampler:>14} {steps:>5} x {n}: Dice {rows[-1][4]:.4f}  {rows[-1][5]:.2f} s/case", flush=True)
        bench_s = time.perf_counter() - bench_start
    ref = reference_row(rows, timesteps)
    cheapest = select_cheapest(rows, ref, args.tolerance)
    trained = (f"{args.method or args.recipe} trained {args.train_steps} steps in {train_s:.0f} s"
               + (f" on {args.phantoms} ellipse phantoms {args.phantom_size}^2, noise {args.noise:g}"
                  if args.noise is not None else ""))
    lines = [f"Model: {ckpt.name if args.checkpoint else trained}; {len(cases)} validation cases; T = {timesteps}; "
             f"device {args.device} ({torch.get_num_threads()} thread(s)); torch {torch.__version__}; "
             f"sampling took {bench_s:.0f} s", "",
             f"Non-binary: pixels with probability in ({NON_BINARY:g}, {1 - NON_BINARY:g}), in each sampled member "
             "(mean) and in the fused mean probability (members' disagreement), before thresholding.", "",
             "| sampler | steps | samples | NFE / case | Dice | s / case | non-binary member % | non-binary fused % |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {s} | {k} | {n} | {nfe} | {d:.4f} | {t:.2f} | {100 * a:.2f} | {100 * b:.2f} |"
              for s, k, n, nfe, d, t, a, b in rows]
    lines += ["", f"Reference: ddpm {ref[1]} steps x {ref[2]} samples, Dice {ref[4]:.4f}. Cheapest within "
              f"{args.tolerance:g} Dice: {cheapest[0]} {cheapest[1]} steps x {cheapest[2]} samples "
              f"({cheapest[3]} NFE, Dice {cheapest[4]:.4f}, {cheapest[5]:.2f} s/case)."]
    return "\n".join(lines)


def _non_binary(p: torch.Tensor) -> float:
    """Fraction of values of ``p`` strictly between NON_BINARY and 1 - NON_BINARY."""
    p = p.float()
    return float(((p > NON_BINARY) & (p < 1 - NON_BINARY)).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="a trained segmenter (.ckpt); default: train --recipe")
    p.add_argument("--recipe", default="segdiff_phantom2d")
    p.add_argument("--method", default=None, choices=["medsegdiff_v1"],
                   help="train a small MedSegDiff V1 (T = 1000) on --recipe's data instead of its method")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--noise", type=float, default=None,
                   help="write ellipse phantoms with this noise before training (default: the recipe's own data)")
    p.add_argument("--phantoms", type=int, default=32, help="phantom cases with --noise (the last quarter validate)")
    p.add_argument("--phantom-size", type=int, default=32, help="phantom side in pixels with --noise")
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
    torch.set_num_threads(1)
    if args.smoke:
        args.train_steps, args.cases = min(args.train_steps, 20), min(args.cases, 2)
    table = run(args)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
