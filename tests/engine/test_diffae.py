"""Diffusion autoencoders: near-exact (z_sem, x_T) round trip and a linear attribute edit in z_sem."""

from __future__ import annotations

import math

import pytest
import torch

from medrs_diff.diffusion.diffae import (
    class_mean_direction,
    diffae_decode,
    diffae_encode,
    diffae_loss,
    logistic_direction,
)
from medrs_diff.diffusion.process import DiffusionLoss
from medrs_diff.diffusion.schedules import make_schedule
from medrs_diff.nets.diffae import DiffAEDenoiser, SemanticEncoder

SIZE = 16
DIM, BRIGHT = -0.4, 0.8  # blob intensity of label 0 / label 1 (background -1, data in [-1, 1])


def phantoms(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Discs of random centre and radius on a dark background; label 1 = bright disc. -> (x, labels, masks)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    labels = torch.randint(0, 2, (n,), generator=g)
    cy, cx = (torch.rand(2, n, generator=g) * 6 + 5).unbind(0)
    r = torch.rand(n, generator=g) * 2 + 3
    masks = ((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2 <= r[:, None, None] ** 2).float()
    level = torch.where(labels == 1, BRIGHT, DIM)[:, None, None]
    x = -1 + masks * (level + 1)
    return x[:, None], labels, masks[:, None].bool()


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return math.sqrt(float(((a - b) ** 2).mean()))


def blob_level(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    return torch.stack([xi[mi].mean() for xi, mi in zip(x, masks, strict=True)])


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    schedule = make_schedule("linear", 1000)
    enc, net = SemanticEncoder(1, z_dim=8, base=8), DiffAEDenoiser(1, z_dim=8, base=16, t_dim=32)
    loss = DiffusionLoss(schedule)
    opt = torch.optim.Adam([*enc.parameters(), *net.parameters()], lr=2e-3)
    g = torch.Generator().manual_seed(1)
    first = last = None
    for step in range(300):
        x, _, _ = phantoms(32, seed=1000 + step)
        value, _ = diffae_loss(loss, enc, net, x, generator=g)
        opt.zero_grad()
        value.backward()
        opt.step()
        first = float(value.detach()) if step == 0 else first
        last = float(value.detach())
    return schedule, enc.eval(), net.eval(), first, last


def test_round_trip_is_near_exact_for_an_untrained_net():
    """Exactness comes from solving each inversion step by fixed-point iteration, not from training: this
    untrained net needs more iterations (its eps is rougher) but reconstructs just as well once they converge
    (which needs small enough steps: the contraction condition, see medrs_diff.diffusion.diffae)."""
    torch.manual_seed(0)
    schedule = make_schedule("linear", 1000)
    enc, net = SemanticEncoder(1, z_dim=8, base=8), DiffAEDenoiser(1, z_dim=8, base=16, t_dim=32)
    x, _, _ = phantoms(2, seed=7)
    z, x_T = diffae_encode(enc, net, x, schedule, steps=50, fixed_point_iters=10)
    assert x_T.shape == x.shape and z.shape == (2, 8)
    assert rmse(x_T, x) > 0.5  # x_T is far from the image it encodes
    rec = diffae_decode(net, z, x_T, schedule, steps=50)
    assert rmse(rec, x) < 1e-2
    # The one-evaluation inversion (fixed_point_iters=1) is far off with this net: the solve matters.
    z1, x_T1 = diffae_encode(enc, net, x, schedule, steps=50, fixed_point_iters=1)
    assert rmse(diffae_decode(net, z1, x_T1, schedule, steps=50), x) > 100 * rmse(rec, x)


def test_trained_diffae_reconstructs_and_uses_both_codes(trained):
    schedule, enc, net, first, last = trained
    assert last < 0.5 * first
    x, _, _ = phantoms(4, seed=99)
    z, x_T = diffae_encode(enc, net, x, schedule, steps=50)
    rec = diffae_decode(net, z, x_T, schedule, steps=50)
    assert rmse(rec, x) < 1e-2
    # x_T carries information: a fresh x_T with the right z_sem gives another image.
    other = diffae_decode(net, z, torch.randn(x.shape, generator=torch.Generator().manual_seed(3)), schedule, steps=50)
    assert rmse(other, x) > 10 * rmse(rec, x)


@pytest.mark.parametrize("direction_fn", [class_mean_direction, logistic_direction])
def test_linear_edit_in_z_sem_moves_blob_brightness(trained, direction_fn):
    schedule, enc, net, _, _ = trained
    xs, ys, _ = phantoms(128, seed=5)
    with torch.no_grad():
        codes = enc(xs)
    d = direction_fn(codes, ys)
    # The step: the distance between the class means along d.
    shift = float((codes[ys == 1].mean(0) - codes[ys == 0].mean(0)) @ d)
    assert shift > 0
    x, labels, masks = phantoms(16, seed=11)
    z, x_T = diffae_encode(enc, net, x, schedule, steps=50)
    sign = torch.where(labels == 0, 1.0, -1.0)[:, None]  # brighten the dim blobs, dim the bright ones
    edited = diffae_decode(net, z + sign * shift * d, x_T, schedule, steps=50)
    change = (blob_level(edited, masks) - blob_level(x, masks)) * sign.flatten()
    assert bool((change > 0).all())
    assert float(change.mean()) > 0.5 * (BRIGHT - DIM)


def test_bad_inputs_stop_with_one_line():
    schedule = make_schedule("linear", 100)
    enc, net = SemanticEncoder(1, z_dim=4, base=4), DiffAEDenoiser(1, z_dim=4, base=8, t_dim=16)
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="x0 must be"):
        diffae_encode(enc, net, x[0], schedule, steps=5)
    with pytest.raises(ValueError, match="z_sem must be"):
        diffae_decode(net, torch.zeros(3, 4), x, schedule, steps=5)
    with pytest.raises(ValueError, match="NaN"):
        diffae_decode(net, torch.full((2, 4), float("nan")), x, schedule, steps=5)
    with pytest.raises(ValueError, match="both classes"):
        class_mean_direction(torch.randn(4, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="even H and W"):
        net(torch.zeros(1, 1, 7, 8), torch.zeros(1, dtype=torch.long), torch.zeros(1, 4))


def test_registered_method_predict_reconstructs_and_refuses_other_samplers(trained):
    from medrs_diff.errors import ArgumentError
    from medrs_diff.methods import METHODS

    _, enc, net, _, _ = trained
    m = METHODS["diffae"](z_dim=8, encoder_base=8, encoder_levels=3, base=16, t_dim=32).eval()
    m.encoder.load_state_dict(enc.state_dict())
    m.net.load_state_dict(net.state_dict())
    x, _, _ = phantoms(2, seed=3)
    loss, _ = m.loss({"image": x}, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    out = m.predict({"image": x}, steps=50)
    assert rmse(out["prediction"], x) < 1e-2
    assert out["stochastic_code"].shape == x.shape and rmse(out["stochastic_code"], x) > 0.5
    with pytest.raises(ArgumentError, match="sampler: DiffAE reconstructs with DDIM only"):
        m.predict({"image": x}, sampler="ddpm")
    with pytest.raises(ArgumentError, match="sampler: DiffAE encodes by DDIM inversion"):
        METHODS["diffae"](sampler="dpm_solver_pp")
    for bad in (0, -3, 2.5):  # a zero step count is refused, never replaced by the default
        with pytest.raises(ArgumentError, match=r"^steps: must be an integer >= 1"):
            m.encode(x, steps=bad)
        with pytest.raises(ArgumentError, match=r"^steps: must be an integer >= 1"):
            m.predict({"image": x}, steps=bad)
