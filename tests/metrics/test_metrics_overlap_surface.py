"""Dice / IoU and surface distances: hand-worked cases, empty-mask rules, MONAI cross-checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import (
    DiceMetric,
    MeanIoU,
    compute_average_surface_distance,
    compute_hausdorff_distance,
    compute_surface_dice,
)

from medrs_diff.metrics import (
    OverlapMetric,
    SurfaceDistanceMetric,
    average_surface_distance,
    dice,
    hd95,
    iou,
    surface_dice,
    surface_distances,
)


def test_dice_iou_hand_worked():
    pred = np.zeros((1, 4, 4), bool)
    ref = np.zeros((1, 4, 4), bool)
    pred[0, 0, :4] = True  # 4 pixels
    ref[0, 0, 1:4] = True  # 3 overlap
    ref[0, 1, 1:4] = True  # ref has 6 pixels
    assert dice(pred, ref).item() == pytest.approx(2 * 3 / (4 + 6))
    assert iou(pred, ref).item() == pytest.approx(3 / 7)


def test_empty_mask_rule():
    empty = np.zeros((1, 5, 5), bool)
    full = np.ones((1, 5, 5), bool)
    assert dice(empty, empty).item() == 1.0
    assert math.isnan(dice(empty, empty, empty_score=float("nan")).item())
    assert dice(full, empty).item() == 0.0 and dice(empty, full).item() == 0.0
    m = OverlapMetric(empty_score=float("nan"))
    m.update(np.stack([full[0], empty[0]]), np.stack([full[0], empty[0]]))
    out = m.compute()
    assert out["dice_mean"] == 1.0 and out["n_both_empty"] == 1 and out["n_images"] == 2


def test_pooled_differs_from_per_image_mean():
    pred = np.zeros((2, 20, 20), bool)
    ref = np.zeros((2, 20, 20), bool)
    pred[0, :10, :10] = ref[0, :10, :10] = True  # 100 px, perfect
    pred[1, 15, 15] = True  # 1 px, missed entirely
    ref[1, 0, 19] = True
    m = OverlapMetric()
    m.update(pred[:1], ref[:1])
    m.update(pred[1:], ref[1:])  # streaming over two batches
    out = m.compute()
    assert out["dice_mean"] == pytest.approx(0.5)
    assert out["dice_pooled"] == pytest.approx(200 / 202)
    assert out["iou_pooled"] == pytest.approx(100 / 102)


def test_iou_equals_dice_relation_per_image(blobs):
    p, r = blobs((4, 24, 24)), blobs((4, 24, 24))
    d, j = dice(p, r), iou(p, r)
    torch.testing.assert_close(j, d / (2 - d))


def test_dice_iou_match_monai(blobs):
    p, r = blobs((5, 16, 16, 12)), blobs((5, 16, 16, 12))
    p[2] = r[2] = False  # an empty pair: MONAI ignore_empty=False scores it 1 as we do
    pt, rt = torch.from_numpy(p)[:, None].float(), torch.from_numpy(r)[:, None].float()
    md = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(pt, rt)[:, 0]
    mi = MeanIoU(include_background=True, reduction="none", ignore_empty=False)(pt, rt)[:, 0]
    torch.testing.assert_close(dice(p, r), md.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(iou(p, r), mi.double(), atol=1e-6, rtol=0)


def test_threshold_binarises_probabilities(rng, blobs):
    prob = rng.random((2, 8, 8))
    ref = blobs((2, 8, 8))
    torch.testing.assert_close(dice(prob, ref, threshold=0.5), dice(prob >= 0.5, ref))


def test_single_pixel_distance_in_mm():
    pred = np.zeros((1, 8, 10), bool)
    ref = np.zeros((1, 8, 10), bool)
    pred[0, 3, 3] = True
    ref[0, 3, 7] = True  # 4 columns apart at 0.5 mm -> 2 mm
    res = surface_distances(pred, ref, spacing=(1.0, 0.5), tolerance=1.9)
    assert res["hd95"].item() == pytest.approx(2.0)
    assert res["asd"].item() == pytest.approx(2.0)
    assert res["surface_dice"].item() == 0.0
    assert surface_dice(pred, ref, tolerance=2.0, spacing=(1.0, 0.5)).item() == 1.0
    # the same pair 3 rows apart with 2 mm rows is 6 mm (voxels would say 3)
    pred2 = np.zeros((1, 8, 10), bool)
    pred2[0, 6, 7] = True
    assert hd95(pred2, ref, spacing=(2.0, 0.5)).item() == pytest.approx(6.0)


def test_parallel_lines():
    ref = np.zeros((1, 12, 12), bool)
    pred = np.zeros((1, 12, 12), bool)
    ref[0, 4, 2:10] = True
    pred[0, 7, 2:10] = True  # every pixel 3 rows away
    assert hd95(pred, ref, spacing=(1.5, 1.0)).item() == pytest.approx(4.5)
    assert average_surface_distance(pred, ref, spacing=(1.5, 1.0)).item() == pytest.approx(4.5)


def test_surface_empty_rules_and_brats_diagonal():
    shape = (1, 240, 240, 155)
    empty = torch.zeros(shape, dtype=torch.bool)
    one = torch.zeros(shape, dtype=torch.bool)
    one[0, 100, 100, 70] = True
    assert hd95(empty, one, spacing=(1, 1, 1)).item() == pytest.approx(373.13, abs=0.01)
    assert hd95(empty, empty, spacing=(1, 1, 1)).item() == 0.0
    res = surface_distances(empty[:, :8, :8, :8], empty[:, :8, :8, :8])
    assert res["surface_dice"].item() == 1.0 and res["asd"].item() == 0.0
    assert surface_dice(one, empty, tolerance=1.0).item() == 0.0
    assert hd95(one, empty, empty_distance=50.0).item() == 50.0
    assert math.isnan(hd95(one, empty, empty_distance=float("nan")).item())


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI warns about its own internal argument
def test_surface_metrics_match_monai_3d_anisotropic(blobs):
    p, r = blobs((3, 20, 18, 14), 0.3), blobs((3, 20, 18, 14), 0.3)
    spacing = (0.8, 1.2, 3.0)
    ours = surface_distances(p, r, spacing, tolerance=2.0)
    pt, rt = torch.from_numpy(p)[:, None].float(), torch.from_numpy(r)[:, None].float()
    kw = {"include_background": True, "spacing": spacing}
    ref_hd = compute_hausdorff_distance(pt, rt, percentile=95, **kw)[:, 0]
    ref_asd = compute_average_surface_distance(pt, rt, symmetric=True, **kw)[:, 0]
    ref_nsd = compute_surface_dice(pt, rt, [2.0], **kw)[:, 0]
    torch.testing.assert_close(ours["hd95"], ref_hd.double(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ours["asd"], ref_asd.double(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ours["surface_dice"], ref_nsd.double(), atol=1e-6, rtol=0)


def test_surface_streaming_means(blobs):
    p, r = blobs((4, 16, 16)), blobs((4, 16, 16))
    m = SurfaceDistanceMetric(spacing=(1.0, 2.0), tolerance=1.5)
    m.update(p[:2], r[:2])
    m.update(p[2:], r[2:])
    full = surface_distances(p, r, (1.0, 2.0), 1.5)
    out = m.compute()
    assert out["hd95_mean"] == pytest.approx(full["hd95"].mean().item())
    assert out["surface_dice_mean"] == pytest.approx(full["surface_dice"].mean().item())
    m.reset()
    assert math.isnan(m.compute()["hd95_mean"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape mismatch"):
        dice(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))
    with pytest.raises(ValueError, match="binary"):
        dice(np.full((1, 4, 4), 0.7), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="spacing"):
        hd95(np.ones((1, 4, 4)), np.ones((1, 4, 4)), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="batched"):
        dice(np.zeros(4), np.zeros(4))
