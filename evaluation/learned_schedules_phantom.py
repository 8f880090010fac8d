"""Learned few-step chains on a trained phantom SRDiff: BDDM vs evenly spaced DDPM, step masks vs evenly spaced DDIM.

A tiny SRDiff (x2, 16x16 HR smooth Gaussian-blob phantoms, cosine T = 100) is trained for ``--train-steps``,
then BDDM schedules (``fit_learned_schedules(kind="bddm")``, the paper's 6 x 10 grid) and learned step masks
(``kind="mask"``) are fitted for each step budget on 3 batches of 8; each chain is scored on 64 fresh phantoms
(HR MSE, mean of 3 seeds) beside the evenly spaced chain of the same length, and, for the deterministic
chains, by the distance to the 100-step DDIM solution from the same x_T. Writes a Markdown table.

    python evaluation/learned_schedules_phantom.py --out evaluation/results/learned_schedules/srdiff_phantom.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "train"))

from test_learned_schedule import _pairs as pairs  # noqa: E402 - the test's phantoms, one definition

from medrs_diff.diffusion.samplers import fitted_steps  # noqa: E402
from medrs_diff.methods.srdiff import SRDiff  # noqa: E402
from medrs_diff.train.learned_schedule import fit_learned_schedules  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-steps", type=int, default=400)
    ap.add_argument("--steps", type=int, nargs="+", default=[3, 5, 10])
    ap.add_argument("--mask-candidates", type=int, default=50)
    ap.add_argument("--mask-updates", type=int, default=60)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    m = SRDiff(in_channels=1, scale=2, channels=(16, 32), attention_levels=(False, False), num_res_blocks=1,
               norm_num_groups=8, rrdb_blocks=2, rrdb_features=8, rrdb_growth=8, timesteps=100, pretrain_steps=0)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=2e-3)
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    for _ in range(args.train_steps):
        loss, _ = m.loss(pairs(16, g), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    lines = [f"training: {args.train_steps} steps in {time.time() - t0:.0f} s"]
    gb = torch.Generator().manual_seed(1)
    batches = [pairs(8, gb) for _ in range(4)]
    for kind, kw in (("bddm", {"fit_steps": 400}),
                     ("mask", {"fit_steps": args.mask_updates, "candidates": args.mask_candidates, "mask_samples": 4})):
        t0 = time.time()
        fit_learned_schedules(m, batches, kind=kind, steps=args.steps, n_batches=3, log=print, **kw)
        lines.append(f"{kind} fit ({', '.join(f'{k}={v}' for k, v in kw.items())}): {time.time() - t0:.0f} s")
    val = pairs(64, torch.Generator().manual_seed(5))
    hr = val["image"]

    def predict(sampler: str, steps: int, seed: int) -> torch.Tensor:
        return m.predict(val, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(seed))["prediction"]

    def mse(sampler: str, steps: int) -> float:
        return sum(float(((predict(sampler, steps, k) - hr) ** 2).mean()) for k in range(3)) / 3

    full = predict("ddim", 100, 0)
    rows = ["| chain | steps | HR MSE (learned) | HR MSE (evenly spaced) | dist. to DDIM-100 (learned) | "
            "dist. (evenly spaced) |", "|---|---|---|---|---|---|"]
    for kind, learned, base in (("bddm", "bddm", "ddpm"), ("mask", "masked", "ddim")):
        for n in fitted_steps(m.schedule, kind):
            d = ("-", "-")
            if kind == "mask":
                d = tuple(f"{float((predict(s, n, 0) - full).abs().mean()):.4f}" for s in (learned, base))
            rows.append(f"| {learned} vs {base} | {n} | {mse(learned, n):.5f} | {mse(base, n):.5f} | {d[0]} | {d[1]} |")
    rows.append(f"| ddpm (full chain) | 100 | {mse('ddpm', 100):.5f} | | | |")
    text = "\n".join(["# Learned chains on a trained phantom SRDiff (this 2-core CPU, shared, 1 thread)", "",
                      *[f"- {x}" for x in lines], "", *rows, ""])
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
