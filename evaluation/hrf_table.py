"""The HRF fundus-vessel table (issue 12): SegDiff, MedSegDiff V1, MedSegDiff-V2 and the smp UNet baseline
trained with the same number of optimizer steps on the same 9 real HRF cases, scored inside the field of
view on the same 3 held-out cases, next to two trivial rows (all background; thresholded green channel).

Every model is trained from its packaged recipe (``segdiff_fundus``, ``medsegdiff_v1_fundus``,
``medsegdiff_v2_fundus``, ``smp_unet_fundus``) through ``medrs-diff fit`` with the same overrides: the data
root, ``--steps`` optimizer steps, the explicit split ``val_cases`` = 04_dr, 04_g, 04_h (the three last file
names, one per class: what the recipes' ``val_fraction: 0.25`` also picks), the same ``resize`` and
``patch_size``, and no validation during training (the last checkpoint is scored). The held-out cases are then
segmented through :class:`~medrs_diff.inference.Predictor` (what ``medrs-diff infer`` runs: blended sliding
windows of the training patch size) with each recipe's sampler (DPM-Solver++, 20 steps, ensemble 5;
MedSegDiff V1 is pure diffusion: calibration off; the opt-in row ``medsegdiff_v1_repo_input`` is the same
recipe with ``image_in_diffusion_encoder: true``, the official code's input path), and scored at the resized
resolution with :func:`~medrs_diff.evaluation.fundus_baselines.fov_scores` (labels and FOV resized nearest by
the data module).

    python evaluation/hrf_table.py                       # the note's table (--steps 600)
    python evaluation/hrf_table.py --smoke               # tiny, for a quick check (no files written)
    python evaluation/hrf_table.py --models segdiff smp_unet --steps 200 --out-dir /tmp/hrf
    python evaluation/hrf_table.py --models medsegdiff_v2 --steps 200 --resize 144 216 --json scores.json
    python evaluation/hrf_table.py --models medsegdiff_v1_repo_input --out-dir evaluation/results/hrf_600_v1_repo_input

The green baseline's one parameter (the median-filter width) is chosen on the 9 training cases (best mean
FOV Dice), never on the test cases. Writes ``<out-dir>/hrf_table.md`` and ``<out-dir>/hrf_panel.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.recipe_runs import fit_recipe  # noqa: E402
from medrs_diff.datamodules.clinical2d import Clinical2DSegmentationDataModule  # noqa: E402
from medrs_diff.evaluation.fundus_baselines import SCORES, all_background, fov_scores, green_vessels  # noqa: E402
from medrs_diff.inference import Predictor  # noqa: E402
from medrs_diff.train.recipe import resolve_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fundus_hrf"
#: the held-out cases: the last three image file names (04_dr.JPG, 04_g.jpg, 04_h.jpg), one per class
TEST_CASES = ["04_dr", "04_g", "04_h"]
#: table name -> packaged recipe
RECIPES = {"segdiff": "segdiff_fundus", "medsegdiff_v1": "medsegdiff_v1_fundus",
           "medsegdiff_v2": "medsegdiff_v2_fundus", "smp_unet": "smp_unet_fundus",
           "medsegdiff_v1_repo_input": "medsegdiff_v1_fundus"}
#: table name -> method arguments set over its recipe's (the official code's input path for V1)
METHOD_OVERRIDES = {"medsegdiff_v1_repo_input": {"image_in_diffusion_encoder": True}}
LABELS = {"segdiff": "SegDiff", "medsegdiff_v1": "MedSegDiff V1 (pure diffusion)", "medsegdiff_v2": "MedSegDiff-V2",
          "smp_unet": "smp UNet (resnet18, random init)",
          "medsegdiff_v1_repo_input": "MedSegDiff V1 ([image, x_t] into the diffusion encoder, official code)"}
#: short column titles of the panel
PANEL_TITLES = {"segdiff": "SegDiff", "medsegdiff_v1": "MedSegDiff V1", "medsegdiff_v2": "MedSegDiff-V2",
                "smp_unet": "smp UNet", "medsegdiff_v1_repo_input": "V1, official input"}
#: candidate median-filter widths (pixels at the resized resolution) for the green baseline
BACKGROUNDS = (7, 9, 11, 15, 21)

Case = dict[str, Any]  # name, rgb (3, H, W) 8-bit values as float32, label (H, W) bool, fov (H, W) bool


def load_cases(root: Path, resize: list[int], patch: list[int], train: bool) -> list[Case]:
    """The held-out (``train=False``) or training cases at ``resize``, read by the recipes' data module."""
    dm = Clinical2DSegmentationDataModule(root=str(root), layout="hrf", channels="rgb", scaling="dn8", resize=resize,
                                          patch_size=patch, val_cases=TEST_CASES)
    dm.setup("fit")
    if train:  # whole resized training images (the training dataset itself yields patches)
        ds = dm._items(dm.train_dataset.records, False)
    else:
        ds = dm.val_dataset
    out = []
    for i in range(len(ds)):
        it = ds[i]
        out.append({"name": it["case"], "rgb": (it["image"].numpy() * 127.5 + 127.5).astype(np.float32),
                    "label": it["label"].numpy()[0] > 0, "fov": it["fov"].numpy()[0] > 0})
    return out


