"""Sampling latency (batch 1) and throughput (batch 16) of medrs-diff's samplers, with and without the fast path.

For the 2D configuration at 256^2 and the 3D one at 96^3 (the nets of bench_train.py), for each variant
(``fp32`` plain path; ``fast`` = bf16 + channels_last; ``+ cuda_graph``, ``+ compile``) and each sampler
(DDPM-1000, DDIM-50, DPM-Solver++ 20 and 10, ParaDiGMS over DDPM-1000), prints one JSON line:
seconds per batch, samples/s, ms per network evaluation, MFU of the denoiser FLOPs and the speed-up
over the ``fp32`` variant.

    python evaluation/bench_sample.py --out 'evaluation/results/{card}_{date}_sample.jsonl'
    python evaluation/bench_sample.py --smoke           # tiny sizes on the CPU (CI)

Sequential samplers cost the same per step, so ``--max-nfe N`` (default 20) times the first N network
evaluations and extrapolates to the full chain (``extrapolated: true`` in the line); ``--max-nfe 0``
runs every chain to the end. ParaDiGMS runs to convergence (its round count depends on the data; a
run past ``--paradigms-max-rounds`` is reported with ``converged: false``) and only at batch 1: it
spends the idle batch capacity (``window`` steps per call) on latency, so at batch 16 it is skipped.
Compiled and graph-captured ParaDiGMS calls see one padded batch shape (``static_batch``). The
network's zero-initialised layers get small random weights so that ParaDiGMS does not converge trivially.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_train import (  # noqa: E402
    CONFIGS,
    SMOKE_CONFIGS,
    Emitter,
    NetConfig,
    add_common_args,
    build_medrs,
    count_forward_flops,
    device_name,
    error_text,
    free_memory,
    is_oom,
    parse_list,
    peak_flops,
    peak_memory_gib,
    reset_peak_memory,
    resolve_device,
    setup_backends,
    synchronize,
)

from medrs_diff.diffusion.samplers import ddim, ddpm, dpm_solver_pp, paradigms  # noqa: E402
from medrs_diff.diffusion.schedules import Schedule, make_schedule  # noqa: E402
from medrs_diff.nets.fastpath import (  # noqa: E402
    CudaGraphDenoiser,
    FastPath,
    apply_fast_path,
    sampling_denoiser,
    static_batch,
    to_channels_last,
)

Denoiser = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    fn: Callable[..., Any]
    steps: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    parallel: bool = False  # ParaDiGMS: rounds depend on the data, no extrapolation, batch 1 only


def sampler_specs(smoke: bool, window: int) -> list[SamplerSpec]:
    para_steps = 8 if smoke else 1000
    return [
        SamplerSpec("ddpm_1000", ddpm, 1000),
        SamplerSpec("ddim_50", ddim, 50),
        SamplerSpec("dpmpp2m_20", dpm_solver_pp, 20),
        SamplerSpec("dpmpp2m_10", dpm_solver_pp, 10),
        SamplerSpec(f"paradigms_ddpm_{para_steps}", paradigms, para_steps,
                    {"window": window, "tolerance": 0.1}, parallel=True),
    ]


_FAST = {"bf16": True, "channels_last": True}
SAMPLE_VARIANTS = {
    "fp32": FastPath(),
    "fast": FastPath(**_FAST),
    "fast_cuda_graph": FastPath(**_FAST, cuda_graphs=True),
    "fast_compile": FastPath(**_FAST, compile=True),
    "fast_compile_cuda_graph": FastPath(**_FAST, compile=True, cuda_graphs=True),
}


class _Stop(Exception):
    """Raised by :class:`Counting` once the NFE budget of a timed run is spent."""


class Counting:
    """Counts network evaluations and stops the sampler after ``limit`` of them (None: no limit)."""

    def __init__(self, denoise: Denoiser, limit: int | None) -> None:
        self.denoise, self.limit, self.calls = denoise, limit, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.limit is not None and self.calls >= self.limit:
            raise _Stop
        self.calls += 1
        return self.denoise(x, t)


def make_denoiser(net: torch.nn.Module, cond: Tensor, opts: FastPath, max_batch: int) -> CudaGraphDenoiser:
    """``denoise(x, t)`` for batches up to ``max_batch`` (the condition is repeated sample-major, as
    ParaDiGMS stacks its window), wrapped for bf16 and, with ``opts.cuda_graphs``, CUDA graphs."""
    reps = -(-max_batch // cond.shape[0])
    cond_all = cond.repeat(reps, *([1] * (cond.ndim - 1)))
    if opts.channels_last:
        cond_all = to_channels_last(cond_all)

    def den(x: Tensor, t: Tensor) -> Tensor:
        return net(x, t, cond=cond_all[: x.shape[0]])

    return sampling_denoiser(den, opts)


def run_sampler(
    spec: SamplerSpec, denoise: Denoiser, x_T: Tensor, schedule: Schedule, max_nfe: int | None, seed: int,
    max_rounds: int | None = None,
) -> dict[str, Any]:
    """Time one chain; a sequential one stopped after ``max_nfe`` calls is extrapolated to its length, a
    ParaDiGMS run stopped after ``max_rounds`` rounds is reported as not converged (no latency)."""
    device = x_T.device
    gen = torch.Generator(device).manual_seed(seed)
    counting = Counting(denoise, max_rounds if spec.parallel else max_nfe)
    rounds = nfe = None
    reset_peak_memory(device)
    synchronize(device)
    t0 = time.perf_counter()
    try:
        if spec.parallel:
            res = spec.fn(counting, x_T, schedule, steps=spec.steps, generator=gen, **spec.kwargs)
            rounds, nfe = res.rounds, res.nfe
        else:
            spec.fn(counting, x_T, schedule, steps=spec.steps, generator=gen, **spec.kwargs)
        stopped = False
    except _Stop:
        stopped = True
    synchronize(device)
    elapsed = time.perf_counter() - t0
    calls = counting.calls
    total_calls = calls if (spec.parallel or not stopped) else spec.steps
    latency = elapsed if not stopped else elapsed / calls * total_calls
    if spec.parallel and stopped:
        latency = None
    return {
        "latency_s": None if latency is None else round(latency, 4),
        "elapsed_s": round(elapsed, 4),
        "converged": not stopped if spec.parallel else None,
        "ms_per_call": round(1000 * elapsed / max(calls, 1), 3),
        "network_calls": total_calls,  # sequential calls of the denoiser (ParaDiGMS: rounds)
        "measured_calls": calls,
        "extrapolated": stopped and not spec.parallel,
        "rounds": rounds if rounds is not None else (calls if spec.parallel else None),
        "nfe_per_sample": nfe if spec.parallel else spec.steps,
        "peak_mem_gib": peak_memory_gib(device),
    }


def bench_variant(
    cfg: NetConfig, vname: str, batches: list[int], specs: list[SamplerSpec], device: torch.device,
    args: argparse.Namespace, fwd_flops: int, peak: float | None, baseline: dict, emit: Callable, start: float,
) -> None:
    opts = SAMPLE_VARIANTS[vname]
    if opts.compile_mode is not None:
        opts = FastPath(**{**opts.to_dict(), "compile_backend": args.compile_backend})
    schedule = make_schedule("linear", 1000)
    base = {"kind": "sample", "config": cfg.name, "variant": vname, "options": opts.to_dict(),
            "device": device_name(device)}
    net = None
    try:
        net = apply_fast_path(build_medrs(cfg, device).eval(), opts)
        for batch in batches:
            head = {**base, "batch": batch, "shape": list(cfg.shape(batch, cfg.out_channels))}
            g = torch.Generator().manual_seed(1)
            cond = torch.randn(cfg.shape(batch, cfg.cond_channels), generator=g).to(device)
            window_batch = args.window * batch
            raw = make_denoiser(net, cond, opts, max(batch, window_batch))
            para = static_batch(raw, window_batch) if (opts.compile_mode or opts.cuda_graphs) else raw
            x_T = torch.randn(cfg.shape(batch, cfg.out_channels), generator=g).to(device)
            if opts.channels_last:
                x_T = to_channels_last(x_T)
            t0 = time.perf_counter()
            with torch.no_grad():  # compilation / graph capture / autotuning, for both call shapes
                t = torch.full((batch,), 500, device=device, dtype=torch.long)
                for _ in range(args.warmup):
                    raw(x_T, t)
                if batch == 1 and any(s.parallel for s in specs):
                    xw = x_T.repeat(args.window, *([1] * (x_T.ndim - 1)))
                    for _ in range(args.warmup):
                        para(xw, t.repeat(args.window))
            synchronize(device)
            warm = time.perf_counter() - t0
            for spec in specs:
                rec = {**head, "sampler": spec.name, "steps": spec.steps, "warmup_s": round(warm, 3),
                       "cuda_graphs_active": raw.enabled}
                if spec.parallel and batch > 1:
                    rec.update({"latency_s": None, "error": None, "skipped": "ParaDiGMS trades batch capacity for "
                                "latency; it is measured at batch 1"})
                elif args.budget_s is not None and time.perf_counter() - start > args.budget_s:
                    rec.update({"latency_s": None, "error": None, "skipped": "time budget spent"})
                else:
                    try:
                        replays = raw.replays
                        with torch.no_grad():
                            rec.update(run_sampler(spec, para if spec.parallel else raw, x_T, schedule,
                                                   args.max_nfe, args.seed, args.paradigms_max_rounds))
                        rec["cuda_graph_replays"] = raw.replays - replays
                        rec["error"] = None
                        if rec["latency_s"] is not None:  # None: ParaDiGMS stopped at --paradigms-max-rounds
                            calls_flops = fwd_flops * batch * rec["nfe_per_sample"]
                            rec["samples_per_s"] = round(batch / rec["latency_s"], 4)
                            rec["mfu"] = round(calls_flops / rec["latency_s"] / peak, 4) if peak else None
                            key = (cfg.name, batch, spec.name)
                            if vname == "fp32":
                                baseline[key] = rec["latency_s"]
                            rec["speedup_vs_fp32"] = (
                                round(baseline[key] / rec["latency_s"], 3) if key in baseline else None
                            )
                    except Exception as exc:
                        if args.strict and not is_oom(exc):
                            raise
                        rec.update({"latency_s": None, "error": "out of memory" if is_oom(exc) else error_text(exc)})
                        free_memory(device)
                emit(rec)
            del raw, para, cond, x_T
            free_memory(device)
    except Exception as exc:  # building, compiling or capturing failed: one line for the variant
        if args.strict and not is_oom(exc):
            raise
        emit({**base, "sampler": None, "latency_s": None, "error": "out of memory" if is_oom(exc) else error_text(exc)})
    finally:
        del net
        free_memory(device)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--variants", default=None, help=f"comma list of {list(SAMPLE_VARIANTS)} (default: all; "
                   "without CUDA the cuda_graph ones fall back to eager and compile ones are left out)")
    p.add_argument("--samplers", default=None, help="comma list of sampler names (default: all)")
    p.add_argument("--batches", default=None, help="comma list of batch sizes (default 1,16; smoke 1,2)")
    p.add_argument("--max-nfe", type=int, default=None,
                   help="time at most this many network calls per sequential chain, extrapolate the rest "
                   "(default 20; smoke 2; 0 = run every chain to the end)")
    p.add_argument("--window", type=int, default=None, help="ParaDiGMS window (default 16; smoke 4)")
    p.add_argument("--paradigms-max-rounds", type=int, default=400,
                   help="stop a ParaDiGMS run after this many rounds and report it as not converged")
    p.add_argument("--warmup", type=int, default=None, help="untimed denoiser calls per shape (default 3; smoke 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU; errors fail the run (CI)")
    args = p.parse_args(argv)
    args.max_nfe = args.max_nfe if args.max_nfe is not None else (2 if args.smoke else 20)
    args.max_nfe = args.max_nfe or None
    args.window = args.window or (4 if args.smoke else 16)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    args.batches = [int(b) for b in args.batches.split(",")] if args.batches else ([1, 2] if args.smoke else [1, 16])
    args.strict = args.strict or args.smoke
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    setup_backends(args, device)
    configs = SMOKE_CONFIGS if args.smoke else CONFIGS
    names = list(configs) if args.config == "all" else [args.config]
    specs = sampler_specs(args.smoke, args.window)
    chosen_samplers = parse_list(args.samplers, [s.name for s in specs], "samplers")
    if chosen_samplers:
        specs = [s for s in specs if s.name in chosen_samplers]
    variants = parse_list(args.variants, SAMPLE_VARIANTS, "variants")
    if variants is None:
        variants = list(SAMPLE_VARIANTS) if device.type == "cuda" else ["fp32", "fast", "fast_cuda_graph"]
    out = Emitter(args.out, device, sys.argv if argv is None else argv)
    peak = peak_flops(device_name(device)) if device.type == "cuda" else None
    baseline: dict = {}
    start = time.perf_counter()
    try:
        for name in names:
            cfg = configs[name]
            fwd_flops = count_forward_flops(cfg)
            out.emit({"kind": "sample_config", **cfg.describe(), "forward_flops_per_sample": fwd_flops,
                      "batches": args.batches, "max_nfe": args.max_nfe, "window": args.window})
            for vname in variants:
                bench_variant(cfg, vname, args.batches, specs, device, args, fwd_flops, peak, baseline, out.emit, start)
    finally:
        out.close()


if __name__ == "__main__":
    main()
