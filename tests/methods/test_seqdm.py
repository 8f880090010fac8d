"""SeqDMs: SeqTIS with one date is the single-date model (bit for bit), the fold does not depend on the order
of the dates, a clear date added to a cloudy one improves PSNR (oracle per-date denoiser on a phantom), the
loss trains on one date per element, and bad sequences stop with one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medrs_diff.data import keys as K
from medrs_diff.data.cloud import scene_phantom, simulate_clouds
from medrs_diff.datamodules.cloud import collate_series, series_item
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.methods import METHODS, SeqDM
from medrs_diff.methods._sampling import sample_n
from medrs_diff.metrics import psnr

TINY = dict(bands=4, sar_channels=2, channels=(8, 16), attention_levels=(False, False), num_res_blocks=1,
            num_head_channels=8, norm_num_groups=8, timesteps=20, rgb=(2, 1, 0))


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def _batch(t: int, size: int = 16, seed: int = 0, coverage: float = 0.6) -> dict:
    clear, sar = scene_phantom(size, 4, seed)
    rng = np.random.default_rng(seed)
    cloudy, masks = zip(*[simulate_clouds(clear, rng, coverage=coverage, bands=("B02", "B03", "B04", "B08"))
                          for _ in range(t)], strict=True)
    return collate_series([series_item(clear, np.stack(cloudy), np.stack(masks), np.stack([sar] * t), "p")])


class _Oracle(nn.Module):
    """Per-date 'denoiser' that knows the task: x0 guess = the date's S2 where clear, 0 (mid-grey) where cloudy;
    returns the eps that x0 guess implies at x_t."""

    def __init__(self, abar: torch.Tensor, bands: int) -> None:
        super().__init__()
        self.abar, self.bands = abar, bands

    def forward(self, x, t, cond=None):
        s2, mask = cond[:, : self.bands], cond[:, self.bands : self.bands + 1]
        x0 = s2 * (1 - mask)
        a = self.abar.to(x)[t.long()].view(-1, 1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()


def test_registered_and_io_spec():
    m = SeqDM(**TINY)
    assert METHODS["seqdm"] is SeqDM
    spec = m.io_spec
    assert spec.inputs == {"cond": 4, "cloud_mask": 1, "sar": 2} and spec.extra["sequence"]
    assert spec.outputs == ("prediction", "uncertainty") and spec.data_space == ("prediction",)


@pytest.mark.parametrize("prediction_type", ["eps", "x0"])
def test_one_date_equals_the_single_date_model(prediction_type):
    torch.manual_seed(0)
    m = SeqDM(**TINY, prediction_type=prediction_type).eval()
    b = _batch(1)
    got = m.predict(b, sampler="ddim", steps=5, generator=torch.Generator().manual_seed(3))["prediction"]
    seq = m.sequence(b)
    cond = m.date_condition(seq, 0)
    ref = sample_n(lambda x, t: m.unet(x, t, cond=cond), (1, 4, 16, 16), m.schedule, n_samples=1, sampler="ddim",
                   steps=5, device=torch.device("cpu"), generator=torch.Generator().manual_seed(3), clip=True,
                   prediction_type=prediction_type)
    assert torch.equal(got, ref[0].clamp(-1, 1))


def test_result_does_not_depend_on_the_order_of_the_dates():
    m = SeqDM(**TINY).eval()
    m.unet = _Oracle(m.schedule.alphas_cumprod.float(), 4)  # conditions that matter a lot
    b = _batch(3, seed=1)
    perm = [2, 0, 1]
    p = {k: (v[:, perm] if k in (K.COND, K.CLOUD_MASK, K.SAR, K.SAR_VALID, K.DATE_VALID) else v) for k, v in b.items()}
    kw = dict(sampler="ddpm", steps=None)
    a = m.predict(b, generator=torch.Generator().manual_seed(1), **kw)["prediction"]
    c = m.predict(p, generator=torch.Generator().manual_seed(1), **kw)["prediction"]
    assert torch.allclose(a, c, atol=1e-4)
    assert not torch.allclose(a, m.predict(_batch(1, seed=1), generator=torch.Generator().manual_seed(1),
                                           **kw)["prediction"], atol=1e-3)  # the other dates did count


def test_adding_a_clear_date_improves_psnr_on_the_phantom():
    m = SeqDM(**TINY).eval()
    m.unet = _Oracle(m.schedule.alphas_cumprod.float(), 4)
    cloudy = _batch(1, size=32, seed=2, coverage=0.6)
    clear, _ = scene_phantom(32, 4, 2)
    both = dict(cloudy)
    both[K.COND] = torch.cat([cloudy[K.COND], cloudy[K.IMAGE][:, None]], dim=1)  # a clear second date
    both[K.CLOUD_MASK] = torch.cat([cloudy[K.CLOUD_MASK], torch.zeros_like(cloudy[K.CLOUD_MASK])], dim=1)
    for key in (K.SAR, K.SAR_VALID, K.DATE_VALID):
        both[key] = torch.cat([cloudy[key], cloudy[key]], dim=1)
    ref = cloudy[K.IMAGE]
    one = m.predict(cloudy, sampler="ddim", steps=10, generator=torch.Generator().manual_seed(0))["prediction"]
    two = m.predict(both, sampler="ddim", steps=10, generator=torch.Generator().manual_seed(0))["prediction"]
    p1, p2 = float(psnr(one, ref, data_range=2.0).mean()), float(psnr(two, ref, data_range=2.0).mean())
    assert p2 > p1 + 3.0, (p1, p2)
    assert p2 > 25.0  # the clear date restores what the cloud hid


def test_uncertainty_is_the_spread_of_the_chains():
    torch.manual_seed(0)
    m = SeqDM(**TINY).eval()
    out = m.predict(_batch(2), sampler="ddpm", n_samples=3, generator=torch.Generator().manual_seed(0))
    assert out["uncertainty"].shape == out["prediction"].shape and float(out["uncertainty"].mean()) > 0
    one = m.predict(_batch(2), sampler="ddpm", n_samples=1, generator=torch.Generator().manual_seed(0))
    assert float(one["uncertainty"].abs().max()) == 0.0


def test_loss_uses_one_valid_date_and_is_finite():
    torch.manual_seed(0)
    m = SeqDM(**TINY)
    b = collate_series([_batch_item(1), _batch_item(3)])  # padded: element 0 has one valid date
    assert b[K.DATE_VALID].tolist() == [[True, False, False], [True, True, True]]
    loss, _ = m.loss(b, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and sum(p.grad.abs().sum() for p in m.parameters() if p.grad is not None) > 0


def _batch_item(t: int) -> dict:
    clear, sar = scene_phantom(16, 4, t)
    masks = np.zeros((t, 1, 16, 16), np.float32)
    return series_item(clear, np.stack([clear] * t), masks, np.stack([sar] * t), "p")


def test_bad_sequences_stop_with_one_clear_error():
    m = SeqDM(**TINY)
    b = _batch(2)
    with pytest.raises(DataError, match="empty"):
        m.predict({**b, K.COND: b[K.COND][:, :0], K.CLOUD_MASK: b[K.CLOUD_MASK][:, :0]})
    with pytest.raises(DataError, match="cloud_mask.*differs"):
        m.predict({**b, K.CLOUD_MASK: b[K.CLOUD_MASK][..., :8, :8]})
    with pytest.raises(DataError, match="expects 4 S2 band"):
        m.predict({**b, K.COND: b[K.COND][:, :, :3]})
    with pytest.raises(DataError, match="no valid date"):
        m.predict({**b, K.DATE_VALID: torch.zeros_like(b[K.DATE_VALID])})
    with pytest.raises(ArgumentError, match="takes eps predictions"):
        SeqDM(**TINY, prediction_type="x0").predict(b, sampler="dpm_solver_pp", steps=2)
    with pytest.raises(ArgumentError, match="prediction_type"):
        SeqDM(**TINY, prediction_type="score")
    with pytest.raises(ArgumentError, match="cloudy_weight"):
        SeqDM(**{**TINY, "cloudy_weight": 0.0})


def test_unet_regression_baseline_folds_dates_like_seqtis():
    from medrs_diff.methods import CloudRegressionUNet

    torch.manual_seed(0)
    m = CloudRegressionUNet(bands=4, channels=(8, 16), num_res_units=1).eval()
    one = _batch(1)
    from medrs_diff.methods.seqdm import check_sequence, date_condition

    seq = check_sequence(one, 4, 2)
    direct = m.net(date_condition(seq, 0)).clamp(-1, 1)
    assert torch.equal(m.predict(one)["prediction"], direct)
    two = _batch(2, seed=3)
    swapped = {k: (v[:, [1, 0]] if k in (K.COND, K.CLOUD_MASK, K.SAR, K.SAR_VALID, K.DATE_VALID) else v)
               for k, v in two.items()}
    assert torch.allclose(m.predict(two)["prediction"], m.predict(swapped)["prediction"], atol=1e-5)
    m.train()
    loss, logs = m.loss(two, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and "loss_l1" in logs