def choose_background(train_cases: list[Case], candidates: tuple[int, ...] = BACKGROUNDS) -> int:
    """The median-filter width of :func:`green_vessels` with the best mean FOV Dice on ``train_cases``."""
    def mean_dice(bg: int) -> float:
        return float(np.mean([fov_scores(green_vessels(c["rgb"], c["fov"], bg), c["label"], c["fov"])["dice"]
                              for c in train_cases]))
    return max(candidates, key=mean_dice)


def train(model: str, work: Path, args: argparse.Namespace) -> tuple[Path, float]:
    """Fit ``model``'s packaged recipe with the table's shared overrides for ``args.steps`` steps under ``work``;
    (last checkpoint, seconds)."""
    recipe = yaml.safe_load(resolve_recipe(RECIPES[model]).read_text())
    method = {**recipe["model"]["init_args"]["method"]["init_args"], **METHOD_OVERRIDES.get(model, {})}
    if model.startswith("medsegdiff_v1") and method.get("calibration", False):
        raise SystemExit("hrf_table.py: medsegdiff_v1_fundus has calibration on; the table reports pure diffusion")
    start = time.perf_counter()
    ckpt = fit_recipe(RECIPES[model], work, model, steps=args.steps, method=METHOD_OVERRIDES.get(model, {}),
                      data=dict(root=str(args.root), resize=list(args.resize), patch_size=list(args.patch),
                                val_cases=TEST_CASES, batch_size=args.batch, seed=args.data_seed), seed=args.seed)
    return ckpt, time.perf_counter() - start


def segment(ckpt: Path, cases: list[Case], args: argparse.Namespace) -> tuple[list[np.ndarray], float, str]:
    """Binary masks of ``cases`` through the Predictor (the infer path), seconds, and the sampling used."""
    predictor = Predictor.from_checkpoint(ckpt, device=args.device)
    m = predictor.method
    sampler = getattr(m, "sampler", None)
    used = ("no sampling (one forward pass)" if sampler is None else
            f"{sampler}, {getattr(m, 'sampling_steps', '?')} steps, ensemble {getattr(m, 'n_samples', '?')} "
            f"({getattr(m, 'fusion', '?')} fusion), T = {len(m.schedule.timesteps)}")
    start = time.perf_counter()
    masks = []
    for i, c in enumerate(cases):
        out = predictor.predict_array(c["rgb"], seed=args.seed + i, case=c["name"], batch=args.window_batch)
        masks.append(np.asarray(out["prediction"]).reshape(c["fov"].shape) > 0)
    return masks, time.perf_counter() - start, used


def mean_scores(masks: list[np.ndarray], cases: list[Case]) -> dict[str, float]:
    """Per-case FOV scores averaged over the cases."""
    per = [fov_scores(m, c["label"], c["fov"]) for m, c in zip(masks, cases, strict=True)]
    return {k: float(np.mean([p[k] for p in per])) for k in SCORES}


