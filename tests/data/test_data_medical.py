"""MONAI NIfTI pipelines: orientation, spacing, per-modality scaling, stacking, patches, slices, errors."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from medrs_diff.data import keys as K
from medrs_diff.data import medical as M
from medrs_diff.data import synthetic as S
from medrs_diff.data.errors import DataError
from medrs_diff.data.writers import write_nifti


def test_2d_segmentation_pipeline_scales_image_and_keeps_mask_aligned(synth):
    rec = synth["seg2d"][0]
    out = M.medical_transforms([K.IMAGE], [K.LABEL], scaling=S.SEG_SCALING)(rec)
    img, lab = out[K.IMAGE], out[K.LABEL]
    assert img.shape == lab.shape == (1, 48, 48)
    assert -1.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert set(torch.unique(lab).tolist()) == {0.0, 1.0}
    # the ellipse (mask) is bright: raw 0.8 -> model ~0.6, background raw 0.2 -> ~-0.6
    assert float(img[lab > 0].mean()) > 0.4 and float(img[lab == 0].mean()) < -0.4
    assert out[K.scaling_key(K.IMAGE)] == S.SEG_SCALING.to_dict()


def test_random_3d_patches_are_reproducible_and_aligned(synth):
    rec = synth["seg3d"][0]
    make = lambda: M.medical_transforms(  # noqa: E731
        [K.IMAGE], [K.LABEL], scaling=S.SEG_SCALING, patch_size=(16, 16, 12), num_patches=3, seed=7)
    a, b = make()(rec), make()(rec)
    assert len(a) == 3 and all(p[K.IMAGE].shape == (1, 16, 16, 12) for p in a)
    for p, q in zip(a, b):
        torch.testing.assert_close(p[K.IMAGE], q[K.IMAGE])
    full = M.medical_transforms([K.IMAGE], [K.LABEL], scaling=S.SEG_SCALING)(rec)
    # every patch is a crop of the full volume (image and label cut at the same place)
    for p in a:
        start = [int(c.item()) if hasattr(c, "item") else int(c) for c in _crop_start(full[K.IMAGE], p[K.IMAGE])]
        sl = tuple(slice(s, s + n) for s, n in zip(start, p[K.IMAGE].shape[1:]))
        torch.testing.assert_close(full[K.LABEL][(0, *sl)], p[K.LABEL][0])


def _crop_start(full: torch.Tensor, patch: torch.Tensor) -> tuple[int, ...]:
    f, p = full[0].numpy(), patch[0].numpy()
    for i in range(f.shape[0] - p.shape[0] + 1):
        for j in range(f.shape[1] - p.shape[1] + 1):
            for k in range(f.shape[2] - p.shape[2] + 1):
                if np.array_equal(f[i : i + p.shape[0], j : j + p.shape[1], k : k + p.shape[2]], p):
                    return i, j, k
    raise AssertionError("patch not found in the volume")


def test_2d_slices_from_volumes_centred_on_foreground(synth):
    t = M.medical_transforms([K.IMAGE], [K.LABEL], scaling=S.SEG_SCALING, slices_2d=True, pos_fraction=1.0,
                             num_patches=2, seed=0)
    out = t(synth["seg3d"][1])
    assert len(out) == 2
    for s in out:
        assert s[K.IMAGE].shape == (1, 24, 24) and float(s[K.LABEL].sum()) > 0


def test_brats_modalities_stacked_with_region_labels(synth):
    rec = synth["brats"][0]
    t = M.medical_transforms(K.BRATS_MODALITIES, [K.LABEL], scaling="mri", stack=K.BRATS_MODALITIES,
                             brats_regions=True)
    out = t(rec)
    assert out[K.IMAGE].shape == (4, 32, 32, 24) and out[K.LABEL].shape == (3, 32, 32, 24)
    tc, wt, et = (out[K.LABEL][i].bool() for i in range(3))
    assert bool((et <= tc).all()) and bool((tc <= wt).all()) and int(et.sum()) > 0
    assert all(K.scaling_key(m) in out for m in K.BRATS_MODALITIES)
    assert not any(m in out for m in K.BRATS_MODALITIES)
    raw = nib.load(rec["t1ce"]).get_fdata()
    # t1ce: the enhancing rim is the brightest tissue, also after per-modality percentile scaling
    assert float(out[K.IMAGE][1][et].mean()) > float(out[K.IMAGE][1][wt & ~tc].mean())
    assert raw[nib.load(rec[K.LABEL]).get_fdata() == 4].mean() > raw[raw > 0].mean()


def test_pet_pairs_share_the_fixed_suv_scaling(synth):
    rec = synth["pet"][0]
    out = M.medical_transforms([K.COND, K.IMAGE], [K.MASK], scaling=S.PET_SCALING)(rec)
    assert out[K.COND].shape == out[K.IMAGE].shape == out[K.MASK].shape
    assert out[K.scaling_key(K.COND)] == out[K.scaling_key(K.IMAGE)] == S.PET_SCALING.to_dict()
    body = out[K.MASK] > 0
    low, full = S.PET_SCALING.inverse(out[K.COND]), S.PET_SCALING.inverse(out[K.IMAGE])
    # Poisson thinning keeps the mean activity and raises the noise
    assert float(low[body].mean()) == pytest.approx(float(full[body].mean()), rel=0.05)
    assert float(low[body].std()) > float(full[body].std())


def test_real_mr_is_oriented_to_ras_without_changing_values(shared_data):
    src = shared_data / "ct_mr_totalsegmentator" / "example_mr_sm.nii.gz"
    seg = shared_data / "ct_mr_totalsegmentator" / "example_seg_mr.nii.gz"
    if not src.exists():
        pytest.skip(f"{src} absent")
    out = M.medical_transforms([K.IMAGE], [K.LABEL], scaling="none")({K.IMAGE: str(src), K.LABEL: str(seg)})
    assert nib.aff2axcodes(out[K.IMAGE].affine.numpy()) == ("R", "A", "S")
    canonical = nib.as_closest_canonical(nib.load(src)).get_fdata()
    np.testing.assert_allclose(out[K.IMAGE][0].numpy(), canonical, rtol=1e-6)


def test_real_ct_window_and_resampling(shared_data):
    src = shared_data / "ct_mr_totalsegmentator" / "example_ct_sm.nii.gz"
    seg = shared_data / "ct_mr_totalsegmentator" / "example_seg.nii.gz"
    if not src.exists():
        pytest.skip(f"{src} absent")
    t = M.medical_transforms([K.IMAGE], [K.LABEL], scaling="ct", spacing=(6.0, 6.0, 6.0))
    out = t({K.IMAGE: str(src), K.LABEL: str(seg)})
    assert out[K.IMAGE].shape[1:] == out[K.LABEL].shape[1:]
    assert abs(out[K.IMAGE].shape[1] - 122 / 2) <= 1 and abs(out[K.IMAGE].shape[3] - 30 / 2) <= 1
    np.testing.assert_allclose(np.abs(np.diag(out[K.IMAGE].affine.numpy())[:3]), 6.0)
    assert float(out[K.IMAGE].min()) >= -1 and float(out[K.IMAGE].max()) <= 1
    labels = set(torch.unique(out[K.LABEL]).tolist())
    assert labels <= set(np.unique(nib.load(seg).get_fdata()).tolist())  # nearest: no new label values


def test_missing_file_is_one_clear_error(synth, tmp_path):
    rec = {K.IMAGE: synth["seg2d"][0][K.IMAGE], K.LABEL: str(tmp_path / "missing_label.nii.gz")}
    with pytest.raises(DataError, match=r"missing_label\.nii\.gz: 'label' file does not exist"):
        M.medical_dataset([rec], M.medical_transforms([K.IMAGE], [K.LABEL]))
    with pytest.raises(DataError, match=r"missing_label\.nii\.gz: 'label' file does not exist"):
        M.medical_transforms([K.IMAGE], [K.LABEL])(rec)


def test_unreadable_file_in_pipeline_names_it(synth, tmp_path):
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    rec = {K.IMAGE: str(bad), K.LABEL: synth["seg2d"][0][K.LABEL]}
    with pytest.raises(DataError, match=r"corrupt\.nii\.gz: cannot be read"):
        M.medical_transforms([K.IMAGE], [K.LABEL])(rec)


def test_image_and_label_of_different_shape(synth, tmp_path):
    write_nifti(np.zeros((40, 48), np.uint8), tmp_path / "short_label.nii.gz", np.eye(4))
    rec = {K.IMAGE: synth["seg2d"][0][K.IMAGE], K.LABEL: str(tmp_path / "short_label.nii.gz")}
    with pytest.raises(DataError, match=r"short_label\.nii\.gz: spatial shape \(40, 48\) differs from \(48, 48\)"):
        M.medical_transforms([K.IMAGE], [K.LABEL], scaling=S.SEG_SCALING)(rec)
    with pytest.raises(DataError, match="short_label"):
        M.validate_records([rec])


def test_affine_mismatch_between_paired_inputs(synth, tmp_path):
    img = nib.load(synth["seg2d"][0][K.IMAGE])
    aff = img.affine.copy()
    aff[0, 3] += 5.0  # shifted by 5 mm
    write_nifti(np.asarray(img.dataobj), tmp_path / "shifted.nii.gz", aff)
    rec = {K.IMAGE: str(tmp_path / "shifted.nii.gz"), K.LABEL: synth["seg2d"][0][K.LABEL]}
    with pytest.raises(DataError, match=r"affine differs .* by up to 5"):
        M.medical_transforms([K.IMAGE], [K.LABEL], scaling=S.SEG_SCALING)(rec)
    # within tolerance passes
    M.medical_transforms([K.IMAGE], [K.LABEL], scaling=S.SEG_SCALING, geometry_atol=6.0)(rec)


def test_nan_everywhere_is_refused_and_some_nan_is_filled(tmp_path):
    write_nifti(np.full((8, 8, 8), np.nan, np.float32), tmp_path / "allnan.nii.gz", np.eye(4))
    with pytest.raises(DataError, match=r"allnan\.nii\.gz: has no finite voxel"):
        M.medical_transforms([K.IMAGE], scaling="ct")({K.IMAGE: str(tmp_path / "allnan.nii.gz")})
    vol = np.zeros((8, 8, 8), np.float32)
    vol[0, 0, 0] = np.nan
    write_nifti(vol, tmp_path / "somenan.nii.gz", np.eye(4))
    out = M.medical_transforms([K.IMAGE], scaling="ct")({K.IMAGE: str(tmp_path / "somenan.nii.gz")})
    assert bool(torch.isfinite(out[K.IMAGE]).all())


def test_patch_larger_than_image(synth):
    rec = synth["seg3d"][0]
    with pytest.raises(DataError, match=r"case_000_image\.nii\.gz: patch \(32, 16, 16\) is larger than the image"):
        M.medical_transforms([K.IMAGE], [K.LABEL], scaling=S.SEG_SCALING, patch_size=(32, 16, 16))(rec)
    out = M.medical_transforms([K.IMAGE], [K.LABEL], scaling=S.SEG_SCALING, patch_size=(32, 16, 16),
                               pad_to_patch=True)(rec)
    assert out[K.IMAGE].shape == (1, 32, 16, 16)
    assert float(out[K.IMAGE].min()) == -1.0  # padded with the model-space minimum


def test_centre_crop_pad_to_spatial_size(synth):
    out = M.medical_transforms([K.IMAGE], [K.LABEL], scaling=S.SEG_SCALING, spatial_size=(32, 32, 32))(
        synth["seg3d"][0])
    assert out[K.IMAGE].shape == out[K.LABEL].shape == (1, 32, 32, 32)


def test_pair_folders(tmp_path):
    recs = S.make_segmentation_phantoms(tmp_path / "all", n=2, size=(8, 8))
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for i, r in enumerate(recs):
        (tmp_path / "img" / f"c{i}.nii.gz").write_bytes(open(r[K.IMAGE], "rb").read())
        (tmp_path / "lab" / f"c{i}_seg.nii.gz").write_bytes(open(r[K.LABEL], "rb").read())
    pairs = M.pair_folders({K.IMAGE: tmp_path / "img", K.LABEL: tmp_path / "lab"}, suffixes={K.LABEL: "_seg"})
    assert [p[K.LABEL].endswith(f"c{i}_seg.nii.gz") for i, p in enumerate(pairs)] == [True, True]
    (tmp_path / "lab" / "c1_seg.nii.gz").unlink()
    with pytest.raises(DataError, match=r"c1\.nii\.gz: has no matching 'label' file"):
        M.pair_folders({K.IMAGE: tmp_path / "img", K.LABEL: tmp_path / "lab"}, suffixes={K.LABEL: "_seg"})


def test_dataset_and_loader_collate(synth):
    t = M.medical_transforms([K.IMAGE], [K.LABEL], scaling=S.SEG_SCALING)
    ds = M.medical_dataset(synth["seg2d"], t)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch[K.IMAGE].shape == (3, 1, 48, 48) and batch[K.LABEL].shape == (3, 1, 48, 48)
