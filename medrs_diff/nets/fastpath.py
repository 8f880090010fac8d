"""The fast path: opt-in speed options for a denoiser, each giving the plain path's outputs within tolerance.

SDPA attention is always on (:class:`~medrs_diff.nets.unet.ConditionedUNet` builds MONAI's UNet with
``use_flash_attention=True``). Everything else is behind :class:`FastPath`, all off by default:

- ``bf16``: autocast to bfloat16 (:func:`autocast_context`; the caller wraps forward and loss in it);
- ``channels_last``: NHWC / NDHWC weights and inputs (``torch.channels_last`` for 2D,
  ``torch.channels_last_3d`` for 3D); a forward pre-hook converts the inputs, so callers need not;
- ``compile``: ``torch.compile`` in place (``True`` or a mode such as ``"max-autotune"``); fusing the
  memory-bound GroupNorm + SiLU pairs of a conv UNet is left to inductor (no hand-written kernel);
- ``checkpointing``: non-reentrant activation checkpointing of every MONAI down / up block (3D memory);
- ``cuda_graphs``: replay the sampling denoiser from a captured CUDA graph (:class:`CudaGraphDenoiser`).

:func:`apply_fast_path` changes the module in place and keeps its type and its ``state_dict`` keys, so
checkpoints load with or without the fast path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .unet import _AddFromSlot, _Slot

Denoiser = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "CheckpointBlock",
    "CudaGraphDenoiser",
    "FastPath",
    "apply_fast_path",
    "autocast_context",
    "enable_checkpointing",
    "module_to_channels_last",
    "sampling_denoiser",
    "static_batch",
    "to_channels_last",
]


@dataclass(frozen=True)
class FastPath:
    """Speed options (safe defaults: all off; SDPA attention is always on in ConditionedUNet).

    ``compile`` is ``False``, ``True`` (default mode) or a ``torch.compile`` mode name;
    ``compile_backend`` is ``"inductor"`` on GPUs (``"eager"`` traces with Dynamo only, for CPU tests).
    """

    bf16: bool = False
    channels_last: bool = False
    compile: bool | str = False
    compile_backend: str = "inductor"
    checkpointing: bool = False
    cuda_graphs: bool = False

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.bf16 else None

    @property
    def compile_mode(self) -> str | None:
        """The ``torch.compile`` mode, or None when compile is off (``True`` means the default mode)."""
        if self.compile is False:
            return None
        return "default" if self.compile is True else str(self.compile)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- autocast --------------------------------------------------------------------------------------
def autocast_context(
    opts: FastPath, device: torch.device | str | Tensor, *, cache_enabled: bool = True
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bf16 on ``device`` when ``opts.bf16``, else a no-op context.

    Use ``cache_enabled=False`` around CUDA-graph capture (the cast cache must not outlive a capture).
    """
    dev = device.device if isinstance(device, Tensor) else torch.device(device)
    if not opts.bf16 or dev.type not in ("cuda", "cpu", "xpu", "mps"):
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)


# -- channels_last ---------------------------------------------------------------------------------
def _format_for(ndim: int) -> torch.memory_format | None:
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim)


def to_channels_last(x: Tensor) -> Tensor:
    """A 4-D tensor in ``channels_last``, a 5-D one in ``channels_last_3d``; others unchanged (no copy if
    already in that format)."""
    fmt = _format_for(x.ndim)
    return x if fmt is None else x.contiguous(memory_format=fmt)


def module_to_channels_last(module: nn.Module) -> nn.Module:
    """Convert every 4-D / 5-D parameter and buffer (conv weights) in place; 2D and 3D nets alike.

    ``nn.Module.to(memory_format=...)`` takes one format for all ranks, which fails on 3D nets.
    """
    with torch.no_grad():
        for p in module.parameters():
            if _format_for(p.ndim) is not None:
                p.data = to_channels_last(p.data)
        for m in module.modules():
            for name, b in m.named_buffers(recurse=False):
                if b is not None and _format_for(b.ndim) is not None:
                    setattr(m, name, to_channels_last(b))
    return module