def write_panel(path: Path, cases: list[Case], columns: dict[str, list[np.ndarray]]) -> None:
    """image | truth | each row of ``columns``, one row per case (medrs_diff.viz.panels.save_panel)."""
    from medrs_diff.viz.panels import save_panel

    def batch(planes: list[np.ndarray]) -> torch.Tensor:
        return torch.stack([torch.as_tensor(np.asarray(p, dtype=np.float32))[None] for p in planes])

    cols: dict[str, torch.Tensor] = {"image": torch.stack([torch.as_tensor(c["rgb"]) for c in cases]),
                                     "truth": batch([c["label"] for c in cases])}
    cols.update({name: batch(masks) for name, masks in columns.items()})
    save_panel(path, cols, max_rows=len(cases), title="HRF held-out cases 04_dr, 04_g, 04_h (vessel masks)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", type=Path, default=ROOT.resolve(), help="the fundus_hrf folder (HRF layout)")
    p.add_argument("--models", nargs="+", default=[m for m in RECIPES if m not in METHOD_OVERRIDES],
                   choices=list(RECIPES), help="default: every row but the switch variants (%(default)s)")
    p.add_argument("--steps", type=int, default=600, help="optimizer steps, the same for every model")
    p.add_argument("--resize", type=int, nargs=2, default=[288, 432], help="H W every case is resized to")
    p.add_argument("--patch", type=int, nargs=2, default=[64, 64], help="training patch (and inference window)")
    p.add_argument("--batch", type=int, default=8, help="training batch size")
    p.add_argument("--window-batch", type=int, default=8, help="sliding windows per forward pass at inference")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0,
                   help="training seed (seed_everything: the network's initialisation; the task's seed: its training "
                        "noise) and the first sampling seed (case i: seed + i)")
    p.add_argument("--data-seed", type=int, default=0,
                   help="the data module's seed: the order and the random patches of training")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="10 steps, 2 models, nothing written")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--json", type=Path, default=None,
                   help="also write every row's mean FOV scores here as JSON ({row name: {score: value}})")
    args = p.parse_args()
    if args.steps < 1:
        raise SystemExit(f"hrf_table.py: --steps must be >= 1, got {args.steps}")
    if not (args.root / "images").is_dir():
        raise SystemExit(f"hrf_table.py: {args.root}/images not found; pass --root pointing at shared/data/fundus_hrf")
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.steps, args.models = 10, ["segdiff", "smp_unet"]
    t0 = time.perf_counter()
    test = load_cases(args.root, args.resize, args.patch, train=False)
    bg = choose_background(load_cases(args.root, args.resize, args.patch, train=True))
    print(f"green baseline: median width {bg} px (chosen on the 9 training cases)", flush=True)
    masks = {"All background": [all_background(c["fov"]) for c in test],
             "Green channel": [green_vessels(c["rgb"], c["fov"], bg) for c in test]}
    baseline_rows = {"All background": "All background", "Green channel": f"Green channel (median {bg} px, Otsu)"}
    rows = [(baseline_rows[name], mean_scores(m, test), "-", "-", "none") for name, m in masks.items()]
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            print(f"== {model}: training {args.steps} steps", flush=True)
            ckpt, train_s = train(model, Path(tmp), args)
            print(f"== {model}: trained in {train_s:.0f} s; segmenting {len(test)} cases", flush=True)
            pred, infer_s, used = segment(ckpt, test, args)
            masks[PANEL_TITLES[model]] = pred
            rows.append((LABELS[model], mean_scores(pred, test), f"{train_s:.0f}", f"{infer_s / len(test):.1f}", used))
            print(f"== {model}: FOV Dice {rows[-1][1]['dice']:.4f}, {infer_s / len(test):.1f} s/case ({used})",
                  flush=True)
    total = time.perf_counter() - t0
    lines = [
        f"HRF vessels (../shared/data/fundus_hrf): train 9 cases, test {', '.join(c['name'] for c in test)}; "
        f"every case resized to {args.resize[0]} x {args.resize[1]} (1/8 of 2336 x 3504), training on random "
        f"{args.patch[0]} x {args.patch[1]} patches (batch {args.batch}), {args.steps} optimizer steps for every "
        f"model, seed {args.seed} (data seed {args.data_seed}), no validation during training, last EMA weights "
        "scored.",
        f"Inference: Predictor (the `medrs-diff infer` path), Gaussian-blended sliding windows of "
        f"{args.patch[0]} x {args.patch[1]}, overlap 0.25. Scores per case inside the field of view at the resized "
        "resolution (labels and FOV resized nearest), then averaged over the 3 test cases.",
        f"Machine: {platform.processor() or platform.machine()}, {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s) (CPU shared with other jobs); whole run {total:.0f} s.",
        f"Green channel baseline: inverted green, outside-FOV pixels set to the FOV median, minus a {bg}-px median "
        f"filter, Otsu threshold on the FOV pixels (width chosen from {list(BACKGROUNDS)} on the training cases).",
        "",
        "| method | Dice | Jaccard | sensitivity | specificity | MCC | train s | infer s / case | sampling |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {name} | " + " | ".join(f"{s[k]:.4f}" for k in SCORES) + f" | {tr} | {inf} | {used} |"
              for name, s, tr, inf, used in rows]
    table = "\n".join(lines)
    print(table)
    if args.json is not None:
        args.json.write_text(json.dumps({name: s for name, s, *_ in rows}, indent=1))
    if not args.smoke:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "hrf_table.md").write_text(table + "\n")
        write_panel(args.out_dir / "hrf_panel.png", test, {k: v for k, v in masks.items() if k != "All background"})
        print(f"wrote {args.out_dir / 'hrf_table.md'} and {args.out_dir / 'hrf_panel.png'}")


if __name__ == "__main__":
    main()
