"""Predictor: the same numbers as composing the method's predict with the tiling functions by hand (same
per-window seeds), every declared output written on the input's grid (x grid_factor for SR), safe
default windows, the checkpoint read once, the device used, arguments checked."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from PIL import Image
from rasterio.transform import from_origin

from medrs_diff.data.scaling import reflectance, zscore
from medrs_diff.errors import ArgumentError, DataError, MedrsError
from medrs_diff.inference import Predictor, default_window, infer_geotiff, infer_volume
from medrs_diff.inference.seeding import window_generators
from medrs_diff.inference.tiling import PositionalWindowFn
from medrs_diff.methods import SegDiff, SRDiff
from medrs_diff.train.checkpoint import method_config

pytestmark = [pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),  # rasterio's own Affine `*`
              pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")]  # the float TIFFs of a PNG

TINY = dict(channels=[8, 8], attention_levels=[False, False], num_res_blocks=1, num_head_channels=8,
            norm_num_groups=8, rrdb_features=8, rrdb_growth=4, timesteps=10)
SAMPLING = dict(steps=2, n_samples=2, seed=7)


def _checkpoint(method, path, scaling, patch_size=None):
    """A checkpoint as `medrs-diff fit` writes it, reduced to what inference reads."""
    torch.save({"state_dict": {f"method.{k}": v for k, v in method.state_dict().items()},
                "hyper_parameters": {"method": method_config(method)},
                "datamodule_hyper_parameters": {"scaling": scaling, "patch_size": patch_size}}, path)
    return path


def _window_fn(method, outputs, case, seed=7, steps=2, n_samples=2):
    """The infer path: the method's predict on each window, its noise seeded by (seed, file name, start)."""

    def fn(x, starts):
        out = method.predict({method.io_spec.input_key: x}, steps=steps, n_samples=n_samples,
                             generator=window_generators(seed, case, starts))
        return {k: out[k] for k in outputs}

    return PositionalWindowFn(fn)


@pytest.fixture(scope="module")
def seg3d(tmp_path_factory):
    torch.manual_seed(0)
    m = SegDiff(spatial_dims=3, rrdb_blocks=1, **TINY).eval()
    d = tmp_path_factory.mktemp("seg3d")
    return m, _checkpoint(m, d / "seg3d.ckpt", "zscore", [16, 16, 16])


@pytest.fixture(scope="module")
def seg2d(tmp_path_factory):
    torch.manual_seed(1)
    m = SegDiff(spatial_dims=2, rrdb_blocks=1, **TINY).eval()
    d = tmp_path_factory.mktemp("seg2d")
    return m, _checkpoint(m, d / "seg2d.ckpt", "zscore")


@pytest.fixture(scope="module")
def sr(tmp_path_factory):
    torch.manual_seed(2)
    m = SRDiff(in_channels=3, scale=2, rrdb_blocks=2, pretrain_steps=0, **TINY).eval()
    d = tmp_path_factory.mktemp("sr")
    return m, _checkpoint(m, d / "sr.ckpt", "reflectance", 16)


def test_nifti_volume_matches_hand_composition_and_keeps_the_grid(seg3d, tmp_path):
    method, ckpt = seg3d
    aff = np.array([[-1.5, 0, 0, 40.0], [0, -1.5, 0, 30.0], [0, 0, 2.0, -20.0], [0, 0, 0, 1]])  # LPS storage
    vol = np.random.default_rng(0).normal(100, 20, (20, 18, 12)).astype(np.float32)
    src = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, aff), str(src))
    p = Predictor.from_checkpoint(ckpt)
    (paths,) = p.predict_files(src, tmp_path / "out", tile=12, **SAMPLING)
    outputs = method.io_spec.outputs
    assert set(paths) == set(outputs)  # every declared output
    assert paths["prediction"] == tmp_path / "out" / "ct.nii.gz"
    assert all(paths[k] == tmp_path / "out" / k / "ct.nii.gz" for k in outputs if k != "prediction")
    # by hand: RAS for the model, z-score, MONAI windows of 12 (2 x 2 x 1 at 25 % overlap), back to file order
    fwd = ornt_transform(io_orientation(aff), axcodes2ornt("RAS"))
    inv = ornt_transform(axcodes2ornt("RAS"), io_orientation(aff))
    x = torch.from_numpy(np.ascontiguousarray(apply_orientation(vol, fwd)))[None]
    want = infer_volume(_window_fn(method, outputs, "ct.nii.gz"), zscore(x).forward(x), (12, 12, 12), 0.25,
                        "gaussian", 4, label_votes={"prediction": (0, 1)})  # labels stitched as votes
    for k in outputs:
        got = nib.load(str(paths[k]))
        assert got.shape == vol.shape and np.array_equal(got.affine, aff)  # same grid as the input
        np.testing.assert_allclose(got.get_fdata(), apply_orientation(want[k][0].numpy(), inv), atol=1e-6)


