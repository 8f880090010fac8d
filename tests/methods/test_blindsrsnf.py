"""BlindSRSNF: wiring (content concat after the first conv, DA convs in every residual block, x0 objective, MoCo),
bad inputs, and two learning tests (degradation codes separate degradations; BlindSRSNF beats a bicubic-trained
SRDiff under an unseen blur)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medrs_diff.data.degradations import Degradation, degrade, sample_degradation, setting
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.inference import Predictor
from medrs_diff.methods import METHODS, BlindSRSNF, SRDiff
from medrs_diff.metrics import psnr
from medrs_diff.nets.blindsrsnf import DAConv, DAResBlock

TINY = dict(channels=(16, 32), num_res_blocks=1, norm_num_groups=8, rrdb_blocks=2, rrdb_features=16, rrdb_growth=8,
            deg_dim=16, deg_width=8, queue_size=32)


def tiny(**kw) -> BlindSRSNF:
    return BlindSRSNF(in_channels=3, scale=4, **{**TINY, **kw})


def mosaic(n: int, g: torch.Generator, size: int = 32, cell: int = 8) -> torch.Tensor:
    """Piecewise-constant HR images with edges on LR pixel borders (as in the SRDiff test)."""
    v = torch.rand(n, 3, size // cell + 1, size // cell + 1, generator=g) * 1.6 - 0.8
    hr = F.interpolate(v, scale_factor=cell, mode="nearest")
    oy, ox = (4 * int(x) for x in torch.randint(0, cell // 4, (2,), generator=g))
    return hr[:, :, oy:oy + size, ox:ox + size]


def test_registered_with_the_paper_defaults():
    assert METHODS["blindsrsnf"] is BlindSRSNF
    m = BlindSRSNF(in_channels=3, **{k: v for k, v in TINY.items() if k != "deg_dim"})
    assert len(m.schedule) == 1000 and m.objective.prediction_type == "x0"
    assert m.default_sampler == "ddim" and m.sampling_steps == 20 and m.spacing == "leading"
    assert m.contrast_weight == 0.05 and m.moco_momentum == 0.999 and m.temperature == 0.07
    hp = BlindSRSNF().hparams()
    assert hp["deg_dim"] == 64 and hp["rrdb_blocks"] == 23 and hp["rrdb_features"] == 64


def test_content_concatenated_after_the_first_conv_and_da_conv_in_every_block():
    m = tiny().eval()
    seen = {}
    m.unet.fuse.register_forward_hook(lambda mod, inp, out: seen.update(fuse_in=inp[0]))
    m.unet.conv_first.register_forward_hook(lambda mod, inp, out: seen.update(first_in=inp[0], first=out))
    lr = torch.rand(2, 3, 8, 8) * 2 - 1
    sr, ctx = m.content(lr)
    assert sr.shape == (2, 3, 32, 32) and ctx.shape == (2, 16, 8, 8)
    m.unet(torch.randn(2, 3, 32, 32), torch.tensor([5, 500]), sr=sr, ctx=ctx, rep=m.degradation(lr))
    assert seen["first_in"].shape == (2, 12, 16, 16)  # pixel-unshuffled (fold 2) noisy HR
    assert seen["fuse_in"].shape == (2, 48, 16, 16)  # [first conv, SR estimate conv, ctx conv] concatenated
    assert torch.equal(seen["fuse_in"][:, :16], seen["first"])
    blocks = [b for b in m.unet.modules() if isinstance(b, DAResBlock)]
    assert len(blocks) == 2 * 1 + 2 + 2 * 2  # down, middle, up: every residual block is degradation-aware
    assert all(isinstance(b.da, DAConv) for b in blocks)


def test_dynamic_conv_depends_on_the_code_per_sample():
    torch.manual_seed(0)
    da = DAConv(8, 16)
    x, rep = torch.randn(2, 8, 6, 6), torch.randn(2, 16)
    both = da(x, rep)
    assert torch.allclose(both[1:], da(x[1:], rep[1:]), atol=1e-6)  # sample 1 does not see sample 0
    assert not torch.allclose(da(x[:1], rep[1:]), both[:1], atol=1e-4)  # another code, another output
    # the depthwise kernel of sample 0 applied by hand
    k = da.kernel(rep[:1]).view(8, 1, 3, 3)
    y = da.conv(F.leaky_relu(F.conv2d(x[:1], k, padding=1, groups=8), 0.1)) + x[:1] * da.attention(rep[:1])[..., None,
                                                                                                            None]
    assert torch.allclose(y, both[:1], atol=1e-5)


def test_loss_terms_and_moco_updates():
    torch.manual_seed(0)
    m = tiny(moco_momentum=0.9).train()
    hr = mosaic(4, torch.Generator().manual_seed(0))
    batch = {"cond": F.avg_pool2d(hr, 4), "image": hr, "cond_key": F.avg_pool2d(hr.flip(-1), 4)}
    key_before = [p.clone() for p in m.deg_encoder_key.parameters()]
    q_params = [p.detach().clone() for p in m.deg_encoder.parameters()]
    loss, logs = m.loss(batch, generator=torch.Generator().manual_seed(1))
    assert {"loss_simple", "loss_sr", "loss_infonce"} <= set(logs)
    for k0, k1, q in zip(key_before, m.deg_encoder_key.parameters(), q_params):  # k <- 0.9 k + 0.1 q
        assert torch.allclose(k1, 0.9 * k0 + 0.1 * q, atol=1e-6)
    assert int(m.queue_ptr) == 4 and torch.allclose(m.queue.norm(dim=1), torch.ones(32), atol=1e-5)
    loss.backward()
    assert m.deg_encoder.to_rep.weight.grad is not None and m.encoder.conv_first.weight.grad is not None
    assert all(p.grad is None for p in m.deg_encoder_key.parameters())
    # total = x0 loss + L1(SR estimate) + 0.05 InfoNCE (eval mode: no queue / momentum changes between calls)
    m.eval()
    total, logs = m.loss(batch, generator=torch.Generator().manual_seed(2))
    parts = logs["loss_simple"] + logs["loss_sr"] + 0.05 * logs["loss_infonce"]
    assert float(total.detach()) == pytest.approx(float(parts), rel=1e-5)


def test_predict_outputs_and_seeded():
    m = tiny().eval()
    lr = torch.rand(2, 3, 8, 8) * 2 - 1
    a = m.predict({"cond": lr}, steps=3, n_samples=2, generator=torch.Generator().manual_seed(0))
    b = m.predict({"cond": lr}, steps=3, n_samples=2, generator=torch.Generator().manual_seed(0))
    assert a["prediction"].shape == (2, 3, 32, 32) and a["samples"].shape == (2, 2, 3, 32, 32)
    assert torch.equal(a["prediction"], b["prediction"]) and float(a["uncertainty"].min()) >= 0


def test_bad_inputs_one_error_each():
    m = tiny().eval()
    lr = torch.rand(1, 3, 8, 8) * 2 - 1
    with pytest.raises(ArgumentError, match=r"x8 was asked, but this BlindSRSNF model was trained for x4"):
        m.predict({"cond": lr}, scale=8)
    with pytest.raises(ArgumentError, match=r"batch \(HR / LR size\): x8 was asked.*trained for x4"):
        m.loss({"cond": lr, "image": torch.rand(1, 3, 64, 64)})
    with pytest.raises(DataError, match=r"LR tile 4x4 is smaller than 6x6.*Fix: give tiles of at least 6"):
        m.predict({"cond": lr[..., :4, :4]})
    with pytest.raises(DataError, match=r"values reach 4095.*outside model space"):
        m.predict({"cond": torch.full((1, 3, 8, 8), 4095.0)})
    # 16-bit pixels into a model trained on 8-bit images (scaling dn8): refused by range before any compute
    p = Predictor.from_method(m, scaling="dn8", patch_size=32)
    img16 = np.random.default_rng(0).integers(0, 65535, (3, 16, 16)).astype(np.uint16)
    with pytest.raises(DataError, match=r"array: values reach \d+, above 255.*an 8-bit model.*Fix: convert"):
        p.predict_array(img16, steps=2)
    out = p.predict_array((img16 // 257).astype(np.uint8), steps=2)  # 8-bit data run
    assert out["prediction"].shape == (3, 64, 64) and np.isfinite(out["prediction"]).all()


@pytest.mark.slow
def test_degradation_codes_separate_degradations_after_training_on_phantoms(tmp_path):
    """InfoNCE on phantoms (positive: another scene under the same degradation): afterwards, on held-out scenes,
    patches of one degradation are more alike than one patch under different degradations."""
    from medrs_diff.datamodules import BlindSRDataModule

    torch.manual_seed(0)
    steps = 100
    dm = BlindSRDataModule(str(tmp_path / "none"), phantoms=8, phantom_size=96, patch_size=64, batch_size=16,
                           samples_per_epoch=16 * steps, mode="mixed", val_fraction=0.25)
    dm.setup()
    m = BlindSRSNF(in_channels=3, scale=4, **{**TINY, "deg_dim": 32, "deg_width": 16, "queue_size": 128},
                   moco_momentum=0.9).train()
    opt = torch.optim.Adam(m.deg_encoder.parameters(), lr=3e-3)
    for batch in dm.train_dataloader():
        loss, _ = m.info_nce(batch["cond"], batch["cond_key"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    rng = np.random.default_rng(0)
    sc = dm.val_dataset.scaling
    crops = []
    for im in dm.val_dataset.images:  # held-out scenes
        for _ in range(4):
            y, x = rng.integers(0, im.shape[1] - 64, 2)
            crops.append(sc.forward(torch.from_numpy(im[:, y:y + 64, x:x + 64].copy())))
    hr = torch.stack(crops)
    names = ["aniso_1.2_2.4_t0_n0", "aniso_3.6_2.4_t45_n10", "aniso_2.4_1.2_t0_n5", "bicubic"]
    with torch.no_grad():
        lrs = {n: degrade(hr, setting(n), np.random.default_rng(1), 2.0, -1.0).clamp(-1, 1) for n in names}
        other = torch.roll(torch.arange(len(hr)), 1)  # another patch (another scene) under the same degradation
        same = torch.stack([m.degradation_similarity(lrs[a], lrs[a][other]).mean() for a in names])
        diff = torch.stack([m.degradation_similarity(lrs[a], lrs[b]).mean() for a in names for b in names if a != b])
    print(f"same-degradation cosine {same.tolist()}, different {float(diff.mean()):.3f} (max {float(diff.max()):.3f})")
    assert float(same.mean()) > float(diff.mean()) + 0.02
    assert float(same.min()) > float(diff.mean())


def _blind_batch(n: int, g: torch.Generator, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    hr, other = mosaic(n, g), mosaic(n, g)
    lrs, keys = [], []
    for i in range(n):
        d = sample_degradation(rng, 4, "iso", noise_max=0.0)
        lrs.append(degrade(hr[i], d, rng, 2.0, -1.0))
        keys.append(degrade(other[i], d, rng, 2.0, -1.0))
    return {"cond": torch.stack(lrs).clamp(-1, 1), "image": hr, "cond_key": torch.stack(keys).clamp(-1, 1)}


def _train(m, make, steps: int, g: torch.Generator) -> None:
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.05, 1 - s / steps))
    for _ in range(steps):
        loss, _ = m.loss(make(), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


@pytest.mark.slow
def test_blindsrsnf_beats_bicubic_trained_srdiff_under_an_unseen_blur():
    """Both tiny, on mosaic phantoms. BlindSRSNF trains on isotropic blurs (sigma 0.2-4); SRDiff on bicubic-only
    LR (trained until it beats bicubic interpolation there, so it is a working SRDiff). Test: the anisotropic
    test-grid kernel lambda (3.6, 2.4) at 45 degrees, never seen by either."""
    torch.manual_seed(0)
    g, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    blind = BlindSRSNF(in_channels=3, scale=4, **{**TINY, "queue_size": 64}, timesteps=100, moco_momentum=0.99)
    _train(blind, lambda: _blind_batch(8, g, rng), 150, g)
    sr = SRDiff(in_channels=3, scale=4, channels=(16, 32), attention_levels=(False, False), num_res_blocks=1,
                norm_num_groups=8, rrdb_blocks=2, rrdb_features=16, rrdb_growth=8, pretrain_steps=100)

    def bicubic_batch():
        hr = mosaic(8, g)
        return {"cond": degrade(hr, Degradation()).clamp(-1, 1), "image": hr}

    _train(sr, bicubic_batch, 450, g)
    blind.eval()
    sr.eval()
    hr = mosaic(8, torch.Generator().manual_seed(123))
    score = lambda x: float(psnr(x, hr, 2.0).mean())  # noqa: E731
    lr_bic = degrade(hr, Degradation()).clamp(-1, 1)
    on_bicubic = sr.predict({"cond": lr_bic}, sampler="ddim", steps=20, generator=torch.Generator().manual_seed(0))
    assert score(on_bicubic["prediction"]) > score(on_bicubic["baseline"])  # SRDiff works on its own degradation
    lr = degrade(hr, setting("aniso_3.6_2.4_t45_n0")).clamp(-1, 1)
    b = score(blind.predict({"cond": lr}, steps=10, generator=torch.Generator().manual_seed(0))["prediction"])
    s = score(sr.predict({"cond": lr}, sampler="ddim", steps=20,
                         generator=torch.Generator().manual_seed(0))["prediction"])
    print(f"unseen blur: BlindSRSNF {b:.2f} dB, SRDiff (bicubic-trained) {s:.2f} dB")
    assert b > s + 1.0
