
"""MedSegDiff V1: FF-Parser (closed form), dynamic conditional encoding, loss / gradients, predict shapes,
the repository-faithful calibration switch, bad input, and learning on phantoms."""

import numpy as np
import pytest
import torch
from _learning import fit_and_score
from _phantoms import make_three_class_phantoms
from torch import nn

from medrs_diff.datamodules import NiftiSegmentationDataModule
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.methods import METHODS, MedSegDiffV1
from medrs_diff.methods._segmentation import decode_samples
from medrs_diff.methods.medsegdiff import calibration_blend
from medrs_diff.nets.ffparser import FFParser
from medrs_diff.nets.medsegdiff import DynamicConditionalEncoding
from medrs_diff.train.checkpoint import build_method, method_config

TINY = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, num_head_channels=16,
            norm_num_groups=8, ff_base_size=16)


# -- FF-Parser ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims, size", [(2, (16, 16)), (2, (17, 40)), (2, (6, 9)), (3, (8, 8, 8)), (3, (5, 12, 7))])
def test_ff_parser_identity_filter_is_identity_at_any_size(dims, size):
    p = FFParser(3, dims, base_size=8)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    y = p(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert torch.allclose(y, x, atol=1e-12)
    assert torch.allclose(p(x.float()), x.float(), atol=1e-5)


def _low_pass(p: FFParser, cutoff: float = 0.25) -> None:
    """Zero the stored filter where any |frequency| (cycles / px) exceeds ``cutoff``."""
    freqs = [torch.fft.fftfreq(b) for b in p.base_size[:-1]] + [torch.fft.rfftfreq(p.base_size[-1])]
    grids = torch.meshgrid(*freqs, indexing="ij")
    keep = torch.stack([g.abs() <= cutoff for g in grids]).all(0).float()
    with torch.no_grad():
        p.weight_real.copy_(keep.expand_as(p.weight_real))


@pytest.mark.parametrize("size", [16, 24, 10])
def test_ff_parser_low_pass_removes_a_checkerboard(size):
    """Hand-made: a smooth image plus a Nyquist checkerboard; a filter zeroing |f| > 1/4 keeps only the
    smooth part, at the base size and (resampled in normalised frequency) at other sizes."""
    p = FFParser(1, 2, base_size=16)
    _low_pass(p)
    i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    smooth = 0.5 + 0.3 * torch.cos(2 * np.pi * i / size)  # lowest non-zero frequency 1/size
    checker = (-1.0) ** (i + j)
    out = p((smooth + checker)[None, None].double())[0, 0]
    assert torch.allclose(out, smooth.double(), atol=1e-9)
    assert (out - smooth).abs().max() < 1e-6 < (smooth + checker - smooth).abs().max()


def test_ff_parser_resampling_keeps_identity_and_is_exact_on_the_base_grid():
    torch.manual_seed(0)
    p = FFParser(2, 2, base_size=(8, 12))
    for size in [(8, 12), (16, 24), (5, 31)]:
        w = p.filter(size)
        assert w.shape == (2, size[0], size[1] // 2 + 1)
        assert torch.equal(w, torch.ones_like(w))  # identity stays identity under resampling
    with torch.no_grad():
        p.weight_real.normal_()
        p.weight_imag.normal_()
    stored = torch.complex(p.weight_real, p.weight_imag)
    assert torch.equal(p.filter((8, 12)), stored)  # the base size uses the stored values exactly
    # At twice the size, every even bin k sits at frequency k/(2b) = (k/2)/b: the stored bin k/2, exactly.
    w2 = p.filter((16, 24))
    assert torch.allclose(w2[:, ::2, ::2], stored, atol=1e-6)
    # Odd bins lie halfway: the mean of their two neighbours, wrapping around on the full axis.
    assert torch.allclose(w2[:, 15, ::2], (stored[:, 7] + stored[:, 0]) / 2, atol=1e-6)
    p3 = FFParser(1, 3, base_size=4)
    assert p3.filter((6, 6, 6)).shape == (1, 6, 6, 4)


def test_ff_parser_bad_input():
    with pytest.raises(DataError, match="expected features"):
        FFParser(3, 2)(torch.randn(1, 2, 8, 8))
    with pytest.raises(ArgumentError, match="base_size"):
        FFParser(3, 2, base_size=(8, 8, 8))


# -- dynamic conditional encoding ------------------------------------------------------------------------
def test_dynamic_conditional_encoding_is_the_paper_formula():
    torch.manual_seed(0)
    enc = DynamicConditionalEncoding(4)
    c, m = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    assert torch.allclose(enc(c, m), c, atol=1e-6)  # identity at initialisation
    with torch.no_grad():
        for norm in (enc.norm_cond, enc.norm_mask):
            norm.weight.normal_()
            norm.bias.normal_()

    def layer_norm(x, norm):  # over (C, *spatial) per sample, then the per-channel affine
        mu = x.mean((1, 2, 3), keepdim=True)
        var = x.var((1, 2, 3), unbiased=False, keepdim=True)
        return (x - mu) / (var + norm.eps).sqrt() * norm.weight[:, None, None] + norm.bias[:, None, None]

    want = layer_norm(c, enc.norm_cond) * layer_norm(m, enc.norm_mask) * c
    assert torch.allclose(enc(c, m), want, atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_dynamic_encoding_shapes_and_ff_parsed_mask_features(dims):
    torch.manual_seed(0)
    m = MedSegDiffV1(in_channels=2, spatial_dims=dims, **TINY).eval()
    net = m.net
    size = (8,) * dims
    image, x_t = torch.randn(2, 2, *size), torch.randn(2, 1, *size)
    seen = {}
    for k in range(net.levels):
        net.ff_parsers[k].register_forward_hook(lambda mod, inp, out, k=k: seen.update({f"ff{k}": out}))
        net.encodings[k].register_forward_hook(lambda mod, inp, out, k=k: seen.update({f"in{k}": inp, f"out{k}": out}))
    features = net.image_features(image)
    assert features.shape == (2, 16, *size)
    eps = net(x_t, torch.tensor([3, 700]), features=features)
    assert eps.shape == x_t.shape
    for k, (c, s) in enumerate([(16, 8), (32, 4)]):
        cond, mask = seen[f"in{k}"]
        assert cond.shape == mask.shape == seen[f"out{k}"].shape == (2, c, *(s,) * dims)
        assert mask is seen[f"ff{k}"]  # the mask features enter the encoding through the FF-Parser
        assert isinstance(net.ff_parsers[k], FFParser)
    assert m.size_multiple == 2


def test_no_module_is_built_in_forward_and_forward_is_deterministic():
    torch.manual_seed(0)
    m = MedSegDiffV1(in_channels=1, calibration=True, **TINY).eval()
    nn.init.normal_(m.net.out[-1].conv.weight, std=0.1)
    before = [id(p) for p in m.parameters()]
    image, x_t, t = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8), torch.tensor([10])
    f = m.net.image_features(image)
    a = m.net(x_t, t, features=f, return_calibration=True)
    b = m.net(x_t, t, features=f, return_calibration=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert [id(p) for p in m.parameters()] == before


# -- loss and gradients -----------------------------------------------------------------------------------
def test_loss_is_finite_and_gradients_reach_both_encoders():
    torch.manual_seed(0)
    m = MedSegDiffV1(in_channels=1, **TINY)
    net = m.net
    nn.init.normal_(net.out[-1].conv.weight, std=0.1)  # the zero-initialised output would stop every gradient
    with torch.no_grad():
        for enc in net.encodings:  # leave the identity start so the mask branch (and FF-Parser) matter
            enc.norm_mask.weight.fill_(1.0)
    batch = {"image": torch.randn(2, 1, 8, 8), "label": (torch.rand(2, 1, 8, 8) > 0.5).float()}
    loss, logs = m.loss(batch, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and "loss_simple" in logs
    loss.backward()
    for name, param in [("mask encoder", net.mask_in.conv.weight), ("image encoder", net.image_in.conv.weight),
                        ("image encoder, scale 2", next(net.image_blocks[1].parameters())),
                        ("FF-Parser", net.ff_parsers[0].weight_real), ("encoding", net.encodings[1].norm_mask.weight)]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# -- predict --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims, classes", [(2, 2), (2, 3), (3, 2)])
def test_predict_shapes_binary_and_three_classes(dims, classes):
    torch.manual_seed(0)
    m = MedSegDiffV1(in_channels=1, spatial_dims=dims, num_classes=classes, **TINY).eval()
    shape = (2, 1) + (8,) * dims
    image = torch.randn(shape)
    out = m.predict({"image": image}, sampler="ddim", steps=2, n_samples=3, generator=torch.Generator().manual_seed(0))
    c = 1 if classes == 2 else classes
    assert out["prediction"].shape == shape and out["uncertainty"].shape == shape
    assert out["probability"].shape == (2, c) + (8,) * dims
    assert out["samples"].shape == (2, 3, c) + (8,) * dims
    assert set(out["prediction"].unique().tolist()) <= set(float(v) for v in range(classes))
    if classes > 2:
        assert torch.allclose(out["probability"].sum(1), torch.ones(1), atol=1e-5)
    # Same generator, same result: the only randomness is the sampler's.
    again = m.predict({"image": image}, sampler="ddim", steps=2, n_samples=3,
                      generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["samples"], again["samples"])


def test_defaults_follow_the_paper_and_registry():
    m = MedSegDiffV1(in_channels=3, **TINY)
    assert METHODS["medsegdiff_v1"] is MedSegDiffV1 and m.name == "medsegdiff_v1" and m.task == "seg"
    assert len(m.schedule) == 1000 and m.objective.prediction_type == "eps" and m.objective.loss_type == "mse"
    assert m.sampler == "ddpm" and m.sampling_steps is None and m.fusion == "staple" and not m.calibration
    assert m.net.calibration is None and m.io_spec.outputs == ("prediction", "uncertainty", "probability")
    assert m.io_spec.extra["size_multiple"] == 2 and m.hparams()["calibration"] is False


@pytest.mark.parametrize("calibration", [False, True])
def test_rebuilds_from_its_hparams(calibration):
    m = MedSegDiffV1(in_channels=2, num_classes=3, calibration=calibration, **TINY)
    again = build_method(method_config(m))
    assert type(again) is MedSegDiffV1 and again.hparams() == m.hparams()
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}


# -- repository-faithful calibration switch ----------------------------------------------------------------
def test_calibration_blend_follows_the_official_rule():
    p = torch.zeros(2, 1, 1, 2, 2)
    c = torch.zeros(2, 1, 1, 2, 2)
    p[0, 0, 0, 0] = torch.tensor([0.9, 0.8])  # agrees with the head: d = 2*1.8 / (2 + 1.8) > 0.65
    c[0, 0, 0, 0] = torch.tensor([0.9, 0.9])
    p[1, 0, 0, 0, 0] = 0.9  # disagrees: the head is confident elsewhere
    c[1, 0, 0, 1] = torch.tensor([1.0, 0.7])
    blended, d = calibration_blend(p, c)
    assert torch.isclose(d[0, 0], torch.tensor(3.6 / 3.8)) and d[1, 0] == 0
    assert torch.allclose(blended[0], (0.5 * c[0] + 0.5 * p[0]))
    assert torch.allclose(blended[1], (c[1] + 0.25 * p[1]).clamp(0, 1))
    assert blended[1, 0, 0, 1, 0] == 1.0  # clipped to [0, 1]
    empty, d0 = calibration_blend(torch.zeros(1, 1, 1, 2, 2), torch.zeros(1, 1, 1, 2, 2))
    assert d0.item() == 1.0 and torch.equal(empty, torch.zeros_like(empty))


def test_calibration_switch_returns_pure_and_blended_results():
    torch.manual_seed(0)
    m = MedSegDiffV1(in_channels=1, calibration=True, **TINY).eval()
    batch = {"image": torch.randn(2, 1, 8, 8), "label": (torch.rand(2, 1, 8, 8) > 0.5).float()}
    loss, logs = m.loss(batch, generator=torch.Generator().manual_seed(0))
    assert torch.isclose(loss, logs["loss_simple"] + 10 * logs["loss_calibration"])
    assert set(m.io_spec.outputs) >= {"prediction", "prediction_diffusion", "calibration"}
    gen = torch.Generator().manual_seed(3)
    out = m.predict(batch, sampler="ddim", steps=2, n_samples=3, generator=gen)
    for key in ("prediction", "prediction_diffusion", "probability_diffusion", "uncertainty_diffusion",
                "calibration", "agreement"):
        assert key in out, key
    assert out["calibration"].shape == (2, 1, 8, 8) and out["agreement"].shape == (2, 3)
    assert ((out["calibration"] >= 0) & (out["calibration"] <= 1)).all()
    # The pure-diffusion result is what the same weights give without the switch.
    pure = MedSegDiffV1(in_channels=1, calibration=False, **TINY).eval()
    missing, unexpected = pure.load_state_dict(m.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("net.calibration.") for k in unexpected)
    ref = pure.predict(batch, sampler="ddim", steps=2, n_samples=3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out["prediction_diffusion"], ref["prediction"])
    assert torch.equal(out["probability_diffusion"], ref["probability"])
    # The blended result is the official blend of those samples with the head, fused the same way.
    cal = m.calibration_masks(m.net.image_features(batch["image"]), ref["samples"] * 2 - 1)
    blended, _ = calibration_blend(ref["samples"], cal)
    want = decode_samples(blended * 2 - 1, 2, m.fusion)
    assert torch.equal(out["prediction"], want["prediction"])


# -- bad input -------------------------------------------------------------------------------------------
def test_bad_input():
    m = MedSegDiffV1(in_channels=3, **TINY)
    with pytest.raises(DataError, match="multiples of 2"):
        m.loss({"image": torch.randn(1, 3, 9, 8), "label": torch.zeros(1, 1, 9, 8)})
    with pytest.raises(DataError, match="expects 3 input channel"):
        m.loss({"image": torch.randn(1, 1, 8, 8), "label": torch.zeros(1, 1, 8, 8)})
    with pytest.raises(DataError, match="outside the classes"):
        m.loss({"image": torch.randn(1, 3, 8, 8), "label": torch.full((1, 1, 8, 8), 2.0)})
    with pytest.raises(ValueError, match="unknown sampler"):
        m.predict({"image": torch.randn(1, 3, 8, 8)}, sampler="euler")
    with pytest.raises(ArgumentError, match="unknown fusion"):
        MedSegDiffV1(fusion="median", **TINY)
    with pytest.raises(ArgumentError, match="n_samples"):
        MedSegDiffV1(n_samples=0, **TINY)
    with pytest.raises(ArgumentError, match="ff_parser_levels"):
        MedSegDiffV1(ff_parser_levels=3, **TINY)
    with pytest.raises(ArgumentError, match="calibration head"):
        m.net(torch.randn(1, 1, 8, 8), torch.tensor([1]), m.net.image_features(torch.randn(1, 3, 8, 8)),
              return_calibration=True)


# -- learning on phantoms ----------------------------------------------------------------------------------
#: tiny nets and T = 100 (the default is the paper's 1000) to fit the CPU budget; sampling: 20 DPM-Solver++ steps
LEARN = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, num_head_channels=16,
             norm_num_groups=8, ff_base_size=32, timesteps=100)


@pytest.mark.slow
def test_medsegdiff_v1_learns_blobs_to_dice_085(tmp_path):
    """Lightning training on synthetic NIfTI ellipse phantoms (EMA weights), then a 20-step DPM-Solver++ ensemble
    of 3. About 25 s on an idle CPU (1 thread); Dice 0.93 (seed 1) after 200 steps."""
    torch.manual_seed(0)
    dm = NiftiSegmentationDataModule(str(tmp_path), phantoms=20, phantom_size=[32, 32], batch_size=8)
    method = MedSegDiffV1(in_channels=1, n_samples=3, **LEARN)
    score, _ = fit_and_score(method, dm, steps=200, lr=2e-3, name="MedSegDiff V1 binary")
    assert score >= 0.85


@pytest.mark.slow
def test_medsegdiff_v1_learns_three_classes_to_mean_dice_075(tmp_path):
    """3-class ellipse phantoms (K one-hot channels diffused, x0 estimates on the simplex), EMA weights, a
    20-step DPM-Solver++ ensemble of 3 fused by the mean. About 25 s on a 2-core CPU (1 thread); mean
    foreground Dice 0.89 / 0.82 / 0.90 with phantom and init seeds 0 / 1 / 2 after 220 steps (0.75 at
    seed 0 with the per-channel box clip on x0 instead of the simplex)."""
    torch.manual_seed(0)
    make_three_class_phantoms(tmp_path, n=20, size=32, seed=0)
    dm = NiftiSegmentationDataModule(str(tmp_path), num_classes=3, batch_size=8)
    method = MedSegDiffV1(in_channels=1, num_classes=3, n_samples=3, fusion="mean", **LEARN)
    score, per_class = fit_and_score(method, dm, steps=220, lr=5e-3, num_classes=3, name="MedSegDiff V1 3-class")
    assert score >= 0.75 and min(per_class) >= 0.65
