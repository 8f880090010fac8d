"""Label outputs (class indices) are stitched as weighted votes of the windows, never averaged, and written
in the data's label values (issues 11 / 12): integral at seams, a weighted majority where windows overlap,
never a class in between (1 and 3 never give 2), the window's own classes where one window covers a pixel,
and BraTS-style values (0, 1, 2, 4) read from the checkpoint's data config."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from medrs_diff.errors import ArgumentError, MedrsError
from medrs_diff.inference import Predictor, blend_window, infer_geotiff, infer_image, infer_volume
from medrs_diff.inference.predictor import checkpoint_label_values
from medrs_diff.inference.seeding import window_generators
from medrs_diff.inference.tiling import PositionalWindowFn
from medrs_diff.methods import SegDiff
from medrs_diff.methods.base import IOSpec
from medrs_diff.train.checkpoint import method_config

pytestmark = [pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
              pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")]

TINY = dict(channels=[8, 8], attention_levels=[False, False], num_res_blocks=1, num_head_channels=8,
            norm_num_groups=8, rrdb_blocks=1, rrdb_features=8, rrdb_growth=4, timesteps=10)


class WindowClasses(torch.nn.Module):
    """A segmenter whose class map is the rounded input clipped to 0..K-1 (``mode="pixel"``) or, for the whole
    window, ``lookup[x[0, 0]]`` (``mode="window"``: an input holding its column index tells each window apart)."""

    def __init__(self, num_classes: int, mode: str = "pixel", lookup: dict[int, int] | None = None) -> None:
        super().__init__()
        self.num_classes, self.mode, self.lookup = num_classes, mode, lookup or {}
        self.io_spec = IOSpec(inputs={"image": 1}, outputs=("prediction", "uncertainty"), spatial_dims=2, task="seg")

    def check_input(self, x: torch.Tensor, where: str = "input") -> None:
        assert x.ndim == 4 and x.shape[1] == 1

    def predict(self, batch: dict[str, torch.Tensor], **kw) -> dict[str, torch.Tensor]:
        x = batch["image"]
        if self.mode == "pixel":
            y = x.round().clamp(0, self.num_classes - 1)
        else:
            y = torch.stack([torch.full_like(w, float(self.lookup[int(w[0, 0, 0])])) for w in x])
        return {"prediction": y, "uncertainty": torch.full_like(x, 0.25)}


def _columns(h: int, w: int) -> np.ndarray:
    return np.broadcast_to(np.arange(w, dtype=np.float32), (h, w)).copy()


def test_seams_hold_the_weighted_vote_computed_by_hand(tmp_path):
    # 3 windows of 8 x 16 at 50 % overlap over 8 x 32: starts x = 0, 8, 16; each window says other classes
    maps = {0: np.full((8, 16), 1), 8: np.where(np.arange(8)[:, None] < 4, 2, 0) * np.ones((8, 16), int),
            16: np.zeros((8, 16), int)}

    def fn(x, starts):
        return {"prediction": torch.stack([torch.from_numpy(maps[s[1]]).float()[None] for s in starts])}

    src = tmp_path / "img.npy"
    np.save(src, np.zeros((1, 8, 32), np.float32))
    paths = infer_image(PositionalWindowFn(fn), src, tmp_path / "out.npy", (8, 16), 0.5,
                        label_votes={"prediction": (0, 1, 2)}, progress=False)
    got = np.load(paths["prediction"])
    assert got.dtype == np.uint8 and got.shape == (1, 8, 32)  # integral, written as integers
    w = blend_window((8, 16), "gaussian").numpy()
    votes = np.zeros((3, 8, 32))
    for s, m in maps.items():
        for c in range(3):
            votes[c, :, s : s + 16] += w * (m == c)
    np.testing.assert_array_equal(got[0], votes.argmax(0))
    # a seam pixel: (3, 12) lies 4.5 px from window 0's centre, 3.5 px from window 8's: window 8 (class 2) wins
    assert w[3, 12] < w[3, 4] and got[0, 3, 12] == 2 and got[0, 5, 12] == 0
    blended = infer_volume(PositionalWindowFn(fn), torch.zeros(1, 8, 32), (8, 16), 0.5)["prediction"]
    assert not torch.equal(blended, blended.round())  # the old average: fractional classes at seams


def test_classes_1_and_3_never_give_2():
    method = WindowClasses(4, "window", lookup={0: 1, 8: 3, 16: 3})
    p = Predictor.from_method(method)
    assert p.label_values == (0.0, 1.0, 2.0, 3.0)  # no data config: the class indices
    img = _columns(8, 32)
    out = p.predict_array(img, tile=(8, 16), overlap=0.5, steps=1, n_samples=1)
    pred = out["prediction"]
    assert pred.shape == (1, 8, 32) and set(np.unique(pred)) == {1.0, 3.0}
    assert np.all(pred[0, :, :8] == 1) and np.all(pred[0, :, 24:] == 3)  # single windows: their own class
    np.testing.assert_allclose(out["uncertainty"], 0.25)  # float outputs are still blended
    averaged = infer_volume(lambda x: method.predict({"image": x}), torch.from_numpy(img)[None], (8, 16), 0.5)
    assert torch.any((averaged["prediction"] - 2).abs() < 0.2)  # what averaging wrote: class 2 at the seam


def test_a_label_output_that_is_not_class_indices_is_named():
    p = Predictor.from_method(WindowClasses(2, "window", lookup={0: 5}))
    with pytest.raises(MedrsError, match=r"label output 'prediction'.*\[5\.0\] that are not class indices 0\.\.1"):
        p.predict_array(_columns(8, 8), tile=8, steps=1, n_samples=1)


def _checkpoint(method, path, data):
    torch.save({"state_dict": {f"method.{k}": v for k, v in method.state_dict().items()},
                "hyper_parameters": {"method": method_config(method)},
                "datamodule_hyper_parameters": data}, path)
    return path


def test_brats_label_values_from_the_checkpoint_are_written(tmp_path):
    torch.manual_seed(0)
    method = SegDiff(spatial_dims=2, num_classes=4, **TINY).eval()
    ckpt = _checkpoint(method, tmp_path / "brats.ckpt", {"scaling": None, "label_values": [4, 0, 2, 1]})
    p = Predictor.from_checkpoint(ckpt)
    assert p.label_values == (0.0, 1.0, 2.0, 4.0)  # sorted, as the data module maps values to classes
    fake = WindowClasses(4, "pixel")
    p.method.predict = lambda batch, **kw: {**fake.predict(batch), "probability": torch.zeros_like(batch["image"])}
    cls = np.arange(24 * 20).reshape(24, 20) % 4  # every class
    src = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(cls.astype(np.float32)[:, :, None], np.eye(4)), str(src))
    (paths,) = p.predict_files(src, tmp_path / "out", tile=(16, 16), steps=1, n_samples=1)
    img = nib.load(str(paths["prediction"]))
    data = np.asarray(img.dataobj)
    assert img.get_data_dtype() == np.uint8 and data.shape == (24, 20, 1)
    assert set(np.unique(data)) == {0, 1, 2, 4}
    np.testing.assert_array_equal(data[:, :, 0], np.array([0, 1, 2, 4])[cls])  # class 3 is written as 4
    assert nib.load(str(paths["uncertainty"])).get_data_dtype() == np.float32
    arrays = p.predict_array(cls.astype(np.float32), tile=(16, 16), steps=1, n_samples=1)
    np.testing.assert_array_equal(arrays["prediction"][0], np.array([0, 1, 2, 4])[cls])  # the array path too


def test_label_values_of_the_data_configs_and_refusals():
    assert checkpoint_label_values({"label_values": [4, 0, 2, 1]}) == (0.0, 1.0, 2.0, 4.0)
    assert checkpoint_label_values({"label_map": {255: 0, 128: 1, 0: 2}}) == (255.0, 128.0, 0.0)
    assert checkpoint_label_values({"label_map": {0: 0, 60: 1, 50: 1}}) == (0.0, 50.0)  # one class: smallest value
    clinical = "medrs_diff.datamodules.clinical2d.Clinical2DSegmentationDataModule"
    assert checkpoint_label_values({"layout": "refuge"}, clinical) == (255.0, 128.0, 0.0)  # the layout's map
    assert checkpoint_label_values({"layout": "drive"}, clinical) is None  # binary: indices
    assert checkpoint_label_values({"num_classes": 3}) is None
    with pytest.raises(ArgumentError, match=r"4 label_values \[0\.0, 1\.0, 2\.0, 4\.0\] for a method with 2 classes"):
        Predictor.from_method(WindowClasses(2), label_values=[0, 1, 2, 4])
    with pytest.raises(ArgumentError, match="not distinct finite numbers"):
        Predictor.from_method(WindowClasses(2), label_values=[1, 1])


def test_a_single_window_gives_the_methods_own_binary_prediction():
    torch.manual_seed(3)
    method = SegDiff(spatial_dims=2, **TINY)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # a fresh SegDiff's output conv is zero: perturb so outputs depend on the input
        for w in method.parameters():
            w.add_(0.1 * torch.randn(w.shape, generator=g))
    method.eval()
    p = Predictor.from_method(method)
    img = np.random.default_rng(0).normal(0, 1, (16, 16)).astype(np.float32)
    got = p.predict_array(img, tile=16, steps=1, n_samples=2, seed=5, case="c")
    x = torch.from_numpy(img)[None, None]
    with torch.inference_mode():
        want = method.predict({"image": x}, steps=1, n_samples=2, generator=window_generators(5, "c", [(0, 0)]))
    np.testing.assert_array_equal(got["prediction"], want["prediction"][0].numpy())  # exactly, as before
    np.testing.assert_allclose(got["probability"], want["probability"][0].numpy(), atol=1e-6)


def test_geotiff_labels_are_one_integer_band_of_votes(tmp_path):
    src = tmp_path / "scene.tif"
    with rasterio.open(src, "w", driver="GTiff", width=40, height=16, count=1, dtype="float32", crs="EPSG:32633",
                       transform=from_origin(0, 160, 10, 10), nodata=-1.0) as dst:
        a = _columns(16, 40)
        a[0, 0] = -1.0  # one nodata pixel
        dst.write(a[None])
    lookup = {0: 1, 12: 0, 24: 1}  # 16 px tiles at 25 % overlap: x = 0, 12, 24

    def fn(x, starts):
        return {"prediction": torch.stack([torch.full_like(w[:1], float(lookup[s[1]])) for w, s in zip(x, starts)])}

    paths = infer_geotiff(PositionalWindowFn(fn), src, tmp_path / "out.tif", tile=16, overlap=0.25,
                          label_votes={"prediction": (0, 4)}, progress=False)
    with rasterio.open(paths["prediction"]) as o:
        band = o.read()
        assert o.count == 1 and o.dtypes[0] == "uint8" and o.nodata == 255
    assert band[0, 0, 0] == 255 and set(np.unique(band[0][1:])) == {0, 4}  # label values only, nodata kept
    assert np.all(band[0, 1:, :12] == 4) and np.all(band[0, :, 28:] == 4)  # single tiles: their own class
