"""MedSegDiff V1's ``image_in_diffusion_encoder`` switch (the official code's input path: [image, x_t] into the
diffusion encoder): shapes in 2-D / 3-D, the default network unchanged, the image reaching eps through the
diffusion encoder only under the switch, rebuilding from the recorded arguments, refusals, and learning."""

import pytest
import torch
from _learning import fit_and_score
from torch import nn

from medrs_diff.datamodules import NiftiSegmentationDataModule
from medrs_diff.datamodules.clinical2d import Clinical2DSegmentationDataModule
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.methods import MedSegDiffV1
from medrs_diff.nets.medsegdiff import MedSegDiffUNet
from medrs_diff.train.checkpoint import build_method, method_config

TINY = dict(channels=(16, 32), attention_levels=(False, True), num_res_blocks=1, num_head_channels=16,
            norm_num_groups=8, ff_base_size=16)


def _net(dims: int, in_channels: int = 3, mask_channels: int = 1, **kw) -> MedSegDiffUNet:
    return MedSegDiffUNet(dims, in_channels, mask_channels, **TINY, **kw)


@pytest.mark.parametrize("dims, mask_channels", [(2, 1), (2, 3), (3, 1)])
def test_switch_shapes_and_the_image_travels_with_the_features(dims, mask_channels):
    torch.manual_seed(0)
    net = _net(dims, mask_channels=mask_channels, image_in_diffusion_encoder=True, calibration_head=True)
    size = (8,) * dims
    image, x = torch.randn(2, 3, *size), torch.randn(2, mask_channels, *size)
    feats = net.image_features(image)
    assert net.feature_channels == 16 + 3 and feats.shape == (2, 19, *size)
    assert torch.equal(feats[:, 16:], image)  # the raw image, appended to the cached condition features
    assert net.mask_in.conv.in_channels == 3 + mask_channels
    eps, cal = net(x, torch.tensor([5, 900]), features=feats, return_calibration=True)
    assert eps.shape == x.shape and cal.shape == x.shape and torch.isfinite(eps).all()
    # The whole method (loss and the sampled ensemble) in the same dimensions.
    m = MedSegDiffV1(in_channels=3, spatial_dims=dims, num_classes=2 if mask_channels == 1 else 3,
                     image_in_diffusion_encoder=True, **TINY).eval()
    label = torch.randint(0, m.num_classes, (2, 1, *size)).float()
    loss, _ = m.loss({"image": image, "label": label}, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    out = m.predict({"image": image}, sampler="ddim", steps=2, n_samples=3, generator=torch.Generator().manual_seed(0))
    assert out["prediction"].shape == (2, 1, *size) and out["samples"].shape == (2, 3, mask_channels, *size)


@pytest.mark.parametrize("dims", [2, 3])
def test_switch_off_is_the_network_built_without_the_argument(dims):
    torch.manual_seed(0)
    before = _net(dims)
    torch.manual_seed(0)
    off = _net(dims, image_in_diffusion_encoder=False)
    torch.manual_seed(0)
    on = _net(dims, image_in_diffusion_encoder=True)
    count = lambda n: sum(p.numel() for p in n.parameters())  # noqa: E731
    assert count(off) == count(before)
    # The switch adds exactly the first convolution's weights for the 3 image channels: 3 * 16 * 3**dims.
    assert count(on) - count(before) == 3 * 16 * 3**dims
    sb, so = before.state_dict(), off.state_dict()
    assert sb.keys() == so.keys() and all(torch.equal(sb[k], so[k]) for k in sb)
    for n in (before, off):
        nn.init.normal_(n.out[-1].conv.weight, std=0.1, generator=torch.Generator().manual_seed(1))
    size = (8,) * dims
    image, x, t = torch.randn(2, 3, *size), torch.randn(2, 1, *size), torch.tensor([3, 700])
    assert off.feature_channels == 16 and off.image_features(image).shape == (2, 16, *size)
    assert torch.equal(before(x, t, before.image_features(image)), off(x, t, off.image_features(image)))


def _grad_through_diffusion_encoder(switch: bool) -> torch.Tensor:
    """d eps / d image with the condition path's contribution to eps cut (its bottleneck features are 0)."""
    torch.manual_seed(0)
    net = _net(2, image_in_diffusion_encoder=switch)
    nn.init.normal_(net.out[-1].conv.weight, std=0.1)  # the zero-initialised output would stop every gradient
    with torch.no_grad():  # A(c, m) = (LN(c) ⊙ LN(m)) ⊙ c with LN(c) = 0: the bottleneck gets c = 0
        net.encodings[-1].norm_cond.weight.zero_()
        net.encodings[-1].norm_cond.bias.zero_()
    image = torch.randn(2, 3, 8, 8, requires_grad=True)
    x = torch.randn(2, 1, 8, 8)
    feats = net.image_features(image)
    # (The condition path is really cut: eps does not change with the condition features.)
    c0 = feats.detach().clone()
    c0[:, :16] = torch.randn_like(c0[:, :16])
    t = torch.tensor([10, 500])
    eps = net(x, t, feats)
    assert torch.allclose(eps, net(x, t, c0), atol=1e-6)
    (grad,) = torch.autograd.grad(eps.square().sum(), image, allow_unused=True)
    return torch.zeros_like(image) if grad is None else grad


def test_gradient_reaches_the_image_through_the_diffusion_encoder_only_under_the_switch():
    assert _grad_through_diffusion_encoder(False).abs().max() == 0
    on = _grad_through_diffusion_encoder(True)
    assert on.abs().sum() > 0 and (on.abs().sum((0, 2, 3)) > 0).all()  # every image channel


@pytest.mark.parametrize("calibration", [False, True])
def test_rebuilds_from_its_recorded_arguments(calibration):
    torch.manual_seed(0)
    m = MedSegDiffV1(in_channels=2, image_in_diffusion_encoder=True, calibration=calibration, **TINY).eval()
    assert m.hparams()["image_in_diffusion_encoder"] is True
    again = build_method(method_config(m)).eval()
    assert again.hparams() == m.hparams() and again.net.image_in_diffusion_encoder
    again.load_state_dict(m.state_dict())  # strict: the shapes agree (mask_in takes 2 + 1 channels)
    batch = {"image": torch.randn(1, 2, 8, 8)}
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    a = m.predict(batch, sampler="ddim", steps=2, n_samples=2, generator=gen())
    b = again.predict(batch, sampler="ddim", steps=2, n_samples=2, generator=gen())
    assert torch.equal(a["samples"], b["samples"])
    # A default (paper) model refuses these weights: the first convolution's input width differs.
    with pytest.raises(RuntimeError, match="mask_in"):
        MedSegDiffV1(in_channels=2, calibration=calibration, **TINY).load_state_dict(m.state_dict())


def test_refusals():
    with pytest.raises(ArgumentError, match="image_in_diffusion_encoder"):
        MedSegDiffV1(image_in_diffusion_encoder="yes", **TINY)
    net = _net(2, image_in_diffusion_encoder=True)
    paper = _net(2)
    image = torch.randn(1, 3, 8, 8)
    with pytest.raises(DataError, match="expected \\(1, 19, 8, 8\\)"):  # features without the image
        net(torch.randn(1, 1, 8, 8), torch.tensor([1]), paper.image_features(image))


#: as the V1 learning tests: tiny nets, T = 100, 20-step DPM-Solver++ ensemble of 3
LEARN = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, num_head_channels=16,
             norm_num_groups=8, ff_base_size=32, timesteps=100)


