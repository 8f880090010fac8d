"""Parameters and CPU speed of the wavelet ("slim") UNet option beside the default UNet at equal widths.

Both nets are :class:`medrs_diff.nets.unet.ConditionedUNet` with the same channels / blocks / attention;
``downsample='wavelet'`` swaps MONAI's stride-2 3x3 conv downsamplers and nearest + 3x3 conv upsamplers
for Haar DWT + 1x1 conv and 1x1 conv + IDWT. Timing: one forward + backward of an MSE loss, batch 4,
one thread, median over ``--repeats`` after one warm-up. Writes a Markdown table::

    OMP_NUM_THREADS=1 python evaluation/bench_wavelet_unet.py --out evaluation/results/wavelet_unet.md
    python evaluation/bench_wavelet_unet.py --smoke --out /tmp/w.md     # tiny sizes (a few seconds)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from medrs_diff.nets.unet import ConditionedUNet  # noqa: E402

#: name -> (channels, num_res_blocks, norm groups); attention off (the comparison is about the samplers)
WIDTHS = {
    "small (16, 32)": ((16, 32), 1, 8),
    "medium (32, 64, 64, 128)": ((32, 64, 64, 128), 2, 16),
    "SRDiff default (64, 128, 128, 256)": ((64, 128, 128, 256), 2, 32),
}
CASES = [(2, 64), (2, 128), (3, 32)]  # (spatial dims, side)
SMOKE_WIDTHS = {"tiny (8, 16)": ((8, 16), 1, 4)}
SMOKE_CASES = [(2, 16), (3, 8)]


def build(dims: int, channels: tuple[int, ...], blocks: int, groups: int, downsample: str) -> ConditionedUNet:
    torch.manual_seed(0)
    return ConditionedUNet(dims, 1, 1, channels, (False,) * len(channels), blocks, channels[0], groups,
                           downsample=downsample)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def step_ms(net: ConditionedUNet, dims: int, side: int, batch: int, repeats: int) -> float:
    x = torch.randn(batch, 1, *[side] * dims)
    t = torch.randint(0, 1000, (batch,))
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        net.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(x, t), x)
        loss.backward()
        if i:  # the first pass is the warm-up
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run(widths: dict, cases: list, batch: int, repeats: int) -> list[str]:
    rows = ["| widths | input | params conv | params wavelet | ratio | conv ms | wavelet ms | speed-up |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, (channels, blocks, groups) in widths.items():
        nets = {ds: build(2, channels, blocks, groups, ds) for ds in ("conv", "wavelet")}
        for dims, side in cases:
            if dims == 3:
                nets = {ds: build(3, channels, blocks, groups, ds) for ds in ("conv", "wavelet")}
            p = {ds: n_params(net) for ds, net in nets.items()}
            ms = {ds: step_ms(net, dims, side, batch, repeats) for ds, net in nets.items()}
            shape = "x".join([str(side)] * dims)
            rows.append(f"| {name} | {shape} | {p['conv']:,} | {p['wavelet']:,} | {p['wavelet'] / p['conv']:.3f} "
                        f"| {ms['conv']:.0f} | {ms['wavelet']:.0f} | {ms['conv'] / ms['wavelet']:.2f} |")
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "evaluation" / "results" / "wavelet_unet.md")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny widths and sizes")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        ap.error("--batch and --repeats must be >= 1")
    torch.set_num_threads(1)
    widths, cases = (SMOKE_WIDTHS, SMOKE_CASES) if args.smoke else (WIDTHS, CASES)
    rows = run(widths, cases, args.batch, args.repeats)
    head = [
        "# Wavelet (slim) UNet vs the default UNet at equal widths",
        "",
        f"`evaluation/bench_wavelet_unet.py`: forward + backward of an MSE loss, batch {args.batch}, one thread, "
        f"median of {args.repeats} after a warm-up; torch {torch.__version__}, {platform.processor() or 'CPU'} "
        "(this 2-core CPU, shared with other jobs: timings are noisy). Attention off, conditioning off; "
        "'conv' = MONAI's stride-2 3x3 conv down / nearest + 3x3 conv up, 'wavelet' = Haar DWT + 1x1 conv "
        "down / 1x1 conv + IDWT up. ratio = wavelet / conv params; speed-up = conv ms / wavelet ms.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(head + rows) + "\n")
    return args.out


if __name__ == "__main__":
    print(main())
