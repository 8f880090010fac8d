"""BlindSRSNF through the Predictor on GeoTIFF: outputs on the x4 finer grid in the input's units; a 16-bit
GeoTIFF given to a model trained on 8-bit data (scaling dn8) is refused before any compute."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from medrs_diff.errors import DataError
from medrs_diff.inference import Predictor
from medrs_diff.methods import BlindSRSNF
from medrs_diff.train.checkpoint import method_config

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

TINY = dict(channels=(8, 16), num_res_blocks=1, norm_num_groups=8, rrdb_blocks=1, rrdb_features=8, rrdb_growth=4,
            deg_dim=8, deg_width=8, queue_size=8, timesteps=50)


def _checkpoint(method, path, scaling, patch_size):
    """A checkpoint as `medrs-diff fit` writes it, reduced to what inference reads."""
    torch.save({"state_dict": {f"method.{k}": v for k, v in method.state_dict().items()},
                "hyper_parameters": {"method": method_config(method)},
                "datamodule_hyper_parameters": {"scaling": scaling, "patch_size": patch_size}}, path)
    return path


def _geotiff(path, a, res=40.0):
    transform = from_origin(300_000, 5_000_000, res, res)
    with rasterio.open(path, "w", driver="GTiff", width=a.shape[2], height=a.shape[1], count=a.shape[0],
                       dtype=a.dtype.name, crs="EPSG:32633", transform=transform) as dst:
        dst.write(a)


def test_geotiff_infer_on_the_finer_grid(tmp_path):
    torch.manual_seed(0)
    m = BlindSRSNF(in_channels=4, scale=4, **TINY).eval()
    ckpt = _checkpoint(m, tmp_path / "b.ckpt", "reflectance", 32)
    a = np.random.default_rng(0).integers(300, 3000, (4, 12, 16)).astype(np.uint16)
    _geotiff(tmp_path / "lr.tif", a)
    p = Predictor.from_checkpoint(ckpt)
    assert p.io_spec.grid_factor == 4
    (paths,) = p.predict_files(tmp_path / "lr.tif", tmp_path / "sr", steps=2, seed=0)
    with rasterio.open(paths["prediction"]) as r:
        out = r.read()
        assert out.shape == (4, 48, 64) and r.crs.to_epsg() == 32633
        assert r.transform.a == pytest.approx(10.0) and r.transform.c == 300_000 and r.transform.f == 5_000_000
    assert np.isfinite(out).all() and 0 <= out.min() and out.max() <= 1e4  # reflectance DN, the model's range


def test_sixteen_bit_geotiff_into_an_eight_bit_model_is_refused(tmp_path):
    m = BlindSRSNF(in_channels=3, scale=4, **TINY).eval()
    ckpt = _checkpoint(m, tmp_path / "b8.ckpt", "dn8", 32)
    _geotiff(tmp_path / "ok.tif", np.full((3, 12, 12), 200, np.uint8))
    _geotiff(tmp_path / "deep.tif", np.full((3, 12, 12), 4000, np.uint16))
    p = Predictor.from_checkpoint(ckpt)
    with pytest.raises(DataError, match=r"deep.tif: values reach 4000, above 255, the top of the dn8 range.*8-bit"):
        p.predict_files(tmp_path, tmp_path / "out", steps=2)
    assert not (tmp_path / "out" / "ok.tif").exists()  # checked before any file is computed
