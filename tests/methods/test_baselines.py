"""Discriminative baselines: the smp UNet (offline weights only) and the RRDB regression SR net learn,
through the same DiffusionTask as the diffusion methods, and reload from their checkpoints."""

import inspect

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from medrs_diff.datamodules import DictDataModule, NiftiSegmentationDataModule
from medrs_diff.errors import ArgumentError, CheckpointError
from medrs_diff.methods import RegressionSR, SMPUNet
from medrs_diff.metrics import psnr
from medrs_diff.train import DiffusionTask, load_method_from_checkpoint

SMP_TINY = dict(encoder_name="resnet18", encoder_depth=3, decoder_channels=(32, 16, 8))


def _quiet_trainer(tmp_path, **kw) -> L.Trainer:
    opts = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    opts.update(kw)
    return L.Trainer(**opts)


# -- SMPUNet -------------------------------------------------------------------------------------------
def test_smp_unet_never_downloads(monkeypatch):
    assert inspect.signature(SMPUNet).parameters["encoder_weights"].default is None

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download weights")

    import huggingface_hub

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    m = SMPUNet(in_channels=1, **SMP_TINY)
    assert m.hparams()["encoder_weights"] is None and m.hparams()["encoder_weights_path"] is None
    with pytest.raises(ArgumentError, match="'imagenet' would make segmentation-models-pytorch download weights"):
        SMPUNet(encoder_weights="imagenet", **SMP_TINY)
    with pytest.raises(ArgumentError, match="no encoder 'resnet7'"):
        SMPUNet(encoder_name="resnet7")


def test_smp_unet_encoder_weights_from_a_local_file(tmp_path):
    from segmentation_models_pytorch.encoders import get_encoder

    torch.manual_seed(0)
    rgb = get_encoder("resnet18", in_channels=3, depth=3, weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": rgb.state_dict()}, path)
    same = SMPUNet(in_channels=3, encoder_weights_path=str(path), **SMP_TINY)
    for k, v in rgb.state_dict().items():
        assert torch.equal(same.net.encoder.state_dict()[k], v), k
    gray = SMPUNet(in_channels=1, encoder_weights_path=str(path), **SMP_TINY)
    assert torch.equal(gray.net.encoder.layer1[0].conv1.weight, rgb.layer1[0].conv1.weight)
    # smp's first-conv patch for one channel: the RGB kernels summed over their input channels
    assert torch.allclose(gray.net.encoder.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))

    with pytest.raises(CheckpointError, match=r"missing\.pth: encoder weights file not found\. Fix: pass the path"):
        SMPUNet(encoder_weights_path=str(tmp_path / "missing.pth"), **SMP_TINY)
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="bad.pth: does not fit the resnet18 encoder"):
        SMPUNet(encoder_weights_path=str(bad), **SMP_TINY)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pth: is not a readable weights-only PyTorch file"):
        SMPUNet(encoder_weights_path=str(junk), **SMP_TINY)


def test_smp_unet_outputs_any_size_and_checks_input():
    m = SMPUNet(in_channels=2, **SMP_TINY).eval()
    out = m.predict({"image": torch.randn(2, 2, 20, 28)}, sampler="ignored-by-baselines", steps=3)
    p = out["probability"]
    assert p.shape == (2, 1, 20, 28) and out["prediction"].shape == p.shape
    assert torch.equal(out["prediction"], (p > 0.5).float())
    assert torch.allclose(out["uncertainty"], p * (1 - p)) and float(out["uncertainty"].max()) <= 0.25
    with pytest.raises(ValueError, match="expects 2 input channel"):
        m.loss({"image": torch.randn(1, 1, 16, 16), "label": torch.zeros(1, 1, 16, 16)})
    with pytest.raises(ValueError, match="differ"):
        m.loss({"image": torch.randn(1, 2, 16, 16), "label": torch.zeros(1, 1, 8, 8)})
    loss, logs = m.loss({"image": torch.randn(2, 2, 16, 16), "label": (torch.rand(2, 1, 16, 16) > 0.5).float()})
    assert torch.isclose(loss, logs["loss_dice"] + logs["loss_bce"])


