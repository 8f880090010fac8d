"""Haar DWT / IDWT (perfect reconstruction, orthonormality, closed-form bands) and the wavelet ("slim")
UNet option: shapes, a denoising learning test, and SegDiff's ``downsample: wavelet`` loss / predict."""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch
import torch.nn.functional as F

from medrs_diff.errors import ArgumentError
from medrs_diff.methods import SegDiff
from medrs_diff.nets.unet import ConditionedUNet
from medrs_diff.nets.wavelet import HaarDWT, HaarIDWT, WaveletDownsample, WaveletUpsample, haar_dwt

TINY = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, num_head_channels=16,
            norm_num_groups=8)


@pytest.mark.parametrize("dims", [2, 3])
def test_perfect_reconstruction_and_energy(dims):
    x = torch.randn(2, 3, *([8, 6, 4][:dims]), dtype=torch.float64)
    y = HaarDWT(dims)(x)
    assert y.shape == (2, 3 * 2**dims, *[s // 2 for s in x.shape[2:]])
    assert torch.allclose(HaarIDWT(dims)(y), x, atol=1e-6, rtol=0)
    # orthonormal: energy preserved per sample, and the inverse is the transpose (adjoint test)
    assert torch.allclose(y.pow(2).flatten(1).sum(1), x.pow(2).flatten(1).sum(1), rtol=1e-12)
    z = torch.randn_like(y)
    assert torch.allclose((y * z).sum(), (x * HaarIDWT(dims)(z)).sum(), rtol=1e-10)


def test_2d_bands_by_hand_and_ll_is_twice_the_mean():
    block = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    # along H: low (4, 6)/sqrt2, high (-2, -2)/sqrt2; then along W: LL, H-high/W-low, H-low/W-high, HH
    assert torch.allclose(haar_dwt(block, 2).flatten(), torch.tensor([5.0, -2.0, -1.0, 0.0]))
    x = torch.randn(2, 3, 16, 12)
    assert torch.allclose(haar_dwt(x, 2)[:, :3], 2 * F.avg_pool2d(x, 2), atol=1e-6)


def test_3d_bands_match_the_kronecker_haar_basis():
    x = torch.randn(1, 2, 4, 6, 8, dtype=torch.float64)
    y = haar_dwt(x, 3)
    assert torch.allclose(y[:, :2], 2 * math.sqrt(2) * F.avg_pool3d(x, 2), atol=1e-12)
    filters = {0: torch.tensor([1.0, 1.0]), 1: torch.tensor([1.0, -1.0])}
    blocks = x.unfold(2, 2, 2).unfold(3, 2, 2).unfold(4, 2, 2)  # (1, 2, 2, 3, 4, 2, 2, 2)
    for k, (bd, bh, bw) in enumerate(itertools.product((0, 1), repeat=3)):
        # band order: the last axis (W) is the outermost split, so k = 4 * w + 2 * h + d
        kernel = torch.einsum("i,j,k->ijk", filters[bd], filters[bh], filters[bw]).double() / 2 ** 1.5
        expected = (blocks * kernel).sum((-3, -2, -1))
        band = 4 * bw + 2 * bh + bd
        assert torch.allclose(y[:, 2 * band:2 * band + 2], expected, atol=1e-12), k


def test_odd_sizes_and_bad_keys_are_refused():
    with pytest.raises(ValueError, match="even"):
        haar_dwt(torch.randn(1, 1, 7, 8), 2)
    with pytest.raises(ArgumentError, match="downsample"):
        SegDiff(in_channels=1, downsample="dwt", rrdb_blocks=1, rrdb_features=16, rrdb_growth=8, **TINY)


@pytest.mark.parametrize("dims", [2, 3])
def test_wavelet_unet_shapes_and_swapped_samplers(dims):
    torch.manual_seed(0)
    conv_net = ConditionedUNet(dims, 1, 1, **TINY, cond_channels=2)
    net = ConditionedUNet(dims, 1, 1, **TINY, cond_channels=2, downsample="wavelet")
    downs = [b.downsampler for b in net.unet.down_blocks if b.downsampler is not None]
    ups = [b.upsampler for b in net.unet.up_blocks if b.upsampler is not None]
    assert downs and ups and all(isinstance(m, WaveletDownsample) for m in downs)
    assert all(isinstance(m, WaveletUpsample) for m in ups)
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in conv_net.parameters())
    x, cond = torch.randn(2, 1, *[8] * dims), torch.randn(2, 2, *[8] * dims)
    out = net(x, torch.tensor([3, 70]), cond=cond)
    assert out.shape == x.shape and torch.isfinite(out).all()


def _phantoms(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` images of 1-3 random ellipses of level 1 on 0, scaled to [-1, 1]."""
    i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = torch.zeros(n, 1, size, size)
    for k in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
            c = torch.rand(2, generator=gen) * size * 0.6 + size * 0.2
            r = torch.rand(2, generator=gen) * size * 0.2 + size * 0.1
            out[k, 0][((i - c[0]) / r[0]) ** 2 + ((j - c[1]) / r[1]) ** 2 <= 1] = 1.0
    return out * 2 - 1


def test_wavelet_unet_learns_to_denoise_phantoms():
    """x0-prediction at noise level sigma = t / 100 in [0.2, 1]: in 150 steps the MSE falls >= 10x and ends
    below a quarter of the identity denoiser's (E sigma^2 ~ 0.37)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    data = _phantoms(64, 32, gen)
    net = ConditionedUNet(2, 1, 1, **TINY, downsample="wavelet")
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)

    def batch_loss(x0: torch.Tensor, g: torch.Generator, identity: bool = False) -> torch.Tensor:
        t = torch.randint(20, 100, (x0.shape[0],), generator=g)
        noisy = x0 + (t / 100).view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g)
        return F.mse_loss(noisy if identity else net(noisy, t), x0)

    with torch.no_grad():
        before = float(batch_loss(data[:32], torch.Generator().manual_seed(1)))
        identity = float(batch_loss(data[:32], torch.Generator().manual_seed(1), identity=True))
    start = time.perf_counter()
    for _ in range(150):
        idx = torch.randint(0, 64, (8,), generator=gen)
        loss = batch_loss(data[idx], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(batch_loss(data[:32], torch.Generator().manual_seed(1)))
    print(f"wavelet UNet denoising MSE {before:.3f} -> {after:.4f}, identity {identity:.3f} "
          f"({time.perf_counter() - start:.0f} s)")
    assert after < before / 10 and after < identity / 4


@pytest.mark.parametrize("dims", [2, 3])
def test_segdiff_with_wavelet_downsampling_runs_loss_and_predict(dims):
    torch.manual_seed(0)
    m = SegDiff(in_channels=1, spatial_dims=dims, downsample="wavelet", rrdb_blocks=1, rrdb_features=16,
                rrdb_growth=8, **TINY).eval()
    assert isinstance(m.unet.unet.down_blocks[0].downsampler, WaveletDownsample)
    shape = (2, 1) + (8,) * dims
    batch = {"image": torch.randn(shape), "label": (torch.rand(shape) > 0.5).float()}
    loss, _ = m.loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    # in the graph (MONAI zero-initialises the output conv, so the inner gradients are 0 at step 0)
    assert m.unet.unet.down_blocks[0].downsampler.proj.weight.grad is not None
    out = m.predict(batch, sampler="ddim", steps=3, n_samples=3, generator=torch.Generator().manual_seed(0))
    assert out["prediction"].shape == shape and set(out["prediction"].unique().tolist()) <= {0.0, 1.0}


def test_srdiff_with_wavelet_downsampling_runs_loss_and_predict():
    from medrs_diff.methods import SRDiff

    torch.manual_seed(0)
    m = SRDiff(in_channels=3, scale=4, pretrain_steps=0, downsample="wavelet", rrdb_blocks=2, rrdb_features=16,
               rrdb_growth=8, **{k: v for k, v in TINY.items() if k != "num_head_channels"})
    assert isinstance(m.unet.unet.up_blocks[0].upsampler, WaveletUpsample)
    hr = torch.rand(2, 3, 16, 16) * 2 - 1
    loss, logs = m.loss({"cond": F.avg_pool2d(hr, 4), "image": hr})
    assert "loss_simple" in logs and torch.isfinite(loss)
    out = m.eval().predict({"cond": F.avg_pool2d(hr, 4)}, sampler="ddim", steps=2,
                           generator=torch.Generator().manual_seed(0))
    assert out["prediction"].shape == hr.shape and torch.isfinite(out["prediction"]).all()
