"""Training throughput: MONAI's DiffusionModelUNet loop vs medrs-diff's training path, in one process.

Prints one JSON line per (configuration, variant) as soon as it is measured, then one ``summary`` line
per configuration (the issue's "one line per configuration": images/s, training FLOPs per sample,
MFU, peak memory and the ratio medrs-diff / MONAI). With ``--out`` the same lines go to a JSONL file
that starts with an ``env`` line (card, torch / MONAI / CUDA versions).

    python evaluation/bench_train.py --config all --out 'evaluation/results/{card}_{date}_train.jsonl'
    python evaluation/bench_train.py --smoke            # tiny sizes on the CPU, 2 iterations (CI)

Variants: ``monai_default`` (MONAI as constructed by default: fp32, SDPA off), ``monai_bf16_sdpa``
(MONAI's best settings: ``use_flash_attention=True`` + bf16 autocast) and ``..._compile``; and
medrs-diff's path (ConditionedUNet + DiffusionLoss) with FastPath options. Both train the same
architecture with AdamW on random data (timing does not depend on the values). FLOPs are counted once
per configuration with ``torch.utils.flop_counter`` on the meta device (forward + backward at batch 1,
SDPA counted through its math decomposition), so every device reports the same model FLOPs;
activation checkpointing's recomputation is not counted (MFU counts model FLOPs).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrs_diff.diffusion.process import DiffusionLoss  # noqa: E402
from medrs_diff.diffusion.schedules import make_schedule  # noqa: E402
from medrs_diff.nets.fastpath import FastPath, apply_fast_path, autocast_context, to_channels_last  # noqa: E402
from medrs_diff.nets.unet import ConditionedUNet  # noqa: E402

#: bf16 dense (no sparsity) peak FLOP/s by card; the first name found in the device name wins.
PEAK_BF16_DENSE: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
)


@dataclass(frozen=True)
class NetConfig:
    """One benchmark configuration: the UNet, the input size and the batch."""

    name: str
    spatial_dims: int
    size: int
    batch: int
    in_channels: int  # x_t plus the concatenated condition
    out_channels: int
    channels: tuple[int, ...]
    attention_levels: tuple[bool, ...]
    num_res_blocks: int
    num_head_channels: int
    norm_num_groups: int = 32

    @property
    def cond_channels(self) -> int:
        return self.in_channels - self.out_channels

    def shape(self, batch: int, channels: int) -> tuple[int, ...]:
        return (batch, channels, *([self.size] * self.spatial_dims))

    def describe(self) -> dict[str, Any]:
        return {
            "config": self.name, "spatial_dims": self.spatial_dims, "size": self.size,
            "in_channels": self.in_channels, "out_channels": self.out_channels, "channels": list(self.channels),
            "attention_levels": list(self.attention_levels), "num_res_blocks": self.num_res_blocks,
            "num_head_channels": self.num_head_channels,
        }


CONFIGS = {
    "2d": NetConfig("2d", 2, 256, 32, 2, 1, (128, 256, 256, 512), (False, False, True, True), 2, 64),
    "3d": NetConfig("3d", 3, 96, 4, 5, 1, (32, 64, 128, 256), (False, False, False, True), 2, 32),
}
SMOKE_CONFIGS = {
    "2d": NetConfig("2d", 2, 32, 2, 2, 1, (16, 16, 32, 32), (False, False, True, True), 1, 16, 8),
    "3d": NetConfig("3d", 3, 16, 1, 5, 1, (8, 8, 16, 16), (False, False, False, True), 1, 8, 8),
}


@dataclass(frozen=True)
class Variant:
    name: str
    library: str  # "monai" or "medrs"
    opts: FastPath = field(default_factory=FastPath)
    flash: bool = True  # MONAI's use_flash_attention (medrs always uses SDPA)


_BF16 = FastPath(bf16=True)
_FAST = FastPath(bf16=True, channels_last=True)
TRAIN_VARIANTS = {
    v.name: v
    for v in (
        Variant("monai_default", "monai", FastPath(), flash=False),
        Variant("monai_bf16_sdpa", "monai", _BF16),
        Variant("monai_bf16_sdpa_compile", "monai", FastPath(bf16=True, compile=True)),
        Variant("medrs_fast", "medrs", _FAST),
        Variant("medrs_fast_compile", "medrs", FastPath(bf16=True, channels_last=True, compile=True)),
        Variant("medrs_fast_ckpt", "medrs", FastPath(bf16=True, channels_last=True, checkpointing=True)),
        Variant(
            "medrs_fast_ckpt_compile", "medrs",
            FastPath(bf16=True, channels_last=True, checkpointing=True, compile=True),
        ),
    )
}


def default_train_variants(cfg: NetConfig, smoke: bool) -> list[str]:
    """All MONAI variants and the medrs ones that make sense (checkpointing only in 3D)."""
    names = ["monai_default", "monai_bf16_sdpa", "monai_bf16_sdpa_compile", "medrs_fast", "medrs_fast_compile"]
    if cfg.spatial_dims == 3:
        names += ["medrs_fast_ckpt", "medrs_fast_ckpt_compile"]
    if smoke:  # Dynamo tracing alone costs seconds per variant on a CPU; tests/perf covers compile
        names = [n for n in names if "compile" not in n]
        if cfg.spatial_dims == 2:
            names.append("medrs_fast_ckpt")
    return names


# -- shared helpers (bench_sample.py imports these) ---------------------------------------------------
def peak_flops(device_name: str | None) -> float | None:
    """bf16 dense peak of a known card, else None (CPU or unknown card: no MFU)."""
    if not device_name:
        return None
    for key, value in PEAK_BF16_DENSE:
        if key.lower() in device_name.lower():
            return value
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def env_record(device: torch.device, argv: list[str]) -> dict[str, Any]:
    """What produced the numbers: card, software versions, precision flags, command line."""
    import monai

    rec: dict[str, Any] = {
        "kind": "env",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_name(device),
        "peak_bf16_dense_flops": peak_flops(device_name(device)) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cpu_threads": torch.get_num_threads(),
        "argv": argv,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rec["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        rec["sm_count"] = props.multi_processor_count
    return rec


def card_slug(device: torch.device) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", device_name(device)).strip("-").lower()


class Emitter:
    """Prints JSON lines (flushed at once) and appends them to ``path`` (placeholders {card}, {date})."""

    def __init__(self, path: str | None, device: torch.device, argv: list[str]) -> None:
        self.file = None
        env = env_record(device, argv)
        if path:
            resolved = Path(path.format(card=card_slug(device), date=datetime.date.today().isoformat()))
            resolved.parent.mkdir(parents=True, exist_ok=True)
            self.file = resolved.open("a")
            self.path = resolved
        self.emit(env)

    def emit(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=str)
        print(line, flush=True)
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """``torch.cuda.max_memory_allocated`` in GiB; None on the CPU (no per-run allocator statistic)."""
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def free_memory(device: torch.device) -> None:
    """Return a finished variant's memory to the GPU (a full gc costs ~0.3 s: skipped on the CPU)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def reinit_zero_layers(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give MONAI's zero-initialised layers (output conv, attention output projections) small random
    weights, as after some training: the output is then not identically zero (ParaDiGMS would converge
    trivially, bf16 comparisons would be vacuous). Costs nothing at run time."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            w = getattr(m, "weight", None)
            if isinstance(m, nn.Conv2d | nn.Conv3d | nn.Linear) and w is not None and w.device.type != "meta":
                if not w.any():
                    w.copy_(torch.randn(w.shape, generator=g) * 0.02 * w[0].numel() ** -0.5)
    return net


