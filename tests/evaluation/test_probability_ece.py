"""ECE of class-probability maps in task ``seg`` (``probability=`` / ``--probability``): hand-computed values,
BraTS regions, MONAI's CalibrationErrorMetric and the refusals."""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import CalibrationErrorMetric

from medrs_diff.cli import evaluate_args
from medrs_diff.errors import DataError
from medrs_diff.evaluation import evaluate
from medrs_diff.metrics import expected_calibration_error


def _one_line(err: pytest.ExceptionInfo, path) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path)) and ". Fix: " in msg, msg
    return msg


def _ece_by_hand(p: np.ndarray, y: np.ndarray, bins: int = 20) -> float:
    """Plain-loop ECE: bins [k/n, (k+1)/n), p = 1 in the last."""
    p, y = p.ravel().astype(np.float64), y.ravel().astype(np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for k in range(bins):
        sel = idx == k
        if sel.any():
            total += sel.sum() * abs(p[sel].mean() - y[sel].mean())
    return total / p.size


# ref = [[0, 1], [2, 1]]; one probability vector per pixel, classes (0, 1, 2)
_REF = np.array([[0, 1], [2, 1]], np.uint8)
_PROB = np.array([[[0.7, 0.1], [0.3, 0.2]],     # p(0)
                  [[0.2, 0.85], [0.3, 0.3]],    # p(1)
                  [[0.1, 0.05], [0.4, 0.5]]],   # p(2)
                 np.float32)


def test_hand_computed_per_class_ece(tmp_path):
    np.save(tmp_path / "c.npy", _REF), np.save(tmp_path / "r.npy", _REF)
    np.save(tmp_path / "p.npy", _PROB)
    res = evaluate(tmp_path / "c.npy", tmp_path / "r.npy", "seg", probability=tmp_path / "p.npy", write=False)
    # label 1: p = .2 (y 0), .85 (y 1), .3 and .3 (y 0 and 1, one bin): (.2 + .15 + 2 x .2) / 4
    assert res["cases"]["r"]["1"]["ece"] == pytest.approx(0.1875, abs=1e-6)
    # label 2: p = .1, .05, .4 (y 1), .5: four bins, (.1 + .05 + .6 + .5) / 4
    assert res["cases"]["r"]["2"]["ece"] == pytest.approx(0.3125, abs=1e-6)
    assert res["aggregate"]["1"]["ece"] == pytest.approx(0.1875, abs=1e-6)
    assert res["aggregate"]["2"]["mce"] == pytest.approx(0.6, abs=1e-6)
    assert res["settings"]["class_values"] == [0, 1, 2]
    # without probability= no ECE is reported for a label map
    assert "ece" not in evaluate(tmp_path / "c.npy", tmp_path / "r.npy", "seg", write=False)["cases"]["r"]["1"]


def _nifti(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data), np.diag([1.0, 1.0, 2.0, 1.0])), path)


def _brats_case(rng, shape=(6, 5, 4), et=3):
    ref = rng.choice(np.array([0, 1, 2, et]), size=shape, p=[0.4, 0.2, 0.2, 0.2]).astype(np.uint8)
    prob = rng.dirichlet(np.ones(4), size=shape).astype(np.float32)  # (*shape, 4): channels last, as infer
    prob /= prob.sum(-1, keepdims=True)
    return ref, prob


@pytest.mark.parametrize("et", [3, 4])
def test_brats_region_ece_through_the_cli(tmp_path, rng, et):
    for d in ("pred", "ref", "probability"):
        (tmp_path / d).mkdir()
    cases = {}
    for name in ("a", "b"):
        ref, prob = _brats_case(rng, et=et)
        cases[name] = (ref, prob)
        _nifti(tmp_path / "ref" / f"{name}.nii.gz", ref)
        _nifti(tmp_path / "pred" / f"{name}.nii.gz", np.array([0, 1, 2, et], np.uint8)[prob.argmax(-1)])
        _nifti(tmp_path / "probability" / f"{name}.nii.gz", prob)
    res = evaluate_args.run_from_args(_parse(tmp_path / "pred", tmp_path / "ref", "--task", "seg", "--brats",
                                             "--et-label", str(et), "--probability", tmp_path / "probability",
                                             "--out", tmp_path / "report"))
    pooled = {r: ([], []) for r in ("WT", "TC", "ET")}
    for name, (ref, prob) in cases.items():
        regions = {"WT": (1 - prob[..., 0], ref > 0), "TC": (prob[..., 1] + prob[..., 3], (ref == 1) | (ref == et)),
                   "ET": (prob[..., 3], ref == et)}
        for r, (p, y) in regions.items():
            assert res["cases"][name][r]["ece"] == pytest.approx(_ece_by_hand(p, y), abs=1e-5), (name, r)
            pooled[r][0].append(p.ravel()), pooled[r][1].append(y.ravel())
    for r, (ps, ys) in pooled.items():
        assert res["aggregate"][r]["ece"] == pytest.approx(_ece_by_hand(np.concatenate(ps), np.concatenate(ys)),
                                                           abs=1e-5)
        assert res["aggregate"][r]["n_pixels"] == 2 * 6 * 5 * 4
    assert res["aggregate"]["WT"]["ece"] != pytest.approx(res["aggregate"]["ET"]["ece"])


