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

import lightning as L
import pytest
import torch
from train_toy import BlobDataset, ToyMethod, trainer

from medrs_diff.datamodules import DictDataModule
from medrs_diff.train import DiffusionTask, read_checkpoint

HERE = Path(__file__).resolve().parent
VAL_SIZE, VAL_BATCH = 6, 2  # 3 samples per rank: batches of 2 and 1 (uneven weights)


class MeanToy(ToyMethod):
    """ToyMethod plus a validation metric that does not depend on sampling: the batch mean of the sample index."""

    def validation_metrics(self, batch, out):
        return {**super().validation_metrics(batch, out), "index_mean": batch["index"].double().mean()}


SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    sys.path.insert(0, {here!r})
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from test_ddp import VAL_BATCH, VAL_SIZE, MeanToy
    from train_toy import BlobDataset

    from medrs_diff.datamodules import DictDataModule
    from medrs_diff.train import EMA, DiffusionTask

    out = Path(sys.argv[1])
    L.seed_everything(0)
    method = MeanToy(channels=4)
    task = DiffusionTask(method, lr=1e-3, warmup_steps=1, val_steps=2, val_metric="psnr",
                         panels_dir=str(out / "panels"))
    dm = DictDataModule(BlobDataset(16), val=BlobDataset(VAL_SIZE, seed=1), batch_size=VAL_BATCH, seed=3)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=4, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(out), num_sanity_val_steps=0,
        callbacks=[EMA(decay=0.9), ModelCheckpoint(dirpath=str(out / "ckpt"), save_last=True, every_n_train_steps=2)],
    )
    trainer.fit(task, dm)
    val_batches = [len(b["image"]) for b in trainer.val_dataloaders]
    record = {{
        "world": trainer.world_size, "backend": str(trainer.strategy._process_group_backend),
        "seen": method.seen, "weight_sum": float(method.net.conv1.weight.double().sum()),
        "psnr": float(trainer.callback_metrics["val/psnr"]),
        "index_mean": float(trainer.callback_metrics["val/index_mean"]), "val_batches": val_batches,
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

    # Validation metrics are reduced across ranks, weighted by batch size: the logged epoch value equals
    # the single-process value on the same data, and the mean over all validation samples.
    assert r0["val_batches"] == r1["val_batches"] == [2, 1]  # each rank saw 3 of the 6 samples, unevenly batched
    val = BlobDataset(VAL_SIZE, seed=1)
    L.seed_everything(0)
    single = trainer(tmp_path / "single")
    single.validate(DiffusionTask(MeanToy(channels=4), val_steps=2),
                    DictDataModule(val=val, batch_size=4), verbose=False)  # batches of 4 and 2 here
    single_value = float(single.callback_metrics["val/index_mean"])
    assert r0["index_mean"] == r1["index_mean"] == pytest.approx(single_value, abs=1e-6)
    assert single_value == pytest.approx(2.5, abs=1e-6)  # mean of the sample indices 0..5
    # (unweighted means of batch means would give 3.0 in both runs: [0, 2] [4] | [1, 3] [5], and [0..3] [4, 5])
