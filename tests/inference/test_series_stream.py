"""Streamed series inference (SeqDMs): windows of every date read, packed, predicted and written strip by strip.

A deterministic stand-in method (per-pixel closed form plus noise drawn from each window's own generator)
checks that the streamed files equal the in-memory path (MONAI sliding windows over the whole stack) and a
numpy closed form, that host memory is bounded by a strip (tracemalloc), and that bad stacks stop before any
compute, with outputs appearing only when the whole scene succeeded."""

from __future__ import annotations

import csv
import tracemalloc

import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin

from medrs_diff.data import cloud
from medrs_diff.data import keys as K
from medrs_diff.data.cloud import read_series
from medrs_diff.errors import DataError
from medrs_diff.inference.series import infer_series_files, predict_series, read_stack
from medrs_diff.inference.tiling import STREAM_CACHE_MB
from medrs_diff.io.geotiff import write_geotiff
from medrs_diff.methods.base import IOSpec

BANDS = ["B02", "B03", "B04", "B11"]
GRID = dict(crs=CRS.from_epsg(32633), transform=from_origin(400000, 5000000, 10, 10))
Q = 1e4


class Standin(torch.nn.Module):
    """prediction: the cloud-free-weighted mean of the dates (+ 0.05 x mean S1 when given) + ``noise`` x N(0, 1)
    from each window's generator, in [-1, 1]; uncertainty: |that noise| / 2. Counts its calls; ``fail_at``
    raises on that call."""

    def __init__(self, sar: bool, noise: float = 0.05, fail_at: int | None = None) -> None:
        super().__init__()
        inputs = {K.COND: len(BANDS), K.CLOUD_MASK: 1, **({K.SAR: 2} if sar else {})}
        self.io_spec = IOSpec(inputs=inputs, outputs=("prediction", "uncertainty"),
                              extra={"size_multiple": 8, "sequence": True})
        self.noise, self.fail_at, self.calls = noise, fail_at, 0

    def predict(self, batch, *, sampler=None, steps=None, n_samples=None, generator=None):
        self.calls += 1
        self.cache = rasterio.env.getenv().get("GDAL_CACHEMAX") if rasterio.env.hasenv() else None
        if self.calls == self.fail_at:
            raise RuntimeError("window failed")
        s2, m = batch[K.COND], batch[K.CLOUD_MASK]
        w = 1.0 - m + 1e-3
        pred = (s2 * w).sum(1) / w.sum(1)
        if K.SAR in batch:
            pred = pred + 0.05 * batch[K.SAR].mean((1, 2))[:, None]
        z = torch.stack([torch.randn(pred.shape[1:], generator=g) for g in generator])
        return {"prediction": (pred + self.noise * z).clamp(-1, 1), "uncertainty": self.noise * z.abs() / 2}


