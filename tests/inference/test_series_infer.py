"""``medrs-diff infer`` on a stack of GeoTIFFs (SeqDMs): a trained recipe's checkpoint turns S2 dates + S1 + cloud
masks (manifest or naming pattern) into a clear S2 GeoTIFF and an uncertainty GeoTIFF on the S2 grid, tiled;
bad stacks stop with one clear error naming the file."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from medrs_diff.cli import main
from medrs_diff.data.cloud import scene_phantom, simulate_clouds
from medrs_diff.errors import DataError
from medrs_diff.inference.series import read_stack
from medrs_diff.io.geotiff import write_geotiff
from medrs_diff.train.recipe import recipe_dir

BANDS12 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
GRID = dict(crs=CRS.from_epsg(32633), transform=from_origin(400000, 5000000, 10, 10))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seqdm_fit")
    argv = ["fit", "--config", str(recipe_dir() / "seqdm_sen12mscr_phantom.yaml"), "--trainer.default_root_dir",
            str(tmp), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
            "--data.init_args.samples_per_epoch", "4", "--data.init_args.batch_size", "2"]
    try:
        assert main(argv) in (0, None)
    except SystemExit as err:
        assert err.code in (0, None)
    return sorted(tmp.rglob("last.ckpt"))[0]


def _stack(folder, dates=2, size=40):
    folder.mkdir()
    clear, sar = scene_phantom(size, 12, 0)
    rng = np.random.default_rng(0)
    for d in range(dates):
        cloudy, mask = simulate_clouds(clear, rng, coverage=0.4, bands=BANDS12)
        write_geotiff((cloudy * 1e4).astype(np.uint16), folder / f"2020010{d}_s2.tif", band_names=BANDS12, **GRID)
        write_geotiff(sar, folder / f"2020010{d}_s1.tif", **GRID)
        write_geotiff(mask, folder / f"2020010{d}_mask.tif", **GRID)
    return folder


def test_infer_writes_clear_and_uncertainty_on_the_s2_grid(checkpoint, tmp_path):
    stack = _stack(tmp_path / "stack")
    out = tmp_path / "out"
    rc = main(["infer", "--checkpoint", str(checkpoint), "--input", str(stack), "--output", str(out),
               "--tile", "32", "--steps", "2", "--n-samples", "2", "--device", "cpu", "--no-progress"])
    assert rc in (0, None)
    clear, unc = out / "20200100_s2_clear.tif", out / "20200100_s2_uncertainty.tif"
    with rasterio.open(clear) as a, rasterio.open(unc) as u, rasterio.open(stack / "20200100_s2.tif") as ref:
        assert a.crs == ref.crs and a.transform == ref.transform and a.shape == ref.shape and a.count == 12
        assert u.shape == ref.shape and a.descriptions[0] == "B01"
        x, s = a.read(), u.read()
    assert np.isfinite(x).all() and 0 <= x.min() and x.max() <= 1e4  # DN
    assert (s >= 0).all() and s.max() > 0  # two chains differ
    # the same stack through a manifest gives the same files' content (same seed)
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["s2", "s1", "mask"])
        for d in range(2):
            w.writerow([f"stack/2020010{d}_s2.tif", f"stack/2020010{d}_s1.tif", f"stack/2020010{d}_mask.tif"])
    main(["infer", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "m.csv"), "--output",
          str(tmp_path / "out2"), "--tile", "32", "--steps", "2", "--n-samples", "2", "--device", "cpu",
          "--no-progress"])
    with rasterio.open(tmp_path / "out2" / "20200100_s2_clear.tif") as b:
        assert np.array_equal(b.read(), x)


def test_infer_reads_the_checkpoint_once(checkpoint, tmp_path, monkeypatch):
    import torch

    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    main(["infer", "--checkpoint", str(checkpoint), "--input", str(_stack(tmp_path / "stack", size=16)), "--output",
          str(tmp_path / "out"), "--tile", "16", "--steps", "1", "--n-samples", "1", "--device", "cpu",
          "--no-progress"])
    assert (tmp_path / "out" / "20200100_s2_clear.tif").is_file() and len(loads) == 1, loads


def test_bad_stacks_name_the_file(tmp_path):
    stack = _stack(tmp_path / "s", dates=2, size=16)
    (stack / "20200101_mask.tif").unlink()
    with pytest.raises(DataError, match="20200101_mask.tif.*missing"):
        read_stack(stack)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty sequence"):
        read_stack(tmp_path / "empty")
