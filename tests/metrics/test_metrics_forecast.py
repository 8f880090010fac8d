"""Contingency scores, accumulation over the set, max-pooled CSI and FSS: hand cases and pysteps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medrs_diff.metrics import CategoricalMetric, FSSMetric, categorical_scores, contingency_table, fss


def test_contingency_and_scores_hand_worked():
    pred = np.array([[0.0, 1.0, 2.0, 3.0]])
    ref = np.array([[0.0, 2.0, 0.0, 3.0]])
    table = contingency_table(pred, ref, [1.0])
    # events (>= 1): pred F T T T, ref F T F T -> H 2, M 0, F 1, R 1 (the value 1.0 itself is an event)
    assert table.tolist() == [[2, 0, 1, 1]]
    s = {k: v.item() for k, v in categorical_scores(table).items()}
    assert s["csi"] == pytest.approx(2 / 3)
    assert s["pod"] == pytest.approx(1.0)
    assert s["far"] == pytest.approx(1 / 3)
    assert s["bias"] == pytest.approx(3 / 2)
    assert s["hss"] == pytest.approx(2 * (2 * 1 - 1 * 0) / ((2 + 0) * (0 + 1) + (2 + 1) * (1 + 1)))
    hr = (2 + 0) * (2 + 1) / 4
    assert s["ets"] == pytest.approx((2 - hr) / (2 + 0 + 1 - hr))


def test_nan_pixels_are_left_out_and_undefined_scores_are_nan():
    pred = np.array([[np.nan, 5.0, 0.0]])
    ref = np.array([[5.0, np.nan, 0.0]])
    assert contingency_table(pred, ref, [1.0]).tolist() == [[0, 0, 0, 1]]
    s = categorical_scores(contingency_table(pred, ref, [1.0]))
    assert math.isnan(s["csi"].item()) and math.isnan(s["pod"].item())


def test_accumulated_csi_differs_from_mean_of_per_sample_csi():
    pred = np.zeros((2, 10, 10))
    ref = np.zeros((2, 10, 10))
    pred[0, 0, 0] = ref[0, 0, 0] = 5.0  # sample 1: one hit -> CSI 1
    ref[1, :1, :] = 5.0  # sample 2: ten rain pixels, one forecast -> H 1, M 9 -> CSI 0.1
    pred[1, 0, 0] = 5.0
    per_sample = categorical_scores(contingency_table(pred, ref, [1.0], per_sample=True))["csi"][:, 0]
    assert per_sample.tolist() == pytest.approx([1.0, 0.1])
    m = CategoricalMetric([1.0])
    for i in range(2):
        m.update(pred[i:i + 1], ref[i:i + 1])
    accumulated = m.compute()["csi@1"]
    assert accumulated == pytest.approx(2 / 11)  # (1 + 1) hits / (2 + 9 + 0)
    assert accumulated != pytest.approx(per_sample.mean().item())
    assert m.tables[1].tolist() == [[2, 9, 0, 189]]


def test_max_pooled_csi_forgives_small_displacements():
    pred = np.zeros((1, 4, 4))
    ref = np.zeros((1, 4, 4))
    pred[0, 0, 0] = 1.0
    ref[0, 1, 1] = 1.0
    m = CategoricalMetric([0.5], pool_sizes=(1, 2))
    m.update(pred, ref)
    out = m.compute()
    assert out["csi@0.5"] == 0.0
    assert out["csi_pool2@0.5"] == 1.0  # both events fall into the same 2×2 cell
    assert m.tables[2].tolist() == [[1, 0, 0, 3]]


def test_fss_hand_worked():
    pred = np.zeros((5, 5))
    ref = np.zeros((5, 5))
    pred[2, 2] = 1.0
    ref[2, 3] = 1.0
    out = fss(pred[None], ref[None], [0.5], [1, 3])
    assert out[0, 0].item() == pytest.approx(0.0)  # no overlap at grid scale
    # 3×3: each field has nine fractions of 1/9, six of them shared -> 1 - 6/81 / (9/81 + 9/81)
    assert out[0, 1].item() == pytest.approx(2 / 3)


def test_threshold_checks():
    x = np.zeros((1, 4, 4))
    for bad in ([2.0, 1.0], [1.0, 1.0], []):
        with pytest.raises(ValueError, match="threshold"):
            contingency_table(x, x, bad)
    with pytest.raises(ValueError, match="increasing"):
        CategoricalMetric([16, 74, 74])
    with pytest.raises(ValueError, match="shape mismatch"):
        contingency_table(x, np.zeros((1, 4, 5)), [1.0])
    with pytest.raises(ValueError, match="pool size"):
        contingency_table(x, x, [1.0], pool_size=8)


def test_against_pysteps(rng):
    ver = pytest.importorskip("pysteps.verification")
    thresholds = [0.5, 2.0, 5.0]
    fields = [(rng.gamma(0.6, 3.0, (24, 20)), rng.gamma(0.6, 3.0, (24, 20))) for _ in range(3)]
    m, f = CategoricalMetric(thresholds), FSSMetric(thresholds, [1, 4, 5])
    for p, o in fields:
        m.update(p[None], o[None])
        f.update(p[None], o[None])
    ours, ours_fss = m.compute(), f.compute()
    for t in thresholds:
        # continuous values never equal a threshold, so pysteps' ">" and our ">=" agree here
        tab = ver.det_cat_fct_init(t)
        for p, o in fields:
            ver.det_cat_fct_accum(tab, p, o)
        ref = ver.det_cat_fct_compute(tab, ["CSI", "POD", "FAR", "HSS", "ETS"])
        for name in ("csi", "pod", "far", "hss", "ets"):
            assert ours[f"{name}@{t:g}"] == pytest.approx(float(ref[name.upper()]), rel=1e-9), (name, t)
        for n in (1, 4, 5):
            acc = ver.fss_init(t, n)
            for p, o in fields:
                ver.fss_accum(acc, p, o)
            assert ours_fss[f"fss_{n}@{t:g}"] == pytest.approx(ver.fss_compute(acc), rel=1e-9), (n, t)
        # functional FSS on a single field
        p, o = fields[0]
        assert fss(p, o, [t], [4])[0, 0].item() == pytest.approx(ver.fss(p, o, t, 4), rel=1e-9)


def test_leading_axes_are_flattened():
    rng = np.random.default_rng(0)
    p, r = rng.random((2, 3, 8, 8)), rng.random((2, 3, 8, 8))
    torch.testing.assert_close(contingency_table(p, r, [0.5]), contingency_table(p.reshape(6, 8, 8),
                                                                                 r.reshape(6, 8, 8), [0.5]))