def test_geotiff_super_resolution_matches_hand_composition_on_the_finer_grid(sr, tmp_path):
    method, ckpt = sr
    a = np.random.default_rng(1).integers(200, 3000, (3, 20, 24)).astype(np.uint16)
    src = tmp_path / "lr.tif"
    with rasterio.open(src, "w", driver="GTiff", width=24, height=20, count=3, dtype="uint16", crs="EPSG:32633",
                       transform=from_origin(300_000, 5_000_000, 20, 20)) as dst:
        dst.write(a)
    p = Predictor.from_checkpoint(ckpt)
    assert p.io_spec.grid_factor == 2 and p.io_spec.data_space == ("prediction",)
    (paths,) = p.predict_files(src, tmp_path / "sr", tile=8, **SAMPLING)
    assert set(paths) == {"prediction", "uncertainty"}
    hand = infer_geotiff(_window_fn(method, method.io_spec.outputs, "lr.tif"), src, tmp_path / "hand.tif", tile=8,
                         in_scaling="reflectance", out_scaling=reflectance(), scale=2, expected_bands=3,
                         progress=False)
    with rasterio.open(src) as s:
        for k in ("prediction", "uncertainty"):
            with rasterio.open(paths[k]) as o, rasterio.open(hand[k]) as h:
                assert (o.height, o.width) == (40, 48) and o.crs == s.crs
                assert o.transform.a == pytest.approx(s.transform.a / 2) and o.transform.c == s.transform.c
                assert o.transform.f == s.transform.f
                np.testing.assert_allclose(o.read(), h.read(), atol=1e-6)
    with rasterio.open(paths["prediction"]) as o:
        assert 0 <= float(o.read().min()) and float(o.read().max()) <= 1e4 + 1  # reflectance x 1e4, not [-1, 1]


def test_png_matches_hand_composition_and_predict_array(seg2d, tmp_path):
    method, ckpt = seg2d
    img = np.random.default_rng(2).integers(0, 256, (40, 56)).astype(np.uint8)
    src = tmp_path / "fundus.png"
    Image.fromarray(img).save(src)
    p = Predictor.from_checkpoint(ckpt)
    (paths,) = p.predict_files(src, tmp_path / "out", tile=32, **SAMPLING)
    assert paths == {"prediction": tmp_path / "out" / "fundus.png",
                     "uncertainty": tmp_path / "out" / "uncertainty" / "fundus.tif",
                     "probability": tmp_path / "out" / "probability" / "fundus.tif"}
    x = torch.from_numpy(img.astype(np.float32))[None]
    want = infer_volume(_window_fn(method, method.io_spec.outputs, "fundus.png"), zscore(x).forward(x), (32, 32), 0.25,
                        "gaussian", 4, label_votes={"prediction": (0, 1)})  # labels stitched as votes
    mask = np.asarray(Image.open(paths["prediction"]))
    assert mask.shape == img.shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(mask, np.round(want["prediction"][0].numpy()))
    for k in ("uncertainty", "probability"):
        with rasterio.open(paths[k]) as o:
            assert (o.height, o.width) == img.shape and o.dtypes[0] == "float32"
            np.testing.assert_allclose(o.read(1), want[k][0].numpy(), atol=1e-6)
    arrays = p.predict_array(img, tile=32, case="fundus.png", **SAMPLING)  # the notebook path: same numbers
    assert set(arrays) == set(method.io_spec.outputs)
    for k, v in arrays.items():
        assert v.shape == (1, *img.shape)
        np.testing.assert_allclose(v, want[k].numpy(), atol=1e-6)


def test_default_windows_follow_the_training_patch(sr, seg2d, tmp_path):
    method, ckpt = sr
    p = Predictor.from_checkpoint(ckpt)
    assert p.patch_size == 16 and p.scaling == "reflectance"
    assert p.window((120, 120)) == (32, 32)  # 16 HR -> at least 64 HR px -> 32 LR px (x2 SR)
    assert p.window((20, 20)) == (24, 24)  # a small scene is one window, rounded up to the UNet's multiple
    assert p.window((120, 120), tile=[10]) == (10, 10) and p.window((9, 9), tile=(4, 6)) == (4, 6)
    assert default_window(2, 4, 32, (120, 120)) == (16, 16)  # the Sentinel-2 recipe: 64 HR px windows
    assert default_window(2, 4, None, (2048, 2048)) == (32, 32)  # no patch known: 128 HR px
    assert default_window(3, 1, None, (192, 192, 192)) == (96, 96, 96)
    assert default_window(3, 1, [16, 16, 16], (20, 18, 12)) == (32, 32, 16)
    assert default_window(2, 1, None, (30, 40), size_multiple=8) == (32, 48)  # the model's multiple is kept
    assert default_window(2, 4, None, (10, 10), size_multiple=8) == (16, 16)
    seg = Predictor.from_checkpoint(seg2d[1])
    assert seg.window((32, 32)) == (32, 32)  # phantoms: whole image, as before
    assert seg.io_spec.extra["size_multiple"] == 2  # UNet channels (8, 8): one downsampling
    with pytest.raises(ArgumentError, match=r"tile \[15, 15\] is not a multiple of 2.*e\.g\. 14, 16"):
        seg.window((64, 64), tile=15)
    seen = []
    scene = tmp_path / "scene.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=72, height=72, count=3, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(0, 720, 10, 10)) as dst:
        dst.write(np.full((3, 72, 72), 1500, np.uint16))
    p.method.predict = _recording(p.method.predict, seen)
    p.predict_files(scene, tmp_path / "o.tif", steps=1, n_samples=1)
    assert seen and all(s[-2:] == (32, 32) for s in seen)  # never the whole scene in one window
    assert sum(s[0] for s in seen) == 9  # 3 x 3 windows of 32 at 25 % overlap over 72 px


