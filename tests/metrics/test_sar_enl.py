import numpy as np
import pytest

from medrs_diff.data.speckle import gamma_field
from medrs_diff.metrics import enl_region, homogeneous_mask


def test_hand_case_on_a_given_mask():
    x = np.array([[1.0, 3.0], [100.0, 0.0]])
    mask = np.array([[True, True], [False, False]])
    assert enl_region(x, mask) == pytest.approx(4.0)  # mean 2, population variance 1


def test_auto_detection_picks_the_flat_tile():
    x = np.zeros((8, 8))
    x[:4, :4] = [[1, 3, 1, 3]] * 4  # CV 0.5
    x[:4, 4:] = 5.0                  # CV 0: the homogeneous tile
    x[4:, :] = np.arange(32).reshape(4, 8) + 1.0
    m = homogeneous_mask(x, window=4)
    assert m.sum() == 16 and m[:4, 4:].all()


def test_enl_of_speckled_flat_scene_is_the_number_of_looks():
    scene = np.ones((128, 128))
    scene[:, 64:] = np.linspace(1, 20, 64)  # a ramp: not homogeneous
    noisy = scene * gamma_field(scene.shape, 3.0, rng=0)
    m = homogeneous_mask(noisy, window=32, n_windows=4)
    assert not m[:, 64:].any()
    assert enl_region(noisy, m) == pytest.approx(3.0, rel=0.12)


def test_refusals():
    with pytest.raises(ValueError, match="fewer"):
        homogeneous_mask(np.ones((8, 8)), window=16)
