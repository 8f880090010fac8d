"""DiffAE on real CT: autoencoding held-out axial slices, against PCA and an AutoencoderKL (the table of
`evaluation/results/diffae_ct/`).

Data: ``../shared/data/ct_mr_totalsegmentator/example_ct.nii.gz`` (one real abdominal CT, 122 x 101 x 112 at
3 mm, RAS). Every axial slice is clipped to -1000..1000 HU, padded with air to a square and resized (area) to
``--size`` pixels. The central ``--n-test`` slices are held out, with ``--gap`` slices on each side left unused
(neighbouring slices are nearly identical); the others train. One patient: the table measures how well each
code reconstructs unseen slices of that anatomy, not generalisation across patients.

Rows (each model trained ``--steps`` steps from its phantom recipe's architecture, same data, batch and
scaling: per-slice z-score):

- **DiffAE, z_sem + x_T**: the paper's autoencoding (x_T by DDIM inversion conditioned on z_sem, then DDIM
  decoding, ``--ddim-steps`` each): the code is z_sem plus a full-size x_T;
- **DiffAE, z_sem only**: z_sem with x_T ~ N(0, I) (``--draws`` draws, scores averaged): what the semantic code
  alone holds (paper Sec. 4.1's stochastic variations);
- **PCA**: the best linear code of the same size as z_sem, fitted on the training slices (z-scored as the
  models see them), the closed-form baseline;
- **AutoencoderKL**: MONAI's KL autoencoder (latent 3 x size/4 x size/4), posterior mean decoded;
- **VQ-VAE**: MONAI's VQVAE (``autoencoder_vq_phantom2d``: 256 codes of 3 numbers at size/4 x size/4).

Scores on the held-out slices in HU: PSNR (data range 2000 HU), SSIM (Gaussian 11 px, same range) and MAE.

    python evaluation/diffae_table.py --out-dir evaluation/results/diffae_ct      # the table (CPU, ~30 min)
    python evaluation/diffae_table.py --smoke --out-dir /tmp/diffae_smoke            # 3 steps each, a quick check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.recipe_runs import fit_recipe  # noqa: E402
from medrs_diff.data.scaling import resolve  # noqa: E402
from medrs_diff.inference import Predictor  # noqa: E402
from medrs_diff.inference.tiling import input_scaling  # noqa: E402
from medrs_diff.io.nifti import write_nifti  # noqa: E402
from medrs_diff.metrics import psnr, ssim  # noqa: E402

CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct_mr_totalsegmentator" / "example_ct.nii.gz"
HU = (-1000.0, 1000.0)


def ct_slices(path: Path, size: int) -> np.ndarray:
    """(Z, size, size) float32 HU: axial slices of the RAS volume, clipped, padded with air, area-resized."""
    vol = np.asarray(nib.as_closest_canonical(nib.load(str(path))).get_fdata(), np.float32)
    vol = np.clip(vol, *HU)
    x, y, z = vol.shape
    side = max(x, y)
    pad = np.full((side, side, z), HU[0], np.float32)
    pad[(side - x) // 2:(side - x) // 2 + x, (side - y) // 2:(side - y) // 2 + y] = vol
    t = torch.from_numpy(pad).permute(2, 1, 0)[:, None]  # (Z, 1, Y, X): image rows = anterior-posterior
    return F.interpolate(t, size=(size, size), mode="area")[:, 0].flip(1).numpy()


def split(n: int, n_test: int, gap: int) -> tuple[list[int], list[int]]:
    """(train, test) slice indices: the central ``n_test`` held out, ``gap`` unused slices on each side."""
    lo = (n - n_test) // 2
    test = list(range(lo, lo + n_test))
    train = [i for i in range(n) if i < lo - gap or i >= lo + n_test + gap]
    return train, test


def write_layout(root: Path, slices: np.ndarray, train: list[int], test: list[int]) -> None:
    """``healthy/`` (training) and ``lesion/`` (held out, empty masks) 2-D NIfTI slices, 3 mm pixels."""
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    for i in train:
        write_nifti(slices[i], root / "healthy" / f"ct_z{i:03d}_image.nii.gz", affine)
    for i in test:
        write_nifti(slices[i], root / "lesion" / f"ct_z{i:03d}_image.nii.gz", affine)
        write_nifti(np.zeros_like(slices[i], np.uint8), root / "lesion" / f"ct_z{i:03d}_label.nii.gz", affine)


def zscore(a: np.ndarray) -> tuple[np.ndarray, float, float]:
    m, s = float(a.mean()), float(a.std())
    return (a - m) / s, m, s


def pca_recon(train: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    """Reconstruct each z-scored test slice from the top ``k`` principal components of the z-scored training
    slices (back to HU with the slice's own mean / std, as the models' per-slice z-score)."""
    z_train = np.stack([zscore(a)[0].ravel() for a in train])
    mean = z_train.mean(0)
    _, _, vt = np.linalg.svd(z_train - mean, full_matrices=False)
    basis = vt[:k]
    out = []
    for a in test:
        z, m, s = zscore(a)
        v = z.ravel() - mean
        out.append(((basis.T @ (basis @ v) + mean).reshape(a.shape)) * s + m)
    return np.stack(out)


def scores(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    p, r = torch.from_numpy(pred[:, None]).double(), torch.from_numpy(ref[:, None]).double()
    rng = HU[1] - HU[0]
    return {"psnr": float(psnr(p, r, rng).mean()), "ssim": float(ssim(p, r, rng).mean()),
            "mae_hu": float((p - r).abs().mean())}


def diffae_rows(ckpt: Path, test: np.ndarray, steps: int, draws: int, seed: int) -> dict[str, np.ndarray]:
    """Full reconstructions (z_sem + inverted x_T) through the Predictor (the `infer` path), and z_sem-only ones
    (x_T ~ N(0, I), ``draws`` per slice) from the same model-space input."""
    pred = Predictor.from_checkpoint(ckpt)
    m = pred.method
    full, sem = [], []
    for i, a in enumerate(test):
        full.append(pred.predict_array(a, steps=steps, seed=seed, case=f"slice{i}")["prediction"][0])
        t = torch.from_numpy(a)[None]
        scaling = resolve(input_scaling(pred.scaling, pred.channelwise), t)
        x = scaling.forward(t)[None]
        with torch.no_grad():
            z, _ = m.encode(x, steps)
            g = torch.Generator().manual_seed(seed + i)
            xs = [m.decode(z, torch.randn(x.shape, generator=g), steps) for _ in range(draws)]
        sem.append(np.stack([scaling.inverse(y[0]).numpy()[0] for y in xs]))
    return {"full": np.stack(full), "sem": np.stack(sem)}  # (N, H, W), (N, draws, H, W)


def autoencoded(ckpt: Path, slices: np.ndarray) -> np.ndarray:
    """Each slice through an autoencoder checkpoint's Predictor (the `infer` path), the checkpoint read once."""
    pred = Predictor.from_checkpoint(ckpt)
    return np.stack([pred.predict_array(a, case=f"slice{i}")["prediction"][0] for i, a in enumerate(slices)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct", type=Path, default=CT)
    p.add_argument("--out-dir", type=Path, default=Path("diffae_ct_out"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-test", type=int, default=16)
    p.add_argument("--gap", type=int, default=4)
    p.add_argument("--steps", type=int, default=3000, help="training steps of every model")
    p.add_argument("--z-dim", type=int, default=64, help="DiffAE z_sem size (PCA keeps as many components)")
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="3 steps each, 2 test slices, 2 DDIM steps")
    args = p.parse_args()
    if args.smoke:
        args.steps, args.n_test, args.ddim_steps, args.draws = 3, 2, 2, 1
    if not args.ct.is_file():
        raise SystemExit(f"diffae_table.py: {args.ct} does not exist; pass --ct (the shared data's example_ct.nii.gz)")
    t0 = time.perf_counter()
    work = args.out_dir
    slices = ct_slices(args.ct, args.size)
    train, test = split(len(slices), args.n_test, args.gap)
    data_root = work / "data"
    write_layout(data_root, slices, train, test)
    data = {"root": str(data_root), "phantoms": 0, "val_phantoms": 0, "batch_size": 16}
    timings = {}
    start = time.perf_counter()
    diffae = fit_recipe("diffae_brain_phantom", work, "diffae", steps=args.steps, data=data,
                        method={"z_dim": args.z_dim, "latent": False, "sampling_steps": args.ddim_steps},
                        drop_method=("latent_hidden", "latent_layers", "latent_t_dim", "latent_timesteps",
                                     "latent_beta", "latent_loss", "latent_start_step", "latent_stats_batches",
                                     "latent_freeze_autoencoder", "latent_sampling_steps", "latent_ema"))
    timings["DiffAE"] = time.perf_counter() - start
    start = time.perf_counter()
    aekl = fit_recipe("autoencoder_kl_phantom2d", work, "autoencoder_kl", steps=args.steps, data=data)
    timings["AutoencoderKL"] = time.perf_counter() - start
    start = time.perf_counter()
    aevq = fit_recipe("autoencoder_vq_phantom2d", work, "autoencoder_vq", steps=args.steps, data=data)
    timings["VQ-VAE"] = time.perf_counter() - start
    ref = slices[test]
    d = diffae_rows(diffae, ref, args.ddim_steps, args.draws, args.seed)
    ae, vq = autoencoded(aekl, ref), autoencoded(aevq, ref)
    k = min(args.z_dim, len(train) - 1)
    pc = pca_recon(slices[train], ref, k)
    rows = {
        f"DiffAE, z_sem ({args.z_dim}) + x_T by DDIM inversion ({args.ddim_steps} steps)": (scores(d["full"], ref),
                                                                                         args.z_dim + args.size ** 2),
        f"DiffAE, z_sem ({args.z_dim}) only, x_T ~ N(0, I) (mean over {args.draws} draws)": (
            {key: float(np.mean([scores(d["sem"][:, j], ref)[key] for j in range(args.draws)]))
             for key in ("psnr", "ssim", "mae_hu")}, args.z_dim),
        f"PCA, {k} components (training slices)": (scores(pc, ref), k),
        f"AutoencoderKL (latent 3 x {args.size // 4} x {args.size // 4}), posterior mean": (
            scores(ae, ref), 3 * (args.size // 4) ** 2),
        f"VQ-VAE (256 codes, grid {args.size // 4} x {args.size // 4})": (scores(vq, ref), (args.size // 4) ** 2),
    }
    out = work / "diffae_table.md"
    head = (f"DiffAE on real CT ({args.ct.name}, one abdominal CT, 3 mm): axial slices clipped to {HU[0]:g}..{HU[1]:g}"
            f" HU, padded square, resized to {args.size} x {args.size}; {len(train)} training slices, {len(test)} "
            f"held-out central slices ({args.gap} unused on each side). Every model {args.steps} steps, batch 16, "
            f"per-slice z-score. Scores on the held-out slices in HU (PSNR and SSIM with data range 2000 HU). "
            f"Training: DiffAE {timings['DiffAE']:.0f} s, AutoencoderKL {timings['AutoencoderKL']:.0f} s, "
            f"VQ-VAE {timings['VQ-VAE']:.0f} s; "
            f"whole run {time.perf_counter() - t0:.0f} s on {torch.get_num_threads()} CPU thread(s).")
    lines = ["| model | code size (numbers) | PSNR dB | SSIM | MAE HU |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {size} | {s['psnr']:.2f} | {s['ssim']:.3f} | {s['mae_hu']:.1f} |"
              for name, (s, size) in rows.items()]
    out.write_text(head + "\n\n" + "\n".join(lines) + "\n")
    (work / "diffae_table.json").write_text(json.dumps(
        {"settings": {k: str(v) for k, v in vars(args).items()}, "rows": {n: s for n, (s, _) in rows.items()},
         "train_slices": train, "test_slices": test, "seconds": timings}, indent=2) + "\n")
    from medrs_diff.viz.panels import save_panel

    cols = {"reference": ref, "DiffAE z_sem + x_T": d["full"], "DiffAE z_sem only": d["sem"][:, 0], "PCA": pc,
            "AutoencoderKL": ae, "VQ-VAE": vq}
    save_panel(work / "diffae_panel.png", {k: torch.from_numpy(np.clip(v, *HU).astype(np.float32))[:, None]
                                           for k, v in cols.items()},
               max_rows=4, title="held-out CT slices (HU clipped to -1000..1000, one range per row)",
               shared=tuple(cols))
    print(head)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
