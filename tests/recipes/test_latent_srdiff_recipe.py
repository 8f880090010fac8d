"""Latent SRDiff end to end: ``fit`` autoencoder_kl_sentinel2_phantom, ``fit`` latent_srdiff_sentinel2_phantom on its
checkpoint, delete the autoencoder file, then ``medrs-diff infer`` on an LR GeoTIFF through the latent checkpoint:
an x4 GeoTIFF on the HR grid (CRS kept, pixel size / 4), finite, with its uncertainty beside it."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from test_recipes import run_lightning, smoke_args

from medrs_diff.cli import main
from medrs_diff.train.recipe import recipe_dir


def test_latent_srdiff_checkpoint_infers_a_geotiff_without_the_autoencoder_file(tmp_path):
    assert run_lightning(smoke_args(recipe_dir() / "autoencoder_kl_sentinel2_phantom.yaml", tmp_path / "ae")) == 0
    ae = sorted((tmp_path / "ae" / "run").rglob("last.ckpt"))[0]
    args = smoke_args(recipe_dir() / "latent_srdiff_sentinel2_phantom.yaml", tmp_path / "sr")
    assert run_lightning([*args, "--model.init_args.method.init_args.autoencoder", str(ae)]) == 0
    latent = sorted((tmp_path / "sr" / "run").rglob("last.ckpt"))[0]
    ckpt = torch.load(latent, map_location="cpu", weights_only=True)
    record = ckpt["medrs_diff"]["method"]["init_args"]
    assert record["autoencoder_config"]["latent_channels"] == 4  # the architecture travels in the checkpoint
    assert float(ckpt["state_dict"]["method.scale_bits"].view(torch.float32)) > 0  # estimated, stored
    ae.unlink()
    src = sorted((tmp_path / "sr" / "data" / "lr").glob("*.tif"))[-1]
    out = tmp_path / "out"
    assert main(["infer", "--checkpoint", str(latent), "--input", str(src), "--output", str(out), "--steps", "2",
                 "--no-progress"]) in (0, None)
    with rasterio.open(src) as s, rasterio.open(out / src.name) as o:
        assert o.crs == s.crs and o.count == s.count == 3
        assert (o.height, o.width) == (4 * s.height, 4 * s.width)
        assert o.transform.a == pytest.approx(s.transform.a / 4) and o.transform.c == s.transform.c
        assert np.isfinite(o.read().astype(np.float64)).all()
    assert (out / "uncertainty" / src.name).exists()
