"""SRDiff: residual target, frozen pre-trained RRDB, condition after the first block, learning (DDPM and RDDM)."""

import time

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


def train(m: SRDiff, steps: int = 450) -> SRDiff:
    """AdamW on fresh mosaic batches (seeded): 100 RRDB pre-training steps, then the diffusion model."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.05, 1 - s / steps))
    for _ in range(steps):
        hr = mosaic(8, g)
        loss, _ = m.loss({"cond": F.avg_pool2d(hr, 4), "image": hr}, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return m.eval()


def sr_psnr(m: SRDiff, hr: torch.Tensor, sampler: str, steps: int) -> tuple[float, float]:
    """PSNR (model space, data range 2) of the 2-sample mean and of bicubic up-sampling."""
    out = m.predict({"cond": F.avg_pool2d(hr, 4)}, sampler=sampler, steps=steps, n_samples=2,
                    generator=torch.Generator().manual_seed(0))
    return float(psnr(out["prediction"], hr, 2.0).mean()), float(psnr(out["baseline"], hr, 2.0).mean())


@pytest.fixture(scope="module")
def srdiff_trained() -> SRDiff:
    """The paper's SRDiff (DDPM chain) after 450 steps; shared by the learning tests of this file."""
    torch.manual_seed(0)
    return train(SRDiff(in_channels=3, scale=4, pretrain_steps=100, **TINY))


def test_srdiff_beats_bicubic(srdiff_trained):
    hr = mosaic(8, torch.Generator().manual_seed(123))
    sr, bicubic = sr_psnr(srdiff_trained, hr, "ddim", 20)
    print(f"SRDiff PSNR {sr:.2f} dB vs bicubic {bicubic:.2f} dB")
    assert sr > bicubic + 1.0


@pytest.mark.slow
def test_rddm_beats_bicubic_in_five_steps_and_nears_the_full_ddpm_chain(srdiff_trained):
    """``process: rddm`` (RDDM, Liu et al. CVPR 2024) after the same 450 steps: 5 RDDM steps beat bicubic by >= 6 dB
    and SRDiff's DDPM at the same 5 (DDIM) steps by >= 4 dB, and come within 3 dB of SRDiff's full 100-step
    ancestral chain (measured, this 2-core CPU, shared, seeds 0 / 1 / 2: RDDM-5 31.2 / 32.9 / 32.8 dB, DDPM-100
    32.6 / 34.2 / -, DDIM-5 23.7 / 24.2 / -, bicubic 20.7; /work/notes/rddmpyr.md)."""
    start = time.perf_counter()
    torch.manual_seed(0)
    rddm = train(SRDiff(in_channels=3, scale=4, pretrain_steps=100, process="rddm", sampler="ddim", **TINY))
    hr = mosaic(8, torch.Generator().manual_seed(123))
    r5, bicubic = sr_psnr(rddm, hr, "ddim", 5)
    d5, _ = sr_psnr(srdiff_trained, hr, "ddim", 5)
    d100, _ = sr_psnr(srdiff_trained, hr, "ddpm", 100)
    print(f"RDDM-5 {r5:.2f} dB, SRDiff DDIM-5 {d5:.2f}, SRDiff DDPM-100 {d100:.2f}, bicubic {bicubic:.2f}; "
          f"{time.perf_counter() - start:.0f} s")
    assert r5 >= bicubic + 6.0
    assert r5 >= d5 + 4.0
    assert r5 >= d100 - 3.0
