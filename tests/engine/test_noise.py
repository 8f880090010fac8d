import pytest
import torch

from medrs_diff.diffusion.noise import GammaNoise, simplex_noise
from medrs_diff.diffusion.schedules import make_schedule


@pytest.mark.parametrize("shape", [(6, 1, 48, 48), (3, 2, 16, 16, 16)])
def test_simplex_statistics(shape):
    # A start frequency of 1/8 puts several cycles in the field, so sample correlations are meaningful.
    x = simplex_noise(shape, frequency=1 / 8, octaves=4, generator=torch.Generator().manual_seed(0))
    flat = x.reshape(shape[0] * shape[1], -1)
    assert torch.allclose(flat.mean(1), torch.zeros(flat.shape[0]), atol=1e-5)
    assert torch.allclose(flat.std(1), torch.ones(flat.shape[0]), atol=1e-4)
    lag1 = (x[..., 1:] * x[..., :-1]).mean()
    assert float(lag1) > 0.5  # smooth: strong positive lag-1 correlation (white noise gives ~0)
    # Independent across the batch: different fields, correlation well below the lag-1 one.
    corr = torch.corrcoef(flat)
    off = corr[~torch.eye(flat.shape[0], dtype=torch.bool)]
    assert float(off.abs().max()) < 0.5 and not torch.allclose(flat[0], flat[1])


def test_simplex_seeded_and_on_device():
    a = simplex_noise((2, 1, 16, 16), generator=torch.Generator().manual_seed(3))
    b = simplex_noise((2, 1, 16, 16), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.device.type == "cpu"
    with pytest.raises(ValueError, match="4-D or 5-D"):
        simplex_noise((16, 16))


def test_gamma_noise_moments():
    sch = make_schedule("linear", 1000)
    gn = GammaNoise(sch)
    ref = torch.zeros(20000, 1, 1, 1)
    for index in (5, 200, 900):
        e = gn.marginal_like(ref, torch.full((20000,), index), torch.Generator().manual_seed(index))
        assert abs(float(e.mean())) < 0.05 and float(e.var()) == pytest.approx(1.0, rel=0.05)
    # Raw closed-form noise has variance 1 - abar: kbar theta^2 telescopes.
    k, th = gn.k_bar, gn.theta
    assert torch.allclose(k * th**2, 1 - sch.alphas_cumprod, rtol=1e-9)
    # The first step's small shape parameter (k = beta / theta0^2 = 100) makes it visibly skewed.
    e = gn.step_like(ref, 0, torch.Generator().manual_seed(0))
    skew = float(((e - e.mean()) ** 3).mean() / e.std() ** 3)
    expected = 2 / float(gn.k[0]) ** 0.5  # skewness of Gamma(k) is 2 / sqrt(k)
    assert skew == pytest.approx(expected, rel=0.25)
