"""Cloud-removal time series: units (S1 dB detected by range, S2 reflectance), one clear error per bad input
(dates on different grids / CRSs, missing band, S1 in linear units, cloud mask of another size, empty
sequence), seeded procedural clouds with the asked coverage and shadows, variable-length collation, the
baselines' closed forms, and the real SEN12MS-CR / eo-learn / BigEarthNet readers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin

from medrs_diff.data import keys as K
from medrs_diff.data.cloud import (
    S2_L1C_BANDS,
    Series,
    check_s1_db,
    cover_bin,
    read_bigearthnet,
    read_eolearn,
    read_pairs,
    read_series,
    read_triplet,
    s1_scaling,
    scene_phantom,
    simulate_clouds,
)
from medrs_diff.datamodules.cloud import CloudSeriesDataModule, collate_series, series_item
from medrs_diff.errors import DataError
from medrs_diff.io.geotiff import write_geotiff
from medrs_diff.methods.cloud_baselines import least_cloudy_mosaic, temporal_median

UTM = CRS.from_epsg(32633)


def _s2(path, seed=0, transform=None, crs=UTM, bands=13, size=16):
    data = np.random.default_rng(seed).integers(100, 3000, (bands, size, size)).astype(np.uint16)
    return write_geotiff(data, path, crs=crs, transform=transform or from_origin(400000, 5000000, 10, 10))


def test_s1_units_detected_by_range():
    db = np.random.default_rng(0).uniform(-25, 0, (2, 8, 8))
    assert check_s1_db(db, "s1").dtype == np.float32
    with pytest.raises(DataError, match="looks linear.*10 \\* log10"):
        check_s1_db(10 ** (db / 10), "s1.tif")
    with pytest.raises(DataError, match="outside the dB range"):
        check_s1_db(np.full((2, 4, 4), -100.0) + np.arange(16).reshape(4, 4), "s1.tif")
    sc = s1_scaling()  # VV -25..0, VH -32.5..0 onto [-1, 1], clipped
    x = torch.tensor([[-25.0, 0.0, -40.0], [-32.5, 0.0, -16.25]]).view(2, 3, 1)
    assert torch.allclose(sc.forward(x), torch.tensor([[-1.0, 1.0, -1.0], [-1.0, 1.0, 0.0]]).view(2, 3, 1))


def test_series_from_geotiffs_and_one_error_per_bad_input(tmp_path):
    a, b = _s2(tmp_path / "d1.tif", 0), _s2(tmp_path / "d2.tif", 1)
    s = read_series([a, b])
    assert s.s2.shape == (2, 13, 16, 16) and s.cloud.shape == (2, 1, 16, 16) and s.crs == UTM
    assert np.allclose(s.s2.max(), 0.2999, atol=1e-3)  # DN / 1e4
    shifted = _s2(tmp_path / "shift.tif", 2, transform=from_origin(400005, 5000000, 10, 10))
    with pytest.raises(DataError, match="shift.tif.*transform.*d1.tif"):
        read_series([a, shifted])
    other = _s2(tmp_path / "crs.tif", 3, crs=CRS.from_epsg(32632))
    with pytest.raises(DataError, match="crs.tif.*CRS.*d1.tif"):
        read_series([a, other])
    short = _s2(tmp_path / "short.tif", 4, bands=4)
    with pytest.raises(DataError, match="short.tif.*band.*missing"):
        read_series([short], bands=("B02", "B11"))
    lin = write_geotiff(np.random.default_rng(0).uniform(0, 0.3, (2, 16, 16)).astype(np.float32), tmp_path / "s1.tif",
                        crs=UTM, transform=from_origin(400000, 5000000, 10, 10))
    with pytest.raises(DataError, match="s1.tif.*linear"):
        read_series([a], sar_paths=[lin])
    m = write_geotiff(np.zeros((1, 8, 8), np.float32), tmp_path / "m.tif", crs=UTM,
                      transform=from_origin(400000, 5000000, 10, 10))
    with pytest.raises(DataError, match="m.tif.*cloud mask size"):
        read_series([a], mask_paths=[m])
    with pytest.raises(DataError, match="empty"):
        read_series([])


def test_series_checks_its_arrays():
    s2 = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(DataError, match="cloud mask shape"):
        Series(s2=s2, cloud=np.zeros((2, 1, 4, 4)))
    with pytest.raises(DataError, match="empty"):
        Series(s2=s2[:0], cloud=np.zeros((0, 1, 8, 8)))
    s = Series(s2=s2, cloud=np.stack([np.ones((1, 8, 8)), np.zeros((1, 8, 8))]))
    assert s.cover == 0.0  # every pixel clear in the second date


def test_simulated_clouds_are_seeded_with_the_asked_cover_and_shadows():
    clear, _ = scene_phantom(64, 13, 0)
    c1, m1 = simulate_clouds(clear, np.random.default_rng(5), coverage=0.4)
    c2, m2 = simulate_clouds(clear, np.random.default_rng(5), coverage=0.4)
    assert np.array_equal(c1, c2) and np.array_equal(m1, m2)
    assert 0.35 < m1.mean() < 0.75  # cloud (~0.4 + soft edge) plus shadow
    d = np.abs(c1 - clear)[:, m1[0] == 0]  # outside the mask: opacity < 0.1, so nearly untouched
    assert d.max() < 0.1 and d.mean() < 0.01
    nocloud, m0 = simulate_clouds(clear, np.random.default_rng(1), coverage=0.0)
    assert m0.sum() == 0 and np.allclose(nocloud, clear, atol=1e-6)
    full, mf = simulate_clouds(clear, np.random.default_rng(1), coverage=1.0)
    assert mf.all() and full[1].std() < 1e-6  # one flat bright cloud
    assert cover_bin(0.05) == "0-10%" and cover_bin(0.95) == "90-100%" and cover_bin(1.0) == "90-100%"


def test_variable_length_sequences_are_padded():
    clear, sar = scene_phantom(8, 3, 0)
    items = [series_item(clear, np.stack([clear] * t), np.zeros((t, 1, 8, 8)), None if t == 1 else
                         np.stack([sar] * t), "x") for t in (1, 3)]
    b = collate_series(items)
    assert b[K.COND].shape == (2, 3, 3, 8, 8)
    assert b[K.DATE_VALID].tolist() == [[True, False, False], [True, True, True]]
    assert b[K.SAR_VALID].tolist() == [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]


def test_data_module_items_are_seeded_and_in_model_space():
    dm = CloudSeriesDataModule(bands=("B02", "B03", "B04"), patch_size=16, phantoms=2, phantom_size=32,
                               min_dates=2, max_dates=2, batch_size=2)
    dm.setup()
    a, b = dm.train_dataset[3], dm.train_dataset[3]
    assert torch.equal(a[K.COND], b[K.COND]) and a[K.COND].shape == (2, 3, 16, 16)
    assert a[K.IMAGE].abs().max() <= 1 and a[K.SAR].abs().max() <= 1 and a[K.SAR_VALID].tolist() == [1.0, 1.0]
    assert a[K.scaling_key(K.IMAGE)]["kind"] == "reflectance"


def test_baselines_closed_forms():
    cond = torch.stack([torch.full((1, 1, 2, 2), v) for v in (1.0, 2.0, 3.0)], dim=1)  # (1, 3, 1, 2, 2)
    mask = torch.zeros(1, 3, 1, 2, 2)
    mask[0, 0, 0, 0, 0] = 1  # date 0 cloudy at (0, 0)
    mask[0, 1] = 1  # date 1 all cloudy
    mask[0, 2, 0, 1] = 1  # date 2 half cloudy (bottom row)
    mosaic = least_cloudy_mosaic(cond, mask)
    assert mosaic[0, 0].tolist() == [[3.0, 1.0], [1.0, 1.0]]  # date 0, where cloudy date 2
    med = temporal_median(cond, mask)
    assert med[0, 0].tolist() == [[3.0, 1.0], [1.0, 1.0]]  # (0, 1): lower median of {1, 3}
    allc = temporal_median(cond, torch.ones_like(mask))
    assert allc[0, 0].tolist() == [[2.0, 2.0], [2.0, 2.0]]  # nothing clear: median of every date


def test_real_triplets_pairs_eolearn_bigearthnet(shared_data):
    s = read_triplet(shared_data / "sen12mscr_triplets", "6553")
    assert s.s2.shape == (1, 13, 256, 256) and s.sar.shape == (1, 2, 256, 256)
    assert 0.1 < s.cover < 0.25 and s.target.max() < 1  # README: cloud fraction 0.17, reflectance
    pairs = read_pairs(shared_data / "sen12mscr_pairs", ("B02", "B03", "B04", "B11"))
    assert len(pairs) == 12 and {c for c, _ in pairs} == {"ok", "high_cp", "low_cp", "untagged"}
    assert pairs[0][1].crs is not None and pairs[0][1].s2.shape == (1, 4, 256, 256)
    eo = read_eolearn(shared_data / "sentinel2_eolearn")
    assert eo.shape == (5, 13, 101, 100)
    big = read_bigearthnet(shared_data / "bigearthnet_s1_s2", ("B02", "B11"))
    assert len(big) == 6 and big[0][1].shape == (2, 120, 120) and big[0][2].shape == (2, 120, 120)
    with pytest.raises(DataError, match="B10.*missing"):
        read_bigearthnet(shared_data / "bigearthnet_s1_s2", ("B10",))
    assert S2_L1C_BANDS.index("B10") == 10
