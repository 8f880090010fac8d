"""The RDDM and pyramid recipe switches end to end through the CLI: ``fit`` (two steps) then ``medrs-diff infer`` on
a phantom GeoTIFF (srdiff_rddm_synthetic: its LR scene, written x4 on the HR grid; sar_ddpm_rddm_s1_phantom: a dB
scene, despeckled in dB on its grid), and ``medrs-diff generate`` on the pyramid mask checkpoint (masks of the
training size, inside the FOV). The checkpoints rebuild the switched methods."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_recipes import run_lightning, smoke_args

from medrs_diff.cli import main
from medrs_diff.io.geotiff import read_geotiff, write_geotiff
from medrs_diff.train.checkpoint import load_method_from_checkpoint
from medrs_diff.train.recipe import recipe_dir

pytestmark = pytest.mark.usefixtures("one_thread")


def _fit(name: str, tmp_path):
    assert run_lightning(smoke_args(recipe_dir() / f"{name}.yaml", tmp_path)) == 0
    return sorted((tmp_path / "run").rglob("last.ckpt"))[0]


def test_srdiff_rddm_fits_and_infers_a_phantom_geotiff(tmp_path):
    ckpt = _fit("srdiff_rddm_synthetic", tmp_path)
    method = load_method_from_checkpoint(ckpt)
    assert method.process == "rddm" and method.unet.cond_channels == 3
    lr = sorted((tmp_path / "data" / "lr").glob("*.tif"))[0]
    src = read_geotiff(lr)
    out = tmp_path / "out"
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(lr), "--output", str(out),
                 "--steps", "2"]) in (0, None)
    got = read_geotiff(next(out.glob("*.tif")))
    assert got.data.shape == (src.data.shape[0], 4 * src.data.shape[1], 4 * src.data.shape[2])
    assert np.isfinite(got.data).all()
    assert got.geometry.crs == src.geometry.crs
    assert got.geometry.transform.a == pytest.approx(src.geometry.transform.a / 4)
    # a VP sampler is refused under rddm, before any compute, naming the argument
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(lr), "--output", str(tmp_path / "o2"),
                 "--sampler", "dpm_solver_pp"]) == 2


def test_sar_rddm_fits_and_infers_db_on_the_grid(tmp_path):
    from affine import Affine

    ckpt = _fit("sar_ddpm_rddm_s1_phantom", tmp_path)
    assert load_method_from_checkpoint(ckpt).process == "rddm"
    rng = np.random.default_rng(0)
    scene = np.clip(-12 + 10 * np.log10(rng.exponential(1.0, (1, 40, 48))), -25, 0).astype(np.float32)
    transform = Affine(20.0, 0, 620000.0, 0, -20.0, 4830000.0)
    (tmp_path / "in").mkdir()
    write_geotiff(scene, tmp_path / "in" / "s1.tif", crs="EPSG:32631", transform=transform)
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(tmp_path / "in" / "s1.tif"),
                 "--output", str(tmp_path / "out"), "--steps", "2"]) in (0, None)
    out = read_geotiff(next((tmp_path / "out").glob("s1*.tif")))
    assert out.data.shape == (1, 40, 48) and out.geometry.transform == transform
    assert np.isfinite(out.data).all() and out.data.min() >= -25 - 1e-4 and out.data.max() <= 1e-4


def test_pyramid_mask_checkpoint_generates(tmp_path):
    from medrs_diff.io.image2d import read_image2d

    ckpt = _fit("retinal_mask_ddpm_pyramid_hrf_phantom", tmp_path)
    method = load_method_from_checkpoint(ckpt)
    assert method.pyramid == ((0.25, 0.5, 1.0), (500, 500)) and method.size_multiple == 16
    out = tmp_path / "synth"
    assert main(["generate", "--checkpoint", str(ckpt), "--n", "2", "--output", str(out), "--sampler", "ddim",
                 "--steps", "2"]) in (0, None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["size"] == [64, 64]
    for f in manifest["files"]:
        mask = np.asarray(read_image2d(out / f["mask"]).data)
        fov = np.asarray(read_image2d(out / f["fov"]).data)
        assert mask.shape[-2:] == (64, 64) and set(np.unique(mask)) <= {0, 255}
        assert not (mask[fov == 0] > 0).any()
    # a size the coarsest scale cannot take is refused, naming the argument
    assert main(["generate", "--checkpoint", str(ckpt), "--n", "1", "--output", str(tmp_path / "s2"),
                 "--size", "40", "40"]) == 2