def _stack(folder, dates=3, h=72, w=88, sar=True, masks=True, seed=0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for d in range(dates):
        s2 = rng.uniform(0.02, 0.6, (len(BANDS), h, w))
        write_geotiff((s2 * Q).astype(np.uint16), folder / f"2020010{d}_s2.tif", band_names=BANDS, **GRID)
        if sar:
            write_geotiff(rng.uniform(-25, -3, (2, h, w)).astype(np.float32), folder / f"2020010{d}_s1.tif", **GRID)
        if masks:
            write_geotiff((rng.uniform(size=(1, h, w)) < 0.3).astype(np.uint8), folder / f"2020010{d}_mask.tif",
                          **GRID)
    return folder


def _read(path):
    with rasterio.open(path) as f:
        return f.read(), dict(crs=f.crs, transform=f.transform, shape=f.shape, descriptions=f.descriptions,
                              tags=f.tags(), dtype=f.dtypes[0], nodata=f.nodata)


@pytest.mark.parametrize("sar,masks", [(True, True), (False, False)])
def test_streamed_equals_in_memory_and_the_closed_form(tmp_path, sar, masks):
    stack = _stack(tmp_path / "stack", sar=sar, masks=masks)
    kw = dict(tile=32, overlap=0.25, seed=3)
    paths = infer_series_files(Standin(sar), stack, tmp_path / "out", bands=BANDS, batch=3, **kw)
    clear, f = _read(paths["prediction"])
    unc, _ = _read(paths["uncertainty"])
    _, ref = _read(stack / "20200100_s2.tif")
    assert all(f[k] == ref[k] for k in ("crs", "transform", "shape", "descriptions"))
    assert f["tags"]["medrs_diff_units"] == "reflectance x 10000" and f["tags"]["medrs_diff_output"] == "prediction"
    assert f["dtype"] == "float32" and f["nodata"] is None
    # the in-memory path: the whole stack read, MONAI sliding windows, same windows and per-window seeds
    s2, s1, mk = read_stack(stack)
    series = read_series(s2, sar_paths=s1, mask_paths=mk, bands=BANDS)
    mem = predict_series(Standin(sar), series, batch=1, **kw)
    np.testing.assert_allclose(clear, mem["prediction"] * Q, rtol=1e-5, atol=0.05)  # DN
    np.testing.assert_allclose(unc, mem["uncertainty"] * Q, rtol=1e-5, atol=0.05)
    assert unc.max() > 10  # the windows' noise is there, and blended alike
    # without noise every window gives the per-pixel closed form, so the blend returns it exactly
    paths = infer_series_files(Standin(sar, noise=0.0), stack, tmp_path / "out0", bands=BANDS, batch=2, **kw)
    w = 1.0 - series.cloud + 1e-3
    x = 2.0 * np.clip(series.s2, 0, 1) - 1.0  # reflectance -> model space
    pred = (x * w).sum(0) / w.sum(0)
    if sar:
        lo, hi = np.array([-25.0, -32.5])[:, None, None], 0.0
        pred = pred + 0.05 * (2 * (np.clip(series.sar, lo, hi) - lo) / (hi - lo) - 1).mean((0, 1))
    expected = np.clip((pred + 1) / 2, 0, 1) * Q
    np.testing.assert_allclose(_read(paths["prediction"])[0], expected, rtol=1e-5, atol=0.02)
    assert np.all(_read(paths["uncertainty"])[0] == 0)


def test_peak_memory_is_bounded_by_a_strip(tmp_path, monkeypatch):
    h, w, dates = 1024, 64, 3
    stack = _stack(tmp_path / "tall", dates=dates, h=h, w=w)
    monkeypatch.setattr(cloud, "SCAN_BYTES", 64 * 1024)  # the value scan reads strips of this size
    s2, s1, mk = read_stack(stack)
    tracemalloc.start()
    try:
        read_series(s2, sar_paths=s1, mask_paths=mk, bands=BANDS)
        _, whole = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        infer_series_files(Standin(True), stack, tmp_path / "out", bands=BANDS, tile=32, batch=2)
        _, streamed = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    scene = dates * (len(BANDS) + 2 + 1) * h * w * 4  # float32 S2 + S1 + mask
    strip = dates * (len(BANDS) + 2 + 1) * 32 * w * 4
    assert whole > scene  # the measure sees the scene when it is read whole
    assert streamed < 6 * strip < scene / 4, (streamed, strip, scene)


def test_gdal_block_cache_is_capped_unless_the_user_set_it(tmp_path, monkeypatch):
    stack = _stack(tmp_path / "s", dates=2, h=16, w=16)
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    method = Standin(True)
    infer_series_files(method, stack, tmp_path / "a", bands=BANDS, tile=16)
    assert method.cache == STREAM_CACHE_MB
    monkeypatch.setenv("GDAL_CACHEMAX", "512")
    infer_series_files(method, stack, tmp_path / "b", bands=BANDS, tile=16)
    assert method.cache is None


def test_bad_stacks_stop_before_any_compute_naming_the_file(tmp_path):
    stack = _stack(tmp_path / "s", dates=2, h=80, w=40)
    method = Standin(True)
    out = tmp_path / "out"
    shifted = dict(GRID, transform=from_origin(400010, 5000000, 10, 10))
    write_geotiff(np.full((2, 80, 40), -10.0, np.float32), stack / "20200101_s1.tif", **shifted)
    with pytest.raises(DataError, match="20200101_s1.tif.*transform.*20200100_s2.tif"):
        infer_series_files(method, stack, out, bands=BANDS, tile=16)
    lin = np.full((2, 80, 40), -10.0, np.float32)
    write_geotiff(lin, stack / "20200101_s1.tif", **GRID)
    bad = _read(stack / "20200101_s2.tif")[0]
    bad[1, 70, 5] = 30000  # reflectance 3, far below the first strip
    write_geotiff(bad, stack / "20200101_s2.tif", band_names=BANDS, **GRID)
    with pytest.raises(DataError, match="20200101_s2.tif: S2 reaches 3: DN, not reflectance"):
        infer_series_files(method, stack, out, bands=BANDS, tile=16)
    bad = bad.astype(np.float32)
    bad[1, 70, 5] = np.nan
    write_geotiff(bad, stack / "20200101_s2.tif", band_names=BANDS, **GRID)
    with pytest.raises(DataError, match="20200101_s2.tif.*NaN or inf"):
        infer_series_files(method, stack, out, bands=BANDS, tile=16)
    write_geotiff(np.nan_to_num(bad).clip(0, Q).astype(np.uint16), stack / "20200101_s2.tif", band_names=BANDS, **GRID)
    lin = np.full((2, 80, 40), 0.05, np.float32)  # linear sigma0, not dB
    write_geotiff(lin, stack / "20200100_s1.tif", **GRID)
    with pytest.raises(DataError, match="20200100_s1.tif.*looks linear"):
        infer_series_files(method, stack, out, bands=BANDS, tile=16)
    (stack / "20200101_s1.tif").unlink()
    with pytest.raises(DataError, match="20200101_s1.tif.*missing.*some dates"):
        infer_series_files(method, stack, out, bands=BANDS, tile=16)
    assert method.calls == 0 and not out.exists()


def test_outputs_never_overwrite_inputs_and_appear_only_when_all_windows_succeed(tmp_path):
    stack = _stack(tmp_path / "s", dates=2, h=64, w=48)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="window failed"):  # a window of the second strip fails
        infer_series_files(Standin(True, fail_at=4), stack, out, bands=BANDS, tile=16, batch=2)
    assert out.is_dir() and not any(out.iterdir())  # no output, no temporary left
    # a manifest whose mask is named like an output in the output folder: refused before any compute
    (stack / "20200101_mask.tif").rename(stack / "20200100_s2_clear.tif")
    with open(stack / "m.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["s2", "s1", "mask"])
        wr.writerow(["20200100_s2.tif", "20200100_s1.tif", "20200100_mask.tif"])
        wr.writerow(["20200101_s2.tif", "20200101_s1.tif", "20200100_s2_clear.tif"])
    method = Standin(True)
    before = (stack / "20200100_s2_clear.tif").read_bytes()
    with pytest.raises(DataError, match="20200100_s2_clear.tif.*same file as an input"):
        infer_series_files(method, stack / "m.csv", stack, bands=BANDS, tile=16)
    assert method.calls == 0 and (stack / "20200100_s2_clear.tif").read_bytes() == before


def test_s2_nodata_is_missing_data_filled_from_other_dates_and_written_as_nodata(tmp_path):
    """A date's declared S2 nodata (65535, far outside reflectance) is cloud for that date, not reflectance: where
    other dates hold data the closed form uses only them; where no date does, both outputs are NaN (their declared
    nodata), in the streamed files and the in-memory path alike. A stack of nodata only is refused."""
    stack, h, w = tmp_path / "s", 48, 40
    folder = _stack(stack, dates=3, h=h, w=w, sar=False, masks=True)
    gone = {0: (slice(0, 16), slice(0, 40)), 1: (slice(8, 24), slice(0, 20)), 2: (slice(8, 16), slice(0, 10))}
    for d, (ys, xs) in gone.items():  # rows 8..15, cols 0..9 hold no data in any date
        a, _ = _read(folder / f"2020010{d}_s2.tif")
        a[:, ys, xs] = 65535
        a[0, 40, 30 + d] = 65535  # one band of one pixel: the pixel is missing for that date
        write_geotiff(a, folder / f"2020010{d}_s2.tif", band_names=BANDS, nodata=65535, **GRID)
    paths = infer_series_files(Standin(False, noise=0.0), folder, tmp_path / "out", bands=BANDS, tile=16, batch=2)
    clear, f = _read(paths["prediction"])
    assert np.isnan(f["nodata"]) and np.isnan(_read(paths["uncertainty"])[0][:, 8:16, :10]).all()
    none = np.zeros((h, w), bool)
    none[8:16, :10] = True
    assert np.isnan(clear[:, none]).all() and np.isfinite(clear[:, ~none]).all()
    s2, s1, mk = read_stack(folder)
    series = read_series(s2, sar_paths=s1, mask_paths=mk, bands=BANDS)
    assert series.nodata is not None and (series.nodata.all(0) == none).all()
    assert all(series.nodata[d, 40, 30 + d] for d in range(3)) and series.nodata[:, 40, 30:33].sum() == 3
    assert (series.cloud[:, 0][series.nodata] == 1).all()
    assert (series.s2.transpose(1, 0, 2, 3)[:, series.nodata] == 0).all()
    # the closed form over the dates holding data (missing dates weigh 1e-3, like clouds)
    w_ = 1.0 - series.cloud + 1e-3
    x = 2.0 * np.clip(series.s2, 0, 1) - 1.0
    expected = np.clip(((x * w_).sum(0) / w_.sum(0) + 1) / 2, 0, 1) * Q
    np.testing.assert_allclose(clear[:, ~none], expected[:, ~none], rtol=1e-5, atol=0.02)
    assert clear[:, ~none].max() < 0.6 * Q + 1  # 65535 never reached the model as reflectance 6.55
    mem = predict_series(Standin(False, noise=0.0), series, tile=16, batch=1)
    assert np.isnan(mem["prediction"][:, none]).all()
    np.testing.assert_allclose(clear[:, ~none], mem["prediction"][:, ~none] * Q, rtol=1e-5, atol=0.05)
    for d in range(3):
        write_geotiff(np.full((len(BANDS), h, w), 65535, np.uint16), folder / f"2020010{d}_s2.tif", band_names=BANDS,
                      nodata=65535, **GRID)
    method = Standin(False)
    with pytest.raises(DataError, match="20200100_s2.tif: every S2 date holds only nodata"):
        infer_series_files(method, folder, tmp_path / "out2", bands=BANDS, tile=16)
    assert method.calls == 0


def test_s1_nodata_is_absent_s1_never_nan_into_the_model(tmp_path):
    """Declared S1 nodata (-9999, outside the dB range, refused before; or NaN) is S1 missing there: NaN in the
    series, packed as zeros with the S1-present channel 0, and a window holding such a pixel sees that date without
    S1 (flag 0, zeros), as in training. Undeclared NaN in S1 is refused, naming the file."""
    folder = _stack(tmp_path / "s", dates=2, h=32, w=32, sar=True, masks=True)
    for d, (nd, fill) in enumerate([(-9999.0, -9999.0), (float("nan"), np.nan)]):
        a, _ = _read(folder / f"2020010{d}_s1.tif")
        a[:, :8, :8] = fill
        write_geotiff(a, folder / f"2020010{d}_s1.tif", nodata=nd, **GRID)
    s2, s1, mk = read_stack(folder)
    series = read_series(s2, sar_paths=s1, mask_paths=mk, bands=BANDS)
    gone = np.zeros((32, 32), bool)
    gone[:8, :8] = True
    assert all((np.isnan(series.sar[d]).all(0) == gone).all() for d in range(2))
    from medrs_diff.inference.series import pack, series_window_fn

    x, c = pack(series, 2)
    z = x.reshape(2, c + 4, 32, 32).numpy()
    assert np.isfinite(z).all() and (z[:, -1][:, gone] == 0).all() and (z[:, -1][:, ~gone] == 1).all()
    assert (z[:, c + 1:c + 3][:, :, gone] == 0).all()
    seen = []

    class Record(Standin):
        def predict(self, batch, **kw):
            seen.append((batch[K.SAR].clone(), batch[K.SAR_VALID].clone()))
            return super().predict(batch, **kw)

    fn = series_window_fn(Record(True), 2, c, 2)
    fn(torch.stack([x[:, :16, :16], x[:, 16:, 16:]]), [(0, 0), (16, 16)])
    sar, valid = seen[0]
    assert valid.tolist() == [[0.0, 0.0], [1.0, 1.0]] and (sar[0] == 0).all() and (sar[1] != 0).any()
    paths = infer_series_files(Standin(True), folder, tmp_path / "out", bands=BANDS, tile=16)
    assert np.isfinite(_read(paths["prediction"])[0]).all()
    a, _ = _read(folder / "20200101_s1.tif")
    write_geotiff(a, folder / "20200101_s1.tif", **GRID)  # the same NaN, no longer declared
    with pytest.raises(DataError, match="20200101_s1.tif: S1 holds NaN or inf that the file does not declare"):
        infer_series_files(Standin(True), folder, tmp_path / "out2", bands=BANDS, tile=16)
    with pytest.raises(DataError, match="t.tif: S1 holds NaN or inf"):  # training readers: never passed on
        cloud.check_s1_db(a, "t.tif")
