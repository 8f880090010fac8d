"""PSNR of a super-resolution checkpoint (latent or pixel space) on its run's validation patches, beside bicubic.

    OMP_NUM_THREADS=1 nice -n 10 python evaluation/latent_sr_eval.py <last.ckpt> [<last.ckpt> ...]

Protocol: the data module stored in the checkpoint (GeoTiffSRDataModule: its validation grid of HR patches and
their LR block means), seeded. PSNR in model space ([-1, 1], data range 2), mean over the patches, of: bicubic
upsampling of the LR patch; the method's ``prediction`` with its full 100-step DDPM chain and with DDIM 20 steps
(one sample); SRDiff's ``regression`` (the frozen RRDB head; decoded for a latent checkpoint); and for a latent
checkpoint the autoencoder's reconstruction of the HR patch (the ceiling any latent method can reach).
Results: printed as JSON (the note evaluation/results/latent_srdiff_sentinel2/ records them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from medrs_diff.datamodules import GeoTiffSRDataModule  # noqa: E402
from medrs_diff.metrics import psnr  # noqa: E402
from medrs_diff.train.checkpoint import checkpoint_data_config, load_method_from_checkpoint, read_checkpoint  # noqa: E402


def evaluate(path: str) -> dict[str, float]:
    m = load_method_from_checkpoint(path)
    data = GeoTiffSRDataModule(**checkpoint_data_config(read_checkpoint(path))["init_args"])
    data.prepare_data()
    data.setup("fit")
    rows: dict[str, list[float]] = {}
    g = torch.Generator().manual_seed(0)
    scale = int(m.io_spec.grid_factor)
    for batch in data.val_dataloader():
        hr, lr = batch["image"], batch["cond"]

        def add(name: str, x: torch.Tensor, hr: torch.Tensor = hr) -> None:
            rows.setdefault(name, []).extend(psnr(x.clamp(-1, 1), hr, data_range=2.0).tolist())

        add("bicubic", F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False))
        out = m.predict({"cond": lr}, sampler="ddpm", generator=g)
        add("prediction_ddpm100", out["prediction"])
        add("prediction_ddim20", m.predict({"cond": lr}, sampler="ddim", steps=20, generator=g)["prediction"])
        if "regression" in out:
            add("regression", out["regression"])
        if hasattr(m, "ae"):
            add("autoencoder_ceiling", m.ae.predict({"image": hr})["prediction"])
    return {k: round(sum(v) / len(v), 2) for k, v in rows.items()} | {"patches": len(rows["bicubic"])}


if __name__ == "__main__":
    print(json.dumps({p: evaluate(p) for p in sys.argv[1:]}, indent=1))
