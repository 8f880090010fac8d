"""FOV-restricted pixel scores, AUROC and calibration error: hand cases, sklearn and MONAI checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import CalibrationErrorMetric
from sklearn.metrics import roc_auc_score

from medrs_diff.metrics import CalibrationMetric, PixelMetric, auroc, expected_calibration_error, pixel_scores


def test_pixel_scores_hand_worked_with_fov():
    prob = np.array([[[0.9, 0.8, 0.3], [0.1, 0.7, 0.2]]])
    ref = np.array([[[1, 0, 1], [0, 1, 1]]])
    fov = np.array([[[1, 1, 1], [1, 0, 0]]])  # the last two pixels are outside the FOV
    out = pixel_scores(prob, ref, fov)
    # inside FOV: pred (>=0.5) = [1, 1, 0, 0], ref = [1, 0, 1, 0] -> TP 1, FP 1, FN 1, TN 1
    assert out["sensitivity"].item() == pytest.approx(0.5)
    assert out["specificity"].item() == pytest.approx(0.5)
    assert out["accuracy"].item() == pytest.approx(0.5)
    # positives {0.9, 0.3} vs negatives {0.8, 0.1}: 3 of 4 pairs ordered correctly
    assert out["auroc"].item() == pytest.approx(0.75)
    # without the FOV the two outside pixels (a miss and a hit) count
    assert pixel_scores(prob, ref)["sensitivity"].item() == pytest.approx(2 / 4)
    assert pixel_scores(prob, ref)["accuracy"].item() == pytest.approx(3 / 6)


def test_values_outside_fov_do_not_matter(rng):
    prob = rng.random((2, 16, 16))
    ref = rng.random((2, 16, 16)) > 0.7
    fov = np.zeros((2, 16, 16), bool)
    fov[:, 3:13, 3:13] = True
    prob2, ref2 = prob.copy(), ref.copy()
    prob2[~fov] = 1.0
    ref2[~fov] = False
    a, b = pixel_scores(prob, ref, fov), pixel_scores(prob2, ref2, fov)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_auroc_matches_sklearn_with_ties(rng):
    scores = rng.integers(0, 10, 300) / 10  # many ties
    labels = rng.random(300) > 0.6
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert math.isnan(auroc(scores, np.zeros(300)))


def test_streaming_auroc_exact_for_binned_scores_and_pooled(rng):
    bins = 1000
    prob = (rng.integers(0, bins, (3, 20, 20)) + 0.5) / bins  # bin centres: binning loses nothing
    ref = rng.random((3, 20, 20)) < prob  # informative labels
    fov = rng.random((3, 20, 20)) > 0.2
    m = PixelMetric(num_bins=bins)
    for i in range(3):
        m.update(prob[i:i + 1], ref[i:i + 1], fov[i:i + 1])
    out = m.compute()
    assert out["auroc"] == pytest.approx(roc_auc_score(ref[fov], prob[fov]), abs=1e-12)
    tp = ((prob >= 0.5) & ref & fov).sum()
    assert out["sensitivity"] == pytest.approx(tp / (ref & fov).sum())
    assert out["sensitivity_mean"] == pytest.approx(pixel_scores(prob, ref, fov)["sensitivity"].mean().item())


def test_ece_hand_worked():
    prob = np.array([[0.1, 0.1, 0.9, 0.9]])
    ref = np.array([[0, 1, 1, 1]])
    # bin of 0.1: mean p 0.1 vs fraction 0.5 (gap 0.4); bin of 0.9: 0.9 vs 1.0 (gap 0.1); equal weights
    assert expected_calibration_error(prob, ref, num_bins=10).item() == pytest.approx(0.25)
    m = CalibrationMetric(num_bins=10)
    m.update(prob, ref)
    assert m.compute()["mce"] == pytest.approx(0.4)


def test_ece_matches_monai_and_pools(rng):
    prob = rng.random((2, 1, 24, 24))
    ref = (rng.random((2, 1, 24, 24)) < prob**2).astype(np.float64)
    monai = CalibrationErrorMetric(num_bins=20, metric_reduction="none")(torch.from_numpy(prob).float(),
                                                                         torch.from_numpy(ref).float())
    ours = expected_calibration_error(prob[:, 0], ref[:, 0], num_bins=20)
    torch.testing.assert_close(ours, monai[:, 0].double(), atol=1e-5, rtol=0)
    m = CalibrationMetric(num_bins=20)
    m.update(prob[:1, 0], ref[:1, 0])
    m.update(prob[1:, 0], ref[1:, 0])
    joined = expected_calibration_error(np.concatenate([prob[0, 0], prob[1, 0]])[None],
                                        np.concatenate([ref[0, 0], ref[1, 0]])[None], num_bins=20)
    assert m.compute()["ece"] == pytest.approx(joined.item())


def test_probability_checks():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pixel_scores(np.full((1, 2, 2), 1.5), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="binary"):
        expected_calibration_error(np.zeros((1, 2, 2)), np.full((1, 2, 2), 2))
    with pytest.raises(ValueError, match="shape mismatch"):
        pixel_scores(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), np.ones((1, 2, 3)))
