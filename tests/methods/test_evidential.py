"""Evidential fusion (EI-DDPM): Dirichlet opinions, contextual discounting and Dempster's rule against
hand-computed cases."""

import itertools

import pytest
import torch

from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.nets.evidential import (
    ContextualDiscounting,
    EvidenceLayer,
    contextual_discount,
    dempster,
    dempster_combine,
    dirichlet_opinion,
    opinion_masses,
    pignistic,
    plausibility,
)

A, B, OMEGA = 1, 2, 3  # subsets of the frame {a, b} by bit mask


def _m(a: float, b: float, omega: float) -> torch.Tensor:
    """A two-class mass function on one voxel, (1, 4, 1)."""
    return torch.tensor([0.0, a, b, omega], dtype=torch.float64).reshape(1, 4, 1)


def test_dirichlet_opinion_sums_to_one_exactly():
    e = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.5, 10.0]], dtype=torch.float64)[..., None]  # (B, K, 1)
    b, u = dirichlet_opinion(e)
    assert torch.equal(b.sum(1, keepdim=True) + u, torch.ones_like(u))
    s = (e + 1).sum(1, keepdim=True)
    assert torch.allclose(u, 3 / s) and torch.allclose(b, e / s)
    zero_b, zero_u = dirichlet_opinion(torch.zeros(1, 4, 2))
    assert torch.equal(zero_b, torch.zeros(1, 4, 2)) and torch.equal(zero_u, torch.ones(1, 1, 2))  # no evidence
    with pytest.raises(DataError, match="negative, NaN"):
        dirichlet_opinion(torch.tensor([[-1.0, 2.0]]))
    with pytest.raises(DataError, match="negative, NaN"):
        dirichlet_opinion(torch.tensor([[float("nan"), 2.0]]))


def test_opinion_masses_put_belief_on_singletons_and_u_on_the_frame():
    b, u = torch.tensor([[[0.5], [0.2], [0.1]]]), torch.tensor([[[0.2]]])
    m = opinion_masses(b, u)
    assert m.shape == (1, 8, 1)
    assert m[0, 1, 0] == 0.5 and m[0, 2, 0] == 0.2 and m[0, 4, 0] == 0.1 and m[0, 7, 0] == 0.2
    assert float(m.sum()) == pytest.approx(1.0) and m[0, [0, 3, 5, 6]].abs().sum() == 0


def test_dempster_two_sources_by_hand():
    m1, m2 = _m(0.6, 0.1, 0.3), _m(0.2, 0.5, 0.3)
    # conflict: m1(a) m2(b) + m1(b) m2(a) = 0.30 + 0.02
    # a: 0.6*0.2 + 0.6*0.3 + 0.3*0.2 = 0.36; b: 0.1*0.5 + 0.1*0.3 + 0.3*0.5 = 0.23; frame: 0.3*0.3 = 0.09
    fused, kappa = dempster_combine(m1, m2)
    assert float(kappa) == pytest.approx(0.32)
    assert fused[0, :, 0].tolist() == pytest.approx([0.0, 0.36 / 0.68, 0.23 / 0.68, 0.09 / 0.68])


def test_dempster_three_sources_by_hand_and_in_any_order():
    m1, m2, m3 = _m(0.6, 0.1, 0.3), _m(0.2, 0.5, 0.3), _m(0.5, 0.0, 0.5)
    a12, b12, o12 = 0.36 / 0.68, 0.23 / 0.68, 0.09 / 0.68
    # with m3: conflict b12 * 0.5; a: a12 * (0.5 + 0.5) + o12 * 0.5; b: b12 * 0.5; frame: o12 * 0.5
    k3 = b12 * 0.5
    want = [0.0, (a12 + o12 * 0.5) / (1 - k3), b12 * 0.5 / (1 - k3), o12 * 0.5 / (1 - k3)]
    for order in itertools.permutations([m1, m2, m3]):
        fused, conflict = dempster(torch.stack(order, 1))
        assert fused[0, :, 0].tolist() == pytest.approx(want)
        assert float(conflict) == pytest.approx(1 - (1 - 0.32) * (1 - k3))


def test_total_conflict_raises_instead_of_dividing_by_zero():
    with pytest.raises(DataError, match="total conflict at 1 voxel"):
        dempster_combine(_m(1.0, 0.0, 0.0), _m(0.0, 1.0, 0.0))
    fused, kappa = dempster_combine(_m(0.999999, 0.0, 1e-6), _m(0.0, 0.999999, 1e-6))  # nearly total: finite
    assert torch.isfinite(fused).all() and float(fused.sum()) == pytest.approx(1.0) and float(kappa) > 0.999


