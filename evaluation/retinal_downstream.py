"""The retinal dual model's downstream protocol (issue 15, as in the paper): a segmenter trained on (a) real pairs,
(b) synthetic pairs only, (c) real + synthetic, tested on held-out real images, scored inside the FOV (Dice,
Jaccard, sensitivity, specificity, MCC; :func:`~medrs_diff.evaluation.fundus_baselines.fov_scores`).

Default: everything on vessel-tree phantoms (``medrs_diff.data.retina_phantoms``) at a CPU size. Steps:

1. ``--n-real`` + ``--n-test`` phantom cases are written in the HRF layout (the last ``--n-test`` names are held
   out from every training below);
2. the mask and image DDPMs are fitted from their phantom recipes (``retinal_mask_ddpm_hrf_phantom``,
   ``retinal_image_ddpm_hrf_phantom``; ``--net`` picks the net) on the real training cases, or given with
   ``--mask-checkpoint`` / ``--image-checkpoint``;
3. ``--n-synth`` pairs are drawn with :func:`~medrs_diff.inference.generate.generate_pairs` (what ``medrs-diff
   generate`` runs);
4. each segmenter of ``--segmenters`` (the paper's protocol names two: the smp UNet baseline,
   ``smp_unet_fundus_phantom``, and SegDiff, ``segdiff_fundus_phantom`` sampled as its recipe says) is trained for
   ``--seg-steps`` steps on each of the three sets and segments the held-out real cases through the Predictor (the
   ``infer`` path).

    python evaluation/retinal_downstream.py --out-dir /tmp/downstream            # the note's table
    python evaluation/retinal_downstream.py --smoke                              # 2 steps each, a quick check
    python evaluation/retinal_downstream.py --real-root ../shared/data/fundus_hrf --resize 96 144 \
        --mask-checkpoint MASK.ckpt --image-checkpoint IMAGE.ckpt --n-test 3     # real HRF (trained DDPMs)

Writes ``<out-dir>/downstream.md`` and ``downstream.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.recipe_runs import fit_recipe  # noqa: E402
from medrs_diff.datamodules.clinical2d import Clinical2DSegmentationDataModule  # noqa: E402
from medrs_diff.evaluation.fundus_baselines import SCORES, fov_scores  # noqa: E402
from medrs_diff.inference import Predictor  # noqa: E402
from medrs_diff.inference.generate import generate_pairs  # noqa: E402


def write_real(root: Path, n: int, size: int, seed: int) -> list[str]:
    """``n`` phantom cases in the HRF layout under ``root``; returns the image stems (sorted)."""
    dm = Clinical2DSegmentationDataModule(str(root), layout="hrf", phantoms=n, phantom_size=[size, size],
                                          phantom_kind="retina", phantom_seed=seed)
    dm.prepare_data()
    return sorted(p.stem for p in (root / "images").iterdir())


def fit(recipe: str, work: Path, name: str, data: dict[str, Any], method: dict[str, Any], steps: int,
        lr: float | None = None) -> Path:
    """Fit a phantom recipe on real folders (its phantom options dropped) for ``steps`` steps; the last
    checkpoint."""
    return fit_recipe(recipe, work, name, steps=steps, data=data, method=method, lr=lr,
                      drop_data=("phantoms", "phantom_kind"))


def merged(real: Path, synth: Path, train_stems: list[str], out: Path) -> Path:
    """A folder with the real training pairs and every synthetic pair (HRF layout)."""
    for sub in ("images", "manual1", "mask"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for src in (real, synth):
            for p in (src / sub).iterdir():
                stem = p.stem.removesuffix("_mask")
                if src is real and stem not in train_stems:
                    continue
                shutil.copy2(p, out / sub / p.name)
    return out


def score(ckpt: Path, real: Path, test: list[str], size: list[int], seed: int) -> dict[str, float]:
    """Mean FOV scores of the held-out real cases segmented through the Predictor."""
    dm = Clinical2DSegmentationDataModule(str(real), layout="hrf", resize=list(size), val_cases=test)
    dm.setup("fit")
    predictor = Predictor.from_checkpoint(ckpt)
    per = []
    for i in range(len(dm.val_dataset)):
        it = dm.val_dataset[i]
        rgb = it["image"].numpy() * 127.5 + 127.5
        out = predictor.predict_array(rgb, seed=seed + i, case=it["case"])
        per.append(fov_scores(np.asarray(out["prediction"])[0] > 0, it["label"][0].numpy() > 0,
                              it["fov"][0].numpy() > 0))
    return {k: float(np.mean([p[k] for p in per])) for k in SCORES}


#: downstream segmenters: name -> (phantom recipe, table label)
SEGMENTERS = {"smp": ("smp_unet_fundus_phantom", "smp UNet"), "segdiff": ("segdiff_fundus_phantom", "SegDiff")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="downstream_out")
    p.add_argument("--size", type=int, default=48, help="phantom size (square)")
    p.add_argument("--real-root", default=None, help="real pairs in the HRF layout instead of phantoms")
    p.add_argument("--resize", type=int, nargs=2, default=None, help="H W (default: --size --size)")
    p.add_argument("--n-real", type=int, default=16)
    p.add_argument("--n-test", type=int, default=4)
    p.add_argument("--n-synth", type=int, default=32)
    p.add_argument("--ddpm-steps", type=int, default=800)
    p.add_argument("--ddpm-lr", type=float, default=2e-3,
                   help="DDPM learning rate (default 2e-3 for short CPU runs; the recipes' 2e-4 needs far more steps)")
    p.add_argument("--seg-steps", type=int, default=300)
    p.add_argument("--segmenters", nargs="+", default=list(SEGMENTERS), choices=list(SEGMENTERS),
                   help="segmenters trained on each set (default: both of the paper's protocol)")
    p.add_argument("--net", default="monai", choices=("monai", "light_unet"))
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--steps", type=int, default=100, help="sampling steps of generate")
    p.add_argument("--mask-checkpoint", default=None)
    p.add_argument("--image-checkpoint", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if args.smoke:
        args.ddpm_steps, args.seg_steps, args.n_synth, args.steps, args.n_real = 2, 2, 4, 2, 6
    work = Path(args.out_dir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    hw = list(args.resize) if args.resize else [args.size, args.size]
    if args.real_root:
        real_root = Path(args.real_root)
        stems = sorted(p.stem for p in (real_root / "images").iterdir() if not p.name.startswith("."))
    else:
        real_root = work / "real"
        stems = write_real(real_root, args.n_real + args.n_test, args.size, args.seed)
    test, train_stems = stems[-args.n_test:], stems[:-args.n_test]
    monai = {"net": "monai", "channels": [16, 32, 32], "attention_levels": [False, False, False],
             "num_res_blocks": 1, "num_head_channels": 16}
    method = monai if args.net == "monai" else {}
    data = {"root": str(real_root), "resize": hw, "val_cases": test, "batch_size": 8}
    mask_ckpt = args.mask_checkpoint or fit("retinal_mask_ddpm_hrf_phantom", work, "mask_ddpm", data, method,
                                            args.ddpm_steps, args.ddpm_lr)
    image_ckpt = args.image_checkpoint or fit("retinal_image_ddpm_hrf_phantom", work, "image_ddpm", data, method,
                                              args.ddpm_steps, args.ddpm_lr)
    t_ddpm = time.perf_counter() - t0
    synth = work / "synth"
    generate_pairs(mask_ckpt, synth, args.n_synth, image_checkpoint=image_ckpt, seed=args.seed,
                   sampler=args.sampler, steps=args.steps, size=tuple(hw), batch=8)
    t_gen = time.perf_counter() - t0 - t_ddpm
    both = merged(real_root, synth, train_stems, work / "both")
    seg_data = {"resize": hw, "patch_size": [32, 32], "samples_per_epoch": 64,
                "batch_size": 8}
    sets = {"real": (real_root, test), "synthetic": (synth, [f"synth_{args.n_synth - 1:05d}"]),
            "real + synthetic": (both, [f"synth_{args.n_synth - 1:05d}"])}
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for seg in args.segmenters:
        recipe, label = SEGMENTERS[seg]
        for name, (root, held) in sets.items():
            ckpt = fit(recipe, work, f"{seg}_" + name.replace(" + ", "_"),
                       {**seg_data, "root": str(root), "val_cases": held}, {}, args.seg_steps)
            rows.setdefault(label, {})[name] = score(ckpt, real_root, test, hw, args.seed)
    lines = ["| segmenter | training pairs | " + " | ".join(SCORES) + " |", "|---" * (len(SCORES) + 2) + "|"]
    lines += [f"| {seg} | {k} | " + " | ".join(f"{v[s]:.3f}" for s in SCORES) + " |"
              for seg, per in rows.items() for k, v in per.items()]
    data_name = args.real_root or "phantoms"
    head = (f"Retinal dual model downstream on {data_name}: {hw[0]} x {hw[1]}, {len(train_stems)} real training "
            f"pairs, {args.n_synth} synthetic, {len(test)} held-out real test cases; DDPMs ({args.net}) "
            f"{args.ddpm_steps} steps each (lr {args.ddpm_lr:g}), generate {args.sampler} {args.steps} steps, "
            f"segmenters ({', '.join(SEGMENTERS[s][1] for s in args.segmenters)}) {args.seg_steps} steps each. "
            f"Scores inside the FOV (mean over test cases). DDPM training "
            f"{t_ddpm:.0f} s, generation {t_gen:.0f} s, total {time.perf_counter() - t0:.0f} s.")
    (work / "downstream.md").write_text(head + "\n\n" + "\n".join(lines) + "\n")
    (work / "downstream.json").write_text(json.dumps({"settings": vars(args), "scores": rows}, indent=2) + "\n")
    print(head)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
