"""Every fast-path option gives the plain path's outputs (and gradients) within tolerance, 2D and 3D."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import Tensor, nn

from medrs_diff.diffusion.process import DiffusionLoss
from medrs_diff.diffusion.samplers import ddim, ddpm, dpm_solver_pp
from medrs_diff.diffusion.schedules import make_schedule
from medrs_diff.nets.fastpath import (
    CheckpointBlock,
    CudaGraphDenoiser,
    FastPath,
    apply_fast_path,
    autocast_context,
    sampling_denoiser,
    static_batch,
    to_channels_last,
)
from medrs_diff.nets.unet import ConditionedUNet

DIMS = (2, 3)
FORMAT = {2: torch.channels_last, 3: torch.channels_last_3d}


def tiny_unet(dims: int, cond_at: str = "conv_in", device: str = "cpu") -> ConditionedUNet:
    """A small ConditionedUNet whose zero-initialised layers (MONAI's output conv and attention
    projections) get random weights, so the output and the attention path are not trivially zero."""
    torch.manual_seed(0)
    with torch.device(device):
        net = ConditionedUNet(
            dims, 1, 1, channels=(8, 16, 16), attention_levels=(False, True, True), num_res_blocks=1,
            num_head_channels=8, norm_num_groups=8, cond_channels=1, cond_at=cond_at,
        )
    for m in net.modules():
        if device != "meta" and isinstance(m, nn.Conv2d | nn.Conv3d | nn.Linear) and not m.weight.any():
            nn.init.normal_(m.weight, std=m.weight[0].numel() ** -0.5)
    return net


def inputs(dims: int, batch: int = 2, size: int = 8, seed: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 1, *([size] * dims))
    x, t = torch.randn(shape, generator=g), torch.randint(0, 1000, (batch,), generator=g)
    return x, t, torch.randn(shape, generator=g)


def forward_backward(net: nn.Module, x: Tensor, t: Tensor, c: Tensor, features: Tensor | None = None):
    """Output, input gradient, feature gradient and parameter gradients of sum(out^2)."""
    x = x.clone().requires_grad_(True)
    f = None if features is None else features.clone().requires_grad_(True)
    y = net(x, t, cond=c, features=f)
    (y.float() ** 2).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    return y.detach(), x.grad, (None if f is None else f.grad), grads


def flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.flatten() for t in tensors])


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_defaults_are_off_and_sdpa_is_on():
    opts = FastPath()
    assert not (opts.bf16 or opts.channels_last or opts.compile or opts.checkpointing or opts.cuda_graphs)
    assert opts.compile_mode is None and FastPath(compile=True).compile_mode == "default"
    assert FastPath(compile="max-autotune").compile_mode == "max-autotune"
    net = tiny_unet(2)
    flags = [m.use_flash_attention for m in net.modules() if hasattr(m, "use_flash_attention")]
    assert flags and all(flags)
    x, t, c = inputs(2)
    ref = net(x, t, cond=c)
    same = apply_fast_path(net, opts)
    assert same is net and type(net) is ConditionedUNet
    assert not any(isinstance(m, CheckpointBlock) for m in net.modules())
    torch.testing.assert_close(net(x, t, cond=c), ref, atol=0, rtol=0)
    assert isinstance(autocast_context(opts, "cpu"), contextlib.nullcontext)
    assert isinstance(autocast_context(FastPath(bf16=True), "cpu"), torch.autocast)


@pytest.mark.parametrize("dims", DIMS)
def test_channels_last_matches_plain(dims):
    x, t, c = inputs(dims)
    feats = torch.randn(x.shape[0], 8, *x.shape[2:], generator=torch.Generator().manual_seed(3))
    ref = forward_backward(tiny_unet(dims), x, t, c, feats)
    net = apply_fast_path(tiny_unet(dims), FastPath(channels_last=True))
    conv = net.unet.conv_in.inner.conv
    assert conv.weight.is_contiguous(memory_format=FORMAT[dims]) and not conv.weight.is_contiguous()
    seen = {}  # what forward receives after the fast path's input hook (8 channels: the format is unambiguous)
    net.register_forward_pre_hook(lambda m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    out = forward_backward(net, x, t, c, feats)  # contiguous inputs: the pre-hook converts them
    assert not feats.is_contiguous(memory_format=FORMAT[dims])
    assert seen["features"].is_contiguous(memory_format=FORMAT[dims])
    assert out[0].is_contiguous(memory_format=FORMAT[dims])
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], ref[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[2], ref[2], atol=1e-5, rtol=1e-4)
    assert rel_err(flat(out[3]), flat(ref[3])) < 1e-5  # all parameter gradients (some are ~0: bias before norm)
    assert to_channels_last(x).is_contiguous(memory_format=FORMAT[dims])
    assert to_channels_last(t) is t  # non-spatial tensors are left alone


@pytest.mark.parametrize("dims,cond_at", [(2, "conv_in"), (2, "first_block"), (3, "first_block")])
def test_checkpointing_gives_identical_outputs_and_gradients(dims, cond_at):
    x, t, c = inputs(dims)
    feats = torch.randn(x.shape[0], 8, *x.shape[2:], generator=torch.Generator().manual_seed(3))
    ref = forward_backward(tiny_unet(dims, cond_at), x, t, c, feats)
    net = apply_fast_path(tiny_unet(dims, cond_at), FastPath(checkpointing=True))
    assert all(isinstance(b, CheckpointBlock) for b in [*net.unet.down_blocks, *net.unet.up_blocks])
    # Count how often the first down block's first resnet runs: twice per step when checkpointed.
    calls = []
    first = net.unet.down_blocks[0].resnets[0]
    first.register_forward_hook(lambda *_: calls.append(1))
    out = forward_backward(net, x, t, c, feats)
    assert len(calls) == 2, "the block was not recomputed in backward: checkpointing is not active"
    for a, b in zip(out[:3], ref[:3]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    for a, b in zip(out[3], ref[3]):  # the condition features survive into the recomputation
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    calls.clear()
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, cond=c, features=feats), ref[0], atol=0, rtol=0)
    assert len(calls) == 1  # no checkpoint overhead without autograd


def test_checkpointing_keeps_state_dict_keys_and_loads_both_ways():
    plain = tiny_unet(2, "first_block")
    ckpt = apply_fast_path(tiny_unet(2, "first_block"), FastPath(checkpointing=True))
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.01)
    ckpt.load_state_dict(plain.state_dict(), strict=True)
    x, t, c = inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(ckpt(x, t, cond=c), plain(x, t, cond=c), atol=0, rtol=0)
    fresh = tiny_unet(2, "first_block")
    fresh.load_state_dict(ckpt.state_dict(), strict=True)
    torch.testing.assert_close(fresh.unet.out[2].conv.weight, plain.unet.out[2].conv.weight, atol=0, rtol=0)
    with pytest.raises(ValueError, match="DiffusionModelUNet"):
        apply_fast_path(nn.Conv2d(1, 1, 1), FastPath(checkpointing=True))


@pytest.mark.parametrize("dims", DIMS)
def test_bf16_autocast_is_close_to_fp32(dims):
    x, t, c = inputs(dims)
    opts = FastPath(bf16=True)
    net = apply_fast_path(tiny_unet(dims), opts)
    with torch.no_grad():
        ref = net(x, t, cond=c)
        with autocast_context(opts, x.device):
            out = net(x, t, cond=c)
    assert out.dtype == torch.bfloat16 and ref.dtype == torch.float32
    assert rel_err(out, ref) < 5e-2
    assert rel_err(out, ref) > 0  # the autocast really changed the arithmetic


def test_all_module_options_together_with_bf16():
    x, t, c = inputs(3)
    ref = forward_backward(tiny_unet(3), x, t, c)
    opts = FastPath(bf16=True, channels_last=True, checkpointing=True)
    net = apply_fast_path(tiny_unet(3), opts)
    with autocast_context(opts, "cpu"):
        out = forward_backward(net, x, t, c)
    assert rel_err(out[0], ref[0]) < 5e-2
    assert rel_err(out[1], ref[1]) < 5e-2


@pytest.mark.parametrize("dims", DIMS)
def test_compile_eager_backend_matches_plain(dims):
    x, t, c = inputs(dims)
    plain = tiny_unet(dims)
    keys = list(plain.state_dict())
    net = apply_fast_path(tiny_unet(dims), FastPath(compile=True, compile_backend="eager"))
    assert type(net) is ConditionedUNet and list(net.state_dict()) == keys
    assert getattr(net, "_compiled_call_impl", None) is not None
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, cond=c), plain(x, t, cond=c), atol=1e-6, rtol=1e-6)


def test_static_batch_pads_and_chunks_without_changing_results():
    net = tiny_unet(2).eval()
    x, t, c = inputs(2, batch=5)
    xc = torch.cat([x, c], 1)  # the condition travels with each row, as in a batched sampler
    seen = []

    def den(xx, tt):
        seen.append(xx.shape[0])
        return net(xx[:, :1], tt, cond=xx[:, 1:])

    with torch.no_grad():
        ref = net(x, t, cond=c)
        padded = static_batch(den, 8)(xc, t)
        chunked = static_batch(den, 2)(xc, t)
        same = static_batch(den, 5)(xc, t)
    assert seen == [8, 2, 2, 2, 5]
    for out in (padded, chunked, same):
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        static_batch(den, 0)


def test_cuda_graph_denoiser_falls_back_on_cpu(monkeypatch):
    def no_graphs(*a, **k):
        raise AssertionError("a CUDA graph was captured for CPU input")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", no_graphs)
    net = tiny_unet(2).eval()
    x, _, c = inputs(2)
    den = lambda xx, tt: net(xx, tt, cond=c)  # noqa: E731
    sched = make_schedule("linear", 1000)
    for enabled in (None, True):  # forced on: CPU tensors still run eagerly
        g = CudaGraphDenoiser(den, enabled=enabled)
        assert not g.uses_graph(x)
        ref = ddim(den, x, sched, steps=4)
        out = ddim(g, x, sched, steps=4)
        torch.testing.assert_close(out, ref, atol=0, rtol=0)
        assert (g.eager_calls, g.captures, g.replays) == (4, 0, 0)
    g16 = CudaGraphDenoiser(den, bf16=True)
    with torch.no_grad():
        y = g16(x, torch.full((2,), 500))
        with autocast_context(FastPath(bf16=True), "cpu"):
            y_bf16 = den(x, torch.full((2,), 500))
    assert y.dtype == torch.float32  # upcast for the sampler's arithmetic
    torch.testing.assert_close(y, y_bf16.float(), atol=0, rtol=0)
    plain = sampling_denoiser(den, FastPath(cuda_graphs=True))  # no CUDA here: a plain call
    assert not plain.enabled and not plain.opts.bf16
    with torch.no_grad():
        torch.testing.assert_close(plain(x, torch.full((2,), 500)), den(x, torch.full((2,), 500)), atol=0, rtol=0)


# -- no host syncs inside the loops ----------------------------------------------------------------
# On the meta device every tensor has a shape but no data: any .item(), int(t), bool(t) or
# data-dependent op on a device tensor raises. The CPU float64 schedule tables stay readable, so a
# sampler loop (network included) that completes on meta reads nothing back from the device.


def test_meta_harness_catches_host_reads():
    x = torch.empty(2, 3, device="meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        x.sum().item()
    with pytest.raises((RuntimeError, NotImplementedError)):
        bool((x > 0).any())
    with pytest.raises((RuntimeError, NotImplementedError)):
        ddim(lambda xx, tt: xx * float(tt[0]), x.reshape(1, 1, 2, 3), make_schedule("linear", 100), steps=3)


@pytest.mark.parametrize(
    "sampler,kwargs",
    [(ddpm, {}), (ddim, {"eta": 1.0}), (dpm_solver_pp, {"order": 2}), (dpm_solver_pp, {"order": 3, "clip": True})],
)
def test_samplers_and_unet_run_without_host_syncs(sampler, kwargs):
    net = apply_fast_path(tiny_unet(2, device="meta"), FastPath(channels_last=True))
    c = torch.empty(2, 1, 8, 8, device="meta")
    x = torch.empty(2, 1, 8, 8, device="meta")
    out = sampler(lambda xx, tt: net(xx, tt, cond=c), x, make_schedule("linear", 1000), steps=4, **kwargs)
    assert out.device.type == "meta" and out.shape == x.shape


def test_training_step_runs_without_host_syncs():
    net = tiny_unet(3, device="meta")
    x0 = torch.empty(2, 1, 8, 8, 8, device="meta")
    c = torch.empty_like(x0)
    loss, _ = DiffusionLoss(make_schedule("cosine", 1000), min_snr_gamma=5.0)(lambda x, t: net(x, t, cond=c), x0)
    loss.backward()
    assert loss.device.type == "meta" and net.unet.conv_in.inner.conv.weight.grad is not None


# -- on a GPU --------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_graph_replay_matches_eager():
    net = tiny_unet(2).cuda().eval()
    x, t, c = (v.cuda() for v in inputs(2))
    den = lambda xx, tt: net(xx, tt, cond=c[: xx.shape[0]])  # noqa: E731
    g = CudaGraphDenoiser(den)
    with torch.no_grad():
        for seed in range(3):  # new values go through the static buffers
            xs = torch.randn(x.shape, generator=torch.Generator("cuda").manual_seed(seed), device="cuda")
            torch.testing.assert_close(g(xs, t), den(xs, t), atol=1e-5, rtol=1e-5)
        g(x[:1], t[:1])
    assert g.captures == 2 and g.replays == 4 and g.eager_calls == 0
    sched = make_schedule("linear", 1000)
    torch.testing.assert_close(ddim(g, x, sched, steps=10), ddim(den, x, sched, steps=10), atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_ddim_loop_has_no_cuda_syncs():
    net = tiny_unet(2).cuda().eval()
    c = torch.randn(2, 1, 8, 8, device="cuda")
    x = torch.randn(2, 1, 8, 8, device="cuda")
    den = lambda xx, tt: net(xx, tt, cond=c)  # noqa: E731
    sched = make_schedule("linear", 1000)
    ddim(den, x, sched, steps=3)  # warm-up (cuDNN autotuning may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ddim(den, x, sched, steps=10)
        dpm_solver_pp(den, x, sched, steps=10)
    finally:
        torch.cuda.set_sync_debug_mode("default")
