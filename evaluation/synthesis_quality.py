"""Synthesis quality of the retinal dual model (issue 15): FID, KID and MS-SSIM diversity of generated fundus
images (``medrs-diff generate``'s ``images/``) against real ones, on features of an offline network.

    python evaluation/synthesis_quality.py REAL_IMAGES/ SYNTH/images/ --features smp:runs/smp/last.ckpt
    python evaluation/synthesis_quality.py REAL/ SYNTH/images/ --features inception:inception_v3.pth --json q.json

Both folders are read as 8-bit images in [0, 1]; real images of another size are resized (bilinear, antialiased)
to the generated size. Feature networks and the definitions: :mod:`medrs_diff.evaluation.synthesis` (printed
with the scores). Nothing is downloaded: the Inception weights come from a local file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrs_diff.evaluation.synthesis import feature_network, load_png_folder, synthesis_scores  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("real", help="folder of real images (PNG / JPEG, one size)")
    p.add_argument("generated", help="folder of generated images (generate's images/)")
    p.add_argument("--features", required=True, help="inception:WEIGHTS.pth or smp:SEGMENTER.ckpt")
    p.add_argument("--kid-subsets", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the scores and definitions here")
    args = p.parse_args(argv)
    real, fake = load_png_folder(args.real), load_png_folder(args.generated)
    if real.shape[-2:] != fake.shape[-2:]:
        real = F.interpolate(real, size=fake.shape[-2:], mode="bilinear", align_corners=False,
                             antialias=True).clamp(0, 1)
    scores = synthesis_scores(real, fake, feature_network(args.features), kid_subsets=args.kid_subsets,
                              seed=args.seed)
    scores["features"] = args.features
    for k in ("fid", "kid_mean", "kid_std", "ms_ssim_diversity"):
        print(f"{k:18s} {scores[k]:.5g}    {scores['definitions'][k]}")
    if args.json:
        Path(args.json).write_text(json.dumps(scores, indent=2) + "\n")
    return scores


if __name__ == "__main__":
    main()
