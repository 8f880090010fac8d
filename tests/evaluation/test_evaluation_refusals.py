"""Issue 11, row 9: `evaluate` never scores a prediction it cannot interpret (0/255 masks, {0, 2}, logits,
transposed or geometry-less arrays) as if it were right; each is one line naming the file and the fix."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image

from medrs_diff.cli import main
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.evaluation import SegOptions, evaluate
from medrs_diff.evaluation.arrays import orientation_variants
from medrs_diff.metrics import dice


def _one_line(err: pytest.ExceptionInfo, path) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path)) and ". Fix: " in msg, msg
    return msg


def _blob(shape=(24, 24)) -> np.ndarray:
    """An off-centre, non-symmetric mask (so a transpose or flip moves it)."""
    ref = np.zeros(shape, np.uint8)
    ref[2:9, 3:18] = 1
    ref[9:14, 3:7] = 1
    return ref


def _nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 1.0, 2.5, 1.0]) if affine is None else affine), str(path))
    return path


# --- labels the references do not have --------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".npy", ".png"])
def test_0_255_mask_is_refused_and_label_map_scores_it(tmp_path, suffix):
    ref = _blob()
    pred = np.roll(ref, 1, axis=1) * np.uint8(255)
    for name, arr in (("p", pred), ("r", ref)):
        if suffix == ".npy":
            np.save(tmp_path / f"{name}.npy", arr)
        else:
            Image.fromarray(arr).save(tmp_path / f"{name}.png")
    p, r = tmp_path / f"p{suffix}", tmp_path / f"r{suffix}"
    with pytest.raises(DataError) as err:
        evaluate(p, r, "seg", write=False)
    msg = _one_line(err, p)
    assert "label(s) 255" in msg and "--label-map 255:1" in msg
    res = evaluate(p, r, "seg", label_map={255: 1}, write=False)
    expected = dice((pred == 255)[None], (ref == 1)[None]).item()
    assert res["cases"]["r"]["1"]["dice"] == pytest.approx(expected) and 0.8 < expected < 1
    assert res["settings"]["label_map"] == {"255": 1}
    # the same through the command line: exit 2 and one line without a mapping, the right Dice with it
    assert main(["evaluate", str(p), str(r), "--task", "seg", "--out", str(tmp_path / "o")]) == 2
    assert main(["evaluate", str(p), str(r), "--task", "seg", "--label-map", "255:1",
                 "--out", str(tmp_path / "o")]) == 0


def test_labels_0_2_against_0_1_refused_unless_declared(tmp_path, capsys):
    ref = _blob()
    np.save(tmp_path / "p.npy", ref * 2), np.save(tmp_path / "r.npy", ref)
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "p.npy", tmp_path / "r.npy", "seg", write=False)
    assert "label(s) 2 " in _one_line(err, tmp_path / "p.npy") and "2:1" in str(err.value)
    assert main(["evaluate", str(tmp_path / "p.npy"), str(tmp_path / "r.npy"), "--task", "seg"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("medrs-diff evaluate: error: ") and "p.npy" in line and "\n" not in line
    # label 2 declared as a real class (absent from this reference): scored, Dice 0 for label 1 is then true
    res = evaluate(tmp_path / "p.npy", tmp_path / "r.npy", "seg", labels=[1, 2], write=False)
    assert res["cases"]["r"]["1"]["dice"] == 0.0 and res["settings"]["labels"] == ["1", "2"]
    # a mapping onto a label no reference has is refused too
    with pytest.raises(DataError, match=r"label\(s\) 7 after --label-map"):
        evaluate(tmp_path / "p.npy", tmp_path / "r.npy", "seg", label_map="2:7", write=False)


def test_multilabel_false_positive_of_a_label_present_elsewhere_is_accepted(tmp_path):
    pd_, rd = tmp_path / "p", tmp_path / "r"
    pd_.mkdir(), rd.mkdir()
    a, b = _blob(), _blob() * 2
    np.save(rd / "a.npy", a), np.save(rd / "b.npy", b)
    pred_a = a.copy()
    pred_a[20:22, 20:22] = 2  # label 2 is absent from case a but present in case b: a real class
    np.save(pd_ / "a.npy", pred_a), np.save(pd_ / "b.npy", b)
    res = evaluate(pd_, rd, "seg", write=False)
    assert res["settings"]["labels"] == ["1", "2"] and res["cases"]["a"]["2"]["dice"] == 0.0


def test_logits_refused_probabilities_kept(tmp_path, rng):
    ref = _blob()
    logits = np.where(ref > 0, 3.0, -3.0) + rng.standard_normal(ref.shape)
    np.save(tmp_path / "logits.npy", logits.astype(np.float32)), np.save(tmp_path / "r.npy", ref)
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "logits.npy", tmp_path / "r.npy", "seg", write=False)
    msg = _one_line(err, tmp_path / "logits.npy")
    assert "outside [0, 1]" in msg and "logits" in msg and "sigmoid" in msg
    prob = 1 / (1 + np.exp(-logits))
    np.save(tmp_path / "prob.npy", prob)
    res = evaluate(tmp_path / "prob.npy", tmp_path / "r.npy", "seg", write=False)
    assert res["cases"]["r"]["1"]["dice"] == pytest.approx(dice((prob >= 0.5)[None], ref[None]).item())
    # integral floats are labels (0.0 / 1.0), not logits
    np.save(tmp_path / "f.npy", ref.astype(np.float32))
    assert evaluate(tmp_path / "f.npy", tmp_path / "r.npy", "seg", write=False)["cases"]["r"]["1"]["dice"] == 1.0


def test_non_integer_reference_is_refused(tmp_path):
    ref = _blob().astype(np.float32) * 0.37
    np.save(tmp_path / "p.npy", _blob()), np.save(tmp_path / "r.npy", ref)
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "p.npy", tmp_path / "r.npy", "seg", write=False)
    assert "non-integer" in _one_line(err, tmp_path / "r.npy")


@pytest.mark.parametrize("value", ["255", "a:1", "1:2:3", "1.5:1", ""])
def test_bad_label_map_is_an_argument_error(value):
    with pytest.raises(ArgumentError, match=r"label_map \(--label-map\)"):
        SegOptions(label_map=value)


def test_label_map_forms_agree():
    assert SegOptions(label_map={255: 1}).label_map == SegOptions(label_map=["255:1"]).label_map == {255: 1}
    assert SegOptions(label_map="255:1, 128:2").label_map == {255: 1, 128: 2}
    with pytest.raises(ArgumentError, match="twice"):
        SegOptions(label_map=["1:2", "1:3"])


def test_label_map_with_another_task_is_refused(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.zeros((4, 4)))
    assert main(["evaluate", str(tmp_path / "a.npy"), str(tmp_path / "a.npy"), "--task", "class",
                 "--label-map", "255:1"]) == 2
    assert "--label-map: does not apply to --task class" in capsys.readouterr().err


# --- orientation: transposed / flipped arrays, geometry-less files against files with geometry ----------

@pytest.mark.parametrize("how", ["transpose", "flip0", "flip1", "rot90"])
def test_transposed_or_flipped_square_npy_is_refused(tmp_path, how):
    ref = _blob()
    pred = {"transpose": ref.T, "flip0": ref[::-1], "flip1": ref[:, ::-1], "rot90": np.rot90(ref)}[how]
    assert pred.shape == ref.shape  # only the shape was compared before: this passed with a low Dice
    np.save(tmp_path / "p.npy", np.ascontiguousarray(pred)), np.save(tmp_path / "r.npy", ref)
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "p.npy", tmp_path / "r.npy", "seg", write=False)
    msg = _one_line(err, tmp_path / "p.npy")
    assert "array orders" in msg and "1.000" in msg and "--assume-same-grid" in msg
    # the user vouches for the order: scored as stored
    res = evaluate(tmp_path / "p.npy", tmp_path / "r.npy", "seg", assume_same_grid=True, write=False)
    assert res["cases"]["r"]["1"]["dice"] == pytest.approx(dice(pred[None], ref[None]).item())


def test_transposed_3d_and_class_maps_are_refused(tmp_path):
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[1:4, 2:8, 5:9] = 1
    np.save(tmp_path / "r.npy", ref), np.save(tmp_path / "p.npy", np.transpose(ref, (2, 1, 0)))
    with pytest.raises(DataError, match=r"p\.npy: .*axes permuted to \(2, 1, 0\)"):
        evaluate(tmp_path / "p.npy", tmp_path / "r.npy", "seg", write=False)
    cls = _blob() * 3
    np.save(tmp_path / "cr.npy", cls), np.save(tmp_path / "cp.npy", np.ascontiguousarray(cls.T))
    with pytest.raises(DataError, match=r"cp\.npy: .*array orders"):
        evaluate(tmp_path / "cp.npy", tmp_path / "cr.npy", "class", write=False)


def test_a_right_but_imperfect_prediction_is_not_taken_as_transposed(tmp_path, rng):
    ref = _blob()
    pred = np.roll(ref, 2, axis=0)
    pred[rng.random(pred.shape) < 0.05] ^= 1
    np.save(tmp_path / "p.npy", pred), np.save(tmp_path / "r.npy", ref)
    res = evaluate(tmp_path / "p.npy", tmp_path / "r.npy", "seg", write=False)
    assert res["cases"]["r"]["1"]["dice"] == pytest.approx(dice(pred[None], ref[None]).item())
    # a symmetric structure scores the same in every order: nothing to report
    sym = np.zeros((16, 16), np.uint8)
    sym[4:12, 4:12] = 1
    np.save(tmp_path / "s.npy", sym), np.save(tmp_path / "sr.npy", sym)
    assert evaluate(tmp_path / "s.npy", tmp_path / "sr.npy", "seg", write=False)["cases"]["sr"]["1"]["dice"] == 1


def test_orientation_variants_keep_the_shape():
    assert len(list(orientation_variants((5, 5)))) == 7  # the dihedral group minus the identity
    assert len(list(orientation_variants((4, 6)))) == 3  # flips only
    assert len(list(orientation_variants((3, 3, 3)))) == 47
    for _, axes, _ in orientation_variants((4, 4, 7)):
        assert axes[2] == 2


def test_npy_prediction_for_a_nifti_reference_needs_assume_same_grid(tmp_path):
    ref = np.zeros((12, 10, 6), np.uint8)
    ref[2:7, 3:8, 1:4] = 1
    _nifti(tmp_path / "r.nii.gz", ref)
    np.save(tmp_path / "p.npy", ref)
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "p.npy", tmp_path / "r.nii.gz", "seg", write=False)
    msg = _one_line(err, tmp_path / "p.npy")
    assert "without geometry" in msg and "with an affine" in msg and "--assume-same-grid" in msg
    res = evaluate(tmp_path / "p.npy", tmp_path / "r.nii.gz", "seg", assume_same_grid=True, write=False)
    assert res["cases"]["r"]["1"]["dice"] == 1.0
    # the other way round, and for a mask, and for the other tasks
    _nifti(tmp_path / "p.nii.gz", ref)
    np.save(tmp_path / "r.npy", ref)
    with pytest.raises(DataError, match=r"p\.nii\.gz: prediction is a nifti file with an affine"):
        evaluate(tmp_path / "p.nii.gz", tmp_path / "r.npy", "seg", write=False)
    np.save(tmp_path / "m.npy", np.ones(ref.shape, np.uint8))
    with pytest.raises(DataError, match=r"m\.npy: mask is a numpy file without geometry"):
        evaluate(tmp_path / "p.nii.gz", tmp_path / "r.nii.gz", "seg", mask=tmp_path / "m.npy", write=False)
    img = np.random.default_rng(0).random((14, 14, 12)).astype(np.float32)
    np.save(tmp_path / "i.npy", img), _nifti(tmp_path / "ir.nii.gz", img)
    with pytest.raises(DataError, match=r"i\.npy: prediction is a numpy file without geometry"):
        evaluate(tmp_path / "i.npy", tmp_path / "ir.nii.gz", "image", data_range=1.0, write=False)
    assert main(["evaluate", str(tmp_path / "i.npy"), str(tmp_path / "ir.nii.gz"), "--task", "image",
                 "--data-range", "1", "--assume-same-grid", "--out", str(tmp_path / "o")]) == 0


def test_png_prediction_for_a_geotiff_reference_is_refused(tmp_path):
    ref = _blob()
    with rasterio.open(tmp_path / "r.tif", "w", driver="GTiff", height=24, width=24, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(10, 0, 5e5, 0, -10, 4e6)) as ds:
        ds.write(ref[None])
    Image.fromarray(ref).save(tmp_path / "p.png")
    with pytest.raises(DataError, match=r"p\.png: prediction is an image2d file without geometry .* map transform"):
        evaluate(tmp_path / "p.png", tmp_path / "r.tif", "seg", write=False)
    res = evaluate(tmp_path / "p.png", tmp_path / "r.tif", "seg", assume_same_grid=True, write=False)
    assert res["cases"]["r"]["1"]["dice"] == 1.0


def test_class_task_prediction_codes_above_the_references(tmp_path, rng):
    ref = rng.integers(0, 4, (10, 12))
    np.save(tmp_path / "r.npy", ref), np.save(tmp_path / "p.npy", np.where(ref > 0, 255, 0))
    with pytest.raises(DataError) as err:
        evaluate(tmp_path / "p.npy", tmp_path / "r.npy", "class", write=False)
    assert "class 255, above every reference class (largest 3)" in _one_line(err, tmp_path / "p.npy")
    res = evaluate(tmp_path / "p.npy", tmp_path / "r.npy", "class", num_classes=256, write=False)
    assert res["settings"]["num_classes"] == 256
