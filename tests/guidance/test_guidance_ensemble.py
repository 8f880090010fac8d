"""Ensembles: mean, majority vote, STAPLE (hand-worked EM step, fixed points, rater quality) and the
uncertainty maps (variance, predictive entropy, mutual information) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from _guidance_testlib import (
    gen,
    single_thread,  # noqa: F401 - autouse fixture
)

from medrs_diff.diffusion.ensemble import (
    fuse_mean,
    majority_vote,
    mutual_information,
    predictive_entropy,
    staple,
    variance_map,
)


def test_mean_and_majority_vote():
    s = torch.tensor([[[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]]])  # (B=1, N=3, 2)
    torch.testing.assert_close(fuse_mean(s), torch.tensor([[2.0, 4.0]]))
    labels = torch.tensor([[[0, 1, 2, 2], [1, 1, 0, 2], [1, 0, 0, 1], [0, 2, 1, 1]]])  # (1, N=4, 4)
    # Per pixel: {0:2, 1:2} tie -> 0; {1:2, 0:1, 2:1} -> 1; {0:2, 2:1, 1:1} -> 0; {2:2, 1:2} tie -> 1.
    torch.testing.assert_close(majority_vote(labels), torch.tensor([[0, 1, 0, 1]]))
    assert majority_vote(torch.ones(2, 3, 2, 2, dtype=torch.bool)).eq(1).all()


def test_staple_identical_raters_return_their_mask():
    mask = (torch.rand(1, 6, 7, generator=gen(0)) > 0.6).long()
    res = staple(mask[:, None].expand(1, 4, 6, 7))
    assert torch.equal(res.labels, mask)
    assert res.converged
    torch.testing.assert_close(res.sensitivity, torch.ones(1, 4))
    torch.testing.assert_close(res.specificity, torch.ones(1, 4))
    # Multi-class, two cases in a batch, 3-D.
    lab = torch.randint(0, 4, (2, 3, 4, 5), generator=gen(1))
    res = staple(lab[:, None].expand(2, 3, 3, 4, 5), num_classes=4)
    assert torch.equal(res.labels, lab)
    assert res.probabilities.shape == (2, 4, 3, 4, 5)


def test_staple_random_rater_gets_low_sensitivity():
    """Four raters that flip 5% of the pixels of a true mask and one rater that answers at random
    (Bernoulli 0.5, independent of the truth): the estimated sensitivity of the random rater is
    chance level (its positive rate, 0.5 +- 0.05 on 1600 pixels), the others' above 0.9, and the
    fused mask recovers the truth on > 99% of pixels."""
    truth = (torch.rand(1, 40, 40, generator=gen(0)) > 0.5).long()
    raters = []
    for j in range(4):
        flip = (torch.rand(1, 40, 40, generator=gen(10 + j)) < 0.05).long()
        raters.append(truth ^ flip)
    raters.append((torch.rand(1, 40, 40, generator=gen(99)) > 0.5).long())
    res = staple(torch.stack(raters, dim=1))
    sens = res.sensitivity[0]
    assert sens[:4].min() > 0.9
    assert abs(float(sens[4]) - 0.5) < 0.05
    assert float((res.labels == truth).float().mean()) > 0.99


def test_staple_hand_worked_first_iteration():
    """Two raters, four pixels: rater 1 = (1, 1, 0, 0), rater 2 = (1, 0, 0, 0). Prior f(1) = 3/8 (mean
    rater label), start p = q = 0.9. E-step by hand:
      pixel 1: 0.375*0.81 / (0.375*0.81 + 0.625*0.01) = 243/248
      pixel 2: 0.375*0.9*0.1 / (0.375*0.09 + 0.625*0.09) = 3/8
      pixels 3, 4: 0.375*0.01 / (0.375*0.01 + 0.625*0.81) = 1/136
    M-step: p_1 = (W1 + W2) / sum W, q_1 = (1 - W3 + 1 - W4) / sum(1 - W), p_2 = W1 / sum W,
    q_2 = (1 - W2 + 1 - W3 + 1 - W4) / sum(1 - W)."""
    lab = torch.tensor([[[1, 1, 0, 0], [1, 0, 0, 0]]])  # (B=1, N=2 raters, 4 pixels)
    res = staple(lab, max_iter=1)
    w = [243 / 248, 3 / 8, 1 / 136, 1 / 136]
    torch.testing.assert_close(res.probabilities[0, 1, :].double(), torch.tensor(w, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    sw, sv = sum(w), sum(1 - x for x in w)
    p = torch.tensor([(w[0] + w[1]) / sw, w[0] / sw])
    q = torch.tensor([(2 - w[2] - w[3]) / sv, (3 - w[1] - w[2] - w[3]) / sv])
    torch.testing.assert_close(res.sensitivity[0], p, atol=1e-6, rtol=0)
    torch.testing.assert_close(res.specificity[0], q, atol=1e-6, rtol=0)
    torch.testing.assert_close(res.prior[0], torch.tensor([5 / 8, 3 / 8]))
    assert res.iterations == 1 and not res.converged


def test_staple_fixed_point():
    """At convergence the returned parameters reproduce themselves under one more EM step."""
    lab = (torch.rand(1, 3, 10, 10, generator=gen(5)) > 0.5).long()
    res = staple(lab, max_iter=500, tol=1e-12)
    w = res.probabilities[0].reshape(2, -1).double()  # (K, V)
    onehot = torch.nn.functional.one_hot(lab.reshape(3, -1), 2).double()  # (N, V, K) of case 0
    theta = torch.einsum("sv,nvk->nks", w, onehot) / w.sum(1)
    torch.testing.assert_close(theta.float(), res.confusion[0], atol=1e-5, rtol=0)


def test_uncertainty_maps_by_hand():
    # Variance: samples 0, 2, 4 -> unbiased variance 4.
    s = torch.tensor([0.0, 2.0, 4.0]).reshape(1, 3, 1, 1, 1)
    torch.testing.assert_close(variance_map(s), torch.full((1, 1, 1, 1), 4.0))
    # Two confident samples that disagree: predictive entropy log 2, mutual information log 2.
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 2, 1, 1)
    torch.testing.assert_close(predictive_entropy(p), torch.full((1, 1, 1), math.log(2)))
    torch.testing.assert_close(mutual_information(p), torch.full((1, 1, 1), math.log(2)))
    # Two identical uncertain samples: entropy log 2, no mutual information.
    p = torch.full((1, 2, 2, 1, 1), 0.5)
    torch.testing.assert_close(predictive_entropy(p), torch.full((1, 1, 1), math.log(2)))
    torch.testing.assert_close(mutual_information(p), torch.zeros(1, 1, 1))
    # Binary foreground probabilities (K = 1): p1 = 0.8, p2 = 0.4, mean 0.6; then three classes.
    fg = torch.tensor([0.8, 0.4]).reshape(1, 2, 1, 1, 1)
    h = lambda a: -(a * math.log(a) + (1 - a) * math.log(1 - a))  # noqa: E731
    torch.testing.assert_close(predictive_entropy(fg), torch.full((1, 1, 1), h(0.6)))
    torch.testing.assert_close(mutual_information(fg), torch.full((1, 1, 1), h(0.6) - (h(0.8) + h(0.4)) / 2))
    three = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]).reshape(1, 2, 3, 1)
    mean = torch.tensor([0.3, 0.225, 0.475])
    torch.testing.assert_close(predictive_entropy(three)[0, 0], -(mean * mean.log()).sum())


def test_single_sample_ensembles_warn_and_give_zero_maps():
    one = torch.rand(2, 1, 1, 4, 4, generator=gen(0))
    with pytest.warns(UserWarning, match="one sample"):
        assert torch.equal(variance_map(one), torch.zeros(2, 1, 4, 4))
    with pytest.warns(UserWarning, match="one sample"):
        assert torch.equal(mutual_information(one), torch.zeros(2, 4, 4))
    with pytest.warns(UserWarning, match="one sample"):
        predictive_entropy(one)


def test_ensemble_bad_input():
    with pytest.raises(ValueError, match="lie in"):
        predictive_entropy(torch.full((2, 1, 1, 3), 1.5))
    with pytest.raises(ValueError, match="sum to 1"):
        mutual_information(torch.full((2, 1, 3, 4), 0.5))
    with pytest.raises(ValueError, match="integer"):
        majority_vote(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="num_classes"):
        staple(torch.tensor([[[0, 3]]]), num_classes=2)
    with pytest.raises(ValueError, match="sample axis"):
        staple(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="prior"):
        staple(torch.zeros(1, 2, 3, dtype=torch.long), prior=torch.tensor([0.5, 0.6]))
    with pytest.raises(ValueError, match="init_accuracy"):
        staple(torch.zeros(1, 2, 3, dtype=torch.long), init_accuracy=1.0)
