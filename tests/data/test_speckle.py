import numpy as np
import pytest

from medrs_diff.data.speckle import add_speckle, from_intensity, gamma_field, to_intensity
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.metrics import enl


@pytest.mark.parametrize("looks", [1.0, 4.0])
def test_gamma_field_mean_one_and_enl_equals_looks(looks):
    g = gamma_field((400, 400), looks, rng=0)
    # closed form: mean 1, variance 1/L; standard error of the mean sqrt(1/(L n))
    assert abs(g.mean() - 1.0) < 5 * np.sqrt(1 / (looks * g.size))
    assert g.var() == pytest.approx(1 / looks, rel=0.03)
    assert enl(g[None]).item() == pytest.approx(looks, rel=0.03)


def test_single_look_intensity_is_exponential():
    g = gamma_field((200_000,), 1.0, rng=1)
    # Gamma(1, 1) = Exp(1): P(g > 1) = e^-1
    assert (g > 1).mean() == pytest.approx(np.exp(-1), abs=0.005)


def test_intensity_and_amplitude_conventions_share_the_multiplier():
    clean_i = np.full((64, 64), 4.0)
    noisy_i = add_speckle(clean_i, 1.0, "intensity", rng=3)
    noisy_a = add_speckle(np.sqrt(clean_i), 1.0, "amplitude", rng=3)
    noisy_db = add_speckle(10 * np.log10(clean_i), 1.0, "db", rng=3)
    g = gamma_field(clean_i.shape, 1.0, rng=3)
    np.testing.assert_allclose(noisy_i, 4.0 * g, rtol=1e-6)
    np.testing.assert_allclose(noisy_a, np.sqrt(4.0 * g), rtol=1e-6)  # amplitude = sqrt(I * g)
    np.testing.assert_allclose(to_intensity(noisy_db, "db"), 4.0 * g, rtol=1e-4)
    np.testing.assert_allclose(from_intensity(to_intensity(noisy_a, "amplitude"), "amplitude"), noisy_a, rtol=1e-6)


def test_amplitude_speckle_mean_is_the_rayleigh_factor():
    a = add_speckle(np.ones((300, 300)), 1.0, "amplitude", rng=4)
    # single-look amplitude is Rayleigh with E[A] = sqrt(pi)/2 for unit intensity
    assert a.mean() == pytest.approx(np.sqrt(np.pi) / 2, rel=0.01)


def test_seeded_and_refusals():
    x = np.ones((8, 8))
    np.testing.assert_array_equal(add_speckle(x, rng=7), add_speckle(x, rng=7))
    assert not np.array_equal(add_speckle(x, rng=7), add_speckle(x, rng=8))
    with pytest.raises(ArgumentError, match="looks"):
        gamma_field((2,), 0.0)
    with pytest.raises(DataError, match="negative"):
        add_speckle(-x, domain="intensity")
    with pytest.raises(DataError, match="NaN"):
        add_speckle(np.full((2, 2), np.nan))
    with pytest.raises(ArgumentError, match="domain"):
        add_speckle(x, domain="log")
