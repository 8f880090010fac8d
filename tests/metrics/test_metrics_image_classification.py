"""Image metrics (PSNR, SSIM 2-D/3-D, NRMSE, SUV bias, ENL) and classification metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import SSIMMetric
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import accuracy_score, balanced_accuracy_score, cohen_kappa_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from medrs_diff.metrics import (
    ClassificationMetric,
    ImageMetric,
    classification_scores,
    confusion_matrix,
    enl,
    nrmse,
    psnr,
    ssim,
    suv_bias,
)


def test_psnr_hand_worked_and_data_range_modes():
    ref = np.zeros((1, 2, 2))
    pred = ref.copy()
    pred[0, 0, 0] = 1.0  # MSE 0.25
    assert psnr(pred, ref, data_range=1.0).item() == pytest.approx(10 * math.log10(1 / 0.25))
    ref2 = np.array([[[2.0, 4.0], [6.0, 10.0]]])
    pred2 = ref2 + np.array([[[1.0, 0.0], [0.0, 0.0]]])
    assert psnr(pred2, ref2, "ref_max").item() == pytest.approx(10 * math.log10(100 / 0.25))
    assert psnr(pred2, ref2, "ref_range").item() == pytest.approx(10 * math.log10(64 / 0.25))
    # inside a mask that leaves out the wrong pixel the images agree
    assert math.isinf(psnr(pred2, ref2, 1.0, mask=np.array([[[0, 1], [1, 1]]])).item())


def test_psnr_and_nrmse_match_skimage(rng):
    r = rng.random((1, 20, 20))
    p = r + 0.05 * rng.standard_normal(r.shape)
    assert psnr(p, r, 1.0).item() == pytest.approx(peak_signal_noise_ratio(r[0], p[0], data_range=1.0))
    for norm in ("euclidean", "min-max", "mean"):
        assert nrmse(p, r, norm).item() == pytest.approx(normalized_root_mse(r[0], p[0], normalization=norm))
    # hand: pred - ref = 1 everywhere, ref mean 2 -> NRMSE(mean) = 0.5
    assert nrmse(np.full((1, 3, 3), 3.0), np.full((1, 3, 3), 2.0), "mean").item() == pytest.approx(0.5)


def test_ssim_hand_worked_constant_images():
    a, b = np.full((1, 12, 12), 0.2), np.full((1, 12, 12), 0.6)
    c1 = (0.01 * 1.0) ** 2
    # no variance: SSIM reduces to the luminance term (2ab + C1)/(a² + b² + C1)
    assert ssim(a, b, 1.0).item() == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.04 + 0.36 + c1))
    assert ssim(a, a, 1.0).item() == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(32, 28), (16, 15, 14)])
def test_ssim_matches_skimage_2d_and_3d(rng, shape):
    r = rng.random(shape)
    p = np.clip(r + 0.1 * rng.standard_normal(shape), 0, 1)
    expected = structural_similarity(r, p, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert ssim(p[None], r[None], 1.0, spatial_dims=len(shape)).item() == pytest.approx(expected, abs=1e-10)


def test_ssim_matches_monai_3d(rng):
    r = rng.random((2, 1, 14, 13, 12))
    p = r + 0.1 * rng.standard_normal(r.shape)
    monai = SSIMMetric(spatial_dims=3, data_range=1.0, reduction="none")(torch.from_numpy(p).float(),
                                                                        torch.from_numpy(r).float())
    torch.testing.assert_close(ssim(p, r, 1.0, spatial_dims=3), monai.flatten().double(), atol=2e-5, rtol=0)


def test_ssim_mask_and_errors(rng):
    r = rng.random((1, 20, 20))
    p = r.copy()
    p[0, :, 12:] = rng.random((20, 8))  # damage the right part only
    mask = np.zeros((1, 20, 20), bool)
    mask[0, :, :7] = True  # windows (radius 5) centred left of column 7 end before column 12
    assert ssim(p, r, 1.0, mask=mask).item() == pytest.approx(1.0)
    assert ssim(p, r, 1.0).item() < 0.9
    with pytest.raises(ValueError, match="window"):
        ssim(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), 1.0)
    with pytest.raises(ValueError, match="data_range"):
        psnr(r, r, data_range=-1.0)


def test_suv_bias_hand_worked():
    ref = np.array([[1.0, 2.0, 3.0, 9.0]])
    pred = np.array([[1.0, 2.0, 6.0, 0.0]])
    mask = np.array([[1, 1, 1, 0]])  # the lesion is the first three voxels
    b = suv_bias(pred, ref, mask)
    assert b["mean_bias_pct"].item() == pytest.approx(100 * (3 - 2) / 2)
    assert b["max_bias_pct"].item() == pytest.approx(100 * (6 - 3) / 3)
    with pytest.raises(ValueError, match="empty"):
        suv_bias(pred, ref, np.zeros((1, 4)))


def test_enl_hand_worked_and_speckle(rng):
    assert enl(np.array([[1.0, 3.0]])).item() == pytest.approx(4.0)  # mean 2, variance 1
    looks = 4
    speckle = rng.gamma(looks, 1 / looks, (1, 200, 200))  # 4-look intensity speckle
    assert enl(speckle).item() == pytest.approx(looks, rel=0.05)
    with pytest.raises(ValueError, match="dB"):
        enl(np.array([[-3.0, 2.0]]))


def test_image_metric_streaming(rng):
    r = rng.random((3, 1, 16, 16))
    p = r + 0.05 * rng.standard_normal(r.shape)
    m = ImageMetric(data_range=1.0, normalization="min-max")
    m.update(p[:1], r[:1])
    m.update(p[1:], r[1:])
    out = m.compute()
    assert out["psnr"] == pytest.approx(psnr(p, r, 1.0).mean().item())
    assert out["ssim"] == pytest.approx(ssim(p, r, 1.0).mean().item())
    assert out["n_images"] == 3


def test_classification_hand_worked():
    ref = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    cm = confusion_matrix(pred, ref, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    s = classification_scores(cm)
    assert s["overall_accuracy"] == pytest.approx(3 / 5)
    assert s["average_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    # p_o 0.6, p_e = (2·2 + 2·3 + 1·0)/25 = 0.4 -> kappa = 0.2/0.6
    assert s["kappa"] == pytest.approx(1 / 3)


def test_classification_matches_sklearn_streaming_and_logits(rng):
    ref = rng.integers(0, 5, (4, 30))
    pred = np.where(rng.random((4, 30)) < 0.6, ref, rng.integers(0, 5, (4, 30)))
    m = ClassificationMetric(5)
    for i in range(4):
        m.update(pred[i], ref[i])
    out = m.compute()
    assert m.matrix.tolist() == sk_confusion_matrix(ref.ravel(), pred.ravel(), labels=range(5)).tolist()
    assert out["overall_accuracy"] == pytest.approx(accuracy_score(ref.ravel(), pred.ravel()))
    assert out["average_accuracy"] == pytest.approx(balanced_accuracy_score(ref.ravel(), pred.ravel()))
    assert out["kappa"] == pytest.approx(cohen_kappa_score(ref.ravel(), pred.ravel()))
    logits = np.eye(5)[pred[0]] * 3.0  # (30, 5) scores -> argmax over the class axis
    assert confusion_matrix(logits, ref[0], 5).tolist() == confusion_matrix(pred[0], ref[0], 5).tolist()


def test_classification_errors_and_ignore_index():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(np.array([0.5, 1]), np.array([0, 1]), 3)
    cm = confusion_matrix(np.array([0, 1, 2]), np.array([0, 255, 2]), 3, ignore_index=255)
    assert int(cm.sum()) == 2
