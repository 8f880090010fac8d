"""How ``infer`` scales with the image: wall time and peak RSS on the CPU, beside MONAI's
``SlidingWindowInferer`` called directly on the same model with the same windows.

Cases: GeoTIFF scenes of 256^2 ... 2048^2 px (a tiny 3-band SegDiff), NIfTI volumes of 64^3 ... 192^3
(a tiny 3-D SegDiff) and small super-resolution scenes (a tiny SRDiff x4, 64^2 ... 256^2 LR px, outputs
16 times larger). Every model is a checkpoint with a training patch size, so ``infer`` picks its
default window (:func:`medrs_diff.inference.default_window`); MONAI gets the same window, overlap and
batch. Each case runs in a fresh subprocess (``--smoke``: all in this one), so ``peak_rss_mb``
(``VmHWM``) is that case's peak; ``rss_before_mb`` is the peak after imports and loading the
checkpoint, ``extra_rss_mb`` the difference. ``infer`` is ``Predictor.predict_files`` (reads, tiles,
writes every output; GeoTIFF strip by strip); ``monai`` reads the whole file into a tensor and calls
``SlidingWindowInferer`` (no writing). One JSON line per case::

    python evaluation/bench_infer_scale.py --out evaluation/results/cpu_infer_scale.jsonl
    python evaluation/bench_infer_scale.py --smoke        # tiny sizes (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINY = dict(channels=[4, 4], attention_levels=[False, False], num_res_blocks=1, num_head_channels=4,
            norm_num_groups=4, rrdb_features=4, rrdb_growth=2, timesteps=10)
SIZES = {"geotiff": [256, 512, 1024, 2048], "nifti": [64, 128, 192], "sr_geotiff": [64, 128, 256]}
SMOKE_SIZES = {"geotiff": [48], "nifti": [24], "sr_geotiff": [12]}
#: Training patch size stored in each checkpoint (output grid), as the packaged recipes have it.
PATCH = {"geotiff": 32, "nifti": [32, 32, 32], "sr_geotiff": 32}
RUNNERS = ("infer", "monai")


_PEAK_SEEN = [0.0]


def _rss_mb() -> float:
    """Peak resident set size of this process so far, MiB: ``VmHWM`` (per address space, so a fresh
    subprocess starts from zero; ``ru_maxrss`` would carry the parent's peak across fork + exec).
    The kernel's figure is read from approximate per-CPU counters and can step back by a few pages
    between reads (seen in CI: 1331.0 then 1330.9 MiB), so the largest value read so far is returned."""
    value = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                value = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if value is None:
        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB; macOS: bytes
    _PEAK_SEEN[0] = max(_PEAK_SEEN[0], value)
    return _PEAK_SEEN[0]


# -- inputs and checkpoints (parent process) ----------------------------------------------------------
def _checkpoint(kind: str, path: Path) -> Path:
    import torch

    from medrs_diff.methods import SegDiff, SRDiff
    from medrs_diff.train.checkpoint import method_config

    torch.manual_seed(0)
    if kind == "geotiff":
        method, scaling = SegDiff(in_channels=3, spatial_dims=2, rrdb_blocks=1, **TINY), "dn16"
    elif kind == "nifti":
        method, scaling = SegDiff(in_channels=1, spatial_dims=3, rrdb_blocks=1, **TINY), "zscore"
    else:
        method, scaling = SRDiff(in_channels=3, scale=4, rrdb_blocks=2, pretrain_steps=0, **TINY), "reflectance"
    torch.save({"state_dict": {f"method.{k}": v for k, v in method.state_dict().items()},
                "hyper_parameters": {"method": method_config(method)},
                "datamodule_hyper_parameters": {"scaling": scaling, "patch_size": PATCH[kind]}}, path)
    return path


def _input(kind: str, size: int, folder: Path) -> Path:
    import numpy as np

    rng = np.random.default_rng(size)
    if kind == "nifti":
        import nibabel as nib

        path = folder / f"vol{size}.nii.gz"
        vol = rng.normal(100.0, 20.0, (size, size, size)).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 1.0, 1.0])), str(path))
        return path
    import rasterio
    from rasterio.transform import from_origin

    path = folder / f"{kind}{size}.tif"
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint16", crs="EPSG:32633",
                   transform=from_origin(300_000, 5_000_000, 10, 10), compress="deflate")
    if size >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, size, 256):  # written in strips: the parent never holds a big scene either
            h = min(256, size - r)
            dst.write(rng.integers(200, 4000, (3, h, size)).astype(np.uint16),
                      window=rasterio.windows.Window(0, r, size, h))
    return path


# -- one case (child process) -----------------------------------------------------------------------
def _child(runner: str, ckpt: str, src: str, out: str, steps: int, samples: int, threads: int) -> dict[str, Any]:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from medrs_diff.inference import Predictor

    predictor = Predictor.from_checkpoint(ckpt)
    rss_before = _rss_mb()
    method, spec = predictor.method, predictor.io_spec
    windows = [0]
    predict = method.predict

    def counted(batch: dict[str, Any], **kw: Any) -> dict[str, torch.Tensor]:
        windows[0] += int(batch[spec.input_key].shape[0])
        return predict(batch, **kw)

    method.predict = counted
    t0 = time.perf_counter()
    if runner == "infer":
        predictor.predict_files(src, out, steps=steps, n_samples=samples, progress=False)
        shape = None
    else:
        from monai.inferers import SlidingWindowInferer

        from medrs_diff import io
        from medrs_diff.data.scaling import resolve

        arr = io.read(src)
        data = np.asarray(arr.data, dtype=np.float32)
        x = torch.from_numpy(data if data.ndim == spec.spatial_dims + 1 else data[None])[None]
        scaling = resolve(predictor.scaling, x[0])
        x = scaling.forward(x, channel_axis=1)
        window = predictor.window(tuple(x.shape[2:]))
        inferer = SlidingWindowInferer(roi_size=window, sw_batch_size=4, overlap=0.25, mode="gaussian",
                                       padding_mode="replicate")
        g = torch.Generator().manual_seed(0)

        def window_fn(w: torch.Tensor) -> dict[str, torch.Tensor]:
            out = method.predict({spec.input_key: w}, steps=steps, n_samples=samples, generator=g)
            return {k: out[k] for k in spec.outputs}

        with torch.inference_mode():
            outs = inferer(x, window_fn)
        outs = {k: (scaling.inverse(v, channel_axis=1) if k in spec.data_space else v) for k, v in outs.items()}
        shape = list(outs["prediction"].shape)
    seconds = time.perf_counter() - t0
    peak = _rss_mb()
    return {"seconds": round(seconds, 3), "windows": windows[0], "rss_before_mb": round(rss_before, 1),
            "peak_rss_mb": round(peak, 1), "extra_rss_mb": round(peak - rss_before, 1), "output_shape": shape}


def _run_case(kind: str, size: int, runner: str, ckpt: Path, src: Path, folder: Path, args: argparse.Namespace,
              window: tuple[int, ...]) -> dict[str, Any]:
    out = folder / f"out_{kind}{size}_{runner}{''.join(src.suffixes)}"
    if args.in_process:  # --smoke: one process for every case (the RSS figures are then not per case)
        res = _child(runner, str(ckpt), str(src), str(out), args.steps, args.samples, args.threads)
    else:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
               "CUDA_VISIBLE_DEVICES": ""}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", runner, str(ckpt), str(src), str(out),
               "--steps", str(args.steps), "--samples", str(args.samples), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.case_timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} {size} {runner} failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["fresh_process"] = not args.in_process
    dims = 3 if kind == "nifti" else 2
    pixels = size**dims
    rec = {"kind": "case", "format": kind, "size": size, "pixels": pixels, "runner": runner, "window": list(window),
           **res, "us_per_pixel": round(1e6 * res["seconds"] / pixels, 3)}
    for p in folder.glob(f"out_{kind}{size}_{runner}*"):  # keep the disk free
        p.unlink()
    return rec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, every case in this process (a CI check)")
    parser.add_argument("--in-process", action="store_true", help="no subprocess per case (RSS not per case)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON lines to this file")
    parser.add_argument("--formats", default="geotiff,nifti,sr_geotiff", help="comma-separated subset")
    parser.add_argument("--steps", type=int, default=2, help="sampling steps (default 2)")
    parser.add_argument("--samples", type=int, default=1, help="samples per case (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per case (default 1)")
    parser.add_argument("--case-timeout", type=float, default=900, help="seconds before a case is abandoned")
    parser.add_argument("--child", nargs=4, metavar=("RUNNER", "CKPT", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child, args.steps, args.samples, args.threads)))
        return 0
    args.in_process = args.in_process or args.smoke
    import torch

    from medrs_diff.inference import default_window

    sizes = SMOKE_SIZES if args.smoke else SIZES
    formats = [f for f in args.formats.split(",") if f]
    sink = open(args.out, "w") if args.out else None  # noqa: SIM115 - lines are flushed as they are measured

    def emit(rec: dict[str, Any]) -> None:
        line = json.dumps(rec)
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")
            sink.flush()

    emit({"kind": "env", "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
          "threads": args.threads, "torch": torch.__version__, "steps": args.steps, "samples": args.samples,
          "argv": sys.argv[1:]})
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
        folder = Path(tmp)
        for kind in formats:
            ckpt = _checkpoint(kind, folder / f"{kind}.ckpt")
            dims, factor = (3, 1) if kind == "nifti" else (2, 4 if kind == "sr_geotiff" else 1)
            for size in sizes[kind]:
                src = _input(kind, size, folder)
                window = default_window(dims, factor, PATCH[kind], (size,) * dims)
                for runner in RUNNERS:
                    emit(_run_case(kind, size, runner, ckpt, src, folder, args, window))
                src.unlink()
    if sink:
        sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
