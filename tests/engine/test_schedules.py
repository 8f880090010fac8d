import math

import pytest
import torch

from medrs_diff.diffusion.schedules import (
    Schedule,
    make_schedule,
    rescale_zero_terminal_snr,
    schedule_from_betas,
    spaced_indices,
)


def test_cosine_matches_formula():
    T, s = 1000, 0.008
    sch = make_schedule("cosine", T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):
        # abar at index t is f(t + 1) / f(0) wherever no beta was clipped at 0.999.
        assert float(sch.alphas_cumprod[t]) == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert float(sch.betas.max()) <= 0.999 + 1e-12


def test_linear_scaled_to_chain_length():
    sch = make_schedule("linear", 100)
    assert float(sch.betas[0]) == pytest.approx(1e-3)
    assert float(sch.betas[-1]) == pytest.approx(0.2)
    assert float(sch.alphas_cumprod[-1]) < 1e-4  # short chains still end at noise


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine", "sigmoid"])
def test_named_schedules_are_valid(name):
    sch = make_schedule(name, 200)
    ac = sch.alphas_cumprod
    assert (ac[1:] < ac[:-1]).all() and ac[0] <= 1 and ac[-1] > 0
    assert torch.allclose(sch.log_snr, torch.log(ac / (1 - ac)))


def test_zero_terminal_snr():
    ac = make_schedule("linear", 1000).alphas_cumprod
    z = rescale_zero_terminal_snr(ac)
    assert float(z[-1]) == 0.0 and float(z[0]) == pytest.approx(float(ac[0]))
    sch = make_schedule("linear", 1000, zero_terminal_snr=True)
    assert sch.zero_terminal_snr and float(sch.betas[-1]) == pytest.approx(1.0)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_respacing_rebuilds_betas_from_alpha_bar(spacing):
    sch = make_schedule("cosine", 1000)
    r = sch.respace(37, spacing)
    tau = r.timesteps
    assert len(r) == 37 and (tau[1:] > tau[:-1]).all()
    # The respaced chain has the training alpha-bar at every kept step.
    assert torch.allclose(r.alphas_cumprod, sch.alphas_cumprod[tau])
    prod = torch.cumprod(1 - r.betas, 0)
    assert torch.allclose(prod, sch.alphas_cumprod[tau], rtol=1e-12)
    expected = 1 - sch.alphas_cumprod[tau[1:]] / sch.alphas_cumprod[tau[:-1]]
    assert torch.allclose(r.betas[1:], expected)


def test_spacing_endpoints():
    assert int(spaced_indices(1000, 10, "leading")[-1]) == 900  # never reaches T-1 (kept for comparison)
    assert int(spaced_indices(1000, 10, "trailing")[-1]) == 999
    li = spaced_indices(1000, 10, "linspace")
    assert int(li[0]) == 0 and int(li[-1]) == 999


def test_respace_twice_and_truncate_keep_training_timesteps():
    sch = make_schedule("linear", 1000)
    r = sch.respace(100).respace(10)
    assert torch.allclose(r.alphas_cumprod, sch.alphas_cumprod[r.timesteps])
    t = sch.truncate(249)
    assert len(t) == 250 and int(t.timesteps[-1]) == 249
    assert t.num_train_timesteps == 1000


def test_device_tables_and_gather():
    sch = make_schedule("linear", 10)
    idx = torch.tensor([0, 9, 3])
    g = sch.gather("alphas_cumprod", idx, 4)
    assert g.shape == (3, 1, 1, 1)
    assert torch.allclose(g.flatten().double(), sch.alphas_cumprod[idx], atol=1e-7)


def test_bad_inputs():
    with pytest.raises(ValueError, match="strictly decreasing"):
        Schedule(torch.tensor([0.9, 0.95, 0.5]))
    with pytest.raises(ValueError, match="only 100"):
        make_schedule("linear", 100).respace(200)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="unknown spacing"):
        make_schedule("linear", 10).respace(5, "random")
    with pytest.raises(ValueError, match="betas"):
        schedule_from_betas(torch.tensor([0.1, 1.5]))