def build_medrs(cfg: NetConfig, device: torch.device | str) -> ConditionedUNet:
    torch.manual_seed(0)
    with torch.device(device):
        net = ConditionedUNet(
            cfg.spatial_dims, cfg.out_channels, cfg.out_channels, cfg.channels, cfg.attention_levels,
            cfg.num_res_blocks, cfg.num_head_channels, cfg.norm_num_groups, cond_channels=cfg.cond_channels,
        )
    return reinit_zero_layers(net)


def build_monai(cfg: NetConfig, device: torch.device | str, flash: bool) -> nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    torch.manual_seed(0)
    with torch.device(device):
        net = DiffusionModelUNet(
            spatial_dims=cfg.spatial_dims, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
            num_res_blocks=cfg.num_res_blocks, channels=cfg.channels, attention_levels=cfg.attention_levels,
            norm_num_groups=cfg.norm_num_groups, num_head_channels=cfg.num_head_channels,
            use_flash_attention=flash,
        )
    return reinit_zero_layers(net)


def error_text(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:300]


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def parse_list(value: str | None, choices: Iterable[str], what: str) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in choices]
    if bad:
        raise SystemExit(f"unknown {what} {bad}; choose from {sorted(choices)}")
    return names


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup_backends(args: argparse.Namespace, device: torch.device) -> None:
    """Process-wide settings shared by every variant (so comparisons stay fair)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = args.cudnn_benchmark  # autotune conv algorithms per shape
    elif args.smoke:
        torch.set_num_threads(1)  # tiny sizes: more threads only oversubscribe shared CI cores
    args.compile_backend = args.compile_backend or ("inductor" if device.type == "cuda" else "eager")


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="all", choices=["2d", "3d", "all"])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend (default inductor on GPU, eager on CPU)")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                   help="cuDNN autotuning on GPUs, for every variant alike (default on)")
    p.add_argument("--budget-s", type=float, default=None, help="skip the remaining runs after this many seconds")
    p.add_argument("--strict", action="store_true", help="raise on errors other than OOM (implied by --smoke)")
    p.add_argument("--out", default=None, help="JSONL file to append to; {card} and {date} are filled in")


# -- the training steps ---------------------------------------------------------------------------
Step = Callable[[], Tensor]


def _data(cfg: NetConfig, batch: int, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(cfg.shape(batch, cfg.out_channels), generator=g).round() * 2 - 1  # a mask in [-1, 1]
    cond = torch.randn(cfg.shape(batch, cfg.cond_channels), generator=g)
    x0, cond = x0.to(device), cond.to(device)
    if channels_last:  # as a data loader would deliver them
        x0, cond = to_channels_last(x0), to_channels_last(cond)
    return x0, cond


def monai_step(net: nn.Module, x0: Tensor, cond: Tensor, opts: FastPath, opt: torch.optim.Optimizer | None) -> Step:
    """MONAI's tutorial loop: DiffusionInferer (DDPMScheduler.add_noise, concat conditioning) + MSE."""
    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDPMScheduler

    inferer = DiffusionInferer(DDPMScheduler(num_train_timesteps=1000))

    def step() -> Tensor:
        with autocast_context(opts, x0.device):
            noise = torch.randn_like(x0)
            t = torch.randint(0, 1000, (x0.shape[0],), device=x0.device)
            pred = inferer(inputs=x0, diffusion_model=net, noise=noise, timesteps=t, condition=cond, mode="concat")
            loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def medrs_step(net: nn.Module, x0: Tensor, cond: Tensor, opts: FastPath, opt: torch.optim.Optimizer | None) -> Step:
    """medrs-diff's path: DiffusionLoss (device tables, per-sample timesteps, no host syncs) + ConditionedUNet."""
    objective = DiffusionLoss(make_schedule("linear", 1000))

    def step() -> Tensor:
        with autocast_context(opts, x0.device):
            loss, _ = objective(lambda x, t: net(x, t, cond=cond), x0)
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def build_variant(cfg: NetConfig, v: Variant, device: torch.device, opts: FastPath) -> nn.Module:
    net = build_monai(cfg, device, v.flash) if v.library == "monai" else build_medrs(cfg, device)
    return apply_fast_path(net, opts)