@pytest.mark.slow
def test_switch_learns_blobs_to_dice_085(tmp_path):
    """Lightning training on synthetic NIfTI ellipse phantoms (EMA weights) with the switch on, as the paper
    setting's test (tests/methods/test_medsegdiff_v1.py). About 25 s on one thread."""
    torch.manual_seed(0)
    dm = NiftiSegmentationDataModule(str(tmp_path), phantoms=20, phantom_size=[32, 32], batch_size=8)
    method = MedSegDiffV1(in_channels=1, n_samples=3, image_in_diffusion_encoder=True, **LEARN)
    score, _ = fit_and_score(method, dm, steps=200, lr=2e-3, name="MedSegDiff V1 [image, x_t] input")
    assert score >= 0.85


#: a 4-level net (bottleneck at 1/8 resolution, as the medsegdiff_v1_fundus recipe), T = 1000 (the paper's)
DEEP = dict(channels=(16, 16, 32, 32), attention_levels=(False, False, False, False), num_res_blocks=1,
            num_head_channels=16, norm_num_groups=8, ff_base_size=64, timesteps=1000)


@pytest.mark.slow
def test_switch_learns_thin_vessels_faster_than_the_paper_input(tmp_path):
    """Synthetic fundus phantoms (thin vessel trees), 64 x 64 patches, 150 steps each, scored on the 2 whole
    held-out 96 x 144 images: with x_t alone the image reaches the decoder only through the 1/8 bottleneck and
    the paper input learns far slower (what HRF showed: 600-step FOV Dice 0.10 without, 0.33 with the switch).
    Measured Dice without / with the switch, seeds 0 / 1 / 2: 0.12 / 0.51, 0.03 / 0.64, 0.23 / 0.52.
    About 40 s on one thread (two trainings)."""
    scores = {}
    for switch in (False, True):
        torch.manual_seed(0)
        dm = Clinical2DSegmentationDataModule(root=str(tmp_path / str(switch)), phantoms=8, phantom_size=[96, 144],
                                              layout="hrf", channels="rgb", scaling="dn8", resize=[96, 144],
                                              patch_size=[64, 64], samples_per_epoch=256, val_fraction=0.25,
                                              batch_size=8, val_batch_size=1)
        method = MedSegDiffV1(in_channels=3, n_samples=3, image_in_diffusion_encoder=switch, **DEEP)
        scores[switch], _ = fit_and_score(method, dm, steps=150, lr=2e-3, name=f"fundus phantom, switch {switch}")
    assert scores[True] >= 0.4 and scores[True] - scores[False] >= 0.2, scores
