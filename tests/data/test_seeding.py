"""Per-item randomness helpers: an item's generator and crop depend on (seed, epoch, index) alone."""

from __future__ import annotations

import numpy as np
import pytest

from medrs_diff.data.seeding import EpochAware, crop_slices, item_seed


class _Items(EpochAware):
    seed = 7


def test_item_rng_is_a_function_of_seed_epoch_and_index():
    items = _Items()
    first = items.item_rng(3).integers(1 << 30, size=4)
    np.testing.assert_array_equal(first, np.random.default_rng(item_seed(7, 0, 3)).integers(1 << 30, size=4))
    items.set_epoch(2)
    assert not np.array_equal(items.item_rng(3).integers(1 << 30, size=4), first)
    np.testing.assert_array_equal(items.item_rng(3, fixed=True).integers(1 << 30, size=4), first)  # fixed: epoch 0


def test_crop_slices_stay_inside_and_draw_one_start_per_axis_in_order():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sl = crop_slices(rng, (10, 7, 5), (4, 7, 1))
        assert [s.stop - s.start for s in sl] == [4, 7, 1]
        assert 0 <= sl[0].start <= 6 and sl[1].start == 0 and 0 <= sl[2].start <= 4
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert crop_slices(a, (9, 9), (3, 2)) == tuple(slice(s, s + p) for s, p in
                                                   ((int(b.integers(7)), 3), (int(b.integers(8)), 2)))
    with pytest.raises(ValueError):
        crop_slices(rng, (9, 9), (3,))  # one patch size per axis
