"""DDFM vs simple fusion baselines: EN, SD, MI, VIF, Qabf, SSIM on phantom pairs and a real-MR smoke run.

Phantoms: registered PET-like (a, intensity source) / MRI-like (b, gradient source) pairs, 32 x 32
(:mod:`medrs_diff.data.fusion_phantoms`); a tiny unconditional prior is trained on the MRI-like images
of the training pairs, then the held-out pairs are fused by DDFM (DDIM 100 steps, eta 0, one EM step
per reverse step, lambda 0.5, rho 0.01) in both EM variants (``official``: the published code's model;
``objective``: the bare L1 + gradient-TV objective), beside the average (a + b) / 2, the pixelwise
maximum (max-abs; the images are >= 0), a alone and b alone.

Real smoke: the shared TotalSegmentator example MR (``example_mr_sm.nii.gz``, 3 mm, LPS) is the only
real MR; the shared CT is another acquisition on another grid (not registered to it), so the second
modality is **synthetic**: a PET-like uptake map made from the MR's own organ labels
(``example_seg_mr.nii.gz``, model-generated), blurred, plus a hot lesion, registered by construction.
A prior is trained briefly on the MR's axial slices (64 x 64 centre crops) and fuses held-out slices.

All runs on the CPU, one thread; MI is reported with 256 bins (the convention) and with 32 bins
(``MI32``: small images leave a 256 x 256 joint histogram nearly empty).

    OMP_NUM_THREADS=1 python evaluation/ddfm_table.py --out evaluation/results/ddfm
    python evaluation/ddfm_table.py --smoke       # a few steps (CI / a quick look)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medrs_diff.metrics.fusion import FUSION_KEYS, fusion_scores, mutual_information  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "ct_mr_totalsegmentator"
TINY = dict(channels=(16, 32, 32), attention_levels=(False, False, False), num_res_blocks=1, num_head_channels=16,
            norm_num_groups=8)


def train_prior(images: torch.Tensor, steps: int, seed: int = 0, lr: float = 2e-3, batch: int = 16):
    """A tiny DDFM prior trained on ``images`` (N, 1, H, W) in [-1, 1] with Adam + EMA (0.99); returns the method."""
    from medrs_diff.methods import DDFM

    torch.manual_seed(seed)
    m = DDFM(prior_channels=None, **TINY)
    ema = {k: v.detach().clone() for k, v in m.state_dict().items()}
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    m.train()
    for _ in range(steps):
        idx = torch.randint(0, images.shape[0], (batch,), generator=g)
        x = images[idx]
        if torch.rand((), generator=g) < 0.5:
            x = x.flip(-1)
        loss, _ = m.loss({"image": x}, generator=g)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for k, v in m.state_dict().items():
                ema[k].mul_(0.99).add_(v.detach(), alpha=0.01) if v.dtype.is_floating_point else ema[k].copy_(v)
    m.load_state_dict(ema)
    return m.eval()


def fuse_all(m, a: torch.Tensor, b: torch.Tensor, steps: int) -> dict[str, torch.Tensor]:
    """Every fusion of pairs a, b (N, 1, H, W) in [0, 1]: DDFM (both EM variants) and the baselines."""
    img = torch.cat([a, b], 1) * 2 - 1
    out = {}
    for variant, official in (("DDFM (official EM)", True), ("DDFM (objective EM)", False)):
        m.official_code = official
        out[variant] = m.predict({"image": img}, steps=steps, generator=torch.Generator().manual_seed(0))["prediction"]
    out["average"] = (a + b) / 2
    out["max-abs"] = torch.maximum(a, b)
    out["a alone"] = a
    out["b alone"] = b
    return out


def score(fused: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> dict[str, dict[str, float]]:
    rows = {}
    for name, f in fused.items():
        per = []
        for i in range(a.shape[0]):
            s = fusion_scores(f[i, 0], a[i, 0], b[i, 0])
            s["MI32"] = mutual_information(f[i, 0], a[i, 0], 32) + mutual_information(f[i, 0], b[i, 0], 32)
            s["MI32(F,A)"] = mutual_information(f[i, 0], a[i, 0], 32)
            s["MI32(F,B)"] = mutual_information(f[i, 0], b[i, 0], 32)
            per.append(s)
        rows[name] = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
    rows["(reference) MI32(A,B)"] = {"MI32(F,A)": float(np.mean(
        [mutual_information(b[i, 0], a[i, 0], 32) for i in range(a.shape[0])]))}
    return rows


def table(rows: dict[str, dict[str, float]], title: str) -> str:
    keys = [*FUSION_KEYS, "MI32", "MI32(F,A)", "MI32(F,B)"]
    lines = [f"### {title}", "", "| fusion | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.3f}" if k in r else "" for k in keys) + " |")
    return "\n".join(lines)


def panel(path: Path, a, b, fused: dict[str, torch.Tensor], n: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = {"a": a, "b": b, **fused}
    cols.pop("a alone", None)
    cols.pop("b alone", None)
    n = min(n, a.shape[0])
    fig, ax = plt.subplots(n, len(cols), figsize=(2 * len(cols), 2 * n), squeeze=False)
    for i in range(n):
        for j, (name, im) in enumerate(cols.items()):
            ax[i, j].imshow(im[i, 0].detach().numpy(), cmap="gray", vmin=0, vmax=1)
            ax[i, j].axis("off")
            if i == 0:
                ax[i, j].set_title(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def phantom_run(steps: int, sample_steps: int, n_pairs: int = 24) -> tuple[dict, tuple]:
    from medrs_diff.data.fusion_phantoms import fusion_phantom_pair

    pairs = [fusion_phantom_pair(32, seed=i) for i in range(n_pairs)]
    a = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
    b = torch.from_numpy(np.stack([p[1] for p in pairs]))[:, None]
    n_val = n_pairs // 4
    m = train_prior(b[:-n_val] * 2 - 1, steps)
    fused = fuse_all(m, a[-n_val:], b[-n_val:], sample_steps)
    return score(fused, a[-n_val:], b[-n_val:]), (a[-n_val:], b[-n_val:], fused)


def _crop(x: np.ndarray, size: int = 64) -> np.ndarray:
    h, w = x.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return x[top : top + size, left : left + size]


def real_run(steps: int, sample_steps: int) -> tuple[dict, tuple] | None:
    import nibabel as nib
    from scipy import ndimage

    mr_path, seg_path = SHARED / "example_mr_sm.nii.gz", SHARED / "example_seg_mr.nii.gz"
    if not mr_path.exists() or not seg_path.exists():
        return None
    mr = nib.as_closest_canonical(nib.load(mr_path))
    seg = nib.as_closest_canonical(nib.load(seg_path))
    vol = np.asarray(mr.dataobj, dtype=np.float64)
    lab = np.asarray(seg.dataobj).astype(np.int64)
    lo, hi = np.percentile(vol, [0.5, 99.5])
    vol = np.clip((vol - lo) / (hi - lo), 0, 1)
    rng = np.random.default_rng(0)
    uptake_of = rng.uniform(0.15, 0.6, size=lab.max() + 1)
    uptake_of[0] = 0.03
    mrs, pets = [], []
    for z in range(vol.shape[2]):
        uptake = uptake_of[lab[..., z]]
        yy, xx = np.meshgrid(np.arange(vol.shape[0]), np.arange(vol.shape[1]), indexing="ij")
        cy, cx = vol.shape[0] / 2 + 6, vol.shape[1] / 2 - 4
        uptake = uptake + 0.5 * (((yy - cy) ** 2 + (xx - cx) ** 2) < 16)  # a hot lesion the MR does not show
        pet = np.clip(ndimage.gaussian_filter(uptake, 2.0), 0, 1)
        mrs.append(_crop(vol[..., z]))
        pets.append(_crop(pet))
    b = torch.tensor(np.stack(mrs), dtype=torch.float32)[:, None]
    a = torch.tensor(np.stack(pets), dtype=torch.float32)[:, None]
    val = list(range(2, b.shape[0], 5))  # every fifth slice held out
    train = [i for i in range(b.shape[0]) if i not in val]
    m = train_prior(b[train] * 2 - 1, steps, batch=8)
    fused = fuse_all(m, a[val], b[val], sample_steps)
    return score(fused, a[val], b[val]), (a[val], b[val], fused)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=1000, help="prior training steps (phantoms)")
    ap.add_argument("--real-steps", type=int, default=600, help="prior training steps (real MR slices)")
    ap.add_argument("--sample-steps", type=int, default=100)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.smoke:
        args.steps, args.real_steps, args.sample_steps = 5, 5, 3
    out = args.out or Path(tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    ph_rows, ph_imgs = phantom_run(args.steps, args.sample_steps)
    t_ph = time.perf_counter() - t
    parts = [table(ph_rows, f"Phantoms (6 held-out 32 x 32 pairs; prior {args.steps} steps; {t_ph:.0f} s)")]
    panel(out / "phantoms.png", *ph_imgs)
    record = {"phantoms": ph_rows, "phantom_seconds": t_ph, "steps": args.steps, "sample_steps": args.sample_steps}
    t = time.perf_counter()
    real = real_run(args.real_steps, args.sample_steps)
    if real is not None:
        t_real = time.perf_counter() - t
        parts.append(table(real[0], f"Real MR + synthetic PET-like (4 held-out 64 x 64 slices; prior "
                                    f"{args.real_steps} steps; {t_real:.0f} s)"))
        panel(out / "real_mr.png", *real[1])
        record |= {"real": real[0], "real_seconds": t_real, "real_steps": args.real_steps}
    text = "\n\n".join(parts) + "\n"
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps(record, indent=1))
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
