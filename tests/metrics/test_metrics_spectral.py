"""Spectral metrics: hand-worked SAM / ERGAS / mPSNR / RMSE / MRAE, checks against torchmetrics and
scikit-image, and real Sentinel-2 scenes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics.functional.image import error_relative_global_dimensionless_synthesis, spectral_angle_mapper

from medrs_diff.metrics import SpectralMetric, band_psnr, band_ssim, ergas, mrae, rmse, sam, spectral_scores


def test_sam_hand_worked_degrees_and_zero_vectors():
    # pixels: (1,0) vs (1,1) -> 45°; (0,1) vs (0,2) -> 0°; a zero vector -> left out
    pred = np.array([[[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]]])  # (B=1, C=2, H=1, W=3)
    ref = np.array([[[[1.0, 0.0, 5.0]], [[1.0, 2.0, 5.0]]]])
    assert sam(pred, ref).item() == pytest.approx(22.5)
    # a mask can leave the 45° pixel out too
    assert sam(pred, ref, mask=np.array([[[False, True, True]]])).item() == pytest.approx(0.0)
    # parallel vectors whose rounded cosine exceeds 1 are clamped, not NaN
    v = np.array([[[[0.1]], [[0.2]], [[0.3]]]]) * 3
    assert sam(v, v / 3).item() == pytest.approx(0.0, abs=1e-6)


def test_sam_is_torchmetrics_in_degrees(rng):
    p, r = rng.random((2, 5, 12, 12)) + 0.05, rng.random((2, 5, 12, 12)) + 0.05
    tm = spectral_angle_mapper(torch.from_numpy(p), torch.from_numpy(r))  # radians, mean over all pixels
    assert sam(p, r).mean().item() == pytest.approx(math.degrees(tm.item()), rel=1e-9)


def test_ergas_hand_worked():
    ref = np.stack([np.full((4, 4), 10.0), np.full((4, 4), 20.0)])[None]
    pred = np.stack([np.full((4, 4), 11.0), np.full((4, 4), 18.0)])[None]
    # RMSE/mean per band = 1/10 and 2/20 -> sqrt(mean(0.01, 0.01)) = 0.1; ×4 SR: h/l = 1/4
    assert ergas(pred, ref, resolution_ratio=0.25).item() == pytest.approx(100 * 0.25 * 0.1)
    assert ergas(pred, ref, resolution_ratio=1.0).item() == pytest.approx(10.0)


def test_ergas_vs_torchmetrics_ratio_convention(rng):
    p, r = rng.random((2, 4, 10, 10)) + 0.5, rng.random((2, 4, 10, 10)) + 0.5
    tm = error_relative_global_dimensionless_synthesis(torch.from_numpy(p), torch.from_numpy(r), ratio=4,
                                                       reduction="none")
    # torchmetrics 1.9 computes 100/ratio, i.e. Wald's h/l = 1/ratio
    torch.testing.assert_close(ergas(p, r, 0.25), tm.double(), rtol=1e-9, atol=0)


def test_ergas_rejects_inverted_ratio():
    x = np.ones((1, 2, 4, 4))
    with pytest.raises(ValueError, match="h/l"):
        ergas(x, x, resolution_ratio=4)


def test_band_psnr_hand_and_skimage(rng):
    ref = np.zeros((1, 2, 2, 2))
    pred = ref.copy()
    pred[0, 0] = 1.0  # band 0: MSE 1 -> 10 log10(100/1) = 20 dB
    pred[0, 1] = 0.1  # band 1: MSE 0.01 -> 40 dB
    assert band_psnr(pred, ref, data_range=10.0).item() == pytest.approx(30.0)
    p, r = rng.random((1, 3, 16, 16)), rng.random((1, 3, 16, 16))
    expected = np.mean([peak_signal_noise_ratio(r[0, k], p[0, k], data_range=1.0) for k in range(3)])
    assert band_psnr(p, r, 1.0).item() == pytest.approx(expected)


def test_band_ssim_matches_skimage(rng):
    r = rng.random((1, 3, 24, 24))
    p = np.clip(r + 0.1 * rng.standard_normal(r.shape), 0, 1)
    expected = np.mean([structural_similarity(r[0, k], p[0, k], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False) for k in range(3)])
    assert band_ssim(p, r, 1.0).item() == pytest.approx(expected, abs=1e-10)


def test_rmse_mrae_hand_worked():
    ref = np.array([1.0, 4.0, 0.0, 2.0]).reshape(1, 1, 2, 2)
    pred = np.array([2.0, 4.0, 3.0, 1.0]).reshape(1, 1, 2, 2)
    assert rmse(pred, ref).item() == pytest.approx(math.sqrt((1 + 0 + 9 + 1) / 4))
    # MRAE leaves out the zero reference: (1/1 + 0/4 + 1/2) / 3
    assert mrae(pred, ref).item() == pytest.approx(0.5)


def test_streaming_means_and_layout_errors(rng):
    p, r = rng.random((4, 4, 32, 32)) + 0.1, rng.random((4, 4, 32, 32)) + 0.1
    m = SpectralMetric(data_range=1.0, resolution_ratio=0.5)
    m.update(p[:2], r[:2])
    m.update(p[2:], r[2:])
    full = spectral_scores(p, r, 1.0, 0.5)
    out = m.compute()
    for k, v in full.items():
        assert out[k] == pytest.approx(v.mean().item()), k
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        sam(p[0], r[0])
    with pytest.raises(ValueError, match="shape mismatch"):
        sam(p, r[:, :3])
    with pytest.raises(ValueError, match="data_range"):
        band_psnr(p, r, data_range=0)


def test_real_sentinel2_cloudy_vs_clear(shared_data):
    scenes = np.load(shared_data / "sentinel2_eolearn" / "REFERENCE_SCENES.npy")  # (5, H, W, 13)
    clear_a = np.moveaxis(scenes[2], -1, 0)[None].astype(np.float64)
    clear_b = np.moveaxis(scenes[3], -1, 0)[None].astype(np.float64)
    cloudy = np.moveaxis(scenes[0], -1, 0)[None].astype(np.float64)
    tm = spectral_angle_mapper(torch.from_numpy(clear_b), torch.from_numpy(clear_a))
    assert sam(clear_b, clear_a).item() == pytest.approx(math.degrees(tm.item()), rel=1e-6)
    # a cloudy scene is spectrally further from the clear reference than another clear date
    assert sam(cloudy, clear_a).item() > sam(clear_b, clear_a).item()
    assert ergas(cloudy, clear_a, 1.0).item() > ergas(clear_b, clear_a, 1.0).item()
