"""The DDBM data modules on tiny folders laid out like the real ones (BigEarthNet S1/S2 patch folders, SEN12MS-CR
triplets): units to model space by hand, band order, split by scene, and one-line refusals of a mismatched pair,
wrong units and a missing band; then the real shared folders when present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.transform import from_origin

from medrs_diff.data.cloud import S2_L1C_BANDS
from medrs_diff.data.scaling import resolve
from medrs_diff.datamodules.translation import CloudPairDataModule, Sar2OptDataModule
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.io.geotiff import write_geotiff

CRS = "EPSG:32633"
TR = from_origin(404400, 5342400, 10, 10)
#: constant DN per 10 m band, so the band order can be read back
DN = {"B02": 1000, "B03": 2000, "B04": 3000, "B08": 4000}


def ben_patch(root: Path, key: str, *, size: int = 24, vv: float = -12.5, vh: float = -16.25,
              partner: str | None = None, s1_transform=TR, bands=tuple(DN), s2_float: bool = False) -> None:
    """One S1 + S2 BigEarthNet patch pair under ``root`` (the real folder names and file names)."""
    s2 = f"S2A_MSIL2A_20170613T101031_{key}"
    s1 = f"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_{key}"
    d1, d2 = root / "BigEarthNet-S1-Example" / s1, root / "BigEarthNet-S2-Example" / s2
    d1.mkdir(parents=True)
    d2.mkdir(parents=True)
    rng = np.random.default_rng(abs(hash(key)) % 2**32)
    for pol, v in (("VV", vv), ("VH", vh)):
        write_geotiff(np.full((size, size), v, np.float32), d1 / f"{s1}_{pol}.tif", crs=CRS, transform=s1_transform)
    (d1 / f"{s1}_labels_metadata.json").write_text(json.dumps({"corresponding_s2_patch": partner or s2}))
    for b in bands:
        a = (DN[b] + rng.integers(-5, 6, (size, size))).astype(np.uint16)
        write_geotiff(a / 1e4 if s2_float else a, d2 / f"{s2}_{b}.tif", crs=CRS, transform=TR,
                      dtype="float32" if s2_float else "uint16")


def triplet(root: Path, sid: str, size: int = 32, s1_db: bool = True) -> None:
    """A SEN12MS-CR triplet: ID_input (VV, VH dB + 13 cloudy bands DN), ID_target (13 bands DN), ID_mask."""
    root.mkdir(parents=True, exist_ok=True)
    s1 = np.stack([np.full((size, size), -10.0), np.full((size, size), -17.0)])
    if not s1_db:
        s1 = 10 ** (s1 / 10)  # linear power
    cloudy = np.stack([np.full((size, size), 100.0 * (k + 1)) + 3000 for k in range(13)])
    clear = np.stack([np.full((size, size), 100.0 * (k + 1)) for k in range(13)])
    write_geotiff(np.concatenate([s1, cloudy]).astype(np.float32), root / f"{sid}_input.tif")
    write_geotiff(clear.astype(np.float32), root / f"{sid}_target.tif")
    write_geotiff(np.ones((1, size, size), np.float32), root / f"{sid}_mask.tif")


def test_sar2opt_units_band_order_and_scene_split(tmp_path):
    for key in ("1_1", "2_2", "3_3"):
        ben_patch(tmp_path, key)
    dm = Sar2OptDataModule(root=str(tmp_path), patch_size=16, test_scenes=[1], samples_per_epoch=6, batch_size=3)
    dm.setup()
    assert dm.scene_names == [f"S2A_MSIL2A_20170613T101031_{k}" for k in ("1_1", "2_2", "3_3")]
    batch = next(iter(dm.train_dataloader()))
    assert batch["cond"].shape == (3, 2, 16, 16) and batch["image"].shape == (3, 4, 16, 16)
    assert set(batch["case"]) <= {dm.scene_names[0], dm.scene_names[2]}  # the held-out scene never trains
    # VV -12.5 dB in -25..0 and VH -16.25 in -32.5..0: both the middle of their range -> 0
    assert torch.allclose(batch["cond"], torch.zeros(()), atol=1e-6)
    # B04, B03, B02, B08 = 3000, 2000, 1000, 4000 DN (+- 5) of 0..1e4 -> -0.4, -0.6, -0.8, -0.2
    means = batch["image"].mean((0, 2, 3))
    assert torch.allclose(means, torch.tensor([-0.4, -0.6, -0.8, -0.2]), atol=2e-3)
    (val,) = list(dm.val_dataloader())
    assert val["case"] == [dm.scene_names[1]] and val["cond"].shape == (1, 2, 24, 24)  # whole scene
    assert batch["image_scaling"][0] == resolve("reflectance").to_dict()


def test_cloud_triplets_stack_s1_then_cloudy_bands(tmp_path):
    for sid in ("11", "22"):
        triplet(tmp_path / "t", sid)
    dm = CloudPairDataModule(root=str(tmp_path / "t"), patch_size=16, eval_size=16, test_scenes=[0],
                             samples_per_epoch=2, batch_size=2)
    dm.setup()
    assert dm.scene_names == ["triplet_11", "triplet_22"]
    b = next(iter(dm.train_dataloader()))
    assert b["cond"].shape == (2, 6, 16, 16) and b["image"].shape == (2, 4, 16, 16)
    c = b["cond"][0, :, 0, 0]
    # VV -10 dB in -25..0 -> 0.2; VH -17 in -32.5..0 -> (-17 + 16.25) / 16.25
    assert torch.allclose(c[:2], torch.tensor([0.2, -0.75 / 16.25]), atol=1e-5)
    idx = [S2_L1C_BANDS.index(x) for x in ("B04", "B03", "B02", "B08")]
    want_cloudy = torch.tensor([(100.0 * (k + 1) + 3000) / 5000 - 1 for k in idx])
    want_clear = torch.tensor([(100.0 * (k + 1)) / 5000 - 1 for k in idx])
    assert torch.allclose(c[2:], want_cloudy, atol=1e-5)
    assert torch.allclose(b["image"][0, :, 0, 0], want_clear, atol=1e-5)
    s2_only = CloudPairDataModule(root=str(tmp_path / "t"), patch_size=16, scaling="reflectance", batch_size=1)
    s2_only.setup()
    assert next(iter(s2_only.train_dataloader()))["cond"].shape == (1, 4, 16, 16)


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "Fix:" in msg
    return msg


def test_refusals_name_the_file_and_the_fix(tmp_path):
    ben_patch(tmp_path / "swap", "1_1", partner="S2A_MSIL2A_20170613T101031_9_9")  # metadata names another S2
    with pytest.raises(DataError, match="is the S1 patch of") as e:
        Sar2OptDataModule(root=str(tmp_path / "swap")).setup()
    _one_line(e)
    ben_patch(tmp_path / "shift", "1_1", s1_transform=from_origin(405000, 5342400, 10, 10))  # another footprint
    with pytest.raises(DataError, match="transform") as e:
        Sar2OptDataModule(root=str(tmp_path / "shift")).setup()
    _one_line(e)
    ben_patch(tmp_path / "linear", "1_1", vv=0.05, vh=0.01)  # linear sigma0, not dB
    with pytest.raises(DataError, match="linear") as e:
        Sar2OptDataModule(root=str(tmp_path / "linear")).setup()
    _one_line(e)
    ben_patch(tmp_path / "refl", "1_1", s2_float=True)  # reflectance stored in place of DN
    with pytest.raises(DataError, match="not DN") as e:
        Sar2OptDataModule(root=str(tmp_path / "refl")).setup()
    _one_line(e)
    ben_patch(tmp_path / "nob8", "1_1", bands=("B02", "B03", "B04"))
    with pytest.raises(DataError, match="B08 is missing") as e:
        Sar2OptDataModule(root=str(tmp_path / "nob8")).setup()
    assert "_B08.tif" in _one_line(e)
    (tmp_path / "orphan" / "BigEarthNet-S2-Example" / "S2A_MSIL2A_20170613T101031_5_5").mkdir(parents=True)
    with pytest.raises(DataError, match="no S1 patch"):
        Sar2OptDataModule(root=str(tmp_path / "orphan")).setup()
    triplet(tmp_path / "lin", "1", s1_db=False)
    with pytest.raises(DataError, match="linear"):
        CloudPairDataModule(root=str(tmp_path / "lin")).setup()
    with pytest.raises(DataError, match="10 m"):
        Sar2OptDataModule(root=str(tmp_path / "swap"), bands=["B04", "B05"])
    with pytest.raises(ArgumentError, match="test_scenes"):
        Sar2OptDataModule(phantoms=2, test_scenes=[0, 1]).setup()
    with pytest.raises(ArgumentError, match="scaling"):
        CloudPairDataModule(phantoms=2, scaling="db")
    with pytest.raises(DataError, match="no source"):
        Sar2OptDataModule()


def test_real_bigearthnet_and_triplets(shared_data):
    dm = Sar2OptDataModule(root=str(shared_data / "bigearthnet_s1_s2"), test_scenes=[3, 4], batch_size=2)
    dm.setup()
    assert len(dm.scene_names) == 6 and all(n.startswith("S2") for n in dm.scene_names)
    b = next(iter(dm.train_dataloader()))
    assert b["cond"].shape[1:] == (2, 64, 64) and b["image"].shape[1:] == (4, 64, 64)
    (val,) = list(dm.val_dataloader())  # the two held-out patches, whole
    assert val["cond"].shape == (2, 2, 120, 120) and val["case"] == dm.scene_names[3:5]
    for _, cond, target in dm.train_dataset.scenes:  # clipped to [-1, 1]; dB and reflectance medians mid-range / low
        assert cond.min() >= -1 and cond.max() <= 1 and target.min() >= -1 and target.max() <= 1
        assert -0.8 < np.median(cond) < 0.8 and np.median(target) < 0  # reflectance median below 0.5
    cl = CloudPairDataModule(root=str(shared_data / "sen12mscr_triplets"), test_scenes=[2, 4], eval_size=128)
    cl.setup()
    assert cl.scene_names[2] == "triplet_5254" and cl.val_dataset.scenes[1][0] == "triplet_6317"
    assert next(iter(cl.val_dataloader()))["cond"].shape[1:] == (6, 128, 128)


def test_named_input_scalings_for_infer():
    """``s1_db`` and ``s1_db_s2_dn`` (what the checkpoints record for infer) by hand: VV -25..0, VH -32.5..0 dB and
    DN 0..1e4 onto [-1, 1]; the stacked one reads its S2 band count from the data and refuses a stack without S2."""
    x = np.array([-25.0, -32.5, 1e4, 0.0, 5e3], np.float32).reshape(5, 1, 1)
    np.testing.assert_allclose(resolve("s1_db_s2_dn", x).forward(x).ravel(), [-1, -1, 1, -1, 0], atol=1e-6)
    np.testing.assert_allclose(resolve("s1_db").forward(x[:2] + 12.5).ravel(), [0, -3.75 / 16.25], atol=1e-5)
    with pytest.raises(DataError, match="s1_db_s2_dn"):
        resolve("s1_db_s2_dn", x[:2])
