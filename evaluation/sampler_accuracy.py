"""Print the engine's sampler-accuracy table (Gaussian mixture with an exact denoiser).

Usage: python evaluation/sampler_accuracy.py [--n 4000] [--seed 0]
"""

import argparse

from medrs_diff.diffusion.accuracy import format_table, sampler_accuracy

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(format_table(sampler_accuracy(a.n, a.seed)))
