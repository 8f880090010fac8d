"""Masks as diffusion targets and ensembles back to labels (methods/_segmentation.py), binary and K-class."""

from __future__ import annotations

import pytest
import torch

from medrs_diff.diffusion.schedules import make_schedule
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.methods import MedSegDiffV1, MedSegDiffV2, SegDiff
from medrs_diff.methods._sampling import sample_n
from medrs_diff.methods._segmentation import (
    decode_samples,
    encode_mask,
    mask_channels,
    project_simplex,
    sample_probabilities,
)

TINY = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, num_head_channels=16,
            norm_num_groups=8, rrdb_blocks=1, rrdb_features=16, rrdb_growth=8)


def test_encode_binary_and_one_hot():
    lab = torch.tensor([[[[0, 1], [1, 0]]]]).float()
    assert torch.equal(encode_mask(lab, 2), lab * 2 - 1)
    lab3 = torch.tensor([[[[0, 1], [2, 0]]]]).float()
    x = encode_mask(lab3, 3)
    assert x.shape == (1, 3, 2, 2) and set(x.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(x.argmax(1, keepdim=True).float(), lab3) and torch.equal((x > 0).sum(1), torch.ones(1, 2, 2,
                                                                                                       dtype=torch.long))
    assert mask_channels(2) == 1 and mask_channels(4) == 4


@pytest.mark.parametrize("bad", [2.0, 0.37, float("nan"), -1.0])
def test_encode_refuses_labels_outside_the_classes(bad):
    lab = torch.zeros(1, 1, 2, 2)
    lab[0, 0, 0, 0] = bad
    with pytest.raises(DataError, match="outside the classes 0 .. 1"):
        encode_mask(lab, 2)
    with pytest.raises(ArgumentError, match="num_classes"):
        encode_mask(lab, 1)


def test_probabilities_renormalise_and_uniform_when_all_clipped():
    s = torch.tensor([1.0, 0.0, -1.0]).reshape(1, 1, 3, 1, 1)  # p = 1, .5, 0 -> 2/3, 1/3, 0
    p = sample_probabilities(s)
    assert torch.allclose(p.flatten(), torch.tensor([2 / 3, 1 / 3, 0.0]))
    assert torch.allclose(sample_probabilities(-torch.ones(1, 1, 4, 1, 1)).flatten(), torch.full((4,), 0.25))


def test_decode_multiclass_fusions_on_a_hand_made_ensemble():
    # three samples of a 1 x 3 image with 3 classes; pixel 0: votes 1,1,2; pixel 1: 0,0,0; pixel 2: 2,1,2
    votes = torch.tensor([[1, 0, 2], [1, 0, 1], [2, 0, 2]])  # (N, W)
    onehot = torch.nn.functional.one_hot(votes, 3).permute(0, 2, 1).float()  # (N, K, W)
    samples = (onehot * 2 - 1)[None, :, :, None, :]  # (B=1, N=3, K=3, H=1, W=3)
    for fusion in ("mean", "majority", "staple"):
        out = decode_samples(samples, 3, fusion)
        assert out["prediction"].shape == (1, 1, 1, 3)
        assert out["prediction"].flatten().tolist() == [1.0, 0.0, 2.0], fusion
    out = decode_samples(samples, 3)
    assert out["probability"].shape == (1, 3, 1, 3)
    assert torch.allclose(out["probability"][0, :, 0, 0], torch.tensor([0, 2 / 3, 1 / 3]))
    ent = out["uncertainty"].flatten()
    assert ent[1] == 0 and ent[0] > 0 and torch.isclose(ent[0], ent[2])  # agreement -> zero entropy
    assert out["mutual_information"].flatten()[1] == 0


def test_decode_binary_matches_threshold_and_variance():
    probs = torch.tensor([0.9, 0.8, 0.2]).reshape(1, 3, 1, 1, 1)
    out = decode_samples(probs * 2 - 1, 2)
    assert out["prediction"].item() == 1.0
    assert torch.isclose(out["uncertainty"].flatten()[0], probs.flatten().var())


def test_segdiff_multiclass_shapes_and_class_probabilities():
    torch.manual_seed(0)
    m = SegDiff(in_channels=1, num_classes=3, **TINY).eval()
    image = torch.randn(2, 1, 8, 8)
    label = torch.randint(0, 3, (2, 1, 8, 8)).float()
    loss, _ = m.loss({"image": image, "label": label})
    assert torch.isfinite(loss) and m.unet.unet.conv_in.inner.conv.in_channels == 3
    out = m.predict({"image": image}, sampler="ddim", steps=2, n_samples=2, generator=torch.Generator().manual_seed(0))
    assert out["prediction"].shape == (2, 1, 8, 8) and set(out["prediction"].unique().tolist()) <= {0.0, 1.0, 2.0}
    assert out["probability"].shape == (2, 3, 8, 8)
    assert torch.allclose(out["probability"].sum(1), torch.ones(2, 8, 8), atol=1e-5)
    with pytest.raises(DataError, match="outside the classes 0 .. 2"):
        m.loss({"image": image, "label": label + 1})


# -- K-class sampling on the simplex ------------------------------------------------------------------------
def test_project_simplex_by_hand_and_its_properties():
    x = torch.tensor([[1.0, 1, 1], [3, 2, 2], [1, -1, -1], [0.2, -5, 0.1]]).T[None, :, :, None]  # (1, K=3, 4, 1)
    want = torch.tensor([[-1 / 3, -1 / 3, -1 / 3], [1 / 3, -2 / 3, -2 / 3], [1, -1, -1], [0.05, -1, -0.05]]).T
    assert torch.allclose(project_simplex(x)[0, :, :, 0], want, atol=1e-6)
    torch.manual_seed(0)
    y = torch.randn(3, 4, 5, 6) * 3
    p = project_simplex(y)
    assert torch.allclose(((p + 1) / 2).sum(1), torch.ones(3, 5, 6), atol=1e-5) and p.min() >= -1 and p.max() <= 1
    assert torch.allclose(project_simplex(y + 2.5), p, atol=1e-5)  # a common shift carries no class: removed
    assert torch.allclose(project_simplex(p), p, atol=1e-6)
    onehot = encode_mask(torch.randint(0, 4, (2, 1, 5, 6)).float(), 4)
    assert torch.equal(project_simplex(onehot), onehot)


def _offset_denoiser(x0: torch.Tensor, abar: torch.Tensor, offset: float):
    """An eps denoiser whose x0 estimate is ``x0`` shifted by ``offset`` on every channel (a class-free error)."""
    def denoise(x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        a = abar[t.long()].reshape(-1, *([1] * (x.ndim - 1)))
        return (x - a.sqrt() * (x0 + offset)) / (1 - a).sqrt()
    return denoise


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver_pp", "ddpm"])
def test_a_common_mode_x0_error_keeps_the_class_on_the_simplex_and_loses_it_in_the_box(sampler):
    """The box clip saturates every channel of x0 + 3 at +1 (a tie: the class is lost); the simplex
    projection removes the shift exactly, so the chain ends on the true one-hot mask."""
    label = torch.randint(0, 3, (2, 1, 6, 6), generator=torch.Generator().manual_seed(0)).float()
    x0 = encode_mask(label, 3)
    sched = make_schedule("linear", 100)
    denoise = _offset_denoiser(x0.repeat(2, 1, 1, 1), sched.table("alphas_cumprod"), 3.0)
    kw = dict(n_samples=2, sampler=sampler, steps=10, device=torch.device("cpu"), clip=True)
    on = sample_n(denoise, tuple(x0.shape), sched, simplex=True, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.allclose(on, x0.expand_as(on), atol=1e-4)
    box = sample_n(denoise, tuple(x0.shape), sched, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(decode_samples(box.transpose(0, 1), 3)["prediction"], torch.zeros_like(label))
    assert torch.equal(decode_samples(on.transpose(0, 1), 3)["prediction"], label)


V1_TINY = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, num_head_channels=16,
               norm_num_groups=8, ff_base_size=16)
V2_TINY = dict(V1_TINY, cond_features=(8, 8, 16, 16, 32, 8), ssformer_heads=2)
V2_TINY.pop("ff_base_size")
V1_TINY_NO_FF = {k: v for k, v in V1_TINY.items() if k != "ff_base_size"}


@pytest.mark.parametrize("cls, kwargs", [(MedSegDiffV1, V1_TINY), (MedSegDiffV2, V2_TINY), (SegDiff, TINY)])
@pytest.mark.parametrize("num_classes", [2, 3])
def test_segmenters_sample_k_class_masks_on_the_simplex(cls, kwargs, num_classes):
    """Every diffusion segmenter samples K-class masks through the simplex (binary ones keep the box clip):
    a denoiser with a class-free x0 error still gives the right labels."""
    torch.manual_seed(0)
    m = cls(in_channels=1, num_classes=num_classes, timesteps=50, fusion="mean", **kwargs).eval()
    assert m.simplex is (num_classes > 2)
    label = torch.randint(0, num_classes, (2, 1, 32, 32), generator=torch.Generator().manual_seed(0)).float()
    x0 = encode_mask(label, num_classes)
    m.denoiser.forward = _offset_denoiser(x0.repeat(3, 1, 1, 1), m.schedule.table("alphas_cumprod"),
                                          3.0 if num_classes > 2 else 0.0)
    out = m.predict({"image": torch.randn(2, 1, 32, 32)}, sampler="ddim", steps=5, n_samples=3,
                    generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["prediction"], label)


def test_eiddpm_branches_sample_k_class_masks_on_the_simplex():
    """EI-DDPM's branches sample K-class masks through the simplex like the other segmenters: a class-free x0
    error in every branch still gives each branch the right labels."""
    from medrs_diff.methods import EIDDPM

    torch.manual_seed(0)
    m = EIDDPM(in_channels=2, num_classes=3, timesteps=50, **V1_TINY_NO_FF).eval()
    assert m.simplex
    label = torch.randint(0, 3, (2, 1, 32, 32), generator=torch.Generator().manual_seed(0)).float()
    x0 = encode_mask(label, 3)
    for branch in m.branches:
        branch.forward = _offset_denoiser(x0.repeat(3, 1, 1, 1), m.schedule.table("alphas_cumprod"), 3.0)
    samples = m.sample_branches(torch.randn(2, 2, 32, 32), 3, {"sampler": "ddim", "steps": 5, "progress": False,
                                                               "generator": torch.Generator().manual_seed(0)})
    for b in range(2):
        assert torch.equal(decode_samples(samples[:, :, b].transpose(0, 1), 3)["prediction"], label)
