"""Smoke and bad-input tests of every `medrs-diff` command (tiny recipes, a few steps)."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
import yaml

from medrs_diff.cli import RECIPES_DIR, main

FAST = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false"]


def _fit(recipe: str, tmp: Path, *extra: str) -> Path:
    root = tmp / "run"
    rc = main(["fit", "--config", str(RECIPES_DIR / recipe), "--data.init_args.root", str(tmp / "data"),
               "--trainer.default_root_dir", str(root), *FAST, *extra])
    assert rc == 0
    (ckpt,) = root.rglob("last.ckpt")
    return ckpt


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    return tmp, _fit("segdiff_phantom2d.yaml", tmp, "--data.init_args.phantoms", "6")


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


def test_validate_and_test_from_checkpoint(seg_run):
    tmp, ckpt = seg_run
    for cmd in ("validate", "test"):
        assert main([cmd, "--config", str(RECIPES_DIR / "segdiff_phantom2d.yaml"), "--data.init_args.root",
                     str(tmp / "data"), "--trainer.default_root_dir", str(tmp / cmd), "--ckpt_path", str(ckpt),
                     "--trainer.enable_progress_bar", "false"]) == 0


def test_infer_nifti_keeps_geometry_and_evaluate(seg_run, tmp_path):
    tmp, ckpt = seg_run
    src = sorted((tmp / "data").glob("*_image.nii.gz"))[-1]
    out = tmp_path / "pred.nii.gz"
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), "--steps", "3",
                 "--n-samples", "3", "--no-progress"]) == 0
    a, b = nib.load(str(src)), nib.load(str(out))
    assert b.shape == a.shape and np.allclose(a.affine, b.affine)
    assert set(np.unique(np.asarray(b.dataobj)).tolist()) <= {0.0, 1.0}
    unc = nib.load(str(tmp_path / "pred_uncertainty.nii.gz"))
    assert unc.shape == a.shape and np.allclose(unc.affine, a.affine)
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


def test_unknown_method_in_recipe_lists_valid_ones(tmp_path, capsys):
    cfg = yaml.safe_load((RECIPES_DIR / "segdiff_phantom2d.yaml").read_text())
    cfg["model"]["init_args"]["method"]["class_path"] = "medrs_diff.methods.segdiff.SegDif"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="valid methods: .*SegDiff.*SRDiff"):
        main(["fit", "--config", str(path)])


def test_unknown_sampler_in_recipe_lists_valid_ones(tmp_path):
    cfg = yaml.safe_load((RECIPES_DIR / "segdiff_phantom2d.yaml").read_text())
    cfg["model"]["init_args"]["val_sampler"] = "euler"
    cfg["data"]["init_args"]["root"] = str(tmp_path / "d")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="unknown sampler 'euler'.*dpm_solver_pp"):
        main(["fit", "--config", str(path)])


def test_unknown_recipe_key_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(RECIPES_DIR / "segdiff_phantom2d.yaml"), "--model.init_args.lrr", "1"])
    assert "lrr" in capsys.readouterr().err


def test_checkpoint_of_another_method_is_refused(seg_run):
    from medrs_diff.train import CheckpointError, load_method_from_checkpoint

    _, ckpt = seg_run
    with pytest.raises(CheckpointError, match="srdiff|SRDiff"):
        load_method_from_checkpoint(ckpt, expected="srdiff")


def test_quickstart_fast(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path / "qs"), "--fast"]) == 0
    report = tmp_path / "qs" / "report"
    assert (report / "metrics.json").exists() and (report / "segdiff_panel.png").exists()
    assert (report / "srdiff_panel.png").exists() and f"report: {report.resolve()}" in capsys.readouterr().out
