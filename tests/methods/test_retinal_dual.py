"""The retinal dual model: schedule facts, the MSE + L1 eps loss, FOV handling, per-element determinism."""

import math

import pytest
import torch

from medrs_diff.data.retina_phantoms import circular_fov
from medrs_diff.diffusion.generators import SampleGenerators
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.methods import METHODS, RetinalImageDDPM, RetinalMaskDDPM
from medrs_diff.methods.retinal_dual import mse_l1_eps_loss, retinal_schedule, retree_code_betas

TINY = dict(channels=(8, 16), attention_levels=(False, False), num_res_blocks=1, num_head_channels=8,
            norm_num_groups=4, timesteps=20)


def test_registered():
    assert METHODS["retinal_mask_ddpm"] is RetinalMaskDDPM and METHODS["retinal_image_ddpm"] is RetinalImageDDPM


def test_paper_schedule_is_ddpm_linear_and_code_switch_is_cosine_shaped():
    lin = retinal_schedule("linear", 1000)
    betas = 1 - lin.alphas_cumprod[1:] / lin.alphas_cumprod[:-1]
    assert float(1 - lin.alphas_cumprod[0]) == pytest.approx(1e-4, rel=1e-6)
    assert float(betas[-1]) == pytest.approx(0.02, rel=1e-6)
    assert float(betas[499] - betas[498]) == pytest.approx((0.02 - 1e-4) / 999, rel=1e-4)  # constant increments
    code = retree_code_betas(1000)
    # the official code: |0.02 cos(pi/2 i / 999) - 0.0199|
    assert float(code[0]) == pytest.approx(1e-4) and float(code[-1]) == pytest.approx(0.02 - 1e-4)
    assert float(code[500]) == pytest.approx(abs(0.02 * math.cos(math.pi / 2 * 500 / 999) - 0.0199))
    assert int(code.argmin()) == 64 and float(code.min()) < 2e-6  # the dip where 0.02 cos = 0.0199
    assert float(code[200] - code[199]) < float(code[800] - code[799])  # slow rise then faster: cosine-shaped
    sched = retinal_schedule("retree_code", 1000)
    assert torch.allclose(sched.alphas_cumprod, torch.cumprod(1 - code, 0).to(sched.alphas_cumprod.dtype))
    with pytest.raises(ArgumentError, match="schedule: unknown schedule 'cosine'"):
        retinal_schedule("cosine", 1000)


def test_loss_is_mse_plus_l1_on_eps():
    sched = retinal_schedule("linear", 50)
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731 - eps_hat = 0: the loss is mean(eps^2) + mean|eps|
    loss, logs = mse_l1_eps_loss(zero, sched, x0, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    torch.randint(0, 50, (3,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    assert float(loss) == pytest.approx(float((eps**2).mean() + eps.abs().mean()), rel=1e-6)
    assert float(logs["loss_l1"]) == pytest.approx(float(eps.abs().mean()), rel=1e-6)


def test_mask_model_draws_binary_masks_inside_the_fov_per_element():
    torch.manual_seed(0)
    m = RetinalMaskDDPM(**TINY).eval()
    batch = {"label": torch.zeros(3, 1, 16, 16)}
    gens = lambda seeds: SampleGenerators.from_seeds(seeds)  # noqa: E731
    out = m.predict(batch, sampler="ddim", steps=3, generator=gens([1, 2, 3]))
    pred = out["prediction"]
    fov = torch.from_numpy(circular_fov(16, 16))
    assert pred.shape == (3, 1, 16, 16) and set(pred.unique().tolist()) <= {0.0, 1.0}
    assert not pred[:, :, ~fov].any() and pred.any()
    alone = m.predict({"label": torch.zeros(1, 1, 16, 16)}, sampler="ddim", steps=3, generator=gens([2]))
    assert torch.equal(alone["prediction"][0], pred[1])  # element 1 depends only on its own generator
    given = torch.zeros(1, 1, 16, 16)
    given[..., 4:12, 4:12] = 1
    inside = m.predict({"label": given, "fov": given}, sampler="ddim", steps=3, generator=gens([2]))["prediction"]
    assert not inside[given == 0].any()  # the batch's FOV wins over the default disc


def test_image_model_is_black_outside_the_fov_and_conditioned_on_the_mask():
    torch.manual_seed(0)
    m = RetinalImageDDPM(**TINY).eval()
    with torch.no_grad():  # MONAI zero-initialises the output conv: perturb so the condition shows
        for p in m.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    mask = (torch.rand(2, 1, 16, 16) > 0.8).float()
    out = m.predict({"label": mask}, sampler="ddim", steps=3, generator=torch.Generator().manual_seed(0))
    fov = torch.from_numpy(circular_fov(16, 16))
    assert out["prediction"].shape == (2, 3, 16, 16)
    assert (out["prediction"][:, :, ~fov] == -1).all() and out["prediction"].abs().max() <= 1
    other = m.predict({"label": 1 - mask}, sampler="ddim", steps=3, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(other["prediction"], out["prediction"])  # the mask enters the net
    loss, logs = m.loss({"label": mask, "image": torch.rand(2, 3, 16, 16) * 2 - 1}, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and set(logs) == {"loss_mse", "loss_l1"}


def test_refusals_name_the_argument():
    with pytest.raises(ArgumentError, match="fov_radius: must lie in"):
        RetinalMaskDDPM(**TINY, fov_radius=0)
    with pytest.raises(ArgumentError, match="sampling_steps"):
        RetinalMaskDDPM(**TINY, sampling_steps=0)
    m = RetinalImageDDPM(**TINY)
    with pytest.raises(DataError, match="multiple of 2"):
        m.predict({"label": torch.zeros(1, 1, 15, 16)})
    with pytest.raises(DataError, match="conditioned on batch\\['label'\\]"):
        m.predict({"image": torch.zeros(1, 3, 16, 16)})
    with pytest.raises(DataError, match="NaN"):
        m.predict({"label": torch.full((1, 1, 16, 16), float("nan"))})
    with pytest.raises(DataError, match="3 channels"):
        m.loss({"label": torch.zeros(1, 1, 16, 16), "image": torch.zeros(1, 1, 16, 16)})


def test_validation_metrics():
    m = RetinalMaskDDPM(**TINY)
    ref = torch.zeros(1, 1, 4, 4)
    ref[..., :2, :] = 1  # fraction 0.5 in an all-ones FOV
    pred = torch.zeros(1, 1, 4, 4)
    pred[..., 0, :] = 1  # fraction 0.25: score 1 - 0.25 / 0.5 = 0.5
    got = m.validation_metrics({"label": ref}, {"prediction": pred, "fov": torch.ones(1, 1, 4, 4)})
    assert float(got["vessel_fraction"]) == 0.25 and float(got["fraction_score"]) == pytest.approx(0.5)
    im = RetinalImageDDPM(**TINY)
    img = torch.full((1, 3, 4, 4), 0.5)
    img[..., :2, :] = -0.5  # vessels (rows 0-1) 1.0 darker than the rest
    got = im.validation_metrics({"label": ref, "image": img}, {"prediction": img, "fov": torch.ones(1, 1, 4, 4)})
    assert float(got["vessel_contrast"]) == pytest.approx(1.0) and float(got["psnr"]) == 100.0
