"""BraTS regions and scores; GED², diversity and HM-IoU for stochastic segmentations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medrs_diff.metrics import (
    BratsMetric,
    StochasticSegMetric,
    brats_regions,
    brats_scores,
    generalized_energy_distance,
    hungarian_matched_iou,
)


def test_brats_regions_from_labels():
    lab = np.array([0, 1, 2, 4])
    r = brats_regions(lab)
    assert r["WT"].tolist() == [False, True, True, True]
    assert r["TC"].tolist() == [False, True, False, True]
    assert r["ET"].tolist() == [False, False, False, True]
    assert brats_regions(np.array([0, 3]), et_label=3)["ET"].tolist() == [False, True]
    with pytest.raises(ValueError, match="et_label=3"):
        brats_regions(np.array([0, 3]))


def test_brats_scores_challenge_rules():
    ref = np.zeros((1, 10, 10, 10), np.int64)
    ref[0, 2:6, 2:6, 2:6] = 2
    ref[0, 3:5, 3:5, 3:5] = 4
    pred = ref.copy()
    pred[pred == 4] = 1  # ET predicted as necrosis: WT and TC perfect, ET missed
    s = brats_scores(pred, ref, spacing=(1.0, 1.0, 2.0))
    assert s["dice_WT"].item() == 1.0 and s["hd95_WT"].item() == 0.0
    assert s["dice_TC"].item() == 1.0
    assert s["dice_ET"].item() == 0.0
    assert s["hd95_ET"].item() == pytest.approx(math.sqrt(10**2 + 10**2 + 20**2))
    m = BratsMetric(spacing=(1.0, 1.0, 2.0))
    m.update(pred, ref)
    m.update(ref, ref)
    out = m.compute()
    assert out["dice_ET"] == pytest.approx(0.5)  # per-case mean of 0 and 1
    # pooled: intersections 0 + 8, pred sizes 0 + 8, ref sizes 8 + 8
    assert out["dice_pooled_ET"] == pytest.approx(2 * 8 / (8 + 16))
    with pytest.raises(ValueError, match="3-D"):
        brats_scores(pred[:, 0], ref[:, 0])


def _pair_masks():
    a = np.zeros((8, 8), bool)
    b = np.zeros((8, 8), bool)
    a[:4] = True
    b[4:] = True  # disjoint, same size
    return a, b


def test_ged_hand_worked():
    a, b = _pair_masks()
    samples = np.stack([a, b])[None]  # S = {A, B}
    annots = a[None, None]  # Y = {A}
    g = generalized_energy_distance(samples, annots)
    # d_sy = (0 + 1)/2, d_ss over all 4 ordered pairs = (0 + 1 + 1 + 0)/4, d_yy = 0
    assert g["d_sy"].item() == pytest.approx(0.5)
    assert g["d_ss"].item() == pytest.approx(0.5)
    assert g["ged2"].item() == pytest.approx(2 * 0.5 - 0.5 - 0)
    assert g["diversity"].item() == pytest.approx(1.0)  # the one distinct pair is disjoint
    # HM-IoU: Y repeated to 2 elements, matched A-A (1) and B-A (0)
    assert hungarian_matched_iou(samples, annots).item() == pytest.approx(0.5)


def test_ged_identical_sets_and_empty_masks():
    a, b = _pair_masks()
    s = np.stack([a, b])[None]
    assert generalized_energy_distance(s, s)["ged2"].item() == pytest.approx(0.0)
    assert hungarian_matched_iou(s, s).item() == pytest.approx(1.0)
    empty = np.zeros((1, 3, 8, 8), bool)
    g = generalized_energy_distance(empty, empty[:, :2])
    assert g["ged2"].item() == 0.0 and g["diversity"].item() == 0.0  # both empty -> d = 0


def test_stochastic_streaming_and_errors(rng):
    s = rng.random((3, 4, 8, 8)) > 0.5
    y = rng.random((3, 2, 8, 8)) > 0.5
    m = StochasticSegMetric()
    m.update(s[:1], y[:1])
    m.update(s[1:], y[1:])
    assert m.compute()["ged2"] == pytest.approx(generalized_energy_distance(s, y)["ged2"].mean().item())
    assert m.compute()["n_cases"] == 3
    with pytest.raises(ValueError, match="shape mismatch"):
        generalized_energy_distance(s, y[:, :, :4])
