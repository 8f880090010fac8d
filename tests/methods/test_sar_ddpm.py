"""SAR-DDPM: cycle spinning (identity model returns the input exactly, shifts undone exactly, the paper's
geometry), the hybrid learned-sigma loss, predict shapes and samplers, bad inputs and arguments."""

from __future__ import annotations

import pytest
import torch

from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.methods import METHODS, SARDDPM
from medrs_diff.methods.sar_ddpm import PAPER_SHIFT_FRACTION, cycle_spin, spin_shifts

TINY = dict(channels=(8, 16), attention_levels=(False, False), num_res_blocks=1, num_head_channels=8,
            norm_num_groups=8, timesteps=20)


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def test_registered():
    assert METHODS["sar_ddpm"] is SARDDPM


def test_paper_shift_geometry_on_256_tiles():
    assert spin_shifts((256, 256), 3) == [(i, j) for i in (0, 100, 200) for j in (0, 100, 200)]
    assert spin_shifts((64, 32), 3, PAPER_SHIFT_FRACTION) == [(i, j) for i in (0, 25, 50) for j in (0, 12, 24)]
    assert spin_shifts((64, 64), 1) == [(0, 0)]


def test_cycle_spinning_with_identity_model_returns_the_input_exactly():
    x = torch.rand(2, 1, 40, 24)
    out = cycle_spin(lambda z: z, x, spin_shifts(x.shape, 3))
    assert torch.equal(out, x)  # bit for bit


def test_shifts_are_undone_exactly():
    """A position-dependent 'denoiser' (adds a fixed pattern) shows each copy is un-rolled by its own shift."""
    x = torch.rand(1, 1, 16, 16)
    pattern = torch.arange(256.0).reshape(1, 1, 16, 16)
    shifts = spin_shifts(x.shape, 2, 0.25)  # (0,0), (0,4), (4,0), (4,4)
    out = cycle_spin(lambda z: z + pattern, x, shifts)
    expected = x + torch.stack([torch.roll(pattern, (-a, -b), (-2, -1)) for a, b in shifts]).mean(0)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-7)  # float rounding of x + 255 only
    # a batch stays aligned: each element's copies are its own
    xb = torch.rand(3, 1, 16, 16)
    torch.testing.assert_close(cycle_spin(lambda z: z * 2, xb, shifts), xb * 2, atol=1e-6, rtol=0)


def test_hybrid_loss_with_learned_sigma_is_the_default():
    m = SARDDPM(**TINY)
    assert m.learn_sigma and m.unet.unet.out_channels == 2 and m.objective.variance == "learned"
    assert len(m.schedule) == 20
    batch = {"cond": torch.rand(2, 1, 16, 16) * 2 - 1, "image": torch.rand(2, 1, 16, 16) * 2 - 1}
    loss, logs = m.loss(batch, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and "loss_vlb" in logs and loss > logs["loss_simple"]
    plain = SARDDPM(learn_sigma=False, **TINY)
    _, logs2 = plain.loss(batch, generator=torch.Generator().manual_seed(0))
    assert plain.unet.unet.out_channels == 1 and "loss_vlb" not in logs2


def test_paper_defaults():
    m = SARDDPM(channels=(8, 16), attention_levels=(False, False), num_res_blocks=1, num_head_channels=8,
                norm_num_groups=8)
    assert len(m.schedule) == 1000 and m.cycle_shifts == 3 and m.sampler == "ddpm"
    assert m.schedule.betas[0].item() == pytest.approx(1e-4) and m.schedule.betas[-1].item() == pytest.approx(0.02)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_predict_shapes_and_cycle_average(sampler):
    torch.manual_seed(0)
    m = SARDDPM(**TINY).eval()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    out = m.predict({"cond": x}, sampler=sampler, steps=3, generator=torch.Generator().manual_seed(1))
    p = out["prediction"]
    assert p.shape == x.shape and torch.isfinite(p).all() and p.abs().max() <= 1
    one = m.predict({"cond": x}, sampler=sampler, steps=3, generator=torch.Generator().manual_seed(1),
                    cycle_shifts=1)["prediction"]
    assert not torch.equal(one, p)  # nine spins are not the single chain


def test_bad_inputs_and_arguments():
    m = SARDDPM(**TINY)
    with pytest.raises(DataError, match="NaN"):
        m.predict({"cond": torch.full((1, 1, 8, 8), float("nan"))})
    with pytest.raises(DataError, match="channel"):
        m.predict({"cond": torch.zeros(1, 2, 8, 8)})
    with pytest.raises(DataError, match="clean image"):
        m.loss({"cond": torch.zeros(1, 1, 8, 8)})
    with pytest.raises(ArgumentError, match="cycle_shifts"):
        SARDDPM(cycle_shifts=0, **TINY)
    with pytest.raises(ArgumentError, match="shift_fraction"):
        SARDDPM(shift_fraction=1.5, **TINY)