def test_vacuous_source_is_neutral_and_agreement_lowers_ignorance():
    m = _m(0.6, 0.1, 0.3)
    fused, kappa = dempster_combine(m, _m(0.0, 0.0, 1.0))
    assert torch.allclose(fused, m) and float(kappa) == 0.0
    agree, _ = dempster_combine(_m(0.7, 0.0, 0.3), _m(0.7, 0.0, 0.3))
    disagree, _ = dempster_combine(_m(0.7, 0.0, 0.3), _m(0.0, 0.7, 0.3))
    assert float(disagree[0, OMEGA]) > float(agree[0, OMEGA])  # ignorance survives where sources disagree


def test_discounting_by_one_is_identity_and_by_zero_is_total_ignorance():
    m = opinion_masses(*dirichlet_opinion(torch.tensor([[[3.0], [1.0], [0.5]]], dtype=torch.float64)))
    assert torch.allclose(contextual_discount(m, torch.ones(3, dtype=torch.float64)), m)
    vacuous = contextual_discount(m, torch.zeros(3, dtype=torch.float64))
    assert vacuous[0, :, 0].tolist() == pytest.approx([0.0] * 7 + [1.0])


def test_contextual_discounting_plausibilities_follow_mercier():
    m = _m(0.6, 0.1, 0.3)
    beta = torch.tensor([0.8, 0.5], dtype=torch.float64)
    d = contextual_discount(m, beta)
    # pl'(k) = 1 - beta_k + beta_k pl(k); pl(a) = 0.9, pl(b) = 0.4
    assert plausibility(d)[0, :, 0].tolist() == pytest.approx([0.2 + 0.8 * 0.9, 0.5 + 0.5 * 0.4])
    assert float(d.sum()) == pytest.approx(1.0) and float(d[0, 0]) == 0.0
    # the masses by hand: {a}: 0.6 * 0.8 * 0.5 ... each focal set A goes to A u D with prod(1 - beta) over D
    assert float(d[0, A]) == pytest.approx(0.6 * 0.5)  # {a} keeps only if b is not added: beta_b = 0.5
    assert float(d[0, B]) == pytest.approx(0.1 * 0.8)
    assert float(d[0, OMEGA]) == pytest.approx(0.3 + 0.6 * 0.5 + 0.1 * 0.2)
    per_voxel = contextual_discount(torch.cat([m, m], 2), torch.tensor([[[0.8, 1.0], [0.5, 1.0]]]).double())
    assert torch.allclose(per_voxel[..., :1], d) and torch.allclose(per_voxel[..., 1:], m)


def test_pignistic_probabilities():
    p = pignistic(_m(0.6, 0.1, 0.3))
    assert p[0, :, 0].tolist() == pytest.approx([0.75, 0.25])
    m = torch.zeros(1, 8, 1, dtype=torch.float64)
    m[0, 3], m[0, 4] = 0.5, 0.5  # {0, 1} and {2}
    assert pignistic(m)[0, :, 0].tolist() == pytest.approx([0.25, 0.25, 0.5])


def test_layers_learn_and_check_their_arguments():
    eil = EvidenceLayer(2, 4, 3, activation="exp")
    x = torch.randn(2, 4, 5, 6) * 100
    e = eil(x)
    assert e.shape == (2, 3, 5, 6) and torch.isfinite(e).all() and bool((e >= 0).all())
    assert bool((EvidenceLayer(3, 2, 2, activation="relu")(torch.randn(1, 2, 3, 3, 3)) >= 0).all())
    cdo = ContextualDiscounting(4, 3, init=0.9)
    assert cdo.reliability.shape == (4, 3) and torch.allclose(cdo.reliability, torch.full((4, 3), 0.9))
    masses = torch.stack([opinion_masses(*dirichlet_opinion(EvidenceLayer(2, 4, 3)(x))) for _ in range(4)], 1)
    fused, _ = dempster(cdo(masses))
    pignistic(fused)[:, 1].mean().backward()
    assert cdo.theta.grad is not None and bool(torch.isfinite(cdo.theta.grad).all())
    with pytest.raises(ArgumentError, match="unknown evidence activation"):
        EvidenceLayer(2, 4, 3, activation="tanh")
    with pytest.raises(ArgumentError, match="2 .. 6 classes"):
        opinion_masses(torch.zeros(1, 7, 1), torch.ones(1, 1, 1))
    with pytest.raises(ArgumentError, match="holds 3 sources"):
        cdo(masses[:, :3])
    with pytest.raises(ArgumentError, match="not 2\\*\\*K subsets"):
        pignistic(torch.zeros(1, 5, 1))
