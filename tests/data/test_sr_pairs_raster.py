"""raster_sr_pairs: nodata-free tiles of one scene, LR = block mean, LR grid = HR grid x scale."""

import numpy as np
import pytest
from rasterio.transform import Affine, from_origin

from medrs_diff.data.errors import DataError
from medrs_diff.data.sr_pairs import raster_sr_pairs
from medrs_diff.io.geotiff import read_geotiff, write_geotiff


def test_tiles_skip_nodata_and_keep_the_grid(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(1, 255, (3, 16, 24)).astype(np.uint8)
    data[:, 9, 20] = 0  # one nodata pixel in tile (1, 2)
    scene = tmp_path / "scene.tif"
    tr = from_origin(500000.0, 4000000.0, 30.0, 30.0)
    write_geotiff(data, scene, crs="EPSG:32618", transform=tr, nodata=0)
    recs = raster_sr_pairs(scene, tmp_path / "pairs", tile=8, scale=4)
    names = [r["image"].rsplit("/", 1)[1] for r in recs]
    assert names == ["r00_c00.tif", "r00_c01.tif", "r00_c02.tif", "r01_c00.tif", "r01_c01.tif"]
    hr, lr = read_geotiff(recs[4]["image"]), read_geotiff(recs[4]["cond"])
    np.testing.assert_array_equal(hr.data, data[:, 8:16, 8:16])
    # LR = rounded 4 x 4 block mean, on a grid 4 times coarser from the tile's corner
    want = data[:, 8:16, 8:16].astype(float).reshape(3, 2, 4, 2, 4).mean(axis=(2, 4))
    np.testing.assert_array_equal(lr.data, np.clip(np.round(want), 1, 255).astype(np.uint8))
    assert hr.transform == tr @ Affine.translation(8, 8)
    assert lr.transform == hr.transform @ Affine.scale(4)
    with pytest.raises(DataError, match="no 32 x 32 tile"):
        raster_sr_pairs(scene, tmp_path / "none", tile=32, scale=4)