def _channels_last_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    def conv(v: Any) -> Any:
        return to_channels_last(v) if isinstance(v, Tensor) and v.is_floating_point() else v

    return tuple(conv(a) for a in args), {k: conv(v) for k, v in kwargs.items()}


# -- activation checkpointing ----------------------------------------------------------------------
class CheckpointBlock(nn.Module):
    """Runs a MONAI down / up block under non-reentrant activation checkpointing while grad is enabled.

    Attributes the UNet reads from its blocks (``resnets``) pass through, and ``state_dict`` keys are
    those of the wrapped block, so checkpoints are interchangeable with the plain net. ``slots`` are the
    ConditionedUNet condition slots read inside the block: their values are captured at forward time and
    restored for the backward recomputation (the UNet clears them once its forward returns).
    """

    def __init__(self, block: nn.Module, slots: tuple[_Slot, ...] = ()) -> None:
        super().__init__()
        self.block = block
        self._slots = tuple(slots)
        self.register_state_dict_post_hook(_strip_block_prefix)
        self.register_load_state_dict_pre_hook(_add_block_prefix)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("block")
            if inner is None:
                raise
            return getattr(inner, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return self.block(*args, **kwargs)
        values = tuple(s.value for s in self._slots)

        def run(*a: Any, **k: Any) -> Any:
            with _slot_values(self._slots, values):
                return self.block(*a, **k)

        return checkpoint(run, *args, use_reentrant=False, **kwargs)


@contextlib.contextmanager
def _slot_values(slots: tuple[_Slot, ...], values: tuple[Tensor | None, ...]) -> Iterator[None]:
    old = tuple(s.value for s in slots)
    for s, v in zip(slots, values):
        s.value = v
    try:
        yield
    finally:
        for s, v in zip(slots, old):
            s.value = v


def _strip_block_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    inner = prefix + "block."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _add_block_prefix(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    inner = prefix + "block."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix) :]] = state_dict.pop(key)


def _monai_unets(module: nn.Module) -> list[nn.Module]:
    from monai.networks.nets import DiffusionModelUNet

    return [m for m in module.modules() if isinstance(m, DiffusionModelUNet)]


def enable_checkpointing(module: nn.Module) -> nn.Module:
    """Wrap the down and up blocks of every MONAI ``DiffusionModelUNet`` inside ``module`` (in place)."""
    unets = _monai_unets(module)
    if not unets:
        raise ValueError("activation checkpointing needs a MONAI DiffusionModelUNet inside the module (none found)")
    for unet in unets:
        for blocks in (unet.down_blocks, unet.up_blocks):
            for i, block in enumerate(blocks):
                if isinstance(block, CheckpointBlock):
                    continue
                slots = tuple({id(m._slot): m._slot for m in block.modules() if isinstance(m, _AddFromSlot)}.values())
                blocks[i] = CheckpointBlock(block, slots)
    return module


# -- applying the options --------------------------------------------------------------------------
def apply_fast_path(module: nn.Module, opts: FastPath) -> nn.Module:
    """Apply ``opts`` to ``module`` in place and return it (same object, same type, same state_dict keys).

    bf16 is not applied here (it is a context, see :func:`autocast_context`) and neither are CUDA graphs
    (they wrap a sampling denoiser, see :class:`CudaGraphDenoiser`). Compilation specialises on shapes
    (``dynamic=False``): a new batch size recompiles once instead of switching to slower dynamic kernels.
    Idempotent for the module options.
    """
    applied: FastPath | None = getattr(module, "_fast_path", None)
    if opts.checkpointing:
        enable_checkpointing(module)
    if opts.channels_last:
        module_to_channels_last(module)
        if not (applied and applied.channels_last):
            module.register_forward_pre_hook(_channels_last_inputs, with_kwargs=True)
    if opts.compile_mode is not None and not (applied and applied.compile_mode is not None):
        mode = None if opts.compile_mode == "default" else opts.compile_mode
        module.compile(mode=mode, backend=opts.compile_backend, dynamic=False)
    module._fast_path = opts
    return module


