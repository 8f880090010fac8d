"""2-D clinical data module: every layout on tiny PIL-written files, every bad-input refusal, resize / patches,
seeded patches and exact resume, the phantom twins, and the real HRF fundus data when ../shared is there."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medrs_diff.datamodules import Clinical2DSegmentationDataModule as C2D
from medrs_diff.errors import ArgumentError, DataError

H, W = 24, 32


def _rgb(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _classes(rng: np.random.Generator, k: int = 2) -> np.ndarray:
    """Blocky class map (survives JPEG well enough to check thresholding)."""
    return np.kron(rng.integers(0, k, (H // 8, W // 8)), np.ones((8, 8), int)).astype(np.uint8)


def _save(arr: np.ndarray, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def _write_layout(root: Path, layout: str, n: int = 3) -> dict[str, dict[str, np.ndarray]]:
    """Write ``n`` cases of ``layout`` with PIL; return the expected classes / FOV per image file name."""
    rng = np.random.default_rng(7)
    expected: dict[str, dict[str, np.ndarray]] = {}
    for i in range(1, n + 1):
        img, cls, fov = _rgb(rng), _classes(rng, 3 if layout == "refuge" else 2), None
        if layout == "drive":
            name, fov = f"{20 + i}_training.tif", np.ones((H, W), bool)
            fov[:3] = False
            _save(img, root / "images" / name)
            _save((cls * 255).astype(np.uint8), root / "1st_manual" / f"{20 + i}_manual1.gif")  # grey GIF
            _save(fov.astype(np.uint8) * 255, root / "mask" / f"{20 + i}_training_mask.gif")
        elif layout == "hrf":
            stem = f"0{i}_{'dr' if i == 2 else 'h'}"
            name, fov = f"{stem}.{'JPG' if i == 2 else 'jpg'}", np.ones((H, W), bool)  # upper-case extension too
            fov[:, :4] = False
            _save(img, root / "images" / name, quality=95)
            _save((cls * 255).astype(np.uint8), root / "manual1" / f"{stem}.tif", compression="packbits")
            _save(np.repeat(fov[..., None].astype(np.uint8) * 255, 3, -1), root / "mask" / f"{stem}_mask.tif")
        elif layout == "isic":
            name = f"ISIC_{i:07d}.jpg"
            _save(img, root / "images" / name)
            _save((cls * 255).astype(np.uint8), root / "masks" / f"ISIC_{i:07d}_segmentation.png")
            _save(img, root / "images" / f"ISIC_{i:07d}_superpixels.png")  # not a case: image_glob skips it
        elif layout == "kvasir":
            name = f"cju{i}x.jpg"
            _save(img, root / "images" / name)
            _save((cls * 255).astype(np.uint8), root / "masks" / f"cju{i}x.png")
        elif layout == "refuge":
            name = f"g{i:04d}.jpg"
            _save(img, root / "images" / name)
            _save(np.array([255, 128, 0], np.uint8)[cls], root / "gts" / f"g{i:04d}.bmp")  # 255 bg, 128 disc, 0 cup
        elif layout == "custom":
            name, fov = f"p{i}.png", rng.random((H, W)) > 0.3
            _save(img, root / "photos" / name)
            _save(cls.astype(np.uint8), root / "labels" / f"p{i}_lab.png")  # a {0, 1} mask
            _save(fov.astype(np.uint8) * 255, root / "roi" / f"p{i}_roi.png")
        expected[name] = {"classes": cls, "fov": fov, "image": np.asarray(Image.open(root / "images" / name)
                                                                         if layout != "custom" else
                                                                         Image.open(root / "photos" / name))}
    (root / "images").mkdir(exist_ok=True)
    (root / "images" / "LICENSE.txt").write_text("not an image")
    return expected


CUSTOM = dict(image_dir="photos", mask_dir="labels", fov_dir="roi", mask_pattern="{stem}_lab",
              fov_pattern="{stem}_roi", mask_threshold=0)


@pytest.mark.parametrize("layout", ["drive", "hrf", "isic", "kvasir", "refuge", "custom"])
def test_each_layout_pairs_files_by_stem_and_reads_exact_classes(tmp_path, layout):
    expected = _write_layout(tmp_path, layout)
    dm = C2D(str(tmp_path), layout=layout, batch_size=2, val_fraction=0.34, **(CUSTOM if layout == "custom" else {}))
    dm.setup("fit")
    assert len(dm.train_dataset) == 2 and len(dm.val_dataset) == 1
    assert dm.num_classes == (3 if layout == "refuge" else 2)
    items = [dm.train_dataset[0], dm.train_dataset[1], dm.val_dataset[0]]
    assert sorted(it["case"] for it in items) == sorted(expected)
    for it in items:
        exp = expected[it["case"]]
        assert it["image"].shape == (3, H, W) and it["label"].shape == (1, H, W)
        np.testing.assert_array_equal(it["label"][0].numpy(), exp["classes"])  # class indices, exactly
        np.testing.assert_allclose(it["image"].numpy(), np.moveaxis(exp["image"], -1, 0) / 127.5 - 1, atol=1e-6)
        if exp["fov"] is None:
            assert "fov" not in it
        else:
            np.testing.assert_array_equal(it["fov"][0].numpy() > 0, exp["fov"])
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, H, W) and batch["label"].dtype == torch.float32


def test_refuge_map_is_declared_and_can_be_replaced(tmp_path):
    _write_layout(tmp_path, "refuge", n=2)
    dm = C2D(str(tmp_path), layout="refuge", val_fraction=0.5)
    assert dm.label_values == (0.0, 128.0, 255.0) and dm.rule.mapping == {0.0: 2, 128.0: 1, 255.0: 0}
    whole_disc = C2D(str(tmp_path), layout="refuge", label_map={255: 0, 128: 1, 0: 1}, val_fraction=0.5)
    whole_disc.setup("fit")
    it, ref = whole_disc.train_dataset[0], dm
    ref.setup("fit")
    np.testing.assert_array_equal(it["label"].numpy(), (ref.train_dataset[0]["label"] >= 1).float().numpy())
    by_values = C2D(str(tmp_path), layout="refuge", label_values=[0, 128, 255], val_fraction=0.5)
    by_values.setup("fit")  # sorted order: 0 -> 0, 128 -> 1, 255 -> 2
    np.testing.assert_array_equal(by_values.train_dataset[0]["label"].numpy(),
                                  2 - ref.train_dataset[0]["label"].numpy())


# ------------------------------------------------------------------------------------------ bad input
def _hrf(tmp_path: Path, n: int = 2) -> Path:
    _write_layout(tmp_path, "hrf", n=n)
    return tmp_path


def test_mask_values_outside_the_declared_classes_are_refused_naming_the_file(tmp_path):
    root = _hrf(tmp_path)
    m = np.zeros((H, W), np.uint8)
    m[:4], m[4:8] = 255, 128
    _save(m, root / "manual1" / "01_h.tif")
    with pytest.raises(DataError, match=r"01_h\.tif: mask holds value\(s\) \{128\} outside the declared"):
        C2D(str(root), layout="hrf", val_fraction=0.5).setup("fit")
    _save(np.zeros((H, W), np.uint8), root / "manual1" / "01_h.tif")
    _save(np.full((H, W), 128, np.uint8), root / "mask" / "02_dr_mask.tif")
    with pytest.raises(DataError, match=r"02_dr_mask\.tif: field-of-view mask holds value\(s\) \{128\} outside"):
        C2D(str(root), layout="hrf", val_fraction=0.5).setup("fit")
    refuge = tmp_path / "refuge"
    _write_layout(refuge, "refuge", n=2)
    bad = np.full((H, W), 255, np.uint8)
    bad[0, 0] = 7
    _save(bad, refuge / "gts" / "g0002.bmp")
    with pytest.raises(DataError, match=r"g0002\.bmp: mask .*value\(s\) \{7\} outside .*\{0, 128, 255\}"):
        C2D(str(refuge), layout="refuge", val_fraction=0.5).setup("fit")


def test_a_0_1_mask_needs_threshold_0(tmp_path):
    root = _hrf(tmp_path)
    _save(_classes(np.random.default_rng(0)), root / "manual1" / "01_h.tif")
    with pytest.raises(DataError, match=r"01_h\.tif: .*mask_threshold is 127: every pixel would be background.*"
                       r"set mask_threshold: 0"):
        C2D(str(root), layout="hrf", val_fraction=0.5).setup("fit")
    C2D(str(root), layout="hrf", val_fraction=0.5, mask_threshold=0).setup("fit")


def test_rgb_mask_with_different_channels_is_refused_identical_channels_are_fine(tmp_path):
    root = _hrf(tmp_path)
    cls = _classes(np.random.default_rng(1)) * 255
    _save(np.stack([cls, cls, cls], -1).astype(np.uint8), root / "manual1" / "01_h.tif")
    dm = C2D(str(root), layout="hrf", val_fraction=0.5)
    dm.setup("fit")
    np.testing.assert_array_equal(dm.train_dataset[0]["label"][0].numpy() * 255, cls)
    _save(np.stack([cls, np.zeros_like(cls), cls], -1).astype(np.uint8), root / "manual1" / "01_h.tif")
    with pytest.raises(DataError, match=r"01_h\.tif: mask is an RGB image whose channels differ"):
        C2D(str(root), layout="hrf", val_fraction=0.5).setup("fit")


def test_mask_or_fov_of_another_size_is_refused_naming_both_files(tmp_path):
    root = _hrf(tmp_path)
    _save(np.zeros((H, W + 1), np.uint8), root / "manual1" / "02_dr.tif")
    with pytest.raises(DataError, match=rf"02_dr\.tif: mask 02_dr\.tif is {H}x{W + 1} \(HxW\) but its image "
                       rf".*02_dr\.JPG is {H}x{W}"):
        C2D(str(root), layout="hrf", val_fraction=0.5).setup("fit")
    _save(np.zeros((H, W), np.uint8), root / "manual1" / "02_dr.tif")
    _save(np.zeros((H - 2, W), np.uint8), root / "mask" / "01_h_mask.tif")
    with pytest.raises(DataError, match=rf"01_h_mask\.tif: field-of-view mask .* is {H - 2}x{W} .*01_h\.jpg"):
        C2D(str(root), layout="hrf", val_fraction=0.5).setup("fit")


def test_missing_fov_or_mask_file_is_named(tmp_path):
    root = _hrf(tmp_path)
    (root / "mask" / "02_dr_mask.tif").unlink()
    with pytest.raises(DataError, match=r"mask/02_dr_mask\.\*: field-of-view mask file of image 02_dr\.JPG is "
                       r"missing"):
        C2D(str(root), layout="hrf", val_fraction=0.5).setup("fit")
    (root / "manual1" / "01_h.tif").unlink()
    with pytest.raises(DataError, match=r"manual1/01_h\.\*: mask file of image 01_h\.jpg is missing"):
        C2D(str(root), layout="hrf", val_fraction=0.5).records()


def test_jpeg_mask_is_thresholded_with_a_warning(tmp_path):
    root = tmp_path
    _write_layout(root, "kvasir", n=2)
    yy, xx = np.mgrid[0:H, 0:W]
    cls = ((yy - 11.3) ** 2 + (xx - 14.7) ** 2 < 49).astype(np.uint8)  # a disc: its edge crosses JPEG blocks
    (root / "masks" / "cju1x.png").unlink()
    _save((cls * 255).astype(np.uint8), root / "masks" / "cju1x.jpg", quality=75)
    lossy = np.asarray(Image.open(root / "masks" / "cju1x.jpg"))
    assert set(np.unique(lossy)) - {0, 255}  # JPEG made values that are neither class
    with pytest.warns(UserWarning, match=r"cju1x\.jpg: mask is a JPEG \(lossy.*thresholded: values > 127"):
        dm = C2D(str(root), layout="kvasir", val_fraction=0.5)
        dm.setup("fit")
    got = dm.train_dataset[0]["label"][0].numpy()
    np.testing.assert_array_equal(got, (lossy > 127).astype(np.float32))  # exactly the declared threshold
    assert (got == cls).mean() > 0.97


def test_arguments_are_checked_before_any_file(tmp_path):
    with pytest.raises(ArgumentError, match="unknown layout 'drvie'"):
        C2D(str(tmp_path), layout="drvie")
    with pytest.raises(ArgumentError, match="mask_threshold: applies to binary masks, but label_map"):
        C2D(str(tmp_path), label_map={0: 0, 255: 1}, mask_threshold=100)
    with pytest.raises(ArgumentError, match="classes must be 0..K-1"):
        C2D(str(tmp_path), label_map={0: 0, 255: 2})
    with pytest.raises(ArgumentError, match="patch_size: must be two positive integers"):
        C2D(str(tmp_path), patch_size=[16])
    with pytest.raises(DataError, match="dataset folder does not exist"):
        C2D(str(tmp_path / "nope")).setup("fit")


def test_images_of_different_sizes_need_resize_or_patches_to_batch(tmp_path):
    root = _hrf(tmp_path, n=3)
    for sub, name in (("images", "03_h.jpg"), ("manual1", "03_h.tif"), ("mask", "03_h_mask.tif")):
        im = Image.open(root / sub / name)
        im.crop((0, 0, W, H - 8)).save(root / sub / name)
    with pytest.raises(ArgumentError, match=r"validation: images of different sizes .* cannot be batched"):
        C2D(str(root), layout="hrf", val_cases=["01_h", "03_h"], batch_size=2).setup("fit")
    dm = C2D(str(root), layout="hrf", val_cases=["03_h.jpg"], batch_size=2, val_batch_size=1, patch_size=[8, 8])
    dm.setup("fit")
    assert [it["case"] for it in dm.val_dataset] == ["03_h.jpg"] and dm.val_dataset[0]["image"].shape == (3, 16, W)
    with pytest.raises(ArgumentError, match=r"val_cases: unknown case\(s\) \['05_h'\]"):
        C2D(str(root), layout="hrf", val_cases=["05_h"]).setup("fit")


# ------------------------------------------------------------------------------------- resize / patches
def test_resize_and_patch_shapes(tmp_path):
    root = _hrf(tmp_path, n=3)
    dm = C2D(str(root), layout="hrf", resize=[12, 20], val_fraction=0.34, batch_size=2)
    dm.setup("fit")
    it = dm.train_dataset[0]
    assert it["image"].shape == (3, 12, 20) and it["label"].shape == it["fov"].shape == (1, 12, 20)
    assert set(it["label"].unique().tolist()) <= {0.0, 1.0} and float(it["image"].abs().max()) <= 1.0
    pat = C2D(str(root), layout="hrf", patch_size=[8, 16], val_fraction=0.34, samples_per_epoch=5, batch_size=2)
    pat.setup("fit")
    assert len(pat.train_dataset) == 5 and pat.train_dataset[4]["case"] == pat.train_dataset[0]["case"]
    assert pat.train_dataset[0]["image"].shape == (3, 8, 16) and pat.train_dataset[0]["fov"].shape == (1, 8, 16)
    assert pat.val_dataset[0]["image"].shape == (3, H, W)  # validation sees the whole image
    both = C2D(str(root), layout="hrf", resize=[16, 20], patch_size=[8, 8], val_fraction=0.34)
    both.setup("fit")
    assert both.train_dataset[0]["image"].shape == (3, 8, 8) and both.val_dataset[0]["image"].shape == (3, 16, 20)
    with pytest.raises(ArgumentError, match=r"patch_size \[16, 32\] exceeds the resized image size 12x20"):
        C2D(str(root), layout="hrf", resize=[12, 20], patch_size=[16, 32]).setup("fit")


def test_a_patch_is_a_function_of_seed_epoch_and_index(tmp_path):
    root = _hrf(tmp_path, n=3)

    def ds(seed=0):
        dm = C2D(str(root), layout="hrf", patch_size=[8, 8], val_fraction=0.34, samples_per_epoch=6, seed=seed)
        dm.setup("fit")
        return dm.train_dataset

    a, b = ds(), ds()
    b[0], b[1]  # other items loaded before: no effect
    for i in (2, 5):
        for key in ("image", "label", "fov"):
            assert torch.equal(a[i][key], b[i][key])
    a.set_epoch(1)
    assert not all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(6))  # a new epoch draws new patches
    b.set_epoch(1)
    assert torch.equal(a[3]["image"], b[3]["image"])
    c = ds(seed=1)
    assert not all(torch.equal(c[i]["image"], b[i]["image"]) for i in range(6))
    # cut from the full image at some offset: the patch is a window of the case's image
    full = C2D(str(root), layout="hrf", val_fraction=0.34)
    full.setup("fit")
    img = full.train_dataset[0]["image"]
    windows = img.unfold(1, 8, 1).unfold(2, 8, 1).permute(1, 2, 0, 3, 4)
    assert (windows == a[0]["image"]).flatten(2).all(-1).any()


def test_mid_epoch_resume_serves_the_same_patches(tmp_path):
    root = _hrf(tmp_path, n=3)

    def loader():
        dm = C2D(str(root), layout="hrf", patch_size=[8, 8], val_fraction=0.34, samples_per_epoch=6, batch_size=2,
                 seed=3)
        dm.setup("fit")
        return dm.train_dataloader()

    first = loader()
    first.sampler.set_epoch(2)
    full = list(first)
    resumed = loader()
    resumed.sampler.set_epoch(2)
    resumed.load_state_dict({"epoch": 2, "batches": 1})
    rest = list(resumed)
    assert len(rest) == 2
    for x, y in zip(full[1:], rest):
        assert x["case"] == y["case"] and torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])


# ---------------------------------------------------------------------------------------------- phantoms
@pytest.mark.parametrize("layout,files", [
    ("drive", ("images/21_training.jpg", "1st_manual/21_manual1.png", "mask/21_training_mask.png")),
    ("hrf", ("images/01_h.jpg", "manual1/01_h.tif", "mask/01_h_mask.tif")),
    ("isic", ("images/ISIC_0000001.jpg", "masks/ISIC_0000001_segmentation.png")),
    ("kvasir", ("images/polyp001.jpg", "masks/polyp001.png")),
    ("refuge", ("images/g0001.jpg", "masks/g0001.png")),
])
def test_phantoms_write_a_small_dataset_in_the_layout(tmp_path, layout, files):
    root = tmp_path / layout
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # phantom masks are exact: no JPEG warning
        dm = C2D(str(root), layout=layout, phantoms=3, phantom_size=[48, 64], val_fraction=0.34)
        dm.setup("fit")
    for f in files:
        assert (root / f).is_file(), f
    it = dm.train_dataset[0]
    assert it["image"].shape == (3, 48, 64)
    fg = it["label"] > 0
    if layout in ("drive", "hrf"):
        inside = it["fov"] > 0
        assert 0.8 < float(inside.float().mean()) < 0.88 and not bool((fg & ~inside).any())
        assert 0.02 < float(fg[inside].float().mean()) < 0.3  # vessel-like lines
        img = it["image"][1]  # green channel: vessels darker than the background inside the FOV
        assert float(img[(fg & inside)[0]].mean()) < float(img[(~fg & inside)[0]].mean())
    if layout == "refuge":
        assert set(it["label"].unique().tolist()) == {0.0, 1.0, 2.0}
    assert 0.0 < float(fg.float().mean()) < 0.5
    with pytest.raises(DataError, match="is not empty but holds no 'hrf' images"):
        C2D(str(tmp_path), layout="hrf", phantoms=2).setup("fit")


# --------------------------------------------------------------------------------------------- real HRF
HRF = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "fundus_hrf"


@pytest.mark.skipif(not HRF.is_dir(), reason=f"real HRF fundus data not found at {HRF}")
def test_real_hrf_fundus_cases_fov_and_vessel_fractions():
    dm = C2D(str(HRF), layout="hrf", resize=[292, 438], val_fraction=0.25, batch_size=4)
    dm.setup("fit")
    assert len(dm.records()) == 12 and len(dm.train_dataset) == 9 and len(dm.val_dataset) == 3
    assert {it["case"] for it in dm.val_dataset} == {"04_dr.JPG", "04_g.jpg", "04_h.jpg"}
    for ds in (dm.train_dataset, dm.val_dataset):
        for i in range(len(ds)):
            it = ds[i]
            assert it["image"].shape == (3, 292, 438) and -1.0 <= float(it["image"].min()) < float(it["image"].max())
            inside = it["fov"][0] > 0
            assert 0.83 < float(inside.float().mean()) < 0.86, it["case"]
            vessels = it["label"][0] > 0
            assert 0.05 < float(vessels[inside].float().mean()) < 0.13, it["case"]
            green = it["image"][1]
            assert float(green[vessels & inside].mean()) < float(green[~vessels & inside].mean())


def test_grey_channels_apply_fov_and_dropping_the_fov(tmp_path):
    expected = _write_layout(tmp_path, "drive", n=2)
    dm = C2D(str(tmp_path), layout="drive", channels="grey", apply_fov=True, val_fraction=0.5)
    dm.setup("fit")
    it = dm.train_dataset[0]
    rgb = expected[it["case"]]["image"].astype(np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114]) / 127.5 - 1
    inside = expected[it["case"]]["fov"]
    assert it["image"].shape == (1, H, W)
    np.testing.assert_allclose(it["image"][0].numpy()[inside], luma[inside], atol=1e-5)
    assert bool((it["image"][0][~torch.from_numpy(inside)] == -1).all())  # outside the FOV: the model minimum
    no_fov = C2D(str(tmp_path), layout="drive", fov_dir="", val_fraction=0.5)
    no_fov.setup("fit")
    assert "fov" not in no_fov.train_dataset[0] and not no_fov.has_fov


def test_lossy_multi_class_values_go_to_the_nearest_declared_value():
    from medrs_diff.data.clinical2d import classes_from_plane

    plane = np.array([[0, 3, 60, 70, 120, 130, 200, 250, 255]], np.uint8)
    np.testing.assert_array_equal(classes_from_plane(plane, label_map={255: 0, 128: 1, 0: 2}),
                                  [[2, 2, 2, 1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(classes_from_plane(plane, threshold=127), [[0, 0, 0, 0, 0, 1, 1, 1, 1]])


def test_declared_scaling_must_match_the_files_bit_depth(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(3):
        _save(rng.integers(0, 60000, (H, W), dtype=np.uint16), tmp_path / "images" / f"c{i}.png")
        _save((_classes(rng) * 255).astype(np.uint8), tmp_path / "masks" / f"c{i}.png")
    with pytest.raises(DataError, match=r"c0\.png: is a 16-bit image but the data module declares scaling 'dn8'"):
        C2D(str(tmp_path), channels="grey").setup("fit")
    dm = C2D(str(tmp_path), channels="grey", scaling="dn16", val_fraction=0.34)
    dm.setup("fit")
    x = dm.train_dataset[0]["image"]
    assert x.shape == (1, H, W) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    with pytest.raises(ArgumentError, match="unknown scaling 'zscore'"):
        C2D(str(tmp_path), scaling="zscore")
