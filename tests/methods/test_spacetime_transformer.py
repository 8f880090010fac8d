"""Spatiotemporal transformer denoiser: the (B, T, C, H, W) contract, positional handling in time (RoPE on frame
times relative to the forecast origin: a common time shift changes nothing, the frame order does), variable
numbers of past frames, spatial positions, the SDPA attention against a hand-written softmax attention, and
one clear error per bad input."""

from __future__ import annotations

import pytest
import torch

from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.nets.spacetime_transformer import Attention, SequenceDiscriminator, SpaceTimeTransformer, rope


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def _net(**kw) -> SpaceTimeTransformer:
    torch.manual_seed(0)
    net = SpaceTimeTransformer(in_channels=kw.pop("in_channels", 1), patch_size=4, dim=32, depth=2, heads=4, **kw)
    with torch.no_grad():  # adaLN-Zero starts as the zero map; give every weight a value so outputs depend on inputs
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net.eval()


def _inputs(b=2, n=4, m=3, c=1, h=16, w=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, m, c, h, w, generator=g), torch.tensor([3, 1]), torch.randn(b, n, c, h, w, generator=g)


def test_contract_shapes_channels_and_zero_init():
    x, t, past = _inputs(c=2)
    net = _net(in_channels=2)
    assert net(x, t, past).shape == x.shape
    fresh = SpaceTimeTransformer(in_channels=1, patch_size=4, dim=32, depth=1, heads=4)
    x1, t1, p1 = _inputs()
    assert torch.equal(fresh(x1, t1, p1), torch.zeros_like(x1))  # adaLN-Zero: the untrained net is the zero map


def test_time_shift_invariance_and_order_sensitivity():
    x, t, past = _inputs()
    net = _net()
    y = net(x, t, past)
    times = torch.arange(-3, 4, dtype=torch.float32)  # default: past -3..0, future 1..3
    assert torch.allclose(net(x, t, past, times=times), y, atol=1e-6)
    for shift in (5.0, -17.5):  # only time differences enter the temporal attention
        assert torch.allclose(net(x, t, past, times=times + shift), y, atol=1e-4)
    # reversing the past frames (or stretching time) changes the forecast: positions in time are used
    assert (net(x, t, past.flip(1)) - y).abs().max() > 1e-2 * y.abs().max()
    assert (net(x, t, past, times=2 * times) - y).abs().max() > 1e-2 * y.abs().max()


def test_variable_number_of_past_frames_and_causal_origin():
    x, t, past = _inputs(n=5)
    net = _net()
    y5, y2 = net(x, t, past), net(x, t, past[:, -2:])
    assert y5.shape == y2.shape == x.shape
    assert not torch.allclose(y5, y2)  # the extra past frames are used
    # the forecast responds to the most recent past frame
    bumped = past.clone()
    bumped[:, -1] += 1.0
    assert (net(x, t, bumped) - y5).abs().max() > 1e-3


def test_spatial_positions_break_translation_symmetry_and_batch_independence():
    x, t, past = _inputs()
    net = _net()
    y = net(x, t, past)
    rolled = net(torch.roll(x, 4, -1), t, torch.roll(past, 4, -1))
    assert not torch.allclose(torch.roll(y, 4, -1), rolled, atol=1e-4)  # absolute 2-D positions are embedded
    assert torch.allclose(net(x[1:], t[1:], past[1:]), y[1:], atol=1e-5)  # batch elements do not mix


def test_sdpa_attention_matches_softmax_attention_and_rope_is_relative():
    torch.manual_seed(0)
    att = Attention(16, 2)
    x = torch.randn(3, 5, 16)
    q, k, v = att.qkv(x).reshape(3, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    ref = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1) @ v
    assert torch.allclose(att(x), att.proj(ref.transpose(1, 2).reshape(3, 5, 16)), atol=1e-5)
    a, b = torch.randn(1, 1, 8), torch.randn(1, 1, 8)
    dots = [(rope(a, torch.tensor([p])) * rope(b, torch.tensor([p + 2.0]))).sum() for p in (0.0, 3.0, -7.0)]
    assert torch.allclose(torch.stack(dots), dots[0].expand(3), atol=1e-5)  # <R(p)a, R(p+2)b> depends on 2 only


def test_bad_inputs_and_arguments():
    x, t, past = _inputs()
    net = _net()
    with pytest.raises(DataError, match="multiple of the patch size"):
        net(x[..., :15, :], t, past[..., :15, :])
    with pytest.raises(DataError, match="differ in batch, channels or grid"):
        net(x, t, past[..., :8])
    with pytest.raises(DataError, match=r"\(B, T, C, H, W\)"):
        net(x[:, 0], t, past)
    with pytest.raises(DataError, match="frame times"):
        net(x, t, past, times=torch.arange(3.0))
    with pytest.raises(ArgumentError, match="dim"):
        SpaceTimeTransformer(dim=30, heads=4)
    disc = SequenceDiscriminator(frames=4 + 2 * 3, width=8, depth=2)
    assert disc(x, x, t, past).shape == (2,)
    with pytest.raises(DataError, match="discriminator"):
        disc(x, x, t, past[:, :2])
