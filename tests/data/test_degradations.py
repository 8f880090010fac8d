"""Blind-SR degradations: kernels against closed forms, noise level, shapes, seeding, the named test grid."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from medrs_diff.data.degradations import (
    TEST_GRID,
    Degradation,
    degrade,
    gaussian_kernel,
    sample_degradation,
    setting,
)
from medrs_diff.errors import ArgumentError, DataError


@pytest.mark.parametrize("args", [(0.2,), (1.5,), (4.0,), (1.2, 2.4, 0.0), (3.6, 2.4, 45.0), (0.5, 4.0, 130.0)])
def test_kernel_sums_to_one_and_is_21_wide(args):
    k = gaussian_kernel(*args)
    assert k.shape == (21, 21) and k.min() >= 0
    assert k.sum() == pytest.approx(1.0, abs=1e-12)


def test_isotropic_kernel_is_the_closed_form_gaussian():
    sigma = 1.7
    r = np.arange(21) - 10
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    np.testing.assert_allclose(gaussian_kernel(sigma), g / g.sum(), rtol=1e-12, atol=1e-15)
    # the anisotropic form with equal widths is the isotropic one at any angle
    np.testing.assert_allclose(gaussian_kernel(sigma, sigma, 33.0), gaussian_kernel(sigma), atol=1e-15)


def test_anisotropic_kernel_widths_and_rotation():
    k = gaussian_kernel(3.0, 1.0, 0.0)  # wide along x (columns), narrow along y (rows)
    r = np.arange(21) - 10
    var_x = float((k.sum(0) * r**2).sum())
    var_y = float((k.sum(1) * r**2).sum())
    assert var_x == pytest.approx(9.0, rel=0.01) and var_y == pytest.approx(1.0, rel=0.01)
    # 90 degrees swaps the axes; 45 degrees puts the long axis on the diagonal (x = y)
    np.testing.assert_allclose(gaussian_kernel(3.0, 1.0, 90.0), k.T, atol=1e-12)
    d = gaussian_kernel(3.0, 1.0, 45.0)
    assert d[15, 15] > d[15, 5]  # (y=+5, x=+5) on the long axis beats (y=+5, x=-5)


def test_blur_matches_scipy_convolution():
    rng = np.random.default_rng(0)
    img = rng.random((2, 40, 40)).astype(np.float32)
    deg = Degradation(2.0, 1.0, 30.0, scale=1)
    out = degrade(img, deg).numpy()
    ref = np.stack([ndimage.convolve(c.astype(np.float64), deg.kernel(), mode="mirror") for c in img])
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_shapes_and_downsamplers():
    hr = torch.rand(2, 3, 64, 64)
    for scale in (4, 8):
        lr = degrade(hr, Degradation(1.2, 2.4, 45.0, 5.0, scale), rng=0)
        assert lr.shape == (2, 3, 64 // scale, 64 // scale)
    # no blur, no noise, direct: every 4th pixel (offset 2)
    direct = degrade(hr, Degradation(scale=4, downsample="direct"))
    assert torch.equal(direct, hr[..., 2::4, 2::4])
    # bicubic (antialiased) of a constant image is the constant
    assert torch.allclose(degrade(torch.full((1, 32, 32), 0.3), Degradation(2.0)), torch.tensor(0.3), atol=1e-5)
    assert degrade(hr[0], Degradation()).shape == (3, 16, 16)  # (C, H, W) in, (C, H, W) out


def test_noise_std_on_the_8_bit_scale_and_seeding():
    flat = torch.full((1, 1, 512, 512), 0.5)
    deg = Degradation(noise=25.0, scale=1)
    for data_range in (1.0, 2.0, 1e4):
        out = degrade(flat * data_range, deg, rng=np.random.default_rng(1), data_range=data_range)
        assert float((out - 0.5 * data_range).std()) == pytest.approx(25 / 255 * data_range, rel=0.02)
    a = degrade(flat, deg, rng=np.random.default_rng(3))
    assert torch.equal(a, degrade(flat, deg, rng=np.random.default_rng(3)))
    assert not torch.equal(a, degrade(flat, deg, rng=np.random.default_rng(4)))


def test_jpeg_with_torchvision():
    img = torch.rand(3, 32, 32)
    out = degrade(img, Degradation(scale=1, jpeg_quality=10))
    assert out.shape == img.shape and not torch.allclose(out, img, atol=1e-3)
    assert (out * 255 - (out * 255).round()).abs().max() < 1e-3  # 8-bit levels after decoding
    with pytest.raises(DataError, match="JPEG needs 1 or 3 bands"):
        degrade(torch.rand(4, 32, 32), Degradation(scale=1, jpeg_quality=50))


def test_test_grid_and_sampling():
    aniso = [k for k in TEST_GRID if k.startswith("aniso")]
    assert len(aniso) == 18
    d = setting("aniso_3.6_2.4_t45_n10", scale=8)
    assert (d.sigma_x, d.sigma_y, d.theta, d.noise, d.scale) == (3.6, 2.4, 45.0, 10.0, 8)
    with pytest.raises(ArgumentError, match="unknown setting"):
        setting("gauss_9")
    rng = np.random.default_rng(0)
    draws = [sample_degradation(rng, 4, "aniso") for _ in range(200)]
    sig = np.array([[g.sigma_x, g.sigma_y] for g in draws])
    assert sig.min() >= 0.2 and sig.max() <= 4.0
    assert max(g.noise for g in draws) <= 25 and max(g.theta for g in draws) < 180
    assert all(g.sigma_y is None for g in (sample_degradation(rng, 4, "iso") for _ in range(5)))
    with pytest.raises(ArgumentError, match="sigma_x"):
        gaussian_kernel(-1.0)
    with pytest.raises(DataError, match="not a multiple of the scale"):
        degrade(torch.rand(1, 30, 30), Degradation(scale=4))
    with pytest.raises(DataError, match="NaN"):
        degrade(torch.full((1, 4, 4), float("nan")), Degradation(scale=1))