def _parse(*argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    evaluate_args.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def test_matches_monai_calibration_error_metric(tmp_path, rng):
    """Off bin edges the two agree. MONAI's edges are k (1 + eps_float32) / n (torch.linspace to 1 + eps), so a
    probability exactly on k / n falls in bin k - 1 there, whichever ``right``, and in bin k here ([k/n, (k+1)/n),
    Guo et al.)."""
    k, shape = 4, (7, 6, 5)
    ref = rng.integers(0, k, size=shape).astype(np.uint8)
    logits = rng.standard_normal((*shape, k)) * 2
    prob = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    _nifti(tmp_path / "r.nii.gz", ref), _nifti(tmp_path / "p.nii.gz", prob.argmax(-1).astype(np.uint8))
    _nifti(tmp_path / "prob.nii.gz", prob)
    res = evaluate(tmp_path / "p.nii.gz", tmp_path / "r.nii.gz", "seg", probability=tmp_path / "prob.nii.gz",
                   write=False)
    y_pred = torch.from_numpy(np.moveaxis(prob, -1, 0))[None].double()
    y = torch.nn.functional.one_hot(torch.from_numpy(ref).long(), k).movedim(-1, 0)[None].double()
    metric = CalibrationErrorMetric(num_bins=20, include_background=True, metric_reduction="none")
    metric(y_pred=y_pred, y=y)
    monai_ece = metric.aggregate()[0]
    for c in range(1, k):
        assert res["cases"]["r"][str(c)]["ece"] == pytest.approx(float(monai_ece[c]), abs=1e-5)
    # on a bin edge: 0.5 and 0.52 share bin 10 here (gap |0.51 - 0.5|), not in MONAI (gaps 0.5 and 0.52)
    p = torch.tensor([[[0.5, 0.52]]], dtype=torch.float64)
    t = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    assert float(expected_calibration_error(p[:, 0], t[:, 0], num_bins=20)[0]) == pytest.approx(0.01)
    for right in (True, False):
        edge = CalibrationErrorMetric(num_bins=20, right=right, metric_reduction="none")
        edge(y_pred=p, y=t)
        assert float(edge.aggregate().flatten()[0]) == pytest.approx(0.51, abs=1e-6)


def test_refusals(tmp_path):
    np.save(tmp_path / "c.npy", _REF), np.save(tmp_path / "r.npy", _REF)

    def run(prob):
        np.save(tmp_path / "p.npy", prob.astype(np.float32))
        with pytest.raises(DataError) as err:
            evaluate(tmp_path / "c.npy", tmp_path / "r.npy", "seg", probability=tmp_path / "p.npy", write=False)
        return _one_line(err, tmp_path / "p.npy")

    assert "2 channel(s) but the task has 3 classes" in run(_PROB[:2] / _PROB[:2].sum(0))
    bad_sum = _PROB.copy()
    bad_sum[2, 0, 0] += 0.01
    assert "do not sum to 1 in 1 of 4" in run(bad_sum)
    out_of_range = _PROB.copy()
    out_of_range[1, 0, 0], out_of_range[0, 0, 0] = 1.2, -0.3 + 0.1 + 0.0  # sums stay 1
    out_of_range[2, 0, 0] = 1 - 1.2 - out_of_range[0, 0, 0]
    assert "outside [0, 1]" in run(out_of_range)
    assert "does not fit the reference grid" in run(np.full((3, 3, 3), 1 / 3))
    # a missing case in a probability folder
    (tmp_path / "probs").mkdir()
    np.save(tmp_path / "probs" / "other.npy", _PROB)
    with pytest.raises(DataError, match="no probability file for case"):
        evaluate(tmp_path / "c.npy", tmp_path / "r.npy", "seg", probability=tmp_path / "probs", write=False)


def test_brats_needs_four_channels(tmp_path, rng):
    ref, prob = _brats_case(rng)
    _nifti(tmp_path / "r.nii.gz", ref), _nifti(tmp_path / "p.nii.gz", ref)
    three = prob[..., :3] / prob[..., :3].sum(-1, keepdims=True)
    _nifti(tmp_path / "prob.nii.gz", three)
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "p.nii.gz", tmp_path / "r.nii.gz", "seg", brats=True, et_label=3,
                 probability=tmp_path / "prob.nii.gz", write=False)
    assert "3 channel(s) but the task has 4 classes (label values [0, 1, 2, 3])" in \
        _one_line(err, tmp_path / "prob.nii.gz")


def test_binary_foreground_channel_gives_the_same_ece_as_a_probability_prediction(tmp_path, rng):
    ref = (rng.random((9, 8)) > 0.6).astype(np.uint8)
    fg = rng.random((9, 8)).astype(np.float32)
    np.save(tmp_path / "r.npy", ref), np.save(tmp_path / "fg.npy", fg)
    np.save(tmp_path / "lab.npy", (fg >= 0.5).astype(np.uint8))
    np.save(tmp_path / "two.npy", np.stack([1 - fg, fg]))
    same = dict(write=False, assume_same_grid=True)  # random maps: skip the transposed / flipped check
    direct = evaluate(tmp_path / "fg.npy", tmp_path / "r.npy", "seg", **same)["cases"]["r"]["1"]["ece"]
    assert direct == pytest.approx(_ece_by_hand(fg, ref), abs=1e-6)
    for prob in ("fg.npy", "two.npy"):
        res = evaluate(tmp_path / "lab.npy", tmp_path / "r.npy", "seg", probability=tmp_path / prob, **same)
        assert res["cases"]["r"]["1"]["ece"] == pytest.approx(direct, abs=1e-6), prob