def count_train_flops(cfg: NetConfig, library: str) -> int:
    """Model FLOPs of one training step (forward + backward) per sample, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = torch.device("meta")
    net = build_monai(cfg, meta, True) if library == "monai" else build_medrs(cfg, meta)
    x0 = torch.empty(cfg.shape(1, cfg.out_channels), device=meta)
    cond = torch.empty(cfg.shape(1, cfg.cond_channels), device=meta)
    step = (monai_step if library == "monai" else medrs_step)(net, x0, cond, FastPath(), None)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def count_forward_flops(cfg: NetConfig) -> int:
    """FLOPs of one denoiser evaluation per sample (sampling cost per NFE), on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = torch.device("meta")
    net = build_medrs(cfg, meta)
    x = torch.empty(cfg.shape(1, cfg.out_channels), device=meta)
    cond = torch.empty(cfg.shape(1, cfg.cond_channels), device=meta)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x, torch.zeros(1, dtype=torch.long, device=meta), cond=cond)
    return int(counter.get_total_flops())


def measure(step: Step, iters: int, warmup: int, device: torch.device) -> dict[str, Any]:
    t0 = time.perf_counter()
    for _ in range(warmup):  # compilation, cuDNN autotuning, allocator growth
        step()
    synchronize(device)
    warm = time.perf_counter() - t0
    reset_peak_memory(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    synchronize(device)
    elapsed = time.perf_counter() - t0
    return {"warmup_s": round(warm, 3), "step_ms": round(1000 * elapsed / iters, 3), "elapsed_s": elapsed}


def run_variant(
    cfg: NetConfig, v: Variant, device: torch.device, args: argparse.Namespace, flops: int, peak: float | None
) -> dict[str, Any]:
    opts = v.opts
    if opts.compile_mode is not None:
        opts = FastPath(**{**opts.to_dict(), "compile_backend": args.compile_backend})
    rec: dict[str, Any] = {
        "kind": "train", "config": cfg.name, "variant": v.name, "library": v.library,
        "options": {**opts.to_dict(), "sdpa": v.flash}, "batch": cfg.batch,
        "shape": list(cfg.shape(cfg.batch, cfg.in_channels)), "iters": args.iters, "warmup": args.warmup,
        "device": device_name(device),
    }
    net = opt = step = None
    try:
        net = build_variant(cfg, v, device, opts)
        net.train()
        fused = {"fused": True} if device.type == "cuda" else {}
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4, **fused)
        x0, cond = _data(cfg, cfg.batch, device, opts.channels_last)
        step = (monai_step if v.library == "monai" else medrs_step)(net, x0, cond, opts, opt)
        m = measure(step, args.iters, args.warmup, device)
        ips = cfg.batch * args.iters / m.pop("elapsed_s")
        rec.update(m)
        rec["images_per_s"] = round(ips, 3)
        rec["train_flops_per_sample"] = flops
        rec["achieved_tflops"] = round(flops * ips / 1e12, 3)
        rec["mfu"] = round(flops * ips / peak, 4) if peak else None
        rec["peak_mem_gib"] = peak_memory_gib(device)
        rec["params_m"] = round(sum(p.numel() for p in net.parameters()) / 1e6, 3)
        rec["error"] = None
    except Exception as exc:  # one failing variant (OOM, compile error) must not lose the others
        if args.strict and not is_oom(exc):
            raise
        rec.update({"images_per_s": None, "mfu": None, "peak_mem_gib": peak_memory_gib(device)})
        rec["error"] = "out of memory" if is_oom(exc) else error_text(exc)
    finally:
        del net, opt, step
        free_memory(device)
    return rec


