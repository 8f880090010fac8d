"""DiffusionTask: it learns, validates with metrics and panels, predicts, runs under bf16 autocast and
is built by LightningCLI from a YAML recipe."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import yaml
from train_toy import BlobDataset, ToyMethod, trainer

from medrs_diff.train import (
    EMA,
    DictDataModule,
    DiffusionTask,
    RecipeConfigCallback,
    load_method_from_checkpoint,
    read_checkpoint,
    save_panel,
)
from medrs_diff.viz.panels import to_display


def _fixed_loss(method: ToyMethod, ds: BlobDataset) -> float:
    """Loss on a fixed batch with fixed timesteps and noise, dropout off."""
    batch = {"image": ds.image[:16], "cond": ds.cond[:16]}
    method.eval()
    with torch.no_grad():
        losses = [method.loss(batch, generator=torch.Generator().manual_seed(s))[0] for s in range(4)]
    method.train()
    return float(torch.stack(losses).mean())


def test_loss_decreases_on_synthetic_data(tmp_path):
    L.seed_everything(0)
    ds = BlobDataset(64, seed=0)
    method = ToyMethod(channels=32, dropout=0.0)
    before = _fixed_loss(method, ds)
    task = DiffusionTask(method, lr=5e-3, warmup_steps=5)
    trainer(tmp_path, max_steps=30).fit(task, DictDataModule(ds, batch_size=16))
    after = _fixed_loss(method, ds)
    assert after < 0.5 * before, (before, after)


def test_validation_logs_metric_and_writes_panel(tmp_path):
    L.seed_everything(0)
    task = DiffusionTask(ToyMethod(channels=8), lr=1e-3, warmup_steps=1, val_steps=4, val_samples=2,
                         val_metric="psnr", panels_dir=str(tmp_path / "panels"))
    dm = DictDataModule(BlobDataset(8), val=BlobDataset(6, seed=1), batch_size=4)
    t = trainer(tmp_path, max_steps=2, limit_val_batches=2)
    t.fit(task, dm)
    assert set(t.callback_metrics) >= {"val/psnr", "val/metric", "train/loss", "train/loss_simple"}
    assert torch.isfinite(t.callback_metrics["val/psnr"])
    assert t.callback_metrics["val/metric"] == t.callback_metrics["val/psnr"]
    pngs = sorted((tmp_path / "panels").glob("*.png"))
    assert [p.name for p in pngs] == ["val_step00000002.png"]  # one panel per validation, first batch only
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "panels").glob(".tmp-*"))


def test_val_metric_must_be_reported(tmp_path):
    task = DiffusionTask(ToyMethod(channels=4), val_steps=2, val_metric="dice")
    dm = DictDataModule(BlobDataset(4), val=BlobDataset(2), batch_size=2)
    with pytest.raises(ValueError, match="val_metric='dice' is not among the metrics ToyMethod reports"):
        trainer(tmp_path, max_steps=1, num_sanity_val_steps=1).fit(task, dm)


def test_method_metric_hook_and_segmentation_default(tmp_path):
    class Hooked(ToyMethod):
        def validation_metrics(self, batch, out):
            return {"mae": (out["prediction"] - batch["image"]).abs().mean()}

    t = trainer(tmp_path, max_steps=2)
    t.fit(DiffusionTask(Hooked(channels=4), val_steps=2),
          DictDataModule(BlobDataset(4), val=BlobDataset(2), batch_size=2))
    assert "val/mae" in t.callback_metrics and "val/psnr" not in t.callback_metrics

    seg = ToyMethod(channels=4)
    seg.target_key = "label"
    task = DiffusionTask(seg)
    ref = torch.zeros(2, 1, 8, 8)
    ref[:, :, 2:6, 2:6] = 1
    m = task.compute_metrics({"label": ref}, {"prediction": ref.clone()})
    assert m["dice"] == pytest.approx(1.0)
    m = task.compute_metrics({"label": ref}, {"prediction": 1 - ref})
    assert m["dice"] == pytest.approx(0.0)


def test_predict_step_returns_method_outputs(tmp_path):
    task = DiffusionTask(ToyMethod(channels=4), val_steps=3, val_samples=2)
    dm = DictDataModule(predict=BlobDataset(4), batch_size=2)
    outs = trainer(tmp_path).predict(task, datamodule=dm)
    assert len(outs) == 2
    assert set(outs[0]) == {"prediction", "uncertainty", "samples"}
    assert outs[0]["prediction"].shape == (2, 1, 16, 16) and outs[0]["samples"].shape == (2, 2, 1, 16, 16)
    again = trainer(tmp_path).predict(task, datamodule=dm)
    assert torch.equal(outs[1]["prediction"], again[1]["prediction"])  # seeded sampling


def test_bf16_mixed_autocast_runs_train_and_validation(tmp_path):
    L.seed_everything(0)
    task = DiffusionTask(ToyMethod(channels=8), val_steps=3, val_metric="psnr", panels_dir=str(tmp_path / "p"))
    t = trainer(tmp_path, max_steps=2, precision="bf16-mixed", limit_val_batches=1, gradient_clip_val=1.0)
    t.fit(task, DictDataModule(BlobDataset(8), val=BlobDataset(2), batch_size=4))
    assert torch.isfinite(t.callback_metrics["train/loss"]) and torch.isfinite(t.callback_metrics["val/psnr"])
    assert all(p.dtype == torch.float32 for p in task.method.parameters())
    assert list((tmp_path / "p").glob("*.png"))


def test_lr_schedule_warmup_then_cosine(tmp_path):
    task = DiffusionTask(ToyMethod(channels=4), lr=1e-2, warmup_steps=3)
    lrs = []

    class Rec(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer(tmp_path, max_steps=8, callbacks=[Rec()]).fit(task, DictDataModule(BlobDataset(8), batch_size=1))
    assert lrs[:3] == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2])
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:]))  # cosine decay towards max_steps
    assert lrs[-1] == pytest.approx(1e-2 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 4 / 5)).item()))


def test_lightning_cli_builds_task_from_yaml_and_checkpoint_keeps_recipe(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    cfg = {
        "seed_everything": 0,
        "model": {
            "method": {"class_path": "train_toy.ToyMethod", "init_args": {"channels": 6, "timesteps": 20}},
            "lr": 1e-3, "warmup_steps": 2, "val_steps": 2,
        },
        "data": {"train": {"class_path": "train_toy.BlobDataset", "init_args": {"n": 8}}, "batch_size": 4},
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 2, "logger": False, "enable_progress_bar": False,
            "enable_model_summary": False, "default_root_dir": str(tmp_path),
            "callbacks": [{"class_path": "medrs_diff.train.EMA", "init_args": {"decay": 0.99}}],
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli = LightningCLI(DiffusionTask, DictDataModule, args=["fit", "--config", str(path)],
                       save_config_callback=RecipeConfigCallback, save_config_kwargs={"overwrite": True})
    assert isinstance(cli.model.method, ToyMethod) and cli.model.method.net.conv1.out_channels == 6
    assert any(isinstance(c, EMA) for c in cli.trainer.callbacks)
    (ckpt_path,) = (tmp_path / "checkpoints").glob("*.ckpt")
    ckpt = read_checkpoint(ckpt_path)
    assert ckpt["hyper_parameters"]["method"]["class_path"] == "train_toy.ToyMethod"
    assert ckpt["hyper_parameters"]["method"]["init_args"]["channels"] == 6
    assert "train_toy.ToyMethod" in ckpt["recipe"] and "max_steps: 2" in ckpt["recipe"]
    method = load_method_from_checkpoint(ckpt_path, expected="toy")
    assert method.net.conv1.out_channels == 6 and not method.training
    task = DiffusionTask.load_from_checkpoint(ckpt_path)
    assert torch.equal(task.method.net.conv1.weight, cli.model.method.net.conv1.weight)


def test_panel_shows_middle_slice_rgb_and_shared_ranges(tmp_path):
    vol = torch.zeros(2, 1, 5, 8, 8)
    vol[:, :, 2, 3, 3] = 1.0  # only the middle slice has the bright voxel
    assert to_display(vol[0])[3, 3] == 1.0 and to_display(vol[0]).shape == (8, 8)
    rgb = torch.rand(3, 6, 6)
    assert to_display(rgb).shape == (6, 6, 3)
    assert to_display(torch.full((1, 4, 4), 0.5), 0.0, 1.0)[0, 0] == 0.5
    out = save_panel(tmp_path / "sub" / "p.png", {"input": vol, "prediction": vol * 0.5, "reference": vol,
                                                 "uncertainty": vol.abs(), "missing": None}, title="t")
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="at least one column"):
        save_panel(tmp_path / "q.png", {"input": None})


def test_cli_short_method_name_is_stored_as_the_full_class_path(tmp_path):
    """A recipe may say `class_path: SMPUNet` (a non-diffusion method); checkpoints store the full path."""
    from lightning.pytorch.cli import LightningCLI

    from medrs_diff.datamodules import NiftiSegmentationDataModule
    from medrs_diff.methods import SMPUNet

    cfg = {
        "seed_everything": 0,
        "model": {
            "method": {"class_path": "SMPUNet",
                       "init_args": {"encoder_depth": 2, "decoder_channels": [8, 8]}},
            "lr": 1e-3, "warmup_steps": 1, "val_metric": "dice",
        },
        "data": {"root": str(tmp_path / "data"), "phantoms": 4, "phantom_size": [16, 16], "batch_size": 2},
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 2, "logger": False, "enable_progress_bar": False,
            "enable_model_summary": False, "default_root_dir": str(tmp_path), "limit_val_batches": 1,
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli = LightningCLI(DiffusionTask, NiftiSegmentationDataModule, args=["fit", "--config", str(path)],
                       save_config_kwargs={"overwrite": True})
    assert isinstance(cli.model.method, SMPUNet)
    assert cli.model.hparams["method"]["class_path"] == "medrs_diff.methods.baselines.SMPUNet"
    (ckpt_path,) = (tmp_path / "checkpoints").glob("*.ckpt")
    ckpt = read_checkpoint(ckpt_path)
    assert ckpt["hyper_parameters"]["method"]["class_path"] == "medrs_diff.methods.baselines.SMPUNet"
    assert ckpt["medrs_diff"]["method"]["init_args"]["encoder_depth"] == 2
    assert "val/dice" in cli.trainer.callback_metrics
    again = DiffusionTask.load_from_checkpoint(ckpt_path)
    assert torch.equal(again.method.net.encoder.conv1.weight, cli.model.method.net.encoder.conv1.weight)


def test_resume_accepts_older_spellings_of_the_same_method():
    from medrs_diff.errors import CheckpointError
    from medrs_diff.methods import RegressionSR

    task = DiffusionTask(RegressionSR(in_channels=1, scale=2, rrdb_blocks=1, rrdb_features=8, rrdb_growth=4))
    state = {f"method.{k}": v for k, v in task.method.state_dict().items()}
    for spelling in ("RegressionSR", "regression_sr", "medrs_diff.methods.RegressionSR"):
        task.on_load_checkpoint({"medrs_diff": {"method": {"class_path": spelling}}, "state_dict": state})
    with pytest.raises(CheckpointError, match="holds a .* model .*SMPUNet.*, but this run trains regression_sr"):
        task.on_load_checkpoint({"medrs_diff": {"method": {"class_path": "SMPUNet"}, "method_name": "smp_unet"},
                                 "state_dict": state})


def test_panels_moved_to_viz_with_a_shim():
    from medrs_diff.train import panels as old
    from medrs_diff.viz import panels

    assert old.save_panel is panels.save_panel is save_panel and old.to_display is to_display
