"""Model-space scalings: exact inverses, documented anchors, records that round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrs_diff.data import scaling as sc
from medrs_diff.data.errors import DataError


@pytest.mark.parametrize(
    "s, lo, hi",
    [(sc.ct_window(40, 400), -160, 240), (sc.pet_suv(10), 0, 10), (sc.reflectance(), 0, 1e4),
     (sc.digital_number(8), 0, 255), (sc.decibel(-25, 0), -25, 0)],
)
def test_fixed_scalings_map_range_to_unit_interval_and_invert(s, lo, hi):
    x = np.linspace(lo, hi, 11, dtype=np.float32)[None]
    y = s.forward(x)
    assert y.min() == pytest.approx(-1.0, abs=1e-6) and y.max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(s.inverse(y), x, rtol=1e-6, atol=1e-4 * (hi - lo))


def test_ct_window_anchors_and_clipping():
    s = sc.ct_window(level=40, width=400)
    out = s.forward(np.array([[-1000.0, -160.0, 40.0, 240.0, 3000.0]]))
    np.testing.assert_allclose(out, [[-1, -1, 0, 1, 1]], atol=1e-7)


def test_per_channel_scaling_numpy_torch_and_batched_agree():
    s = sc.decibel([-25.0, -32.0], [0.0, -5.0])  # VV, VH
    x = np.stack([np.full((4, 4), -12.5), np.full((4, 4), -18.5)]).astype(np.float32)
    np.testing.assert_allclose(s.forward(x), 0.0, atol=1e-6)
    t = torch.from_numpy(x)[None].repeat(3, 1, 1, 1)
    torch.testing.assert_close(s.forward(t, channel_axis=1), torch.zeros_like(t))
    torch.testing.assert_close(s.inverse(s.forward(t, channel_axis=1), channel_axis=1), t)


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(DataError, match="2 channel parameters but the data has 3 channels"):
        sc.decibel([-25.0, -32.0], [0.0, -5.0]).forward(np.zeros((3, 2, 2)))


def test_data_derived_scalings():
    rng = np.random.default_rng(0)
    x = rng.normal(100, 20, (1, 50, 50)).astype(np.float32)
    z = sc.zscore(x)
    y = z.forward(x)
    assert abs(float(y.mean())) < 1e-4 and float(y.std()) == pytest.approx(1.0, rel=1e-3)
    p = sc.percentiles(x, 1, 99)
    y = p.forward(x)
    assert y.min() == pytest.approx(-1, abs=1e-6) and y.max() == pytest.approx(1, abs=1e-6)
    assert np.mean(np.abs(y) < 1 - 1e-6) == pytest.approx(0.98, abs=0.01)
    with pytest.raises(DataError, match="no finite values"):
        sc.percentiles(np.full((2, 2), np.nan))


def test_record_round_trip_and_resolve_names():
    s = sc.decibel([-25.0, -32.0], [0.0, -5.0])
    assert sc.Scaling.from_json(s.to_json()) == s
    assert sc.Scaling.from_dict(s.to_dict()) == s
    assert sc.resolve("ct") == sc.ct_window()
    assert sc.resolve(None) == sc.identity()
    with pytest.raises(DataError, match="unknown scaling"):
        sc.resolve("hounsfield")


def test_mask_model_space_round_trip():
    m = torch.tensor([0, 1, 1, 0], dtype=torch.float32)
    y = sc.mask_to_model(m)
    assert y.tolist() == [-1, 1, 1, -1]
    assert sc.model_to_mask(y).tolist() == [0, 1, 1, 0]
