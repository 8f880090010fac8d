"""Scale-out: the same task, data module, EMA and checkpointing run as 2 CPU processes (DDP, gloo).

Lightning's subprocess launcher re-runs the launching script for rank 1, so the run lives in a small
script written to a temporary folder and started with ``subprocess.run``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from medrs_diff.train import read_checkpoint

HERE = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    sys.path.insert(0, {here!r})
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from train_toy import BlobDataset, ToyMethod

    from medrs_diff.train import EMA, DictDataModule, DiffusionTask

    out = Path(sys.argv[1])
    L.seed_everything(0)
    method = ToyMethod(channels=4)
    task = DiffusionTask(method, lr=1e-3, warmup_steps=1, val_steps=2, val_metric="psnr",
                         panels_dir=str(out / "panels"))
    dm = DictDataModule(BlobDataset(16), val=BlobDataset(4, seed=1), batch_size=2, seed=3)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=4, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(out), limit_val_batches=1, num_sanity_val_steps=0,
        callbacks=[EMA(decay=0.9), ModelCheckpoint(dirpath=str(out / "ckpt"), save_last=True, every_n_train_steps=2)],
    )
    trainer.fit(task, dm)
    record = {{
        "world": trainer.world_size, "backend": str(trainer.strategy._process_group_backend),
        "seen": method.seen, "weight_sum": float(method.net.conv1.weight.double().sum()),
        "psnr": float(trainer.callback_metrics["val/psnr"]),
    }}
    (out / f"rank{{trainer.global_rank}}.json").write_text(json.dumps(record))
    """
)


def test_ddp_two_cpu_processes_gloo(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT.format(here=str(HERE)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PL_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"))}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2 and r0["backend"] == "gloo"
    # each rank trained on its own half of the data (4 steps x batch 2 = one epoch of 16 samples)
    assert len(r0["seen"]) == len(r1["seen"]) == 8
    assert not set(r0["seen"]) & set(r1["seen"]) and set(r0["seen"]) | set(r1["seen"]) == set(range(16))
    # gradients were all-reduced: both replicas hold the same weights; metrics were synced
    assert r0["weight_sum"] == r1["weight_sum"]
    assert r0["psnr"] == r1["psnr"]
    ckpt = read_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert ckpt["global_step"] == 4
    assert len(ckpt["rng_states"]) == 2  # one RNG record per rank, so each rank resumes its own streams
    g0, g1 = (s["train_generator"] for s in ckpt["rng_states"])
    assert not torch.equal(g0, g1)  # ranks draw different training noise
    assert list((tmp_path / "panels").glob("val_step*.png"))
