"""Print the engine's sampler-accuracy table (Gaussian mixture with an exact denoiser).

Usage: python evaluation/sampler_accuracy.py [--n 4000] [--seed 0] [--masks] [--bddm]
       [--out evaluation/results/sampler_accuracy.md]
"""

import argparse
import platform
from pathlib import Path

import torch

from medrs_diff.diffusion.accuracy import format_table, sampler_accuracy

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--masks", action="store_true", help="add learned step masks (EDDPM-style) for DDIM, ~1 min")
    p.add_argument("--bddm", action="store_true", help="add BDDM learned schedules (<= 5/10/20 steps), seconds")
    p.add_argument("--out", type=Path, default=None, help="also write the table (markdown) to this file")
    a = p.parse_args()
    table = format_table(sampler_accuracy(a.n, a.seed, masks=a.masks, bddm=a.bddm))
    print(table)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        flags = (" --masks" if a.masks else "") + (" --bddm" if a.bddm else "")
        cmd = f"python evaluation/sampler_accuracy.py --n {a.n} --seed {a.seed}{flags}"
        head = (f"# Sampler accuracy on the exact Gaussian mixture\n\n`{cmd}` (torch {torch.__version__}, "
                f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s)); linear schedule, T = 1000, "
                "two-mode mixture in 4 dimensions, all samplers from the same x_T. W1: mean per-coordinate "
                "1-D Wasserstein distance to exact samples.\n\n")
        a.out.write_text(head + table + "\n")