def summary(cfg: NetConfig, lines: list[dict[str, Any]], flops: dict[str, int]) -> dict[str, Any]:
    """One line per configuration: the best MONAI and medrs-diff variants and their ratios."""
    ok = [r for r in lines if r.get("images_per_s")]

    def best(lib: str) -> dict[str, Any] | None:
        cands = [r for r in ok if r["library"] == lib]
        return max(cands, key=lambda r: r["images_per_s"]) if cands else None

    default = next((r for r in ok if r["variant"] == "monai_default"), None)
    bm, bd = best("monai"), best("medrs")

    def ratio(a: dict | None, b: dict | None) -> float | None:
        return round(a["images_per_s"] / b["images_per_s"], 3) if a and b else None

    return {
        "kind": "summary", "config": cfg.name, "batch": cfg.batch, "shape": list(cfg.shape(cfg.batch, cfg.in_channels)),
        "train_flops_per_sample": flops.get("medrs"), "train_flops_per_sample_monai": flops.get("monai"),
        "monai_default_images_per_s": default["images_per_s"] if default else None,
        "monai_default_error": next((r["error"] for r in lines if r["variant"] == "monai_default"), None),
        "monai_best_variant": bm["variant"] if bm else None,
        "monai_best_images_per_s": bm["images_per_s"] if bm else None,
        "medrs_best_variant": bd["variant"] if bd else None,
        "medrs_best_images_per_s": bd["images_per_s"] if bd else None,
        "medrs_best_mfu": bd["mfu"] if bd else None,
        "medrs_best_peak_mem_gib": bd["peak_mem_gib"] if bd else None,
        "ratio_vs_monai_default": ratio(bd, default),
        "ratio_vs_monai_best": ratio(bd, bm),
        "errors": {r["variant"]: r["error"] for r in lines if r.get("error")},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--variants", default=None, help=f"comma list of {sorted(TRAIN_VARIANTS)} (default: per config)")
    p.add_argument("--iters", type=int, default=None, help="timed steps per variant (default 10; smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; smoke 1)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 2 iterations, errors fail the run (CI)")
    args = p.parse_args(argv)
    args.iters = args.iters if args.iters is not None else (2 if args.smoke else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    args.strict = args.strict or args.smoke
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    setup_backends(args, device)
    configs = SMOKE_CONFIGS if args.smoke else CONFIGS
    names = list(configs) if args.config == "all" else [args.config]
    chosen = parse_list(args.variants, TRAIN_VARIANTS, "variants")
    out = Emitter(args.out, device, sys.argv if argv is None else argv)
    peak = peak_flops(device_name(device)) if device.type == "cuda" else None
    start = time.perf_counter()
    try:
        for name in names:
            cfg = configs[name]
            flops = {lib: count_train_flops(cfg, lib) for lib in ("monai", "medrs")}
            lines = []
            for vname in chosen or default_train_variants(cfg, args.smoke):
                v = TRAIN_VARIANTS[vname]
                if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
                    rec = {"kind": "train", "config": name, "variant": vname, "library": v.library,
                           "images_per_s": None, "error": None, "skipped": "time budget spent"}
                else:
                    rec = run_variant(cfg, v, device, args, flops[v.library], peak)
                lines.append(rec)
                out.emit(rec)
            out.emit(summary(cfg, lines, flops))
    finally:
        out.close()


if __name__ == "__main__":
    main()
