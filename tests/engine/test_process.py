import pytest
import torch

from medrs_diff.diffusion.noise import GammaNoise
from medrs_diff.diffusion.process import (
    DiffusionLoss,
    Residual,
    convert_prediction,
    min_snr_weight,
    q_sample,
    split_output,
    target_of,
    to_x0_eps,
)
from medrs_diff.diffusion.schedules import make_schedule


@pytest.mark.parametrize("src", ["eps", "x0", "v"])
@pytest.mark.parametrize("dst", ["eps", "x0", "v"])
def test_prediction_conversions_invert_each_other(src, dst):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 2, 5, 5, generator=g, dtype=torch.float64), torch.randn(4, 2, 5, 5, generator=g,
                                                                                       dtype=torch.float64)
    abar = torch.tensor([0.9, 0.5, 0.1, 0.01], dtype=torch.float64).reshape(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    pred = target_of(x0, eps, abar, src)
    other = convert_prediction(pred, x_t, abar, src, dst)
    assert torch.allclose(other, target_of(x0, eps, abar, dst), atol=1e-10)
    back = convert_prediction(other, x_t, abar, dst, src)
    assert torch.allclose(back, pred, atol=1e-10)
    rx0, reps = to_x0_eps(pred, x_t, abar, src)
    assert torch.allclose(rx0, x0, atol=1e-10) and torch.allclose(reps, eps, atol=1e-10)


def test_q_sample_statistics():
    sch = make_schedule("linear", 1000)
    x0 = torch.full((20000, 1, 1, 1), 0.7)
    idx = torch.full((20000,), 300)
    x_t = q_sample(sch, x0, idx, torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)))
    a = float(sch.alphas_cumprod[300])
    assert float(x_t.mean()) == pytest.approx(a**0.5 * 0.7, abs=4 * (1 - a) ** 0.5 / 20000**0.5)
    assert float(x_t.var()) == pytest.approx(1 - a, rel=0.05)


def test_min_snr_weights():
    snr = torch.tensor([0.5, 5.0, 50.0])
    assert torch.allclose(min_snr_weight(snr, 5.0, "eps"), torch.tensor([1.0, 1.0, 0.1]))
    assert torch.allclose(min_snr_weight(snr, 5.0, "x0"), torch.tensor([0.5, 5.0, 5.0]))
    assert torch.allclose(min_snr_weight(snr, 5.0, "v"), torch.tensor([0.5 / 1.5, 5 / 6, 5 / 51]))


def test_simple_loss_is_zero_for_the_exact_predictor():
    sch = make_schedule("linear", 100)
    x0 = torch.randn(8, 1, 4, 4)
    captured = {}

    def oracle(x_t, t):  # knows x0, so predicts the noise exactly
        abar = sch.gather("alphas_cumprod", t, 4)
        captured["t"] = t
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    loss, logs = DiffusionLoss(sch)(oracle, x0, generator=torch.Generator().manual_seed(0))
    assert float(loss) < 1e-8 and captured["t"].shape == (8,)
    loss_l1, _ = DiffusionLoss(sch, loss_type="l1", min_snr_gamma=5.0)(lambda x, t: torch.zeros_like(x), x0)
    assert float(loss_l1) > 0.1


def test_hybrid_loss_trains_variance_only_through_vlb():
    sch = make_schedule("cosine", 50)
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    w = torch.zeros(2, requires_grad=True)

    def net(x_t, t):
        return torch.cat([x_t * w[0], torch.zeros_like(x_t) + w[1]], 1)

    loss, logs = DiffusionLoss(sch, variance="learned")(net, x0, generator=torch.Generator().manual_seed(0))
    assert "loss_vlb" in logs and torch.isfinite(loss)
    loss.backward()
    assert w.grad[1] != 0  # variance channel gets gradient from L_vlb
    # The mean channel's gradient equals the simple loss's alone (stop-gradient inside L_vlb).
    w2 = torch.zeros(2, requires_grad=True)
    simple, _ = DiffusionLoss(sch)(lambda x, t: x * w2[0], x0, generator=torch.Generator().manual_seed(0))
    simple.backward()
    assert torch.allclose(w.grad[0], w2.grad[0])


def test_learned_variance_channel_check():
    with pytest.raises(ValueError, match="needs 2"):
        split_output(torch.zeros(2, 1, 4, 4), 1, "learned")
    with pytest.raises(ValueError, match="needs 1"):
        split_output(torch.zeros(2, 2, 4, 4), 1, "fixed_small")


def test_bad_inputs():
    sch = make_schedule("linear", 10)
    with pytest.raises(ValueError, match="4-D"):
        DiffusionLoss(sch)(lambda x, t: x, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="4-D"):
        DiffusionLoss(sch)(lambda x, t: x, torch.zeros(1, 1, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="prediction type"):
        DiffusionLoss(sch, prediction_type="score")
    with pytest.raises(ValueError, match="zero terminal SNR"):
        DiffusionLoss(make_schedule("linear", 10, zero_terminal_snr=True))


def test_residual_round_trip():
    r = Residual(scale=2.0)
    hr, base = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    assert torch.allclose(r.decode(r.encode(hr, base), base), hr, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        r.encode(hr, base[:, :1])


def test_gamma_noise_in_loss():
    sch = make_schedule("linear", 100)
    loss, _ = DiffusionLoss(sch, noise_fn=GammaNoise(sch))(lambda x, t: torch.zeros_like(x), torch.zeros(64, 1, 4, 4))
    assert float(loss) == pytest.approx(1.0, rel=0.15)  # unit-variance noise -> E[eps^2] = 1
