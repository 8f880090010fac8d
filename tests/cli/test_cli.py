"""Smoke and bad-input tests of every `medrs-diff` command (tiny recipes, a few steps)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch
import yaml

from medrs_diff.cli import main
from medrs_diff.train.recipe import recipe_dir

RECIPES_DIR = recipe_dir()
STEPS = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "2"]
FAST = [*STEPS, "--trainer.enable_progress_bar", "false"]
#: Lines the quiet output must not show (Lightning tips, pytree / LightningCLI warnings, a bar per step).
NOISE = ("💡 Tip", "litlogger", "litmodels", "LeafSpec", "LightningCLI's args parameter", "tensorboardX",
         "nvImageCodec", "it/s]", "Epoch 0:", "smaller than the logging interval")


def _fit(recipe: str, tmp: Path, *extra: str) -> Path:
    root = tmp / "run"
    rc = main(["fit", "--config", str(RECIPES_DIR / recipe), "--data.init_args.root", str(tmp / "data"),
               "--trainer.default_root_dir", str(root), *FAST, *extra])
    assert rc == 0
    (ckpt,) = root.rglob("last.ckpt")
    return ckpt


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    """`medrs-diff fit` as a user runs it (a subprocess, stdout a pipe, not a TTY, no progress flag), so
    its output can be checked for noise; returns (folder, last.ckpt, stdout + stderr)."""
    tmp = tmp_path_factory.mktemp("seg")
    root = tmp / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "medrs_diff.cli", "fit", "--config", "segdiff_phantom2d", "--data.init_args.root",
         str(tmp / "data"), "--trainer.default_root_dir", str(root), *STEPS, "--data.init_args.phantoms", "6"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ckpt,) = root.rglob("last.ckpt")
    return tmp, ckpt, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sr")
    return tmp, _fit("srdiff_synthetic.yaml", tmp, "--data.init_args.phantoms", "3",
                     "--model.init_args.method.init_args.pretrain_steps", "2")


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("segdiff", "srdiff", "segdiff_phantom2d.yaml", "srdiff_sentinel2.yaml", "dpm_solver_pp"):
        assert word in out


def test_samplers_table(capsys):
    assert main(["samplers", "--n", "300"]) == 0
    assert "| ddim-50 |" in capsys.readouterr().out


def test_fit_output_is_quiet_when_not_a_terminal(seg_run):
    _, _, output = seg_run
    noisy = [line for line in output.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, noisy
    assert "`Trainer.fit` stopped: `max_steps=4` reached." in output  # Lightning's own INFO lines stay


def test_validate_and_test_from_checkpoint(seg_run):
    tmp, ckpt, _ = seg_run
    for cmd in ("validate", "test"):
        assert main([cmd, "--config", str(RECIPES_DIR / "segdiff_phantom2d.yaml"), "--data.init_args.root",
                     str(tmp / "data"), "--trainer.default_root_dir", str(tmp / cmd), "--ckpt_path", str(ckpt),
                     "--trainer.enable_progress_bar", "false"]) == 0


def test_infer_nifti_keeps_geometry_and_evaluate(seg_run, tmp_path):
    tmp, ckpt, _ = seg_run
    src = sorted((tmp / "data").glob("*_image.nii.gz"))[-1]
    out = tmp_path / "pred.nii.gz"
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), "--steps", "3",
                 "--n-samples", "3", "--no-progress"]) == 0
    a, b = nib.load(str(src)), nib.load(str(out))
    assert b.shape == a.shape and np.allclose(a.affine, b.affine)
    assert set(np.unique(np.asarray(b.dataobj)).tolist()) <= {0.0, 1.0}
    unc = nib.load(str(tmp_path / "pred_uncertainty.nii.gz"))
    assert unc.shape == a.shape and np.allclose(unc.affine, a.affine)
    prob = nib.load(str(tmp_path / "pred_probability.nii.gz"))  # every declared output is written
    p = np.asarray(prob.dataobj)
    assert prob.shape == a.shape and np.allclose(prob.affine, a.affine) and p.min() >= 0 and p.max() <= 1
    label = src.with_name(src.name.replace("_image", "_label"))
    assert main(["evaluate", str(out), str(label), "--task", "seg", "--out", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "evaluation_seg.json").exists()


def test_infer_geotiff_super_resolution_grid(sr_run, tmp_path):
    tmp, ckpt = sr_run
    src = sorted((tmp / "data" / "lr").glob("*.tif"))[-1]
    out = tmp_path / "sr"
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(src.parent), "--output", str(out),
                 "--steps", "2", "--tile", "16", "--no-progress"]) == 0
    with rasterio.open(src) as s, rasterio.open(out / src.name) as o:
        assert o.crs == s.crs and o.count == s.count
        assert (o.height, o.width) == (4 * s.height, 4 * s.width)
        assert o.transform.a == pytest.approx(s.transform.a / 4) and o.transform.c == s.transform.c
        assert o.transform.f == s.transform.f
    assert (out / "uncertainty" / src.name).exists()
    names = sorted(p.name for p in src.parent.glob("*.tif"))  # every declared output, nothing else
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "uncertainty"])
    assert sorted(p.name for p in (out / "uncertainty").iterdir()) == names


def test_infer_reads_the_checkpoint_once(sr_run, tmp_path, monkeypatch):
    tmp, ckpt = sr_run
    src = sorted((tmp / "data" / "lr").glob("*.tif"))[-1]
    calls = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a[0]) or load(*a, **k))
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(tmp_path / "o.tif"),
                 "--steps", "2", "--tile", "16", "--no-progress"]) == 0
    assert [Path(c) for c in calls] == [Path(ckpt)]


def test_infer_wrong_channel_count_names_the_expected_one(sr_run, tmp_path, capsys):
    _, ckpt = sr_run
    bad = tmp_path / "one_band.tif"
    with rasterio.open(bad, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint16", crs="EPSG:32633",
                       transform=rasterio.transform.from_origin(0, 80, 10, 10)) as dst:
        dst.write(np.full((1, 8, 8), 1000, dtype=np.uint16))
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(bad), "--output", str(tmp_path / "o.tif"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "3" in err and "band" in err and not (tmp_path / "o.tif").exists()


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"medrs-diff {command}: error: "), err
    return err


def test_unknown_method_in_recipe_lists_valid_ones(tmp_path, capsys):
    cfg = yaml.safe_load((RECIPES_DIR / "segdiff_phantom2d.yaml").read_text())
    cfg["model"]["init_args"]["method"]["class_path"] = "medrs_diff.methods.segdiff.SegDif"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(path)]) == 2  # one line, exit 2, as every command
    err = _one_error_line(capsys, "fit")
    assert re.search("valid methods: .*SegDiff.*SRDiff", err)


def test_unknown_sampler_in_recipe_lists_valid_ones(tmp_path, capsys):
    cfg = yaml.safe_load((RECIPES_DIR / "segdiff_phantom2d.yaml").read_text())
    cfg["model"]["init_args"]["val_sampler"] = "euler"
    cfg["data"]["init_args"]["root"] = str(tmp_path / "d")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(path)]) == 2
    err = _one_error_line(capsys, "fit")
    assert re.search("unknown sampler 'euler'.*dpm_solver_pp", err)


def test_unknown_recipe_name_lists_packaged_ones(capsys):
    assert main(["fit", "--config", "segdiff_phantom9d"]) == 2
    assert "segdiff_phantom2d.yaml" in _one_error_line(capsys, "fit")


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--steps", "0", "argument --steps: must be an integer >= 1, got 0"),
    ("--n-samples", "-2", "argument --n-samples: must be an integer >= 1, got -2"),
    ("--tile", "0", "argument --tile: must be an integer >= 1, got 0"),
    ("--batch", "x", "argument --batch: must be an integer >= 1, got 'x'"),
    ("--overlap", "1", r"argument --overlap: must be in \[0, 1\) \(0 <= overlap < 1\), got 1.0"),
    ("--overlap", "-0.1", r"argument --overlap: must be in \[0, 1\)"),
    ("--sampler", "euler", "argument --sampler: unknown sampler 'euler'; choose one of .*dpm_solver_pp"),
])
def test_infer_numbers_are_checked_when_parsing(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exc:  # argparse: usage + one error line, exit 2, nothing read
        main(["infer", "--checkpoint", str(tmp_path / "none.ckpt"), "--input", str(tmp_path), "--output",
              str(tmp_path / "o"), flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert re.search("medrs-diff infer: error: " + message, err), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU is visible")
def test_infer_cuda_without_gpu_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["infer", "--checkpoint", str(tmp_path / "c.ckpt"), "--input", str(tmp_path), "--output",
              str(tmp_path / "o"), "--device", "cuda"])
    assert "argument --device: no GPU is visible" in capsys.readouterr().err


def test_infer_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["infer", "--checkpoint", str(tmp_path / "c.ckpt"), "--input", str(tmp_path), "--output",
                 str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "c.ckpt: checkpoint file not found" in _one_error_line(capsys, "infer")


def test_unknown_recipe_key_is_refused(tmp_path, capsys):
    assert main(["fit", "--config", str(RECIPES_DIR / "segdiff_phantom2d.yaml"), "--model.init_args.lrr", "1"]) == 2
    assert "Option 'lrr' is not accepted" in capsys.readouterr().err.strip().splitlines()[-1]


def test_checkpoint_of_another_method_is_refused(seg_run):
    from medrs_diff.train import CheckpointError, load_method_from_checkpoint

    _, ckpt, _ = seg_run
    with pytest.raises(CheckpointError, match="srdiff|SRDiff"):
        load_method_from_checkpoint(ckpt, expected="srdiff")


def test_quickstart_fast(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path / "qs"), "--fast"]) == 0
    report = tmp_path / "qs" / "report"
    assert (report / "metrics.json").exists() and (report / "segdiff_panel.png").exists()
    out = capsys.readouterr().out
    assert (report / "sr_panel.png").exists() and f"report: {report.resolve()}" in out
    assert "=== medrs-diff quick start ===" in out and not [ln for ln in out.splitlines() if "it/s]" in ln]
    # the SR rows side by side, and a plain verdict against bicubic that matches the numbers
    sr = json.loads((report / "metrics.json").read_text())["super_resolution"]["vs_baselines"]
    assert set(sr) == {"bicubic", "rrdb_regression", "tcdm"}
    above = sr["tcdm"]["psnr"] >= sr["bicubic"]["psnr"]
    assert ("above bicubic" in out) == above and ("BELOW bicubic" in out) == (not above)