def test_smp_unet_learns_phantoms_through_the_task(tmp_path):
    """`medrs-diff fit`'s task trains the baseline (val Dice logged), and the checkpoint rebuilds it."""
    L.seed_everything(0)
    dm = NiftiSegmentationDataModule(str(tmp_path / "data"), phantoms=20, phantom_size=[32, 32], batch_size=8)
    method = SMPUNet(in_channels=1, **SMP_TINY)
    task = DiffusionTask(method, lr=3e-3, warmup_steps=5, val_metric="dice", panels_dir=str(tmp_path / "panels"))
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    t = _quiet_trainer(tmp_path, max_steps=40, val_check_interval=40, check_val_every_n_epoch=None,
                       callbacks=[ckpt])
    t.fit(task, dm)
    score = float(t.callback_metrics["val/dice"])
    print(f"SMPUNet validation Dice after 40 steps: {score:.3f}")
    assert score >= 0.8 and float(t.callback_metrics["val/metric"]) == score
    assert list((tmp_path / "panels").glob("val_step*.png"))
    again = load_method_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", expected="smp_unet", ema=False)
    assert isinstance(again, SMPUNet) and not again.training
    for k, v in method.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


# -- RegressionSR --------------------------------------------------------------------------------------
def mosaic(n: int, g: torch.Generator, size: int = 32, cell: int = 8) -> torch.Tensor:
    """Piecewise-constant HR images with edges on LR pixel borders (bicubic blurs them)."""
    v = torch.rand(n, 3, size // cell + 1, size // cell + 1, generator=g) * 1.6 - 0.8
    hr = F.interpolate(v, scale_factor=cell, mode="nearest")
    oy, ox = (4 * int(x) for x in torch.randint(0, cell // 4, (2,), generator=g))
    return hr[:, :, oy:oy + size, ox:ox + size]


class MosaicPairs(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        self.hr = mosaic(n, torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.hr.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"image": self.hr[i], "cond": F.avg_pool2d(self.hr[i][None], 4)[0]}


def test_regression_sr_outputs_and_checks():
    m = RegressionSR(in_channels=3, scale=4, rrdb_blocks=1, rrdb_features=8, rrdb_growth=4).eval()
    out = m.predict({"cond": torch.randn(2, 3, 5, 6)}, sampler="ignored", n_samples=4)
    assert out["prediction"].shape == (2, 3, 20, 24) and torch.equal(out["uncertainty"], torch.zeros(2, 3, 20, 24))
    assert m.io_spec.grid_factor == 4 and m.io_spec.data_space == ("prediction",)
    with pytest.raises(ValueError, match="scale 4"):
        m.loss({"cond": torch.randn(1, 3, 8, 8), "image": torch.randn(1, 3, 16, 16)})
    with pytest.raises(ArgumentError, match="scale: must be >= 1"):
        RegressionSR(scale=0)
    # every parameter gets a gradient (no unused branch, so DDP needs no unused-parameter search)
    loss, _ = m.train().loss({"cond": torch.randn(1, 3, 4, 4), "image": torch.randn(1, 3, 16, 16)})
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    m3 = RegressionSR(in_channels=1, scale=2, spatial_dims=3, rrdb_blocks=1, rrdb_features=8, rrdb_growth=4)
    assert m3.predict({"cond": torch.randn(1, 1, 4, 4, 4)})["prediction"].shape == (1, 1, 8, 8, 8)


def test_regression_sr_beats_bicubic_through_the_task(tmp_path):
    L.seed_everything(0)
    m = RegressionSR(in_channels=3, scale=4, rrdb_blocks=2, rrdb_features=16, rrdb_growth=8)
    task = DiffusionTask(m, lr=2e-3, warmup_steps=10, val_metric="psnr", panels_dir=str(tmp_path / "p"))
    dm = DictDataModule(MosaicPairs(64, seed=0), val=MosaicPairs(8, seed=123), batch_size=8)
    t = _quiet_trainer(tmp_path, max_steps=80, enable_checkpointing=False)
    t.fit(task, dm)
    t.validate(task, dm, verbose=False)
    hr = MosaicPairs(8, seed=123).hr
    out = m.eval().predict({"cond": F.avg_pool2d(hr, 4)})
    sr, bicubic = float(psnr(out["prediction"], hr, 2.0).mean()), float(psnr(out["baseline"], hr, 2.0).mean())
    print(f"RegressionSR PSNR {sr:.2f} dB vs bicubic {bicubic:.2f} dB")
    assert sr > bicubic + 1.0
    assert float(t.callback_metrics["val/psnr"]) == pytest.approx(sr, abs=1e-3)  # the task logs the same number
