"""Fusion metrics: hand cases, scikit-learn / scikit-image cross-checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity
from sklearn.metrics import mutual_info_score

from medrs_diff.metrics.fusion import (
    entropy,
    fusion_scores,
    mutual_information,
    qabf,
    quantise,
    vifp,
)


def _imgs(seed=0, shape=(32, 32)):
    rng = np.random.default_rng(seed)
    return rng.random(shape), rng.random(shape)


def test_entropy_hand_cases():
    assert entropy(np.full((4, 4), 0.3)) == 0.0
    half = np.zeros((4, 4))
    half[:, :2] = 1.0  # two equally likely grey levels: 1 bit
    assert entropy(half) == pytest.approx(1.0)
    ramp = (np.arange(256) + 0.5).reshape(16, 16) / 256  # every bin once: 8 bits
    assert entropy(ramp) == pytest.approx(8.0)


def test_quantise_bins():
    np.testing.assert_array_equal(quantise(np.array([0.0, 0.5 / 256, 1.5 / 256, 0.999, 1.0, 1.7, -1.0])),
                                  [0, 0, 1, 255, 255, 255, 0])


def test_mutual_information_matches_sklearn_and_hand_cases():
    a, b = _imgs(1)
    mixed = 0.5 * a + 0.5 * b
    ours = mutual_information(mixed, a)
    ref = mutual_info_score(quantise(mixed).ravel(), quantise(a).ravel()) / math.log(2)
    assert ours == pytest.approx(ref, rel=1e-12)
    half = np.zeros((4, 4))
    half[:, :2] = 1.0
    assert mutual_information(half, half) == pytest.approx(1.0)  # MI(X, X) = H(X)
    assert mutual_information(half, half.T) == pytest.approx(0.0)  # independent halves


def test_ssim_term_matches_skimage():
    a, b = _imgs(2)
    f = 0.6 * a + 0.4 * b
    ref = np.mean([structural_similarity(f, s, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                         data_range=1.0) for s in (a, b)])
    assert fusion_scores(f, a, b)["SSIM"] == pytest.approx(ref, abs=1e-6)


def test_vifp_hand_cases():
    rng = np.random.default_rng(3)
    from scipy import ndimage

    a = ndimage.gaussian_filter(rng.random((64, 64)), 2) * 0.8 + 0.1
    assert vifp(a, a) == pytest.approx(1.0, abs=1e-9)
    assert vifp(a, np.full_like(a, 0.5)) == pytest.approx(0.0, abs=1e-9)  # nothing of a is left
    assert vifp(a, a + 0.05 * rng.standard_normal(a.shape)) < 1.0  # noise loses information
    mean = a.mean()
    assert vifp(a, np.clip(mean + 1.1 * (a - mean), 0, 1)) > 1.0  # contrast gain without noise: > 1


def test_qabf_hand_cases():
    """F = A = B: G = 1 and A = 1 wherever there is an edge, so Qabf = Qg(1) Qa(1) exactly."""
    a = np.zeros((16, 16))
    a[:, 8:] = 1.0
    q1 = 0.9994 / (1 + math.exp(-15 * 0.5)) * 0.9879 / (1 + math.exp(-22 * 0.2))
    assert qabf(a, a, a) == pytest.approx(q1, rel=1e-12)
    flat = np.full_like(a, 0.5)  # no edge kept: Qg(0) Qa(...) ~ 5e-4
    assert qabf(flat, a, a) < 1e-3
    # half the edge strength: G = 1/2 on the edge pixels
    q_half = 0.9994 / (1 + math.exp(0.0)) * 0.9879 / (1 + math.exp(-22 * 0.2))
    assert qabf(0.5 * a, a, a) == pytest.approx(q_half, rel=1e-12)


def test_fusion_scores_keys_and_refusals():
    a, b = _imgs(4)
    s = fusion_scores(0.5 * (a + b), a, b)
    assert list(s) == ["EN", "SD", "MI", "VIF", "Qabf", "SSIM"]
    assert all(np.isfinite(v) for v in s.values())
    assert s["SD"] == pytest.approx(float((0.5 * (a + b)).std()))
    with pytest.raises(ValueError, match="shape"):
        fusion_scores(a, a, b[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        fusion_scores(a * np.nan, a, b)
