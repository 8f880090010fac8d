"""SpectralDiff through the inference entry point: a GeoTIFF cube in, a class-map GeoTIFF (codes 1..K, the label
values) and the class probabilities out, on the cube's grid, integer codes across overlapping windows; a cube with
another band count stops before any compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rasterio.transform import from_origin

from medrs_diff.data.hsi_classes import mixed_cube, smooth_endmembers
from medrs_diff.errors import DataError
from medrs_diff.inference.predictor import Predictor
from medrs_diff.io.geotiff import read_geotiff, write_geotiff
from medrs_diff.methods.spectraldiff import SpectralDiff


def test_infer_writes_a_class_map_geotiff(tmp_path):
    torch.manual_seed(0)
    m = SpectralDiff(bands=12, num_classes=3, channels=(4, 8), spatial_kernel=3, feature_timesteps=(5, 100),
                     feature_bins=2, pca_components=4, patch_size=5, dim=16, heads=2)
    sc = mixed_cube(smooth_endmembers(3, 12), (24, 24))
    x = torch.from_numpy(sc.cube * 2 - 1)
    m.fit_pca(m.features(x[None])[0].flatten(1).T)
    m.eval()
    transform = from_origin(5e5, 4e6, 20, 20)
    write_geotiff(sc.cube, tmp_path / "cube.tif", crs="EPSG:32610", transform=transform)
    p = Predictor.from_method(m, scaling="unit", patch_size=5, label_values=(1, 2, 3))  # index k -> code k + 1
    out = p.predict_files(tmp_path / "cube.tif", tmp_path / "out", tile=16)[0]  # overlapping windows
    cls, prob = read_geotiff(out["prediction"]), read_geotiff(out["probability"])
    assert cls.data.shape == (1, 24, 24) and set(np.unique(cls.data)) <= {1.0, 2.0, 3.0}
    assert cls.geometry.transform == transform and str(cls.geometry.crs) == "EPSG:32610"
    np.testing.assert_allclose(prob.data.sum(0), 1.0, atol=1e-5)
    one = p.predict_files(tmp_path / "cube.tif", tmp_path / "whole", tile=24)[0]  # one window: no vote, no blend
    np.testing.assert_array_equal(read_geotiff(one["prediction"]).data[0],
                                  read_geotiff(one["probability"]).data.argmax(0) + 1)
    write_geotiff(sc.cube[:10], tmp_path / "ten.tif", crs="EPSG:32610", transform=transform)
    with pytest.raises(DataError, match="12"):
        p.predict_files(tmp_path / "ten.tif", tmp_path / "out2", tile=24)
