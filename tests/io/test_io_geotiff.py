"""GeoTIFF / plain TIFF through the registry: (band, y, x), CRS / transform / nodata / band names kept."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import Affine, from_origin

from medrs_diff import io
from medrs_diff.data import readers
from medrs_diff.data.scaling import Scaling
from medrs_diff.errors import DataError
from medrs_diff.io import geotiff


def test_round_trip_keeps_crs_transform_nodata_band_names_tags_and_scaling(tmp_path):
    data = np.random.default_rng(2).normal(size=(3, 7, 9)).astype(np.float32)
    t = from_origin(399_960.0, 5_000_040.0, 10.0, 20.0)  # non-square pixels
    record = {"kind": "db", "offset": [-12.5], "scale": [12.5], "clip_min": [-25.0], "clip_max": [0.0]}
    src = geotiff.write_geotiff(data, tmp_path / "a.tif", crs="EPSG:32631", transform=t, nodata=-99.0,
                                band_names=["VV", "VH", "ratio"], tags={"SENSOR": "S1A"}, scaling=record)
    a = io.read(src)
    g = a.geometry
    assert g.layout == ("band", "y", "x") and g.crs.to_epsg() == 32631 and g.transform == t
    assert g.nodata == -99.0 and g.band_names == ("VV", "VH", "ratio") and g.spacing == (20.0, 10.0)
    assert g.extra["tags"]["SENSOR"] == "S1A" and g.extra["scaling"] == record
    b = io.read(io.write(tmp_path / "b.tiff", a.data + 1, g, inputs=[src]))
    np.testing.assert_array_equal(b.data, data + 1)
    assert (b.geometry.crs, b.geometry.transform, b.geometry.nodata, b.geometry.band_names) == \
        (g.crs, g.transform, g.nodata, g.band_names)
    assert b.geometry.extra["tags"]["SENSOR"] == "S1A"
    assert readers.read_geotiff_scaling(b.path) == Scaling.from_dict(record)


def test_fewer_output_bands_drop_the_band_names_but_keep_the_grid(tmp_path):
    src = geotiff.write_geotiff(np.ones((2, 4, 4), np.uint16), tmp_path / "a.tif", crs="EPSG:4326",
                                transform=from_origin(5, 50, 0.1, 0.1), band_names=["B04", "B08"])
    g = io.read(src).geometry
    out = io.read(io.write(tmp_path / "ndvi.tif", np.zeros((4, 4), np.float32), g))
    assert out.shape == (1, 4, 4) and out.geometry.transform == g.transform and out.geometry.band_names == (None,)


def test_plain_tiff_is_read_by_the_same_format_without_georeference(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "fundus.tif")  # a clinical TIFF written by Pillow
    f = io.read(tmp_path / "fundus.tif")
    assert f.kind == "geotiff" and f.geometry.crs is None and f.geometry.transform is None
    assert not f.geometry.georeferenced and f.geometry.spacing is None
    np.testing.assert_array_equal(f.data, np.moveaxis(rgb, -1, 0))
    back = io.read(io.write(tmp_path / "copy.tif", f.data, f.geometry))
    np.testing.assert_array_equal(back.data, f.data)
    assert back.geometry.crs is None and back.geometry.transform is None
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "copy.tif")), rgb)  # other readers agree


def test_crs_without_transform_is_refused(tmp_path):
    with pytest.raises(DataError, match="no transform given"):
        geotiff.write_geotiff(np.zeros((1, 2, 2)), tmp_path / "x.tif", crs="EPSG:4326")


def test_real_scene_matches_rasterio_and_round_trips(shared_data, tmp_path):
    src = shared_data / "landsat_rasterio" / "RGB.byte.tif"
    if not src.exists():
        pytest.skip(f"{src} absent")
    f = io.read(src)
    with rasterio.open(src) as ref:
        assert f.shape == (ref.count, ref.height, ref.width)
        assert (f.geometry.crs, f.geometry.transform, f.geometry.nodata) == (ref.crs, ref.transform, ref.nodata)
        assert f.geometry.spacing == (abs(ref.transform.e), abs(ref.transform.a))
    b = io.read(io.write(tmp_path / "copy.tif", f.data, f.geometry, inputs=[src]))
    np.testing.assert_array_equal(b.data, f.data)
    assert (b.geometry.crs, b.geometry.transform, b.geometry.nodata) == (f.geometry.crs, f.geometry.transform,
                                                                          f.geometry.nodata)
    assert isinstance(b.geometry.transform, Affine)
