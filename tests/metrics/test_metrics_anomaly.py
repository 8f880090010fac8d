"""Anomaly scores: AUROC / AUPRC against scikit-learn and by hand, Dice at a threshold, threshold selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medrs_diff.metrics import anomaly_scores, auprc, select_threshold


def test_hand_case():
    # sklearn's documented example: AP = 0.8333, AUROC = 0.75
    s = np.array([0.1, 0.4, 0.35, 0.8])
    y = np.array([0, 0, 1, 1])
    assert math.isclose(auprc(s, y), (1 / 1 * 0.5) + (2 / 3 * 0.5), rel_tol=1e-12)
    got = anomaly_scores(s.reshape(1, 4), y.reshape(1, 4), threshold=0.35)
    assert math.isclose(got["auroc"], 0.75)
    # map >= 0.35 -> {0.4, 0.35, 0.8}: TP 2, FP 1, FN 0
    assert math.isclose(got["dice"], 4 / 5) and math.isclose(got["iou"], 2 / 3)
    assert math.isclose(got["precision"], 2 / 3) and got["recall"] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_against_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random((3, 16, 16)) < 0.1
    s = np.round(rng.random((3, 16, 16)) + 0.5 * y, 1)  # rounded: many ties
    got = anomaly_scores(s, y)
    assert math.isclose(got["auroc"], roc_auc_score(y.ravel(), s.ravel()), rel_tol=1e-12)
    assert math.isclose(got["auprc"], average_precision_score(y.ravel(), s.ravel()), rel_tol=1e-12)


def test_per_image_dice_over_lesion_images_only():
    maps = np.array([[0.9, 0.1, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1], [0.9, 0.1, 0.1, 0.1]])
    labels = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    got = anomaly_scores(maps, labels, threshold=0.5)
    # image 0: Dice 1; image 1: TP 1, FP 1 -> 2/3; image 2 has no lesion: left out of the mean
    assert math.isclose(got["dice_mean"], (1 + 2 / 3) / 2)
    # pooled: TP 2, FP 2, FN 0 -> 4/6
    assert math.isclose(got["dice"], 4 / 6)


def test_threshold_dice_rule_by_hand():
    maps = np.array([[0.1, 0.2, 0.3, 0.9, 0.8]])
    labels = np.array([[0, 0, 0, 1, 1]])
    assert select_threshold(maps, labels, "dice") == 0.8  # the smallest threshold with Dice 1
    maps = np.array([[0.1, 0.5, 0.6, 0.7, 0.2]])
    labels = np.array([[0, 1, 0, 1, 0]])
    # candidates: 0.5 -> {0.5, 0.6, 0.7}: Dice 4/5; 0.6 -> 2/4; 0.7 -> 2/3; 0.2 -> 4/6
    assert select_threshold(maps, labels, "dice") == 0.5


def test_threshold_percentile_rule_uses_healthy_pixels_only():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 8, 8))
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[0, :2] = 1
    maps[0, :2] = 100.0  # lesion pixels must not move the healthy percentile
    want = np.percentile(maps[labels == 0], 95.0)
    assert select_threshold(maps, labels, "percentile", 95.0) == pytest.approx(want)
    assert select_threshold(maps[1:], None, "percentile", 95.0) == pytest.approx(np.percentile(maps[1:], 95.0))


@pytest.mark.parametrize("call, match", [
    (lambda: select_threshold(np.ones((1, 4)), np.zeros((1, 4)), "dice"), "lesion"),
    (lambda: select_threshold(np.ones((1, 4)), None, "dice"), "labels"),
    (lambda: select_threshold(np.ones((1, 4)), None, "otsu"), "rule"),
    (lambda: select_threshold(np.ones((1, 4)), None, "percentile", 100.0), "percentile"),
    (lambda: anomaly_scores(np.full((1, 4), np.nan), np.ones((1, 4))), "NaN"),
    (lambda: anomaly_scores(np.ones((1, 4)), np.ones((1, 3))), "shape"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
