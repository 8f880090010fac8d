"""Input handling shared by all metrics: torch and numpy agree, dtypes, documented differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import universal_image_quality_index

from medrs_diff.metrics import (
    MeanTracker,
    OverlapMetric,
    as_binary,
    as_float,
    check_positive_ints,
    check_thresholds,
    contingency_table,
    dice,
    ergas,
    hd95,
    psnr,
    sam,
    uiqi,
)


def test_torch_and_numpy_inputs_agree(rng):
    p, r = rng.random((2, 3, 16, 16)) + 0.1, rng.random((2, 3, 16, 16)) + 0.1
    tp, tr = torch.from_numpy(p).float(), torch.from_numpy(r).float()
    torch.testing.assert_close(sam(p, r), sam(tp, tr), atol=1e-4, rtol=0)
    torch.testing.assert_close(ergas(p, r, 1.0), ergas(tp, tr, 1.0), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(psnr(p, r, 1.0), psnr(tp, tr, 1.0), atol=1e-4, rtol=0)
    mp, mr = p[:, 0] > 0.5, r[:, 0] > 0.5
    torch.testing.assert_close(dice(mp, mr), dice(torch.from_numpy(mp), torch.from_numpy(mr).to(torch.uint8)))
    torch.testing.assert_close(hd95(mp, mr), hd95(torch.from_numpy(mp).float(), torch.from_numpy(mr)))
    assert contingency_table(p, r, [0.5]).tolist() == contingency_table(tp, tr, [0.5]).tolist()


def test_big_endian_arrays_are_read(rng):
    x = rng.random((1, 2, 8, 8))
    assert psnr(x.astype(">f8"), 0.5 * x, 1.0).item() == pytest.approx(psnr(x, 0.5 * x, 1.0).item())


def test_lists_are_accepted_and_objects_rejected():
    assert dice([[1, 0]], [[1, 1]]).item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="tensor or numpy"):
        dice([[object()]], [[1]])


def test_reset_clears_state(rng):
    m = OverlapMetric()
    m.update(np.ones((1, 4, 4)), np.zeros((1, 4, 4)))
    m.reset()
    m.update(np.ones((1, 4, 4)), np.ones((1, 4, 4)))
    assert m.compute()["dice_pooled"] == 1.0 and m.compute()["n_images"] == 1


def test_uiqi_differs_from_torchmetrics_gaussian_window(rng):
    # documented difference: our UIQI uses Wang-Bovik 8×8 uniform blocks, torchmetrics an 11×11 Gaussian
    r = rng.random((1, 1, 32, 32))
    p = np.clip(r + 0.2 * rng.standard_normal(r.shape), 0, 1)
    tm = universal_image_quality_index(torch.from_numpy(p), torch.from_numpy(r)).item()
    ours = uiqi(p, r).item()
    assert abs(ours - tm) > 1e-3
    assert uiqi(r, r).item() == pytest.approx(1.0)
    assert universal_image_quality_index(torch.from_numpy(r), torch.from_numpy(r)).item() == pytest.approx(1.0)


def test_public_helpers_and_read_only_arrays(rng):
    t = MeanTracker()
    t.add(torch.tensor([1.0, float("nan"), 3.0]))
    assert t.mean == 2.0 and t.undefined == 1 and t.count == 2
    assert check_thresholds([0.5, 2]) == [0.5, 2.0] and check_positive_ints(4, "scales") == [4]
    with pytest.raises(ValueError, match="increasing"):
        check_thresholds([2, 1])
    x = rng.random((1, 8, 8))
    ro, rb = x.copy(), x > 0.5
    ro.flags.writeable = rb.flags.writeable = False  # e.g. memory-mapped or Pillow arrays
    t, b = as_float(ro, "x"), as_binary(rb, "m")
    t += 1.0
    b[...] = False
    assert np.array_equal(ro, x) and np.array_equal(rb, x > 0.5)  # converted, never aliased
    assert psnr(ro, 0.5 * x, 1.0).item() == pytest.approx(psnr(x, 0.5 * x, 1.0).item())
