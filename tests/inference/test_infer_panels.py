"""``infer --panels`` drawing (:mod:`medrs_diff.inference.panels`): a method without its own columns gets input /
prediction / uncertainty, a volume the axial slice (in RAS) with the most predicted foreground."""

from __future__ import annotations

from types import SimpleNamespace

import nibabel as nib
import numpy as np

from medrs_diff.inference import panels


def test_plain_method_columns_and_the_axial_slice_with_most_foreground(tmp_path, monkeypatch):
    affine = np.diag([1.0, 1.0, -2.0, 1.0])  # stored z runs superior -> inferior
    shape = (6, 5, 4)
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    pred = np.zeros(shape, np.uint8)
    pred[1:3, 1:4, 1] = 1  # 6 voxels in stored slice 1
    pred[0, 0, 3] = 1      # 1 voxel in stored slice 3
    unc = np.random.default_rng(0).random(shape).astype(np.float32)
    paths = {"input": tmp_path / "x.nii.gz", "prediction": tmp_path / "out" / "x.nii.gz",
             "uncertainty": tmp_path / "out" / "uncertainty" / "x.nii.gz"}
    for key, data in (("input", image), ("prediction", pred), ("uncertainty", unc)):
        paths[key].parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, affine), str(paths[key]))
    seen = {}

    def fake_save(path, cols, max_rows, title, shared):
        seen.update(path=path, cols=cols, title=title, shared=shared, rows=max_rows)
        return path

    monkeypatch.setattr(panels, "save_panel", fake_save)
    method = SimpleNamespace(name="plain", io_spec=SimpleNamespace(input_key="image", spatial_dims=3))
    out = {k: paths[k] for k in ("prediction", "uncertainty")}
    target = panels.panel_path(paths["prediction"], False, tmp_path / "out")
    assert target == tmp_path / "out" / "panels" / "x.png"
    panels.write_case_panel(method, paths["input"], out, "prediction", target)
    assert list(seen["cols"]) == ["input", "prediction", "uncertainty"] and seen["rows"] == 1
    ras_z = shape[2] - 1 - 1  # stored slice 1 after flipping z to inferior -> superior
    assert f"axial slice {ras_z} of 4 (6 foreground voxels)" in seen["title"]
    shown = seen["cols"]["prediction"].numpy()[0, 0]
    np.testing.assert_array_equal(shown, np.rot90(pred[:, :, 1], k=1))
    np.testing.assert_array_equal(seen["cols"]["input"].numpy()[0, 0], np.rot90(image[:, :, 1], k=1))
    np.testing.assert_allclose(seen["cols"]["uncertainty"].numpy()[0, 0], np.rot90(unc[:, :, 1], k=1))


def test_a_2d_image_is_shown_whole(tmp_path, monkeypatch):
    img = np.random.default_rng(1).random((3, 8, 9)).astype(np.float32)
    pred = (img[0] > 0.5).astype(np.float32)
    np.save(tmp_path / "x.npy", img), np.save(tmp_path / "p.npy", pred)
    seen = {}
    monkeypatch.setattr(panels, "save_panel", lambda path, cols, **kw: seen.update(cols=cols, **kw) or path)
    method = SimpleNamespace(name="plain", io_spec=SimpleNamespace(input_key="image", spatial_dims=2))
    panels.write_case_panel(method, tmp_path / "x.npy", {"prediction": tmp_path / "p.npy"}, "prediction",
                            tmp_path / "panels" / "x.png")
    assert list(seen["cols"]) == ["input", "prediction"] and "slice" not in seen["title"]
    assert tuple(seen["cols"]["input"].shape) == (1, 3, 8, 9)
    np.testing.assert_array_equal(seen["cols"]["prediction"].numpy()[0, 0], pred)


def test_no_foreground_shows_the_middle_slice_of_a_slice_wise_volume(tmp_path, monkeypatch):
    shape = (4, 4, 6)
    for name, data in (("x", np.ones(shape, np.float32)), ("p", np.zeros(shape, np.uint8))):
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    seen = {}
    monkeypatch.setattr(panels, "save_panel", lambda path, cols, **kw: seen.update(**kw) or path)
    method = SimpleNamespace(name="plain", io_spec=SimpleNamespace(input_key="image", spatial_dims=2))
    panels.write_case_panel(method, tmp_path / "x.nii.gz", {"prediction": tmp_path / "p.nii.gz"}, "prediction",
                            tmp_path / "panels" / "x.png")
    assert "axial slice 3 of 6 (0 foreground voxels)" in seen["title"]


def test_predict_files_panels_for_a_png_and_a_single_output_file(tiny_segdiff, write_checkpoint, tmp_path):
    from PIL import Image

    from medrs_diff.inference import Predictor

    ckpt = write_checkpoint(tiny_segdiff(3, spatial_dims=2), tmp_path / "seg.ckpt")
    src = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (16, 16), dtype=np.uint8)).save(src)
    p = Predictor.from_checkpoint(ckpt)
    (paths,) = p.predict_files(src, tmp_path / "res" / "single.png", steps=1, n_samples=1, panels=True)
    assert paths["panel"] == tmp_path / "res" / "panels" / "single.png"
    with Image.open(paths["panel"]) as im:
        w, h = im.size
    assert w == round(3 * 2.4 * 80) and h == round(2.8 * 80)  # input, prediction, uncertainty
    (plain,) = p.predict_files(src, tmp_path / "plain", steps=1, n_samples=1)
    assert "panel" not in plain and not (tmp_path / "plain" / "panels").exists()
