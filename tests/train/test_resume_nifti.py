"""Issue 11 row 8: resume from a mid-epoch checkpoint is bit-exact with the real NIfTI data module (3-D phantoms,
random patches drawn by MONAI transforms, tiny SegDiff), across the epoch boundary, weights and EMA."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from medrs_diff.datamodules import NiftiSegmentationDataModule
from medrs_diff.methods import SegDiff
from medrs_diff.train import EMA, DiffusionTask

N, K = 6, 3  # 8 training cases / batch 2 = 4 batches per epoch: step 3 is mid-epoch, step 6 in epoch 2


class _Batches(L.Callback):
    """Records (global step after the batch, loss, patch checksum, cases) of every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float, float, tuple[str, ...]]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        cases = tuple(batch["case"]) if "case" in batch else ()
        self.seen.append((trainer.global_step, float(outputs["loss"]), float(batch["image"].double().sum()), cases))


def _run(root, data, max_steps, ckpt_path=None, save_every=None):
    L.seed_everything(0)
    method = SegDiff(in_channels=1, spatial_dims=3, channels=[8, 8], attention_levels=[False, False],
                     num_res_blocks=1, num_head_channels=8, norm_num_groups=4, rrdb_blocks=1, rrdb_features=8,
                     rrdb_growth=4, timesteps=20)
    task = DiffusionTask(method, lr=1e-3, warmup_steps=2, val_steps=2, val_samples=1, seed=1)
    dm = NiftiSegmentationDataModule(str(data), spatial_dims=3, patch_size=[8, 8, 8], phantoms=10,
                                     phantom_size=[12, 12, 12], batch_size=2, seed=3)
    ema, batches = EMA(decay=0.9), _Batches()
    callbacks = [ema, batches]
    if save_every:
        callbacks.append(ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=save_every,
                                         save_top_k=-1))
    t = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                  enable_checkpointing=bool(save_every), num_sanity_val_steps=0, default_root_dir=str(root),
                  max_steps=max_steps, callbacks=callbacks, deterministic=True, limit_val_batches=1)
    t.fit(task, dm, ckpt_path=ckpt_path)
    return task, ema, batches.seen


def test_mid_epoch_resume_with_random_nifti_patches_is_exact(tmp_path):
    data = tmp_path / "data"
    straight, ema_a, seen_a = _run(tmp_path / "a", data, N, save_every=1)
    ckpt = tmp_path / "a" / f"step={K}.ckpt"
    resumed, ema_b, seen_b = _run(tmp_path / "b", data, N, ckpt_path=ckpt)
    assert [s[0] for s in seen_b] == list(range(K + 1, N + 1))
    # the resumed run sees the same patches (same cases, same random crops) and gets the same losses
    assert seen_b == seen_a[K:]
    sa, sb = straight.method.state_dict(), resumed.method.state_dict()
    assert set(sa) == set(sb)
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []
    assert ema_a.num_updates == ema_b.num_updates == N
    assert [k for k in ema_a.shadow if not torch.equal(ema_a.shadow[k], ema_b.shadow[k])] == []


def test_patches_depend_on_epoch_and_index_only(tmp_path):
    """The same case index gets the same random patch however many items were loaded before it, and a
    different one in the next epoch (what makes the skip-without-loading resume exact)."""
    dm = NiftiSegmentationDataModule(str(tmp_path / "data"), spatial_dims=3, patch_size=[8, 8, 8], phantoms=10,
                                     phantom_size=[12, 12, 12], batch_size=2, seed=3)
    dm.setup("fit")
    loader = dm.train_dataloader()
    ds = loader.dataset
    loader.sampler.set_epoch(0)
    first = ds[5]["image"].clone()
    for i in range(4):  # loading other items must not move item 5's crop
        ds[i]
    assert torch.equal(ds[5]["image"], first)
    loader.sampler.set_epoch(1)
    later = [ds[5]["image"] for _ in range(2)]
    assert torch.equal(later[0], later[1]) and not torch.equal(later[0], first)
