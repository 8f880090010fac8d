"""NumPy files: .npy round trip, .npz by key, pickles never loaded."""

from __future__ import annotations

import numpy as np
import pytest

from medrs_diff import io
from medrs_diff.errors import DataError


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint8, np.bool_])
def test_npy_round_trip_keeps_values_and_dtype(tmp_path, dtype):
    x = (np.random.default_rng(4).normal(size=(2, 3, 5)) * 10).astype(dtype)
    f = io.read(io.write(tmp_path / "x.npy", x))
    assert f.kind == "numpy" and f.data.dtype == x.dtype
    np.testing.assert_array_equal(f.data, x)
    m = io.read(tmp_path / "x.npy", mmap=True)
    assert isinstance(m.data, np.memmap) and np.array_equal(m.data, x)


def test_npz_by_key_or_its_single_array(tmp_path):
    np.savez(tmp_path / "two.npz", image=np.ones((2, 2)), label=np.zeros((2, 2), np.uint8))
    assert io.read(tmp_path / "two.npz", key="label").data.dtype == np.uint8
    with pytest.raises(DataError, match=r"two\.npz: holds 2 arrays \['image', 'label'\].*`key=`"):
        io.read(tmp_path / "two.npz")
    with pytest.raises(DataError, match="has no array 'cube'"):
        io.read(tmp_path / "two.npz", key="cube")
    out = io.write(tmp_path / "one.npz", np.arange(4))
    f = io.read(out)
    assert f.geometry.extra["key"] == "data" and np.array_equal(f.data, np.arange(4))


def test_pickled_objects_are_never_loaded(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"obj\.npy: holds pickled Python objects"):
        io.read(tmp_path / "obj.npy")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"bad\.npy: cannot be read as \.npy"):
        io.read(tmp_path / "bad.npy")
