"""GeoTIFF datasets on TorchGeo: scaling, nodata masks, intersections, LR/HR pairs, samplers, errors."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import from_bounds

from medrs_diff.data import geo
from medrs_diff.data import keys as K
from medrs_diff.data import synthetic as S
from medrs_diff.data.errors import DataError
from medrs_diff.data.writers import write_geotiff

# rasterio / torchgeo internals multiply Affine objects with `*`, which affine 3 marks as pending deprecation
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


def _folder_of(path: str):
    from pathlib import Path

    return Path(path).parent


def test_dataset_sample_matches_file_window_in_model_space(synth):
    rec = synth["sr"][0]
    ds = geo.raster_dataset(_folder_of(rec[K.IMAGE]), scaling=S.OPTICAL_SCALING, all_bands=("B02", "B03", "B04", "B08"))
    q = next(iter(geo.grid_sampler(ds, 16, 16)))
    s = ds[q]
    assert s[K.IMAGE].shape == (4, 16, 16) and bool(s[K.MASK].all())
    with rasterio.open(rec[K.IMAGE]) as src:
        t = s[K.TRANSFORM]
        raw = src.read(window=from_bounds(t.c, t.f - 16 * 10, t.c + 16 * 10, t.f, src.transform))
    torch.testing.assert_close(s[K.IMAGE], torch.from_numpy(S.OPTICAL_SCALING.forward(raw)))
    assert s[K.scaling_key(K.IMAGE)] == S.OPTICAL_SCALING.to_dict()


def test_band_selection_by_name(synth):
    ds = geo.raster_dataset(_folder_of(synth["sr"][0][K.IMAGE]), bands=("B04", "B08"),
                            all_bands=("B02", "B03", "B04", "B08"))
    s = ds[next(iter(geo.grid_sampler(ds, 8)))]
    full = geo.raster_dataset(_folder_of(synth["sr"][0][K.IMAGE]), all_bands=("B02", "B03", "B04", "B08"))
    torch.testing.assert_close(s[K.IMAGE], full[next(iter(geo.grid_sampler(full, 8)))][K.IMAGE][2:])


def _scene(path, data, nodata=None, crs="EPSG:32633", transform=None):
    return write_geotiff(data, path, crs=crs, transform=transform or from_origin(500_000, 5_000_000, 10, 10),
                         nodata=nodata)


def test_nodata_and_nan_are_masked_never_nan(tmp_path):
    a = np.full((2, 32, 32), 500, np.uint16)
    a[:, :10, :] = 0
    _scene(tmp_path / "u16" / "a.tif", a, nodata=0)
    f = np.ones((1, 32, 32), np.float32)
    f[0, 5:9, 5:9] = np.nan
    _scene(tmp_path / "f32" / "f.tif", f)
    cases = ((tmp_path / "u16", (slice(0, 10), slice(None))), (tmp_path / "f32", (slice(5, 9), slice(5, 9))))
    for folder, bad in cases:
        ds = geo.raster_dataset(folder, scaling=S.OPTICAL_SCALING)
        s = ds[next(iter(geo.grid_sampler(ds, 32)))]
        assert bool(torch.isfinite(s[K.IMAGE]).all())
        assert not bool(s[K.MASK][0][bad].any()) and bool((s[K.IMAGE][:, ~s[K.MASK][0]] == 0).all())
        assert int(s[K.MASK].sum()) == 32 * 32 - s[K.MASK][0][bad].numel()


def test_all_nodata_file_is_refused(tmp_path):
    _scene(tmp_path / "scenes" / "empty.tif", np.zeros((1, 16, 16), np.uint16), nodata=0)
    with pytest.raises(DataError, match=r"empty\.tif: holds only nodata"):
        geo.raster_dataset(tmp_path / "scenes")
    _scene(tmp_path / "nan" / "nan.tif", np.full((1, 16, 16), np.nan, np.float32))
    with pytest.raises(DataError, match=r"nan\.tif: holds only nodata"):
        geo.raster_dataset(tmp_path / "nan")


def test_wrong_band_count_and_unknown_band(tmp_path, synth):
    _scene(tmp_path / "three" / "rgb.tif", np.ones((3, 16, 16), np.uint8))
    with pytest.raises(DataError, match=r"rgb\.tif: has 3 band\(s\) but 4 are expected"):
        geo.raster_dataset(tmp_path / "three", all_bands=("B02", "B03", "B04", "B08"))
    with pytest.raises(DataError, match=r"bands \['B12'\] are not among"):
        geo.raster_dataset(_folder_of(synth["sr"][0][K.IMAGE]), bands=("B12",),
                           all_bands=("B02", "B03", "B04", "B08"))


def test_per_image_scaling_is_refused_for_scenes(synth):
    with pytest.raises(DataError, match="use a fixed scaling"):
        geo.raster_dataset(_folder_of(synth["sr"][0][K.IMAGE]), scaling="minmax")


def test_no_matching_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no readable raster matches glob"):
        geo.raster_dataset(tmp_path / "empty")


def test_image_label_pair_and_cloud_sar_stack(synth):
    rec = synth["cloud"][0]
    root = _folder_of(rec[K.IMAGE])
    clear = geo.raster_dataset(root, filename_glob="*_clear.tif", scaling=S.OPTICAL_SCALING)
    cloudy = geo.raster_dataset(root, filename_glob="*_cloudy.tif", scaling=S.OPTICAL_SCALING)
    sar = geo.raster_dataset(root, filename_glob="*_sar.tif", scaling=S.SAR_SCALING)
    clouds = geo.raster_dataset(root, filename_glob="*_cloudmask.tif", is_image=False)
    pair = geo.pair_datasets(cloudy, clear)
    s = pair[next(iter(geo.random_sampler(pair, 24, 1)))]
    assert s[K.COND].shape == s[K.IMAGE].shape == (4, 24, 24)
    assert set(s) >= {K.COND, K.IMAGE, K.MASK, K.CRS, K.TRANSFORM, K.scaling_key(K.COND)}
    lab = geo.pair_datasets(cloudy, clouds, keys=(K.IMAGE, K.LABEL))[next(iter(geo.grid_sampler(pair, 48)))]
    assert lab[K.LABEL].shape == (48, 48) and lab[K.LABEL].dtype == torch.long
    # cloudy pixels are brighter than clear ones where the cloud mask says so
    full = pair[next(iter(geo.grid_sampler(pair, 48)))]
    m = lab[K.LABEL] > 0
    assert float((full[K.COND] - full[K.IMAGE])[:, m].mean()) > 0.3
    stack = geo.stack_datasets([cloudy, sar])
    st = stack[next(iter(geo.grid_sampler(stack, 48)))]
    assert st[K.IMAGE].shape == (6, 48, 48) and st[K.MASK].shape == (1, 48, 48)


def test_crs_mismatch_between_paired_inputs(tmp_path):
    a = _scene(tmp_path / "a" / "a.tif", np.ones((1, 16, 16), np.uint16))
    _scene(tmp_path / "b" / "b.tif", np.ones((1, 16, 16), np.uint16), crs="EPSG:32632")
    with pytest.raises(DataError, match=r"b\.tif: CRS EPSG:32632 differs from EPSG:32633 of .*a\.tif"):
        geo.pair_datasets(geo.raster_dataset(a.parent), geo.raster_dataset(tmp_path / "b"))


def test_grid_shift_and_resolution_mismatch(tmp_path):
    a = _scene(tmp_path / "a" / "a.tif", np.ones((1, 16, 16), np.uint16))
    _scene(tmp_path / "s" / "s.tif", np.ones((1, 16, 16), np.uint16), transform=from_origin(500_003, 5_000_000, 10, 10))
    _scene(tmp_path / "r" / "r.tif", np.ones((1, 8, 8), np.uint16), transform=from_origin(500_000, 5_000_000, 20, 20))
    da = geo.raster_dataset(a.parent)
    with pytest.raises(DataError, match=r"s\.tif: pixel grid is shifted by \(0\.300"):
        geo.pair_datasets(da, geo.raster_dataset(tmp_path / "s"))
    with pytest.raises(DataError, match=r"r\.tif: resolution \(20\.0, 20\.0\) differs"):
        geo.pair_datasets(da, geo.raster_dataset(tmp_path / "r"))


def test_sr_pairs_are_read_at_their_own_resolution_without_resampling(synth):
    root = _folder_of(synth["sr"][0][K.IMAGE]).parent
    hr = geo.raster_dataset(root / "hr", scaling=S.OPTICAL_SCALING)
    lr = geo.raster_dataset(root / "lr", scaling=S.OPTICAL_SCALING)
    pairs = geo.SRPairDataset(hr, lr)
    assert pairs.scale == 4
    qs = list(geo.random_sampler(pairs, 16, 4, seed=3))
    assert qs == list(geo.random_sampler(pairs, 16, 4, seed=3))  # reproducible from the seed
    for q in qs:
        s = pairs[q]
        assert s[K.IMAGE].shape == (4, 16, 16) and s[K.COND].shape == (4, 4, 4)
        t = s["cond_transform"]
        assert t.a == 40.0 and (t.c - 500_000.0) % 40 == 0  # on the LR pixel grid
        hr_t = s[K.TRANSFORM]
        assert (hr_t.c, hr_t.f) == (t.c, t.f)  # same ground
    with rasterio.open(synth["sr"][0][K.COND]) as src:  # exact LR pixels of the file
        s = pairs[next(iter(geo.grid_sampler(pairs, 32)))]
        raw = src.read(window=from_bounds(s["cond_transform"].c, s["cond_transform"].f - 320,
                                          s["cond_transform"].c + 320, s["cond_transform"].f, src.transform))
    torch.testing.assert_close(s[K.COND], torch.from_numpy(S.OPTICAL_SCALING.forward(raw)))


def test_patch_larger_than_every_scene(synth):
    ds = geo.raster_dataset(_folder_of(synth["sr"][0][K.IMAGE]))
    with pytest.raises(DataError, match=r"patch 64x64 px is larger than every scene"):
        geo.random_sampler(ds, 64, 4)
    with pytest.raises(DataError, match="larger than every scene"):
        geo.grid_sampler(ds, (16, 40))


def test_grid_sampler_covers_scene_and_loader_batches(synth):
    ds = geo.raster_dataset(_folder_of(synth["sr"][0][K.IMAGE]))
    sampler = geo.grid_sampler(ds, 16, 8)
    assert len(sampler) == 2 * 3 * 3  # two 32x32 scenes, 3 x 3 overlapping chips each
    batch = next(iter(geo.geo_loader(ds, sampler, batch_size=5)))
    assert batch[K.IMAGE].shape == (5, 4, 16, 16) and batch[K.MASK].shape == (5, 1, 16, 16)


def test_time_series_from_date_regex(tmp_path):
    for day, v in (("20240103", 3), ("20240101", 1), ("20240102", 2)):
        _scene(tmp_path / "ts" / f"S2_{day}.tif", np.full((2, 16, 16), v * 1000, np.uint16))
    ds = geo.raster_dataset(tmp_path / "ts", filename_regex=r"^S2_(?P<date>\d{8})\.tif$", scaling=S.OPTICAL_SCALING)
    ts = geo.time_series(ds, next(iter(geo.grid_sampler(ds, 16))))
    assert ts[K.IMAGE].shape == (3, 2, 16, 16)
    assert [str(t.date()) for t in ts[K.TIME]] == ["2024-01-01", "2024-01-02", "2024-01-03"]
    np.testing.assert_allclose(ts[K.IMAGE][:, 0, 0, 0].numpy(), [-0.8, -0.6, -0.4], atol=1e-6)


def test_bigearthnet_s1_s2_pairs(shared_data):
    root = shared_data / "bigearthnet_s1_s2"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    s2 = geo.bigearthnet_s2(root / "BigEarthNet-S2-Example")
    s1 = geo.bigearthnet_s1(root / "BigEarthNet-S1-Example")
    assert len(s2.index) == 6 and len(s1.index) == 6 and s2.res == (10.0, 10.0)
    s = s2[next(iter(geo.random_sampler(s2, 32, 1)))]
    assert s[K.IMAGE].shape == (12, 32, 32) and bool(torch.isfinite(s[K.IMAGE]).all())
    assert -1 <= float(s[K.IMAGE].min()) and float(s[K.IMAGE].max()) <= 1
    pair = geo.pair_datasets(s1, s2, spatial_only=True)
    p = pair[next(iter(geo.random_sampler(pair, 32, 1, seed=1)))]
    assert p[K.COND].shape == (2, 32, 32) and p[K.IMAGE].shape == (12, 32, 32)


@pytest.mark.parametrize("rel, nodata", [("landsat_rasterio/RGB.byte.tif", 0.0), ("sentinel1_pyrosar", -99.0)])
def test_real_scenes_with_nodata_are_masked(shared_data, rel, nodata):
    path = shared_data / rel
    if not path.exists():
        pytest.skip(f"{path} absent")
    folder, glob = (path, "*.tif") if path.is_dir() else (path.parent, path.name)
    ds = geo.raster_dataset(folder, filename_glob=glob)
    assert ds.nodata == nodata
    masks = [ds[q][K.MASK] for q in geo.grid_sampler(ds, 64)]
    frac = float(torch.cat([m.flatten() for m in masks]).float().mean())
    assert 0.05 < frac < 1.0  # real scenes have a nodata border that is masked
    assert all(bool(torch.isfinite(ds[q][K.IMAGE]).all()) for q in list(geo.grid_sampler(ds, 64))[:4])