# -- sampling helpers ------------------------------------------------------------------------------
def static_batch(denoise: Denoiser, batch: int) -> Denoiser:
    """``denoise`` seen at one batch size only: smaller calls are zero-padded, larger ones chunked.

    Compiled and graph-captured denoisers then see a single shape (ParaDiGMS's shrinking last windows
    would otherwise recompile or recapture). Valid for per-sample denoisers (GroupNorm, no BatchNorm).
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")

    def run(x: Tensor, t: Tensor) -> Tensor:
        n = x.shape[0]
        if n == batch:
            return denoise(x, t)
        outs = []
        for start in range(0, n, batch):
            xs, ts = x[start : start + batch], t[start : start + batch]
            m = xs.shape[0]
            if m < batch:
                xs = torch.cat([xs, xs.new_zeros((batch - m, *xs.shape[1:]))])
                ts = torch.cat([ts, ts.new_zeros(batch - m)])
            outs.append(denoise(xs, ts)[:m])
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    return run


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    x: Tensor
    t: Tensor
    out: Tensor


class CudaGraphDenoiser:
    """``denoise(x, t)`` replayed from a CUDA graph captured once per input shape, with static inputs.

    Each call copies ``x`` and ``t`` into the static buffers, replays the graph and returns (a clone of)
    the static output: one launch per network evaluation instead of hundreds of kernel launches, which
    is what bounds small-batch sampling. Falls back to calling ``denoise`` directly when CUDA graphs are
    unavailable or disabled, the input is not on a CUDA device, or autograd is recording (guidance
    hooks that differentiate through the denoiser). Everything the denoiser closes over (conditions,
    features) must stay alive and unchanged between calls, and the network must be in eval mode. The
    output is returned in ``x``'s dtype (bf16 network outputs are upcast for the sampler's arithmetic).
    """

    def __init__(
        self,
        denoise: Denoiser,
        *,
        bf16: bool = False,
        enabled: bool | None = None,
        warmup: int = 2,
        clone_output: bool = True,
    ) -> None:
        self.denoise = denoise
        self.opts = FastPath(bf16=bf16)
        self.enabled = torch.cuda.is_available() if enabled is None else enabled
        self.warmup = warmup
        self.clone_output = clone_output
        self._graphs: dict[tuple, _Graph] = {}
        self._pool: Any = None
        self.captures = 0
        self.replays = 0
        self.eager_calls = 0

    def uses_graph(self, x: Tensor) -> bool:
        """Whether a call with ``x`` now would replay a graph (rather than run eagerly)."""
        return bool(self.enabled and x.device.type == "cuda" and not torch.is_grad_enabled())

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if not self.uses_graph(x):
            self.eager_calls += 1
            with autocast_context(self.opts, x):
                return self.denoise(x, t).to(x.dtype)
        key = (tuple(x.shape), x.stride(), x.dtype, x.device, tuple(t.shape), t.dtype)
        g = self._graphs.get(key)
        if g is None:
            g = self._graphs[key] = self._capture(x, t)
        g.x.copy_(x)
        g.t.copy_(t)
        g.graph.replay()
        self.replays += 1
        return g.out.clone() if self.clone_output else g.out

    def _capture(self, x: Tensor, t: Tensor) -> _Graph:
        static_x, static_t = x.clone(), t.clone()  # clone keeps the memory format
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(self.warmup):  # lazy init, cuDNN autotuning and allocations outside the capture
                with autocast_context(self.opts, x, cache_enabled=False):
                    self.denoise(static_x, static_t)
        torch.cuda.current_stream(x.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph, pool=self._pool):
            with autocast_context(self.opts, x, cache_enabled=False):
                out = self.denoise(static_x, static_t).to(x.dtype)
        self.captures += 1
        return _Graph(graph, static_x, static_t, out)


def sampling_denoiser(denoise: Denoiser, opts: FastPath) -> CudaGraphDenoiser:
    """The denoiser a sampler should call under ``opts``: bf16 autocast (output upcast to the input dtype)
    and, with ``opts.cuda_graphs`` on a CUDA device, graph replay; otherwise a plain call."""
    return CudaGraphDenoiser(denoise, bf16=opts.bf16, enabled=opts.cuda_graphs and torch.cuda.is_available())
