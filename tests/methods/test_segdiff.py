"""SegDiff: condition added after the first conv, 2D/3D shapes, learning on easy blobs, bad input."""

import lightning as L
import pytest
import torch

from medrs_diff.datamodules import NiftiSegmentationDataModule
from medrs_diff.methods import SegDiff
from medrs_diff.metrics import dice
from medrs_diff.train import EMA, DiffusionTask

TINY = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, num_head_channels=16,
            norm_num_groups=8, rrdb_blocks=1, rrdb_features=16, rrdb_growth=8)


def test_image_features_are_added_after_the_first_conv():
    torch.manual_seed(0)
    m = SegDiff(in_channels=2, **TINY)
    wrapper = m.unet.unet.conv_in
    seen = {}
    wrapper.inner.register_forward_hook(lambda mod, inp, out: seen.update(conv=out))
    wrapper.register_forward_hook(lambda mod, inp, out: seen.update(added=out))
    image, x_t = torch.randn(2, 2, 16, 16), torch.randn(2, 1, 16, 16)
    features = m.encoder(image)
    assert features.shape == (2, 16, 16, 16)  # full resolution, the UNet's first width
    m.unet(x_t, torch.tensor([5, 50]), features=features)
    assert torch.allclose(seen["added"], seen["conv"] + features)
    # The UNet sees only the one noisy-mask channel (no concatenation of the image).
    assert m.unet.unet.conv_in.inner.conv.in_channels == 1


@pytest.mark.parametrize("dims", [2, 3])
def test_loss_and_ensemble_shapes(dims):
    torch.manual_seed(0)
    m = SegDiff(in_channels=1, spatial_dims=dims, **TINY).eval()
    shape = (2, 1) + (8,) * dims
    batch = {"image": torch.randn(shape), "label": (torch.rand(shape) > 0.5).float()}
    loss, logs = m.loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    out = m.predict(batch, sampler="ddim", steps=3, n_samples=3, generator=torch.Generator().manual_seed(0))
    assert out["prediction"].shape == shape and out["samples"].shape == (2, 3, 1) + (8,) * dims
    assert set(out["prediction"].unique().tolist()) <= {0.0, 1.0}
    p = out["samples"]
    assert torch.allclose(out["uncertainty"], p.var(1))  # per-pixel variance of the samples
    assert torch.equal(out["prediction"], (p.mean(1) > 0.5).float())
    for fusion in ("majority", "staple"):
        m.fusion = fusion
        fused = m.predict(batch, sampler="ddim", steps=3, n_samples=3, generator=torch.Generator().manual_seed(0))
        votes = (fused["samples"] > 0.5).float().sum(1)  # 3 raters: majority = at least 2 votes
        if fusion == "majority":
            assert torch.equal(fused["prediction"], (votes >= 2).float())
        assert fused["prediction"].shape == shape


def test_segdiff_defaults_follow_the_paper():
    m = SegDiff(in_channels=3, **TINY)
    assert len(m.schedule) == 100 and m.objective.prediction_type == "eps" and m.objective.loss_type == "mse"
    assert m.sampler == "ddpm" and m.n_samples % 2 == 1
    assert float(m.schedule.alphas_cumprod[-1]) < 1e-4  # T = 100 still ends at noise


def test_bad_input():
    m = SegDiff(in_channels=3, **TINY)
    with pytest.raises(ValueError, match="expects 3 input channel"):
        m.loss({"image": torch.randn(1, 1, 8, 8), "label": torch.zeros(1, 1, 8, 8)})
    with pytest.raises(ValueError, match="differ"):
        m.loss({"image": torch.randn(1, 3, 8, 8), "label": torch.zeros(1, 1, 4, 4)})
    with pytest.raises(ValueError, match="unknown sampler"):
        m.predict({"image": torch.randn(1, 3, 8, 8)}, sampler="euler")
    with pytest.raises(ValueError, match="unknown fusion"):
        SegDiff(fusion="median", **TINY)


def test_segdiff_learns_blobs_to_dice_08(tmp_path):
    """Lightning training on synthetic NIfTI phantoms, then a 20-step DPM-Solver++ ensemble."""
    torch.manual_seed(0)
    dm = NiftiSegmentationDataModule(str(tmp_path), phantoms=20, phantom_size=[32, 32], batch_size=8)
    method = SegDiff(in_channels=1, n_samples=3, **TINY)
    task = DiffusionTask(method, lr=2e-3, warmup_steps=20)
    trainer = L.Trainer(max_steps=220, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[EMA(decay=0.99)], gradient_clip_val=1.0)
    trainer.fit(task, dm)
    method.eval()
    scores = []
    for batch in dm.val_dataloader():
        out = method.predict(batch, sampler="dpm_solver_pp", steps=20, generator=torch.Generator().manual_seed(1))
        scores.append(dice(out["prediction"], batch["label"]))
    score = float(torch.cat(scores).mean())
    print(f"SegDiff validation Dice after 220 steps: {score:.3f}")
    assert score >= 0.8
