"""The light UNet of the retinal dual model: locality self-attention (learned temperature, masked diagonal),
patch tokens, the sinusoidal time embedding and the UNet's shapes and inputs."""

import math

import pytest
import torch

from medrs_diff.errors import ArgumentError
from medrs_diff.methods import RetinalImageDDPM, RetinalMaskDDPM
from medrs_diff.nets.light_unet import LightUNet, LocalitySelfAttention, LSATransformerBlock, sinusoidal_embedding


def test_lsa_masks_the_diagonal_and_uses_a_learned_temperature():
    torch.manual_seed(0)
    lsa = LocalitySelfAttention(8, heads=2)
    x = torch.randn(3, 5, 8)
    w = lsa.attention(x)
    assert w.shape == (3, 2, 5, 5)
    assert torch.allclose(w.sum(-1), torch.ones(3, 2, 5))
    assert (w.diagonal(dim1=-2, dim2=-1) == 0).all()  # no token attends to itself
    assert isinstance(lsa.temperature, torch.nn.Parameter)
    assert float(lsa.temperature.detach()) == pytest.approx(2.0)  # sqrt(head dim 4)
    q, k, v = lsa.qkv(x).reshape(3, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)  # by hand: softmax(qk^T / T, off-diagonal)
    logits = q @ k.transpose(-2, -1) / 2.0
    logits = logits.masked_fill(torch.eye(5, dtype=torch.bool), float("-inf"))
    want = lsa.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(3, 5, 8))
    assert torch.allclose(lsa(x), want, atol=1e-6)
    warm = float(w.amax(-1).mean())
    with torch.no_grad():
        lsa.temperature.fill_(0.01)  # a colder softmax concentrates the weight on the best other token
    assert float(lsa.attention(x).amax(-1).mean()) > max(0.9, warm + 0.2)
    lsa.temperature.grad = None
    lsa(x).sum().backward()
    assert lsa.temperature.grad is not None


def test_patch_tokens_keep_the_shape_and_mix_positions():
    torch.manual_seed(0)
    block = LSATransformerBlock(4, heads=2, patch=2)
    x = torch.randn(2, 4, 8, 6)
    y = block(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[..., 0:2, 0:2] += torch.randn(2, 4, 2, 2)  # one patch changes: every other patch sees it through attention
    assert not torch.allclose(block(x2)[..., 6:8, 4:6], y[..., 6:8, 4:6])
    with pytest.raises(ValueError, match="does not split into 2 x 2 patches"):
        block(torch.randn(1, 4, 7, 6))


def test_sinusoidal_embedding_closed_form():
    e = sinusoidal_embedding(torch.tensor([0, 10]), 256)
    assert e.shape == (2, 256)
    assert torch.equal(e[0, :128], torch.ones(128)) and torch.equal(e[0, 128:], torch.zeros(128))
    f3 = math.exp(-math.log(10000.0) * 3 / 128)
    assert float(e[1, 3]) == pytest.approx(math.cos(10 * f3), abs=1e-5)
    assert float(e[1, 128 + 3]) == pytest.approx(math.sin(10 * f3), abs=1e-5)


def test_light_unet_shapes_time_and_condition():
    torch.manual_seed(0)
    net = LightUNet(3, 3, (8, 16, 16), cond_channels=1, heads=2)
    assert net.size_multiple == 4 and len(net.attns) == 2  # two down stages, each with an LSA block
    x, cond = torch.randn(2, 3, 16, 12), torch.randn(2, 1, 16, 12)
    t = torch.tensor([1, 500])
    y = net(x, t, cond=cond)
    assert y.shape == (2, 3, 16, 12)
    assert not torch.allclose(net(x, t + 100, cond=cond), y)  # the time embedding enters
    assert not torch.allclose(net(x, t, cond=-cond), y)  # the condition enters
    with pytest.raises(ValueError, match="concatenates a 1-channel condition"):
        net(x, t)


def test_methods_use_the_light_unet_by_default_and_monai_on_request():
    m = RetinalMaskDDPM(channels=(8, 16, 16), lsa_heads=2)
    assert isinstance(m.denoiser, LightUNet) and m.size_multiple == 4
    i = RetinalImageDDPM(net="monai", channels=(8, 16), attention_levels=(False, False), num_head_channels=8)
    assert type(i.denoiser).__name__ == "ConditionedUNet"
    with pytest.raises(ArgumentError, match="net: unknown net 'vit'"):
        RetinalMaskDDPM(net="vit")
    with pytest.raises(ArgumentError, match="lsa_heads: 3 heads do not split"):
        RetinalMaskDDPM(channels=(8, 16, 16), lsa_heads=3)
    with pytest.raises(ArgumentError, match="attention_levels: 1 values for 2 levels"):
        RetinalMaskDDPM(net="monai", channels=(8, 16), attention_levels=(False,))
