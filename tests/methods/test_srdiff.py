"""SRDiff: residual target, frozen pre-trained RRDB, condition after the first block, learning."""

import pytest
import torch
import torch.nn.functional as F

from medrs_diff.methods import SRDiff
from medrs_diff.metrics import psnr

TINY = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, norm_num_groups=8,
            rrdb_blocks=2, rrdb_features=16, rrdb_growth=8)


def mosaic(n: int, g: torch.Generator, size: int = 32, cell: int = 8) -> torch.Tensor:
    """High-contrast piecewise-constant HR images whose edges fall on LR pixel borders: the HR is a
    deterministic function of its x4 block-mean LR, which bicubic interpolation blurs."""
    v = torch.rand(n, 3, size // cell + 1, size // cell + 1, generator=g) * 1.6 - 0.8
    hr = F.interpolate(v, scale_factor=cell, mode="nearest")
    oy, ox = (4 * int(x) for x in torch.randint(0, cell // 4, (2,), generator=g))
    return hr[:, :, oy:oy + size, ox:ox + size]


def test_residual_condition_and_phases():
    torch.manual_seed(0)
    m = SRDiff(in_channels=3, scale=4, pretrain_steps=2, **TINY).train()
    hr = mosaic(2, torch.Generator().manual_seed(0))
    batch = {"cond": F.avg_pool2d(hr, 4), "image": hr}
    # Phase 1: the RRDB regression (L1) only.
    _, logs = m.loss(batch)
    assert "loss_rrdb" in logs
    m.loss(batch)
    # Phase 2: diffusion of the rescaled residual with the RRDB frozen.
    enc_before = [p.detach().clone() for p in m.encoder.parameters()]
    loss, logs = m.loss(batch)
    assert "loss_simple" in logs and all(not p.requires_grad for p in m.encoder.parameters())
    loss.backward()
    assert all(p.grad is None for p in m.encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(enc_before, m.encoder.parameters()))
    # Condition features: every third RRDB output, lifted to HR size, width of the UNet's first level.
    feats = m.condition(batch["cond"])
    assert feats.shape == (2, 16, 32, 32)
    assert torch.allclose(m.residual.decode(m.residual.encode(hr, m.upsample(batch["cond"])),
                                            m.upsample(batch["cond"])), hr, atol=1e-6)


def test_condition_added_after_the_first_residual_block():
    m = SRDiff(in_channels=3, scale=4, **TINY)
    wrapper = m.unet.unet.down_blocks[0].resnets[0]
    seen = {}
    wrapper.inner.register_forward_hook(lambda mod, inp, out: seen.update(block=out))
    wrapper.register_forward_hook(lambda mod, inp, out: seen.update(added=out))
    lr = torch.randn(1, 3, 8, 8)
    feats = m.condition(lr)
    m.unet(torch.randn(1, 3, 32, 32), torch.tensor([10]), features=feats)
    assert torch.allclose(seen["added"], seen["block"] + feats)


def test_bad_input():
    m = SRDiff(in_channels=3, scale=4, **TINY)
    with pytest.raises(ValueError, match="expects 3 input channel"):
        m.predict({"cond": torch.randn(1, 4, 8, 8)})
    with pytest.raises(ValueError, match="scale 4"):
        m.loss({"cond": torch.randn(1, 3, 8, 8), "image": torch.randn(1, 3, 16, 16)})


def test_srdiff_beats_bicubic():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    m = SRDiff(in_channels=3, scale=4, pretrain_steps=100, **TINY)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.05, 1 - s / 450))
    for _ in range(450):
        hr = mosaic(8, g)
        loss, _ = m.loss({"cond": F.avg_pool2d(hr, 4), "image": hr}, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    m.eval()
    hr = mosaic(8, torch.Generator().manual_seed(123))
    out = m.predict({"cond": F.avg_pool2d(hr, 4)}, sampler="ddim", steps=20, n_samples=2,
                    generator=torch.Generator().manual_seed(0))
    sr, bicubic = float(psnr(out["prediction"], hr, 2.0).mean()), float(psnr(out["baseline"], hr, 2.0).mean())
    print(f"SRDiff PSNR {sr:.2f} dB vs bicubic {bicubic:.2f} dB")
    assert sr > bicubic + 1.0