def _recording(predict, seen):
    def wrapped(batch, **kw):
        seen.append(tuple(next(iter(batch.values())).shape))
        return predict(batch, **kw)

    return wrapped


def test_checkpoint_is_read_once_and_the_device_is_used(seg2d, monkeypatch):
    _, ckpt = seg2d
    calls = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(1) or load(*a, **k))
    p = Predictor.from_checkpoint(ckpt, device="cpu")
    assert len(calls) == 1
    assert p.device == torch.device("cpu") and all(t.device.type == "cpu" for t in p.method.parameters())
    if not torch.cuda.is_available():
        with pytest.raises(ArgumentError, match="no GPU is visible"):
            Predictor.from_checkpoint(ckpt, device="cuda")


@pytest.mark.parametrize(("kw", "message"), [
    ({"steps": 0}, r"steps must be an integer >= 1"), ({"n_samples": -1}, r"n_samples must be an integer >= 1"),
    ({"tile": 0}, r"tile must be an integer >= 1"), ({"batch": 0}, r"batch must be an integer >= 1"),
    ({"overlap": 1.0}, r"overlap must be in \[0, 1\)"), ({"sampler": "euler"}, "unknown sampler 'euler'"),
])
def test_api_arguments_are_checked(seg2d, kw, message):
    p = Predictor.from_checkpoint(seg2d[1])
    with pytest.raises(ArgumentError, match=message):
        p.predict_array(np.zeros((8, 8), np.float32), **kw)


def test_a_declared_output_that_predict_does_not_return_is_named(seg2d, tmp_path):
    p = Predictor.from_checkpoint(seg2d[1])
    predict = p.method.predict
    p.method.predict = lambda batch, **kw: {"prediction": predict(batch, **kw)["prediction"]}
    with pytest.raises(MedrsError, match=r"did not return the declared output\(s\) \['uncertainty', 'probability'\]"):
        p.predict_array(np.ones((16, 16), np.float32), steps=1, n_samples=1)


def test_output_names_and_a_file_name_for_a_folder_is_refused(seg2d, tmp_path):
    p = Predictor.from_checkpoint(seg2d[1])
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((16, 16), 100, np.uint8)).save(src / "a.png")
    with pytest.raises(DataError, match=r"out\.png: names a file, but a folder"):
        p.predict_files(src, tmp_path / "out.png", steps=1, n_samples=1)
    (paths,) = p.predict_files(src / "a.png", tmp_path / "single.png", steps=1, n_samples=1)
    assert paths == {"prediction": tmp_path / "single.png", "uncertainty": tmp_path / "single_uncertainty.tif",
                     "probability": tmp_path / "single_probability.tif"}
    assert all(v.is_file() for v in paths.values())
    with pytest.raises(DataError, match="a nifti input gives nifti outputs"):
        nib.save(nib.Nifti1Image(np.ones((16, 16), np.float32), np.eye(4)), str(tmp_path / "v.nii.gz"))
        p.predict_files(tmp_path / "v.nii.gz", tmp_path / "v.tif", steps=1, n_samples=1)


def test_a_sampler_is_refused_for_a_method_that_does_not_sample_with_the_registry(tmp_path):
    """A regression model (or DDBM, with its own bridge sampler) would silently ignore --sampler: refused instead."""
    from medrs_diff.methods import RegressionUNet

    torch.manual_seed(3)
    m = RegressionUNet(channels=[8, 8], num_res_units=1).eval()
    p = Predictor.from_checkpoint(_checkpoint(m, tmp_path / "reg.ckpt", "zscore"))
    with pytest.raises(ArgumentError, match=r"--sampler: .*would be ignored"):
        p.predict_array(np.zeros((8, 8), np.float32), sampler="ddim")
    assert p.predict_array(np.zeros((8, 8), np.float32))["prediction"].shape == (1, 8, 8)
