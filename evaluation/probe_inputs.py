"""Hostile inputs through the ``medrs-diff`` command line: a table of what each one does (issue 11).

    .venv/bin/python evaluation/probe_inputs.py [--out DIR] [--only PATTERN] [--jobs N] [--keep]

Builds, in a temporary folder, tiny real files (NIfTI images and volumes, GeoTIFF scenes, PNG, ``.npy``)
and tiny checkpoints (``medrs-diff fit`` on the packaged recipes for 2 steps, plus a few built through
the Python API and saved the way ``fit`` saves them), then runs each probe as a subprocess
``python -m medrs_diff.cli ...`` (CPU only: ``CUDA_VISIBLE_DEVICES=""``, one thread) with a timeout and
prints a markdown table ``class | probe | exit | message | files left | note`` plus the counts per class.
The table goes to ``DIR/probe_inputs.md`` (default ``evaluation/results``). This is a measuring
script, not a test: a failing probe is a row of the table, never a crash of the script.

The class is the outcome observed, decided by :func:`classify`:

- ``traceback``: "Traceback" anywhere in the output (also for a probe that expected success);
- ``timeout``: a command ran past its limit;
- ``clear error``: exit != 0 on a probe that expects a refusal, exactly one ``medrs-diff <cmd>: error:``
  line, which holds ``Fix:`` (or is an argparse error naming the argument), names what the probe says it
  must name (the file, the flag), and no result file left in the output folder;
- ``unclear``: exit != 0 and no traceback, but the message misses the fix, the file or the flag;
- ``left files``: a refusal that left files (a ``.tmp-*`` counts) in the output folder;
- ``silent``: exit 0 on a probe that expects a refusal, or exit 0 with a failed check (a wrong result);
- ``correct``: exit 0, a probe that expects success, and its check passed;
- ``refused``: exit != 0 on a probe that expects success (the message is shown);
- ``unsafe``: a payload ran (a pickle in a checkpoint, a module named by a checkpoint was imported);
- ``harness``: the probe could not be set up (a fixture failed), recorded instead of stopping the run.

Some probes accept either outcome (``expect="either"``): a clear refusal or a success whose check passes
(a changed learning rate on resume must be applied and said, or refused, never ignored). "Files left" are
the files a run created or changed under the probe's output folder (fit: checkpoints and temporaries only;
files put there by the probe's set-up do not count). ``--keep`` keeps the work folder, with each command's
output in ``probes/pNNN/runK.log``. Fixtures are built once, serially; the commands then run ``--jobs`` at
a time (about 140 commands of 3-10 s each on an idle 2-core machine).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("clear error", "correct", "silent", "traceback", "unclear", "left files", "refused", "unsafe", "timeout",
           "harness")
#: Fast sampling options of every infer probe that is not about them.
FAST = ("--steps", "2", "--n-samples", "2", "--no-progress")
#: Fit options of every fit probe: 2 steps on tiny data, no progress bar.
FIT_FAST = ("--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
            "--trainer.log_every_n_steps", "1")
ERROR_LINE = re.compile(r"^medrs-diff[^:]*: error: ")
#: argparse / jsonargparse errors that name the argument at fault (clear without a "Fix:").
ARGPARSE_CLEAR = re.compile(r": error: (argument [-\w/ ]+:|unrecognized arguments:|the following arguments are "
                            r"required:|invalid choice)")


class MissingFixture(RuntimeError):
    """A fixture could not be built; the probes that need it are recorded as ``harness``."""


# -- files -----------------------------------------------------------------------------------------
def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def save_geotiff(path: Path, data: np.ndarray, nodata: float | None = None, pixel: float = 40.0) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype=data.dtype.name,
                       crs="EPSG:32633", transform=from_origin(500_000, 5_000_000, pixel, pixel),
                       nodata=nodata) as dst:
        dst.write(data)
    return path


def read_array(path: Path) -> np.ndarray:
    """The stored array of an output file (NIfTI, GeoTIFF, PNG, .npy)."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asarray(nib.load(str(path)).dataobj)
    if name.endswith((".tif", ".tiff")):
        import rasterio

        with rasterio.open(path) as src:
            return src.read()
    if name.endswith(".npy"):
        return np.load(path)
    from PIL import Image

    return np.asarray(Image.open(path))


def ellipse(shape: Sequence[int], seed: int) -> np.ndarray:
    """A {0, 1} float32 mask of one off-centre (asymmetric) ellipse."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    centre = [s * rng.uniform(0.35, 0.6) for s in shape]
    radii = [s * rng.uniform(0.15, 0.3) for s in shape]
    d = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
    return (d <= 1).astype(np.float32)


def phantom_case(shape: Sequence[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) of a bright ellipse on noise."""
    label = ellipse(shape, seed)
    noise = np.random.default_rng(seed + 1000).normal(0, 0.3, shape).astype(np.float32)
    return (100 + 50 * label + 20 * noise).astype(np.float32), label


def files_under(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# -- fixtures --------------------------------------------------------------------------------------
class Fixtures:
    """Files and checkpoints shared by the probes, built on first use (serially) and kept."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self._built: dict[str, Any] = {}
        self._failed: dict[str, str] = {}
        self._lock = threading.RLock()

    def get(self, name: str) -> Any:
        with self._lock:
            if name in self._failed:
                raise MissingFixture(f"fixture {name}: {self._failed[name]}")
            if name not in self._built:
                try:
                    self._built[name] = getattr(self, f"_make_{name}")()
                except MissingFixture as err:
                    self._failed[name] = str(err)
                    raise
                except Exception as err:  # a broken fixture is recorded, the run goes on
                    self._failed[name] = f"{type(err).__name__}: {err}"
                    raise MissingFixture(f"fixture {name}: {self._failed[name]}") from err
            return self._built[name]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.get(name)

    def failures(self) -> dict[str, str]:
        return dict(self._failed)

    def cli(self, argv: Sequence[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "medrs_diff.cli", *argv], cwd=cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def _fit_fixture(self, name: str, argv: Sequence[str]) -> Path:
        folder = self.root / "fixtures" / name
        folder.mkdir(parents=True, exist_ok=True)
        proc = self.cli(["fit", *argv, "--trainer.default_root_dir", str(folder / "run"), *FIT_FAST], folder)
        ckpts = sorted((folder / "run").rglob("last.ckpt"))
        if proc.returncode != 0 or not ckpts:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise MissingFixture(f"fit failed (exit {proc.returncode}): {' | '.join(tail)}")
        return ckpts[0]

    # real checkpoints, written by `medrs-diff fit`
    def _make_seg2d(self) -> Path:
        """SegDiff 2-D, 1 channel, trained 2 steps on 6 phantoms of 32 x 32 (data in fixtures/seg2d/data)."""
        data = self.root / "fixtures" / "seg2d" / "data"
        return self._fit_fixture("seg2d", ["--config", "segdiff_phantom2d", "--data.init_args.root", str(data),
                                           "--data.init_args.phantoms", "6"])

    def _make_sr(self) -> Path:
        """SRDiff x4, 3 bands, trained 2 steps on 3 synthetic GeoTIFF pairs (LR 16 x 16)."""
        data = self.root / "fixtures" / "sr" / "data"
        return self._fit_fixture("sr", ["--config", "srdiff_synthetic", "--data.init_args.root", str(data),
                                        "--data.init_args.phantoms", "3", "--data.init_args.samples_per_epoch", "4",
                                        "--data.init_args.batch_size", "2", "--model.init_args.val_steps", "2",
                                        "--model.init_args.method.init_args.pretrain_steps", "1"])

    def _make_seg2d_run(self) -> Path:
        """The run folder of the seg2d fixture (copied by the resume probes)."""
        ckpt = self.seg2d
        return ckpt.parents[3]  # run/lightning_logs/version_0/checkpoints/last.ckpt

    # checkpoints built through the Python API, saved like `fit` saves what inference reads
    def _api_checkpoint(self, name: str, method: Any, scaling: str, patch_size: Any) -> Path:
        import torch

        from medrs_diff.train.checkpoint import method_config

        path = self.root / "fixtures" / f"{name}.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": {f"method.{k}": v for k, v in method.state_dict().items()},
                    "hyper_parameters": {"method": method_config(method)},
                    "datamodule_hyper_parameters": {"scaling": scaling, "patch_size": patch_size}}, path)
        return path

    def _make_seg3d(self) -> Path:
        import torch

        from medrs_diff.methods import SegDiff

        torch.manual_seed(0)
        m = SegDiff(spatial_dims=3, rrdb_blocks=1, **TINY).eval()
        return self._api_checkpoint("seg3d", m, "zscore", [16, 16, 16])

    def _make_seg2d_rgb(self) -> Path:
        """SegDiff 2-D with 3 input channels (an RGB / 3-band model)."""
        import torch

        from medrs_diff.methods import SegDiff

        torch.manual_seed(1)
        m = SegDiff(spatial_dims=2, in_channels=3, rrdb_blocks=1, **TINY).eval()
        return self._api_checkpoint("seg2d_rgb", m, "zscore", None)

    # broken checkpoints
    def _load(self, path: Path) -> dict:
        import torch

        return torch.load(path, map_location="cpu", weights_only=False)  # our own file

    def _make_nan_weights(self) -> Path:
        """The seg2d checkpoint with every floating tensor (weights, EMA, optimizer) set to NaN."""
        import torch

        def poison(obj: Any) -> Any:
            if isinstance(obj, torch.Tensor) and obj.is_floating_point():
                return torch.full_like(obj, float("nan"))
            if isinstance(obj, dict):
                return {k: poison(v) for k, v in obj.items()}
            if isinstance(obj, list | tuple):
                return type(obj)(poison(v) for v in obj)
            return obj

        path = self.root / "fixtures" / "nan_weights.ckpt"
        torch.save(poison(self._load(self.seg2d)), path)
        return path

    def _make_truncated(self) -> Path:
        data = self.seg2d.read_bytes()
        path = self.root / "fixtures" / "truncated.ckpt"
        path.write_bytes(data[: len(data) // 2])
        return path

    def _make_random_bytes(self) -> Path:
        path = self.root / "fixtures" / "random_bytes.ckpt"
        path.write_bytes(np.random.default_rng(11).integers(0, 256, 8192, dtype=np.uint8).tobytes())
        return path

    def _make_empty_ckpt(self) -> Path:
        path = self.root / "fixtures" / "empty.ckpt"
        path.write_bytes(b"")
        return path

    def _make_not_a_method(self) -> Path:
        """The seg2d checkpoint whose method class path names a module that leaves a marker when imported."""
        ckpt = self._load(self.seg2d)
        bad = "probe_side_effect.Thing"
        for holder in (ckpt.get("medrs_diff") or {}, ckpt.get("hyper_parameters") or {}):
            if isinstance(holder.get("method"), dict):
                holder["method"]["class_path"] = bad
        import torch

        path = self.root / "fixtures" / "not_a_method.ckpt"
        torch.save(ckpt, path)
        return path

    def pickle_payload(self, marker: Path) -> Path:
        """A checkpoint whose unpickling runs code (creates ``marker``)."""
        import torch

        class Payload:
            def __reduce__(self):
                return (exec, (f"open({str(marker)!r}, 'w').close()",))

        path = marker.with_suffix(".ckpt")
        torch.save({"state_dict": {}, "hyper_parameters": {"method": Payload()}}, path)
        return path

    # input files
    def _make_inputs(self) -> Path:
        d = self.root / "inputs"
        d.mkdir(parents=True, exist_ok=True)
        img, lab = phantom_case((32, 32), 1)
        save_nifti(d / "ok2d.nii.gz", img)
        nan = img.copy()
        nan[3:5, 4:7] = np.nan  # 6 NaN voxels
        save_nifti(d / "nan2d.nii.gz", nan)
        inf = img.copy()
        inf[10, 10], inf[11, 12] = np.inf, -np.inf
        save_nifti(d / "inf2d.nii.gz", inf)
        save_nifti(d / "allnan2d.nii.gz", np.full((32, 32), np.nan, np.float32))
        big, _ = phantom_case((48, 48), 2)
        save_nifti(d / "big2d.nii.gz", big)  # 48 x 48: several 16-pixel windows
        ct = np.random.default_rng(3).normal(40, 200, (32, 32, 3)).astype(np.int16)
        save_nifti(d / "ct3slices.nii.gz", ct, np.diag([0.8, 0.8, 5.0, 1.0]))
        vol, _ = phantom_case((24, 24, 24), 4)
        save_nifti(d / "vol3d.nii.gz", vol, np.diag([1.0, 1.0, 1.5, 1.0]))
        save_nifti(d / "vol4d.nii.gz", np.stack([vol, vol], -1))
        rgb = np.zeros((32, 32), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        rgb["R"], rgb["G"], rgb["B"] = (img / 2).astype(np.uint8), 60, 90
        save_nifti(d / "rgb24.nii.gz", rgb)
        np.save(d / "ok2d.npy", img)
        from PIL import Image

        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / "ok2d.png")
        Image.fromarray(np.stack([np.clip(img, 0, 255).astype(np.uint8)] * 3, -1)).save(d / "rgb.png")
        lr = np.random.default_rng(5).integers(200, 3000, (3, 16, 16)).astype(np.uint16)
        save_geotiff(d / "lr.tif", lr, nodata=0)
        save_geotiff(d / "lr24.tif", np.random.default_rng(6).integers(200, 3000, (3, 24, 24)).astype(np.uint16),
                     nodata=0)
        lrnan = lr.astype(np.float32)
        lrnan[:, 2:4, 5:7] = np.nan
        save_geotiff(d / "lr_nan.tif", lrnan)
        save_geotiff(d / "one_band.tif", lr[:1])
        (d / "notes.txt").write_text("not an image\n")
        (d / "broken.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(200)))
        return d

    def _make_eval(self) -> Path:
        """A reference label map and prediction variants (evaluate probes)."""
        d = self.root / "eval"
        ref = ellipse((32, 40), 7)  # not square: a transposed .npy cannot hide behind an equal shape
        aff = np.diag([0.8, 0.8, 1.0, 1.0])
        save_nifti(d / "ref" / "case_a.nii.gz", ref.astype(np.uint8), aff)
        save_nifti(d / "pred_ok" / "case_a.nii.gz", ref.astype(np.uint8), aff)
        save_nifti(d / "pred_255" / "case_a.nii.gz", (ref * 255).astype(np.uint8), aff)
        save_nifti(d / "pred_02" / "case_a.nii.gz", (ref * 2).astype(np.uint8), aff)
        logits = (ref * 6 - 3 + np.random.default_rng(8).normal(0, 0.5, ref.shape)).astype(np.float32)
        save_nifti(d / "pred_logits" / "case_a.nii.gz", logits, aff)
        save_nifti(d / "pred_prob" / "case_a.nii.gz", (0.05 + 0.9 * ref).astype(np.float32), aff)
        nanp = ref.copy()
        nanp[5, 5] = np.nan
        save_nifti(d / "pred_nan" / "case_a.nii.gz", nanp, aff)
        (d / "pred_empty").mkdir(parents=True, exist_ok=True)
        (d / "pred_empty" / "case_a.nii.gz").write_bytes(b"")
        save_nifti(d / "pred_shape" / "case_a.nii.gz", ref[:30].astype(np.uint8), aff)
        shifted = aff.copy()
        shifted[0, 3] = 7.0
        save_nifti(d / "pred_affine" / "case_a.nii.gz", ref.astype(np.uint8), shifted)
        save_nifti(d / "pred_other" / "case_b.nii.gz", ref.astype(np.uint8), aff)
        save_nifti(d / "pred_tmp" / "case_a.nii.gz", ref.astype(np.uint8), aff)
        (d / "pred_tmp" / ".tmp-1a2b3c4d-case_a.nii.gz").write_bytes(b"\x1f\x8b half written")
        (d / "pred_dir_empty").mkdir(parents=True, exist_ok=True)
        (d / "npy").mkdir(parents=True, exist_ok=True)
        np.save(d / "npy" / "ref.npy", ref.astype(np.uint8))
        np.save(d / "npy" / "pred_T.npy", ref.T.copy().astype(np.uint8))
        np.save(d / "npy" / "pred_same.npy", ref.astype(np.uint8))
        square = ellipse((40, 40), 12)  # off-centre: its transpose differs, its shape does not
        np.save(d / "npy" / "ref_sq.npy", square.astype(np.uint8))
        np.save(d / "npy" / "pred_sq_T.npy", square.T.copy().astype(np.uint8))
        img = np.random.default_rng(9).uniform(0, 1, (3, 16, 16)).astype(np.float32)
        save_geotiff(d / "spec_ref.tif", img)
        save_geotiff(d / "spec_pred.tif", (img * 0.9).astype(np.float32))
        return d

    def seg_folder(self, name: str, n: int = 4, label=None, image=None, label_shape=None,
                   label_affine=None, orphan: bool = False, every: bool = False) -> Path:
        """A flat folder of ``case_k_image.nii.gz`` / ``case_k_label.nii.gz`` 32 x 32 pairs, one variant applied
        to the first case (``every``: to every case; ``label`` / ``image``: functions of the array; a label
        shape or affine of its own)."""
        d = self.root / "fitdata" / name
        if d.exists():
            return d
        d.mkdir(parents=True)
        for k in range(n):
            img, lab = phantom_case((32, 32), 20 + k)
            if (k == 0 or every) and image is not None:
                img = image(img)
            if (k == 0 or every) and label is not None:
                lab = label(lab)
            if k == 0 and label_shape is not None:
                lab = np.zeros(label_shape, np.float32)
                lab[4:9, 4:9] = 1
            save_nifti(d / f"case_{k}_image.nii.gz", img)
            if not (orphan and k == 0):
                save_nifti(d / f"case_{k}_label.nii.gz", lab, label_affine if k == 0 else None)
        return d


TINY = dict(channels=[8, 8], attention_levels=[False, False], num_res_blocks=1, num_head_channels=8,
            norm_num_groups=8, rrdb_features=8, rrdb_growth=4, timesteps=10)


# -- probes ----------------------------------------------------------------------------------------
@dataclass
class Run:
    """One finished command."""

    argv: list[str]
    code: int | None  # None: timed out
    stdout: str
    stderr: str
    seconds: float


@dataclass
class Probe:
    """One hostile input: ``build(fx, d)`` returns the argv lists to run in folder ``d`` (``d / "out"`` is
    the output folder); ``check(d, runs)`` returns None when the outcome is right, else why not."""

    name: str
    row: str  # issue 11 row (or "works": behaviour that is already right and must stay so)
    build: Callable[[Fixtures, Path], list]  # argv lists (and harness steps: callables) run in order
    expect: str = "error"  # "error", "ok" or "either"
    check: Callable[[Path, list[Run]], str | None] | None = None
    mention: tuple[str, ...] = ()  # the error line holds each of these (case-insensitive); "!x": must not hold x
    guard: Callable[[Path], str | None] | None = None  # any outcome: a side effect that must not happen
    fit: bool = False  # files left = checkpoints and temporaries only (a logger's config.yaml is no result)
    timeout: float = 180.0


@dataclass
class Result:
    probe: Probe
    cls: str
    code: int | None
    message: str
    left: list[str] = field(default_factory=list)
    note: str = ""
    seconds: float = 0.0


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ERROR_LINE.match(ln)]


def first_message(run: Run) -> str:
    """The error line; for a traceback its last line; for a success the first line printed."""
    errs = error_lines(run.stderr) or error_lines(run.stdout)
    if errs:
        return errs[-1]
    for text in (run.stderr, run.stdout):
        if "Traceback" in text:
            lines = [ln for ln in text.splitlines() if ln.strip()]
            return lines[-1] if lines else ""
    if run.code != 0:  # an error block of another parser (jsonargparse: "error: Parser key ...", indented lines)
        lines = run.stderr.splitlines()
        start = next((k for k, ln in enumerate(lines) if ln.startswith("error:")), None)
        if start is not None:
            return " ".join(ln.strip() for ln in lines[start:start + 8] if ln.strip())
    for text in ((run.stdout, run.stderr) if run.code == 0 else (run.stderr, run.stdout)):
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if lines:
            return lines[0] if run.code == 0 else lines[-1]
    return ""


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under ``folder``."""
    out = {}
    for rel in files_under(folder):
        st = (folder / rel).stat()
        out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def result_files(d: Path, fit: bool, before: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """Files under ``d/out`` that the run created or changed (fit: checkpoints and temporaries only)."""
    now = snapshot(d / "out")
    files = [f for f, sig in now.items() if before is None or before.get(f) != sig]
    if fit:
        files = [f for f in files if f.endswith(".ckpt") or Path(f).name.startswith(".tmp")]
    return files


def classify(probe: Probe, d: Path, runs: list[Run], before: dict[str, tuple[int, int]] | None = None) -> Result:
    """The outcome class of a probe's runs (see the module docstring); ``before``: the output folder's files
    before the runs (files that were there and are unchanged are not "left")."""
    seconds = sum(r.seconds for r in runs)
    left = result_files(d, probe.fit, before)
    if probe.guard is not None:
        why = probe.guard(d)
        if why:
            return Result(probe, "unsafe", runs[-1].code, first_message(runs[-1]), left, why, seconds)
    for r in runs:
        if r.code is None:
            return Result(probe, "timeout", None, first_message(r), left, f"> {probe.timeout:.0f} s", seconds)
    for r in runs:
        if "Traceback" in r.stdout + r.stderr:
            return Result(probe, "traceback", r.code, first_message(r), left, "", seconds)
    failed = next((r for r in runs if r.code != 0), None)
    if failed is not None:
        msg = first_message(failed)
        if probe.expect == "ok":
            return Result(probe, "refused", failed.code, msg, left, "expected success", seconds)
        errs = error_lines(failed.stderr) + error_lines(failed.stdout)
        why = []
        if len(errs) != 1:
            why.append(f"{len(errs)} error lines")
        if "Fix:" not in msg and not ARGPARSE_CLEAR.search(msg):
            why.append("no Fix")
        missing = [m for m in probe.mention if not m.startswith("!") and m.lower() not in msg.lower()]
        if missing:
            why.append("does not name " + ", ".join(missing))
        unwanted = [m[1:] for m in probe.mention if m.startswith("!") and m[1:].lower() in msg.lower()]
        if unwanted:
            why.append("says " + ", ".join(unwanted))
        if why:
            return Result(probe, "unclear", failed.code, msg, left, "; ".join(why), seconds)
        if left:
            return Result(probe, "left files", failed.code, msg, left, "a refusal must leave nothing", seconds)
        return Result(probe, "clear error", failed.code, msg, left, "", seconds)
    last = runs[-1]
    msg = first_message(last)
    if probe.expect == "error":
        return Result(probe, "silent", 0, msg, left, "exit 0, a refusal was expected", seconds)
    why = probe.check(d, runs) if probe.check is not None else None
    if why and not why.startswith("ok: "):
        return Result(probe, "silent", 0, msg, left, why, seconds)
    return Result(probe, "correct", 0, msg, left, why[4:] if why else "", seconds)


def run_command(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> Run:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "medrs_diff.cli", *argv], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code = None
    return Run(argv, code, out, err, time.perf_counter() - t0)


# -- checks ----------------------------------------------------------------------------------------
def all_finite(rel: str) -> Callable[[Path, list[Run]], str | None]:
    def check(d: Path, runs: list[Run]) -> str | None:
        p = d / "out" / rel
        if not p.exists():
            return f"{rel} not written"
        a = read_array(p).astype(np.float64)
        return None if np.isfinite(a).all() else f"{int((~np.isfinite(a)).sum())} non-finite values in {rel}"

    return check


def masked_nifti(rel: str, src: Path) -> Callable[[Path, list[Run]], str | None]:
    """The voxels that were NaN / inf in ``src`` are nodata in the output: NaN or a value used nowhere else in
    the prediction, or (NIfTI has no nodata field) a ``valid/`` output that is 0 exactly there, 1 elsewhere."""

    def check(d: Path, runs: list[Run]) -> str | None:
        p = d / "out" / rel
        if not p.exists():
            return f"{rel} not written"
        bad = ~np.isfinite(read_array(src).astype(np.float64))
        out = read_array(p).astype(np.float64)
        vals, rest = out[bad], out[~bad]
        if np.isnan(vals).all() and np.isfinite(rest).all():
            return None
        if np.isfinite(vals).all() and len(np.unique(vals)) == 1 and vals[0] not in set(np.unique(rest).tolist()):
            return None
        valid = d / "out" / "valid" / Path(rel).name
        if valid.exists():
            v = read_array(valid)
            if v.shape == bad.shape and (v[bad] == 0).all() and (v[~bad] == 1).all():
                return (f"ok: a valid/ map marks the {int(bad.sum())} voxels (0); the prediction holds "
                        f"{np.unique(vals).tolist()} there")
        return f"the {int(bad.sum())} non-finite input voxels are not nodata in {rel} (values {np.unique(vals)[:4]})"

    return check


def masked_geotiff(rel: str, src: Path, scale: int) -> Callable[[Path, list[Run]], str | None]:
    def check(d: Path, runs: list[Run]) -> str | None:
        import rasterio

        p = d / "out" / rel
        if not p.exists():
            return f"{rel} not written"
        bad = ~np.isfinite(read_array(src).astype(np.float64)).all(0)
        bad = np.kron(bad, np.ones((scale, scale), bool))
        with rasterio.open(p) as o:
            a, nodata = o.read().astype(np.float64), o.nodata
        if nodata is None:
            return f"{rel} declares no nodata value"
        hit = np.isnan(a) if np.isnan(nodata) else a == nodata
        if not hit[:, bad].all():
            return f"{int((~hit[:, bad]).sum())} masked pixels of {rel} are not nodata ({nodata})"
        return None

    return check


def same_outputs(a: str, b: str, name: str, rtol: float = 0.0) -> Callable[[Path, list[Run]], str | None]:
    """Every output of ``name`` is identical under ``d/out/a`` and ``d/out/b``: bit-identical, or with ``rtol``
    within ``rtol`` times the output's largest magnitude (float32 rounding of batch-size-dependent kernels)."""

    def check(d: Path, runs: list[Run]) -> str | None:
        fa = [f for f in files_under(d / "out" / a) if Path(f).name == name]
        fb = [f for f in files_under(d / "out" / b) if Path(f).name == name]
        if not fa or sorted(fa) != sorted(fb):
            return f"outputs differ in name: {fa} vs {fb}"
        diffs = []
        for f in fa:
            x, y = read_array(d / "out" / a / f), read_array(d / "out" / b / f)
            if x.shape != y.shape:
                return f"{f}: shape {x.shape} vs {y.shape}"
            xf, yf = x.astype(np.float64), y.astype(np.float64)
            tol = rtol * max(1.0, float(np.nanmax(np.abs(xf)))) if x.size else 0.0
            both_nan = int((np.isnan(xf) & np.isnan(yf)).sum())
            n = int((np.abs(xf - yf) > tol).sum()) if rtol else int((x != y).sum()) - both_nan
            if n:
                gap = np.abs(xf - yf)
                diffs.append(f"{f}: {n}/{x.size} differ (max |diff| {np.nanmax(gap):.3g})")
        return "; ".join(diffs) or None

    return check


def different_outputs(a: str, b: str, name: str) -> Callable[[Path, list[Run]], str | None]:
    same = same_outputs(a, b, name)

    def check(d: Path, runs: list[Run]) -> str | None:
        why = same(d, runs)
        if why is None:
            return "seeds 0 and 1 give identical outputs"
        return None if "differ" in why and "name" not in why else why

    return check


def outputs_exist(*rels: str) -> Callable[[Path, list[Run]], str | None]:
    def check(d: Path, runs: list[Run]) -> str | None:
        missing = [r for r in rels if not (d / "out" / r).exists()]
        return f"missing {missing}" if missing else None

    return check


def only_outputs_of(name: str) -> Callable[[Path, list[Run]], str | None]:
    def check(d: Path, runs: list[Run]) -> str | None:
        files = files_under(d / "out")
        other = [f for f in files if Path(f).name != name]
        if not files:
            return "nothing written"
        return f"outputs for other inputs: {other}" if other else None

    return check


def same_grid(rel: str, src: Path, scale: int = 1) -> Callable[[Path, list[Run]], str | None]:
    def check(d: Path, runs: list[Run]) -> str | None:
        p = d / "out" / rel
        if not p.exists():
            return f"{rel} not written"
        if rel.endswith(".tif"):
            import rasterio

            with rasterio.open(src) as s, rasterio.open(p) as o:
                if (o.height, o.width) != (s.height * scale, s.width * scale) or o.crs != s.crs:
                    return f"grid {o.height}x{o.width} {o.crs} vs input {s.height}x{s.width} x{scale}"
                if abs(o.transform.a - s.transform.a / scale) > 1e-9 or o.transform.c != s.transform.c:
                    return f"transform {o.transform} vs input {s.transform}"
            return None
        import nibabel as nib

        a, b = nib.load(str(src)), nib.load(str(p))
        if a.shape[:3] != b.shape[:3] or not np.allclose(a.affine, b.affine):
            return f"shape {b.shape} / affine differ from the input {a.shape}"
        return None

    return check


def eval_score(key: str, want: float, n_cases: int = 1, tol: float = 1e-6) -> Callable[[Path, list[Run]], str | None]:
    def check(d: Path, runs: list[Run]) -> str | None:
        files = list((d / "out").glob("evaluation_*.json"))
        if not files:
            return "no evaluation json"
        rep = json.loads(files[0].read_text())
        if rep.get("n_cases") != n_cases:
            return f"n_cases {rep.get('n_cases')} != {n_cases}"
        got = [v.get(key) for v in rep.get("aggregate", {}).values() if isinstance(v, dict) and key in v]
        if not got or any(abs(float(g) - want) > tol for g in got):
            return f"{key} {got} != {want}"
        return None

    return check


def said(pattern: str) -> Callable[[Path, list[Run]], str | None]:
    rx = re.compile(pattern, re.I | re.M)

    def check(d: Path, runs: list[Run]) -> str | None:
        text = "\n".join(r.stdout + r.stderr for r in runs[1:] or runs)
        return None if rx.search(text) else f"the output never says /{pattern}/"

    return check


def resumed_in_place(d: Path, runs: list[Run]) -> str | None:
    logs = d / "out" / "lightning_logs"
    versions = sorted(p.name for p in logs.iterdir()) if logs.exists() else []
    if versions != ["version_0"]:
        return f"run folders {versions}: resume opened a new version"
    import torch

    ckpt = torch.load(logs / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    if ckpt.get("global_step") != 3:
        return f"last.ckpt at step {ckpt.get('global_step')}, not 3"
    stale = [p.name for p in (logs / "version_0" / "checkpoints").glob(".tmp*")]
    return f"stale temporaries left: {stale}" if stale else None


def same_weights(a: str, b: str, pattern: str) -> Callable[[Path, list[Run]], str | None]:
    """The checkpoints ``pattern`` under ``d/out/a`` and ``d/out/b`` hold the same global step and bit-identical
    weights and EMA weights."""

    def tensors(obj: Any, prefix: str = "") -> dict[str, Any]:
        import torch

        if isinstance(obj, torch.Tensor):
            return {prefix: obj}
        if isinstance(obj, dict):
            out: dict[str, Any] = {}
            for k, v in obj.items():
                out.update(tensors(v, f"{prefix}.{k}" if prefix else str(k)))
            return out
        return {}

    def check(d: Path, runs: list[Run]) -> str | None:
        import torch

        found = [sorted((d / "out" / x).rglob(pattern)) for x in (a, b)]
        if not all(found):
            return f"no {pattern} under {a} and {b}: {[len(f) for f in found]}"
        ca, cb = (torch.load(f[-1], map_location="cpu", weights_only=False) for f in found)
        if ca.get("global_step") != cb.get("global_step"):
            return f"global_step {ca.get('global_step')} vs {cb.get('global_step')}"
        wa = tensors(ca["state_dict"]) | tensors({k: v for k, v in ca.get("callbacks", {}).items() if "EMA" in k})
        wb = tensors(cb["state_dict"]) | tensors({k: v for k, v in cb.get("callbacks", {}).items() if "EMA" in k})
        if sorted(wa) != sorted(wb):
            return "the checkpoints hold different tensors"
        ema = sum("EMA" in k for k in wa)
        differ = [k for k in wa if wa[k].shape != wb[k].shape or not torch.equal(wa[k], wb[k])]
        if differ:
            return f"{len(differ)}/{len(wa)} tensors differ (e.g. {differ[0]})"
        return None if ema else "ok: identical, but no EMA tensors were found to compare"

    return check


def unchanged(rel: str) -> Callable[[Path], str | None]:
    """A guard: the file ``d/rel`` still holds what it held before the run (hashed at the first call)."""
    import hashlib

    digests: dict[Path, str] = {}

    def guard(d: Path) -> str | None:
        p = d / rel
        h = hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "missing"
        if d not in digests:
            digests[d] = h
            return None
        return None if digests[d] == h else f"{rel} was changed"

    return guard


def no_file(rel: str) -> Callable[[Path], str | None]:
    def guard(d: Path) -> str | None:
        return f"{rel} was created" if (d / rel).exists() else None

    return guard


# -- the table of probes ---------------------------------------------------------------------------
def infer(ckpt: Path, src: Path, out: Path | str, *extra: str, fast: bool = True, device: str = "cpu") -> list[str]:
    return ["infer", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), "--device", device,
            *(FAST if fast else ()), *extra]


def fit_cmd(d: Path, root: Path | str, *extra: str, recipe: str = "segdiff_phantom2d") -> list[str]:
    return ["fit", "--config", recipe, "--data.init_args.root", str(root), "--data.init_args.phantoms", "0",
            "--data.init_args.batch_size", "2", "--trainer.default_root_dir", str(d / "out"), *FIT_FAST, *extra]


def evaluate_cmd(pred: Path, ref: Path, d: Path, *extra: str, task: str = "seg") -> list[str]:
    return ["evaluate", str(pred), str(ref), "--task", task, "--out", str(d / "out"), *extra]


def copy_run(fx: Fixtures, d: Path) -> Path:
    """A copy of the seg2d run folder as ``d/out``; returns its last.ckpt."""
    shutil.copytree(fx.seg2d_run, d / "out")
    return next((d / "out").rglob("last.ckpt"))


def probes() -> list[Probe]:  # noqa: PLR0915 (one table)
    P: list[Probe] = []

    def add(name: str, row: str, build, **kw: Any) -> None:
        P.append(Probe(name, row, build, **kw))

    def i(name: str) -> Callable[[Fixtures], Path]:
        return lambda fx: fx.inputs / name

    # 1. non-finite voxels
    add("infer NIfTI with 6 NaN voxels (default)", "1 nan", lambda fx, d: [infer(fx.seg2d, i("nan2d.nii.gz")(fx),
        d / "out")], mention=("nan2d.nii.gz",))
    add("infer NIfTI with +inf/-inf voxels (default)", "1 nan", lambda fx, d: [infer(fx.seg2d, i("inf2d.nii.gz")(fx),
        d / "out")], mention=("inf2d.nii.gz",))
    add("infer all-NaN NIfTI", "1 nan", lambda fx, d: [infer(fx.seg2d, i("allnan2d.nii.gz")(fx), d / "out")],
        mention=("allnan2d.nii.gz",))
    add("infer NaN NIfTI --nan-policy error", "1 nan", lambda fx, d: [infer(fx.seg2d, i("nan2d.nii.gz")(fx),
        d / "out", "--nan-policy", "error")], mention=("nan2d.nii.gz",))
    add("infer NaN NIfTI --nan-policy fill", "1 nan", lambda fx, d: [infer(fx.seg2d, i("nan2d.nii.gz")(fx),
        d / "out", "--nan-policy", "fill")], expect="ok", check=all_finite("nan2d.nii.gz"))
    P.append(Probe("infer NaN NIfTI --nan-policy mask", "1 nan", lambda fx, d: [infer(
        fx.seg2d, fx.inputs / "nan2d.nii.gz", d / "out", "--nan-policy", "mask")], expect="ok",
        check=lambda d, runs: masked_nifti("nan2d.nii.gz", d.parents[1] / "inputs" / "nan2d.nii.gz")(d, runs)))
    add("infer NaN NIfTI --nan-policy bogus", "1 nan", lambda fx, d: [infer(fx.seg2d, i("nan2d.nii.gz")(fx),
        d / "out", "--nan-policy", "bogus")], mention=("--nan-policy",))
    add("infer GeoTIFF with NaN pixels (default)", "1 nan", lambda fx, d: [infer(fx.sr, i("lr_nan.tif")(fx),
        d / "out")], mention=("lr_nan.tif",))
    add("infer NaN GeoTIFF --nan-policy fill", "1 nan", lambda fx, d: [infer(fx.sr, i("lr_nan.tif")(fx),
        d / "out", "--nan-policy", "fill")], expect="ok", check=all_finite("lr_nan.tif"))
    add("infer NaN GeoTIFF --nan-policy mask", "1 nan", lambda fx, d: [infer(fx.sr, i("lr_nan.tif")(fx),
        d / "out", "--nan-policy", "mask")], expect="ok",
        check=lambda d, runs: masked_geotiff("lr_nan.tif", d.parents[1] / "inputs" / "lr_nan.tif", 4)(d, runs))

    # 2. numeric arguments (parse time, valid range in the message)
    for flag, value in (("--steps", "0"), ("--steps", "-3"), ("--steps", "2.5"), ("--n-samples", "0"),
                        ("--n-samples", "-1"), ("--tile", "0"), ("--batch", "0"), ("--overlap", "1"),
                        ("--overlap", "-0.1"), ("--overlap", "nan"), ("--seed", "x")):
        add(f"infer {flag} {value}", "2 numbers", lambda fx, d, f=flag, v=value: [
            infer(fx.seg2d, fx.inputs / "ok2d.nii.gz", d / "out", "--no-progress", f, v, fast=False)],
            mention=(flag,))
    add("infer --tile with 3 sizes for a 2-D model", "2 numbers", lambda fx, d: [infer(
        fx.seg2d, i("ok2d.nii.gz")(fx), d / "out", "--tile", "16", "16", "16")], mention=("tile",))
    add("infer --tile 7 (not a multiple of the UNet's stride)", "2 numbers", lambda fx, d: [infer(
        fx.seg2d, i("ok2d.nii.gz")(fx), d / "out", "--tile", "7")], mention=("tile",))

    # 3. output suffix and output folder, checked before compute
    add("infer GeoTIFF into out.nii.gz", "3 output", lambda fx, d: [infer(fx.sr, i("lr.tif")(fx),
        d / "out" / "sr.nii.gz")], mention=("sr.nii.gz",))
    add("infer NIfTI into out.tif", "3 output", lambda fx, d: [infer(fx.seg2d, i("ok2d.nii.gz")(fx),
        d / "out" / "pred.tif")], mention=("pred.tif",))
    add("infer NIfTI into out.png", "3 output", lambda fx, d: [infer(fx.seg2d, i("ok2d.nii.gz")(fx),
        d / "out" / "pred.png")], mention=("pred.png",))
    add("infer GeoTIFF into out.npy", "3 output", lambda fx, d: [infer(fx.sr, i("lr.tif")(fx),
        d / "out" / "sr.npy")], mention=("sr.npy",))

    def unwritable(fx: Fixtures, d: Path) -> list[list[str]]:
        if os.geteuid() == 0:  # root ignores permission bits: /proc refuses new entries even to root
            target = Path("/proc/medrs_probe_out")
        else:
            ro = d / "out" / "ro"
            ro.mkdir(parents=True)
            ro.chmod(0o555)
            target = ro / "preds"
        return [infer(fx.seg2d, fx.inputs / "ok2d.nii.gz", target)]

    add("infer into an unwritable output folder", "3 output", unwritable, mention=("medrs_probe_out",)
        if os.geteuid() == 0 else ("ro",))

    def existing_file(fx: Fixtures, d: Path) -> list[list[str]]:
        (d / "out").mkdir(parents=True)
        (d / "taken").write_text("a file, not a folder\n")
        return [infer(fx.seg2d, fx.inputs / "big2d.nii.gz", d / "taken" / "preds")]

    add("infer output folder under an existing file", "3 output", existing_file, mention=("taken",))

    def file_as_folder(fx: Fixtures, d: Path) -> list[list[str]]:
        folder = d / "out" / "two"
        folder.mkdir(parents=True)
        for n in ("a", "b"):
            shutil.copy(fx.inputs / "ok2d.nii.gz", folder / f"{n}.nii.gz")
        (d / "out" / "preds_file").write_text("existing file\n")
        return [infer(fx.seg2d, folder, d / "out" / "preds_file")]

    add("infer folder into a path that is an existing file", "3 output", file_as_folder, mention=("preds_file",),
        guard=unchanged("out/preds_file"))

    def overwrite_input(fx: Fixtures, d: Path) -> list[list[str]]:
        (d / "out").mkdir()
        src = d / "out" / "self.nii.gz"
        shutil.copy(fx.inputs / "ok2d.nii.gz", src)
        return [infer(fx.seg2d, src, src)]

    add("infer output = the input file", "3 output", overwrite_input, mention=("self.nii.gz",),
        guard=unchanged("out/self.nii.gz"))

    # 4. volume vs image
    add("infer 32x32x3 CT NIfTI into a 2-D 3-band SR model", "4 dims", lambda fx, d: [infer(
        fx.sr, i("ct3slices.nii.gz")(fx), d / "out")], mention=("ct3slices.nii.gz", "3-D"))
    add("infer 32x32x3 CT NIfTI into a 2-D RGB SegDiff", "4 dims", lambda fx, d: [infer(
        fx.seg2d_rgb, i("ct3slices.nii.gz")(fx), d / "out")], mention=("ct3slices.nii.gz", "3-D"))
    add("infer 24^3 volume into a 2-D model", "4 dims", lambda fx, d: [infer(fx.seg2d, i("vol3d.nii.gz")(fx),
        d / "out")], mention=("vol3d.nii.gz", "3-D"))
    add("infer 2-D image into a 3-D model", "4 dims", lambda fx, d: [infer(fx.seg3d, i("ok2d.nii.gz")(fx),
        d / "out")], mention=("ok2d.nii.gz", "2-D"))
    add("infer 4-D NIfTI into a 3-D model", "4 dims", lambda fx, d: [infer(fx.seg3d, i("vol4d.nii.gz")(fx),
        d / "out")], mention=("vol4d.nii.gz",))
    add("infer RGB24 NIfTI into a 1-channel model", "4 dims", lambda fx, d: [infer(fx.seg2d, i("rgb24.nii.gz")(fx),
        d / "out")], mention=("rgb24.nii.gz", "RGB"))
    add("infer 3-band GeoTIFF into a 1-channel SegDiff", "4 dims", lambda fx, d: [infer(fx.seg2d, i("lr.tif")(fx),
        d / "out")], mention=("lr.tif",))
    add("infer RGB PNG into a 1-channel SegDiff", "4 dims", lambda fx, d: [infer(fx.seg2d, i("rgb.png")(fx),
        d / "out")], mention=("rgb.png",))

    # 5. checkpoint weights and files (infer)
    add("infer with an all-NaN-weight checkpoint", "5 ckpt", lambda fx, d: [infer(fx.nan_weights,
        i("ok2d.nii.gz")(fx), d / "out")], mention=("nan_weights.ckpt",))
    add("infer with a truncated checkpoint", "5 ckpt", lambda fx, d: [infer(fx.truncated, i("ok2d.nii.gz")(fx),
        d / "out")], mention=("truncated.ckpt",))
    add("infer with a random-bytes checkpoint (says it is not a checkpoint)", "5 ckpt", lambda fx, d: [infer(
        fx.random_bytes, i("ok2d.nii.gz")(fx), d / "out")], mention=("random_bytes.ckpt", "not a", "!trusted"))
    add("infer with a 0-byte checkpoint", "5 ckpt", lambda fx, d: [infer(fx.empty_ckpt, i("ok2d.nii.gz")(fx),
        d / "out")], mention=("empty.ckpt",))
    add("infer with a pickle-payload checkpoint", "5 ckpt", lambda fx, d: [infer(
        fx.pickle_payload(d / "PAYLOAD_RAN"), i("ok2d.nii.gz")(fx), d / "out")], mention=("PAYLOAD_RAN.ckpt",),
        guard=no_file("PAYLOAD_RAN"))

    def not_a_method(fx: Fixtures, d: Path) -> list[list[str]]:
        (d / "probe_side_effect.py").write_text(f"open({str(d / 'IMPORTED')!r}, 'w').close()\nclass Thing: ...\n")
        return [infer(fx.not_a_method, fx.inputs / "ok2d.nii.gz", d / "out")]

    add("infer: checkpoint class_path is not a method (module not imported)", "faults", not_a_method,
        mention=("not_a_method.ckpt", "valid methods"), guard=no_file("IMPORTED"))

    # 6. fit --ckpt_path
    def seg_data(fx: Fixtures) -> Path:
        return fx.seg2d.parents[4] / "data"  # the phantoms the seg2d fixture trained on

    def fit_resume(ckpt_attr: str):
        def build(fx: Fixtures, d: Path) -> list[list[str]]:
            ckpt = fx.pickle_payload(d / "PAYLOAD_RAN") if ckpt_attr == "pickle" else (
                d / "missing.ckpt" if ckpt_attr == "missing" else fx.get(ckpt_attr))
            return [fit_cmd(d, seg_data(fx), "--ckpt_path", str(ckpt))]

        return build

    for attr, label in (("truncated", "a truncated"), ("random_bytes", "a random-bytes"), ("missing", "a missing"),
                        ("empty_ckpt", "a 0-byte"), ("nan_weights", "an all-NaN-weight")):
        add(f"fit --ckpt_path {label} checkpoint", "6 resume", fit_resume(attr), fit=True,
            mention=({"empty_ckpt": "empty", "missing": "missing"}.get(attr, attr) + ".ckpt",))
    add("fit --ckpt_path a pickle-payload checkpoint", "6 resume", fit_resume("pickle"), fit=True,
        mention=("PAYLOAD_RAN.ckpt",), guard=no_file("PAYLOAD_RAN"))
    add("fit segdiff recipe --ckpt_path an SRDiff checkpoint", "6 resume", fit_resume("sr"), fit=True,
        mention=("last.ckpt", "SRDiff"))
    add("fit segdiff_phantom3d --ckpt_path a 2-D SegDiff checkpoint", "6 resume", lambda fx, d: [
        fit_cmd(d, fx.root / "fixtures" / "data3d", "--ckpt_path", str(fx.seg2d),
                "--data.init_args.phantoms", "4", recipe="segdiff_phantom3d")], fit=True, mention=("last.ckpt",))
    add("fit --ckpt_path with a class_path that is not a method", "faults", lambda fx, d: [
        fit_cmd(d, seg_data(fx), "--ckpt_path", str(fx.not_a_method))], fit=True,
        mention=("not_a_method.ckpt", "valid methods"))

    def resume_lr(fx: Fixtures, d: Path) -> list[list[str]]:
        ckpt = copy_run(fx, d)
        return [fit_cmd(d, seg_data(fx), "--ckpt_path", str(ckpt), "--trainer.max_steps", "3",
                        "--model.init_args.lr", "0.5")]

    P.append(Probe("fit resume with --model.init_args.lr 0.5 (applied and said, or refused)", "6 resume", resume_lr,
                   expect="either", check=said(r"\blr\b.*(0\.5|checkpoint)|checkpoint.*\blr\b"), fit=True))

    def resume_same_folder(fx: Fixtures, d: Path) -> list[list[str]]:
        data = fx.seg_folder("clean")
        first = fx.cli(fit_cmd(d, data), d)  # a run of its own (a copied run folder changes the stored paths)
        ckpt = next((d / "out").rglob("last.ckpt"), None)
        if first.returncode != 0 or ckpt is None:
            raise MissingFixture(f"the first 2-step fit failed (exit {first.returncode})")
        stale = ckpt.parent / ".tmp-deadbeef-last.ckpt"  # what a killed fit leaves
        stale.write_bytes(b"")
        old = time.time() - 86400
        os.utime(stale, (old, old))
        return [fit_cmd(d, data, "--ckpt_path", str(ckpt), "--trainer.max_steps", "3")]

    add("fit resume goes on in the same version_N folder", "faults", resume_same_folder, expect="ok",
        check=resumed_in_place)

    def resume_mid_epoch(fx: Fixtures, d: Path) -> list:
        import yaml

        from medrs_diff.train.recipe import recipe_dir

        data = fx.seg_folder("eight", n=8)  # 6 training cases, batch 2: 3 steps per epoch; resume at step 2
        cfg = yaml.safe_load((recipe_dir() / "segdiff_phantom2d.yaml").read_text())
        cfg["trainer"]["callbacks"] = [c for c in cfg["trainer"]["callbacks"] if c["class_path"] != "ModelCheckpoint"]
        cfg["trainer"]["callbacks"].append({"class_path": "ModelCheckpoint", "init_args": {
            "save_last": True, "save_top_k": -1, "every_n_train_steps": 2, "monitor": None}})
        recipe = d / "every2.yaml"
        recipe.write_text(yaml.safe_dump(cfg))
        straight, resumed = d / "out" / "straight", d / "out" / "resumed"
        start = d / "from" / "step2.ckpt"  # a copy outside lightning_logs: the resume logs into a folder of its own

        def copy_step2() -> None:
            start.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(next(straight.rglob("*step=2.ckpt")), start)

        return [fit_cmd(d, data, "--trainer.max_steps", "4", "--trainer.default_root_dir", str(straight),
                        recipe=str(recipe)),
                copy_step2,
                fit_cmd(d, data, "--trainer.max_steps", "4", "--trainer.default_root_dir", str(resumed),
                        "--ckpt_path", str(start), recipe=str(recipe))]

    add("fit resume from a mid-epoch checkpoint (step 2 of 3) is bit-exact (weights, EMA)", "8 resume",
        resume_mid_epoch, expect="ok", check=same_weights("straight", "resumed", "*step=4.ckpt"), timeout=300)

    # 7. training labels and images
    def fit_data(name: str, **variant: Any):
        return lambda fx, d: [fit_cmd(d, fx.seg_folder(name, **variant))]

    add("fit labels {0, 2}", "7 labels", fit_data("labels02", label=lambda a: a * 2), fit=True,
        mention=("case_0_label.nii.gz",))
    add("fit labels {0, 0.37}", "7 labels", fit_data("labels037", label=lambda a: a * 0.37), fit=True,
        mention=("case_0_label.nii.gz",))
    add("fit labels {0, 255}", "7 labels", fit_data("labels255", label=lambda a: a * 255), fit=True,
        mention=("case_0_label.nii.gz",))

    def nan_at(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[7, 7] = np.nan
        return a

    add("fit one NaN label voxel (fit must stop)", "7 labels", fit_data("nanlabel", label=nan_at), fit=True,
        mention=("case_0_label.nii.gz",))
    add("fit one NaN image voxel", "7 labels", fit_data("nanimage", image=nan_at), fit=True,
        mention=("case_0_image.nii.gz",))
    add("fit labels {0, 2} declared by label_values [0, 2]", "7 labels", lambda fx, d: [fit_cmd(
        d, fx.seg_folder("labels02all", label=lambda a: a * 2, every=True), "--data.init_args.label_values",
        "[0, 2]")],
        expect="ok", check=outputs_exist("lightning_logs/version_0/checkpoints/last.ckpt"))
    add("fit 2-step baseline on clean data", "7 labels", fit_data("clean"), expect="ok",
        check=outputs_exist("lightning_logs/version_0/checkpoints/last.ckpt"))

    # fit data folders (tracebacks row)
    add("fit missing data root", "fit data", lambda fx, d: [fit_cmd(d, d / "no_such_root")], fit=True,
        mention=("no_such_root",))
    add("fit empty data folder", "fit data", lambda fx, d: [fit_cmd(d, (d / "empty_root").mkdir() or
        d / "empty_root")], fit=True, mention=("empty_root",))
    add("fit one case only", "fit data", fit_data("onecase", n=1), fit=True, mention=("onecase",))
    add("fit image/label shape mismatch", "fit data", fit_data("shape", label_shape=(32, 30)), fit=True,
        mention=("case_0",))
    add("fit image/label affine mismatch", "fit data", fit_data("affine", label_affine=np.diag([2.0, 2.0, 1.0, 1.0])),
        fit=True, mention=("case_0",))
    add("fit image without its label", "fit data", fit_data("orphan", orphan=True), fit=True, mention=("case_0",))

    def corrupt_label(fx: Fixtures, d: Path) -> list[list[str]]:
        root = fx.seg_folder("corrupt")
        (root / "case_0_label.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(100)))
        return [fit_cmd(d, root)]

    add("fit a corrupt label file", "fit data", corrupt_label, fit=True, mention=("case_0_label.nii.gz",))

    # 9. evaluate
    def ev(pred: str, *extra: str, ref: str = "ref/case_a.nii.gz", task: str = "seg"):
        return lambda fx, d: [evaluate_cmd(fx.eval / pred, fx.eval / ref, d, *extra, task=task)]

    add("evaluate prediction 0/255 vs labels {0, 1}", "9 evaluate", ev("pred_255/case_a.nii.gz"),
        mention=("case_a.nii.gz", "255"))
    add("evaluate 0/255 with --label-map 255:1", "9 evaluate", ev("pred_255/case_a.nii.gz", "--label-map", "255:1"),
        expect="ok", check=eval_score("dice_mean", 1.0))
    add("evaluate prediction {0, 2} vs labels {0, 1}", "9 evaluate", ev("pred_02/case_a.nii.gz"),
        mention=("case_a.nii.gz", "2"))
    add("evaluate raw logits as a label map", "9 evaluate", ev("pred_logits/case_a.nii.gz"),
        mention=("case_a.nii.gz",))
    add("evaluate probability map (threshold 0.5)", "9 evaluate", ev("pred_prob/case_a.nii.gz"), expect="ok",
        check=eval_score("dice_mean", 1.0))
    add("evaluate transposed .npy vs .npy", "9 evaluate", ev("npy/pred_T.npy", ref="npy/ref.npy"),
        mention=("pred_T.npy",))
    add("evaluate same-orientation .npy vs .npy", "9 evaluate", ev("npy/pred_same.npy", ref="npy/ref.npy"),
        expect="ok", check=eval_score("dice_mean", 1.0))
    add("evaluate transposed square .npy vs .npy (same shape)", "9 evaluate", ev("npy/pred_sq_T.npy",
        ref="npy/ref_sq.npy"), mention=("pred_sq_T.npy",))
    add("evaluate .npy vs NIfTI without --assume-same-grid", "9 evaluate", ev("npy/pred_same.npy"),
        mention=("pred_same.npy", "--assume-same-grid"))
    add("evaluate .npy vs NIfTI with --assume-same-grid", "9 evaluate", ev("npy/pred_same.npy",
        "--assume-same-grid"), expect="ok", check=eval_score("dice_mean", 1.0))
    add("evaluate 0-byte prediction", "9 evaluate", ev("pred_empty/case_a.nii.gz"), mention=("case_a.nii.gz",))
    add("evaluate NaN prediction", "9 evaluate", ev("pred_nan/case_a.nii.gz"), mention=("pred_nan",))
    add("evaluate folder with a .tmp-* leftover", "faults", ev("pred_tmp", ref="ref"), expect="ok",
        check=eval_score("dice_mean", 1.0, n_cases=1))
    add("evaluate identical prediction (baseline)", "9 evaluate", ev("pred_ok/case_a.nii.gz"), expect="ok",
        check=eval_score("dice_mean", 1.0))

    # 10. determinism
    def alone_vs_folder(fx: Fixtures, d: Path) -> list[list[str]]:
        folder = d / "three"
        folder.mkdir()
        for n, src in (("a_case", "big2d.nii.gz"), ("b_case", "ok2d.nii.gz"), ("c_case", "big2d.nii.gz")):
            shutil.copy(fx.inputs / src, folder / f"{n}.nii.gz")
        (d / "alone").mkdir()
        shutil.copy(folder / "b_case.nii.gz", d / "alone" / "b_case.nii.gz")
        return [infer(fx.seg2d, d / "alone" / "b_case.nii.gz", d / "out" / "alone", "--tile", "16"),
                infer(fx.seg2d, folder, d / "out" / "folder", "--tile", "16")]

    add("determinism: a case alone vs in a folder of 3", "10 seeds", alone_vs_folder, expect="ok",
        check=same_outputs("alone", "folder", "b_case.nii.gz"))
    add("determinism: --batch 1 vs --batch 4 (SegDiff 48x48, tile 16, float32 tol.)", "10 seeds", lambda fx, d: [
        infer(fx.seg2d, fx.inputs / "big2d.nii.gz", d / "out" / "b1", "--tile", "16", "--batch", "1"),
        infer(fx.seg2d, fx.inputs / "big2d.nii.gz", d / "out" / "b4", "--tile", "16", "--batch", "4")],
        expect="ok", check=same_outputs("b1", "b4", "big2d.nii.gz", rtol=1e-5))
    add("determinism: --batch 1 vs --batch 4 (SRDiff GeoTIFF, tile 8, float32 tol.)", "10 seeds", lambda fx, d: [
        infer(fx.sr, fx.inputs / "lr24.tif", d / "out" / "b1", "--tile", "8", "--batch", "1"),
        infer(fx.sr, fx.inputs / "lr24.tif", d / "out" / "b4", "--tile", "8", "--batch", "4")],
        expect="ok", check=same_outputs("b1", "b4", "lr24.tif", rtol=1e-5))
    add("determinism: the same seed twice", "10 seeds", lambda fx, d: [
        infer(fx.seg2d, fx.inputs / "big2d.nii.gz", d / "out" / "r1", "--tile", "16"),
        infer(fx.seg2d, fx.inputs / "big2d.nii.gz", d / "out" / "r2", "--tile", "16")],
        expect="ok", check=same_outputs("r1", "r2", "big2d.nii.gz"))
    add("determinism: seeds 0 and 1 differ", "10 seeds", lambda fx, d: [
        infer(fx.seg2d, fx.inputs / "big2d.nii.gz", d / "out" / "s0", "--tile", "16", "--seed", "0"),
        infer(fx.seg2d, fx.inputs / "big2d.nii.gz", d / "out" / "s1", "--tile", "16", "--seed", "1")],
        expect="ok", check=different_outputs("s0", "s1", "big2d.nii.gz"))

    # devices, samplers, faults of listings
    for dev, word in (("cuda", "GPU"), ("cuda:3", "GPU"), ("tpu", "device")):
        add(f"infer --device {dev}" + (" without a GPU" if word == "GPU" else ""), "devices", lambda fx, d, v=dev: [
            infer(fx.seg2d, fx.inputs / "ok2d.nii.gz", d / "out", device=v)], mention=(word,))
    add("infer --sampler euler (unknown)", "devices", lambda fx, d: [infer(fx.seg2d, i("ok2d.nii.gz")(fx), d / "out",
        "--sampler", "euler")], mention=("euler",))

    def tmp_in_inputs(fx: Fixtures, d: Path) -> list[list[str]]:
        folder = d / "scans"
        folder.mkdir()
        shutil.copy(fx.inputs / "ok2d.nii.gz", folder / "case.nii.gz")
        (folder / ".tmp-0badc0de-case2.nii.gz").write_bytes(b"\x1f\x8b half")
        return [infer(fx.seg2d, folder, d / "out")]

    add("infer folder with a .tmp-* leftover from a killed run", "faults", tmp_in_inputs, expect="ok",
        check=only_outputs_of("case.nii.gz"))

    # already right: keep them so
    W = "works"
    add("infer missing input file", W, lambda fx, d: [infer(fx.seg2d, d / "nope.nii.gz", d / "out")],
        mention=("nope.nii.gz",))
    add("infer empty input folder", W, lambda fx, d: [infer(fx.seg2d, (d / "empty_scans").mkdir() or
        d / "empty_scans", d / "out")], mention=("empty_scans",))
    add("infer .txt input", W, lambda fx, d: [infer(fx.seg2d, i("notes.txt")(fx), d / "out")],
        mention=("notes.txt",))

    def txt_folder(fx: Fixtures, d: Path) -> list[list[str]]:
        (d / "txt_only").mkdir()
        shutil.copy(fx.inputs / "notes.txt", d / "txt_only" / "a.txt")
        return [infer(fx.seg2d, d / "txt_only", d / "out")]

    add("infer folder of .txt only", W, txt_folder, mention=("txt_only",))
    add("infer corrupt .nii.gz input", W, lambda fx, d: [infer(fx.seg2d, i("broken.nii.gz")(fx), d / "out")],
        mention=("broken.nii.gz",))
    add("infer missing checkpoint", W, lambda fx, d: [infer(d / "none.ckpt", i("ok2d.nii.gz")(fx), d / "out")],
        mention=("none.ckpt",))
    add("infer checkpoint is a folder", W, lambda fx, d: [infer(fx.inputs, i("ok2d.nii.gz")(fx), d / "out")],
        mention=("inputs",))
    add("infer checkpoint is a NIfTI file", W, lambda fx, d: [infer(i("ok2d.nii.gz")(fx), i("ok2d.nii.gz")(fx),
        d / "out")], mention=("ok2d.nii.gz",))
    add("infer 1-band GeoTIFF into a 3-band SR model", W, lambda fx, d: [infer(fx.sr, i("one_band.tif")(fx),
        d / "out")], mention=("one_band.tif", "3"))
    add("infer two inputs into one output file name", W, lambda fx, d: [infer(fx.seg2d, fx.seg_folder("clean"),
        d / "out" / "pred.nii.gz")], mention=("pred.nii.gz",))
    add("infer --steps x", W, lambda fx, d: [infer(fx.seg2d, i("ok2d.nii.gz")(fx), d / "out", "--no-progress",
        "--steps", "x", fast=False)], mention=("--steps",))
    add("infer --overlap x", W, lambda fx, d: [infer(fx.seg2d, i("ok2d.nii.gz")(fx), d / "out", "--overlap", "x")],
        mention=("--overlap",))
    add("infer without --checkpoint", W, lambda fx, d: [["infer", "--input", "x.nii.gz", "--output", "o"]],
        mention=("--checkpoint",))
    add("infer --unknown-flag", W, lambda fx, d: [infer(fx.seg2d, i("ok2d.nii.gz")(fx), d / "out", "--turbo")],
        mention=("--turbo",))
    add("unknown command", W, lambda fx, d: [["frobnicate"]], mention=("frobnicate",))
    add("fit unknown recipe name", W, lambda fx, d: [["fit", "--config", "segdiff_phantom9d"]],
        mention=("segdiff_phantom9d",))
    add("fit missing recipe file", W, lambda fx, d: [["fit", "--config", str(d / "nope.yaml")]],
        mention=("nope.yaml",))

    def bad_yaml(fx: Fixtures, d: Path) -> list[list[str]]:
        (d / "bad.yaml").write_text("model: [unclosed\n  - x: {\n")
        return [["fit", "--config", str(d / "bad.yaml")]]

    add("fit invalid YAML recipe", W, bad_yaml, mention=("bad.yaml",))

    def recipe_edit(edit: Callable[[dict], None]):
        def build(fx: Fixtures, d: Path) -> list[list[str]]:
            import yaml

            from medrs_diff.train.recipe import recipe_dir

            cfg = yaml.safe_load((recipe_dir() / "segdiff_phantom2d.yaml").read_text())
            edit(cfg)
            (d / "r.yaml").write_text(yaml.safe_dump(cfg))
            return [["fit", "--config", str(d / "r.yaml"), "--data.init_args.root", str(d / "data"),
                     "--trainer.default_root_dir", str(d / "out"), *FIT_FAST]]

        return build

    def set_method(cfg: dict) -> None:
        cfg["model"]["init_args"]["method"]["class_path"] = "medrs_diff.methods.segdiff.SegDif"

    def set_sampler(cfg: dict) -> None:
        cfg["model"]["init_args"]["val_sampler"] = "euler"

    def set_os_method(cfg: dict) -> None:
        cfg["model"]["init_args"]["method"]["class_path"] = "os.system"

    add("fit recipe with an unknown method", W, recipe_edit(set_method), fit=True, mention=("SegDif",))
    add("fit recipe with an unknown val_sampler", W, recipe_edit(set_sampler), fit=True, mention=("euler",))
    add("fit recipe whose method class_path is os.system", W, recipe_edit(set_os_method), fit=True,
        mention=("os.system",))
    add("fit unknown recipe key --model.init_args.lrr", "lightning args", lambda fx, d: [fit_cmd(
        d, d / "data", "--model.init_args.lrr", "1")], fit=True, mention=("lrr",))
    add("fit --trainer.max_steps x", "lightning args", lambda fx, d: [fit_cmd(d, d / "data", "--trainer.max_steps",
        "x")], fit=True, mention=("max_steps",))
    add("fit negative lr", W, lambda fx, d: [fit_cmd(d, fx.seg_folder("clean"), "--model.init_args.lr", "-1")],
        fit=True, mention=("lr",))
    add("fit mismatched spatial_dims (3-D recipe on 2-D data)", W, lambda fx, d: [fit_cmd(
        d, fx.seg_folder("clean"), recipe="segdiff_phantom3d")], fit=True, mention=("3-D",))
    add("evaluate missing prediction", W, ev("nope/case_a.nii.gz"), mention=("nope",))
    add("evaluate missing reference", W, lambda fx, d: [evaluate_cmd(fx.eval / "pred_ok", d / "noref", d)],
        mention=("noref",))
    add("evaluate folders with no common names", W, ev("pred_other", ref="ref"), mention=("case_",))
    add("evaluate empty prediction folder", W, ev("pred_dir_empty", ref="ref"), mention=("pred_dir_empty",))
    add("evaluate shape mismatch", W, ev("pred_shape/case_a.nii.gz"), mention=("case_a.nii.gz",))
    add("evaluate affine mismatch", W, ev("pred_affine/case_a.nii.gz"), mention=("case_a.nii.gz",))
    add("evaluate --task bogus", W, ev("pred_ok/case_a.nii.gz", task="bogus"), mention=("--task",))
    add("evaluate spectral without --data-range", W, ev("spec_pred.tif", ref="spec_ref.tif", task="spectral"),
        mention=("--data-range",))
    add("evaluate --data-range with --task seg", W, ev("pred_ok/case_a.nii.gz", "--data-range", "1"),
        mention=("--data-range",))
    add("evaluate --label-map 255-1 (bad syntax)", W, ev("pred_255/case_a.nii.gz", "--label-map", "255-1"),
        mention=("--label-map",))

    def eval_out_is_file(fx: Fixtures, d: Path) -> list[list[str]]:
        (d / "report").write_text("a file\n")
        return [["evaluate", str(fx.eval / "pred_ok" / "case_a.nii.gz"), str(fx.eval / "ref" / "case_a.nii.gz"),
                 "--task", "seg", "--out", str(d / "report")]]

    add("evaluate --out names an existing file", W, eval_out_is_file, mention=("report",))
    add("evaluate spectral with --data-range 1", W, ev("spec_pred.tif", "--data-range", "1", ref="spec_ref.tif",
        task="spectral"), expect="ok", check=lambda d, runs: None if list((d / "out").glob("*.json"))
        else "no json")

    # ok paths: the files each reader supports
    add("infer NIfTI 2-D (grid kept)", W, lambda fx, d: [infer(fx.seg2d, i("ok2d.nii.gz")(fx), d / "out")],
        expect="ok", check=lambda d, runs: same_grid("ok2d.nii.gz", d.parents[1] / "inputs" / "ok2d.nii.gz")(d, runs))
    add("infer NIfTI 3-D into a 3-D model (grid kept)", W, lambda fx, d: [infer(fx.seg3d, i("vol3d.nii.gz")(fx),
        d / "out")], expect="ok",
        check=lambda d, runs: same_grid("vol3d.nii.gz", d.parents[1] / "inputs" / "vol3d.nii.gz")(d, runs))
    add("infer GeoTIFF SR x4 (grid / 4)", W, lambda fx, d: [infer(fx.sr, i("lr.tif")(fx), d / "out")], expect="ok",
        check=lambda d, runs: same_grid("lr.tif", d.parents[1] / "inputs" / "lr.tif", 4)(d, runs))
    add("infer grayscale PNG", W, lambda fx, d: [infer(fx.seg2d, i("ok2d.png")(fx), d / "out")], expect="ok",
        check=outputs_exist("ok2d.png"))
    add("infer .npy image", W, lambda fx, d: [infer(fx.seg2d, i("ok2d.npy")(fx), d / "out")], expect="ok",
        check=outputs_exist("ok2d.npy"))
    add("infer RGB NIfTI into an RGB model", W, lambda fx, d: [infer(fx.seg2d_rgb, i("rgb24.nii.gz")(fx),
        d / "out")], expect="either", check=outputs_exist("rgb24.nii.gz"))
    return P


# -- running ---------------------------------------------------------------------------------------
def probe_dir(root: Path, index: int) -> Path:
    d = root / "probes" / f"p{index:03d}"
    d.mkdir(parents=True)
    return d


def run_probe(probe: Probe, d: Path, argvs: list[list[str]], env: dict[str, str]) -> Result:
    try:
        before = snapshot(d / "out")
        if probe.guard is not None:
            probe.guard(d)  # a guard may record the state before the run
        runs = []
        for k, argv in enumerate(argvs):
            if callable(argv):  # a step of the harness between two commands (copy a file, ...)
                argv()
                continue
            runs.append(run_command(argv, d, env, probe.timeout))
            r = runs[-1]
            (d / f"run{k}.log").write_text(f"$ medrs-diff {' '.join(argv)}\nexit {r.code}\n--- stdout\n{r.stdout}"
                                           f"\n--- stderr\n{r.stderr}")
            if r.code != 0:
                break
        return classify(probe, d, runs, before)
    except Exception as err:  # the harness records its own failure and goes on
        return Result(probe, "harness", None, f"{type(err).__name__}: {err}", [], "the harness failed")


def shorten(text: str, root: Path, limit: int = 220) -> str:
    text = " ".join(text.replace(str(root), "$W").split())
    text = text.replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def table(results: list[Result], root: Path, seconds: float, fixture_failures: dict[str, str]) -> str:
    counts = Counter(r.cls for r in results)
    lines = [
        "# Probe table: hostile inputs through the medrs-diff CLI (issue 11)",
        "",
        "`.venv/bin/python evaluation/probe_inputs.py` (CPU, `CUDA_VISIBLE_DEVICES=\"\"`, one thread per command). "
        "Class = the outcome observed (see the script's docstring); `$W` = the temporary work folder; "
        "'files left' = files the run created or changed under the probe's output folder (fit: checkpoints and "
        "temporaries only).",
        "",
        f"{len(results)} probes, {seconds:.0f} s: "
        + ", ".join(f"{counts[c]} {c}" for c in CLASSES if counts[c]),
        "",
        "| class | row | probe | exit | first line of the message | files left | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        left = f"{len(r.left)}: " + ", ".join(r.left[:3]) + (" ..." if len(r.left) > 3 else "") if r.left else "0"
        code = "timeout" if r.code is None and r.cls == "timeout" else ("-" if r.code is None else str(r.code))
        lines.append(f"| {r.cls} | {r.probe.row} | {shorten(r.probe.name, root, 90)} | {code} | "
                     f"{shorten(r.message, root)} | {shorten(left, root, 120)} | {shorten(r.note, root, 160)} |")
    lines += ["", "Counts per class and issue row:", "", "| row | " + " | ".join(CLASSES) + " |",
              "|---|" + "---|" * len(CLASSES)]
    for row in dict.fromkeys(r.probe.row for r in results):
        c = Counter(r.cls for r in results if r.probe.row == row)
        lines.append(f"| {row} | " + " | ".join(str(c[k]) if c[k] else "" for k in CLASSES) + " |")
    if fixture_failures:
        lines += ["", "Fixtures that could not be built:", ""]
        lines += [f"- {k}: {shorten(v, root, 400)}" for k, v in fixture_failures.items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=textwrap.dedent(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "evaluation" / "results"),
                        help="folder for probe_inputs.md (default: evaluation/results)")
    parser.add_argument("--only", default=None,
                        help="run only probes whose name or row holds one of these comma-separated substrings or globs")
    parser.add_argument("--jobs", type=int, default=2, help="probes run at once (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder (its path is printed)")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="medrs_probe_"))
    env = {k: v for k, v in os.environ.items() if k != "MEDRS_DIFF_TRACEBACK"}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0",
               HF_HUB_OFFLINE="1", COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    fx = Fixtures(root, env)
    selected = probes()
    if args.only:
        pats = [x.strip().lower() for x in args.only.split(",") if x.strip()]
        selected = [p for p in selected if any(x in p.name.lower() or x in p.row.lower()
                                               or fnmatch.fnmatch(p.name.lower(), x) for x in pats)]
    print(f"{len(selected)} probes; work folder {root}", file=sys.stderr, flush=True)

    # set-up (fixtures are built here, serially), then the commands in parallel
    jobs: list[tuple[int, Probe, Path, list[list[str]] | None, str]] = []
    for k, probe in enumerate(selected):
        d = probe_dir(root, k)
        try:
            jobs.append((k, probe, d, probe.build(fx, d), ""))
        except Exception as err:  # a missing fixture or a broken builder: recorded, not fatal
            jobs.append((k, probe, d, None, f"{type(err).__name__}: {err}"))
    print(f"set-up done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    def one(job: tuple) -> Result:
        k, probe, d, argvs, why = job
        if argvs is None:
            return Result(probe, "harness", None, why, [], "set-up failed")
        res = run_probe(probe, d, argvs, env)
        print(f"[{k + 1:3d}/{len(selected)}] {res.cls:11s} {probe.name} ({res.seconds:.1f} s)", file=sys.stderr,
              flush=True)
        return res

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, jobs))
    seconds = time.perf_counter() - t0
    text = table(results, root, seconds, fx.failures())
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "probe_inputs.md" if not args.only else "probe_inputs_only.md"
    (out / name).write_text(text)
    print(f"wrote {out / name}", file=sys.stderr)
    if args.keep:
        print(f"kept {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
