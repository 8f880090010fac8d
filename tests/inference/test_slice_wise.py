"""3-D NIfTI volumes through 2-D models (issue 12): every axial slice (after RAS reorientation, as training
with ``slices: true``) goes through the 2-D model, each slice window seeded by its start (x, y, z), and one
NIfTI per output comes back on the volume's grid (affine, header, stored voxel order). Without slice-wise
inference the volume is refused with a fix naming ``--slice-wise``; the checkpoint's ``slices`` sets the
default."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from medrs_diff.cli import main
from medrs_diff.data.scaling import zscore
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.inference import Predictor
from medrs_diff.inference.seeding import window_generators

pytestmark = [pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"), pytest.mark.usefixtures("one_thread")]

RUN = dict(steps=2, n_samples=2, seed=5)
FAST = ["--steps", "1", "--n-samples", "1", "--device", "cpu", "--no-progress"]
#: stored axes (S, L->R flipped, P->A flipped): the axial axis is stored first, so RAS reorders all three.
PERMUTED = np.array([[0, -1.2, 0, 30.0], [0, 0, -1.2, 20.0], [2.5, 0, 0, -10.0], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def method(tiny_segdiff):
    return tiny_segdiff(3, spatial_dims=2)


def _nifti(path, shape, affine, seed=0):
    vol = np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)
    vol += np.linspace(0, 60, shape[0], dtype=np.float32)[:, None, None]  # slices that differ in intensity
    img = nib.Nifti1Image(vol, affine)
    img.header["descrip"] = b"slice-wise phantom"
    nib.save(img, str(path))
    return vol


def _hand(method, vol, affine, case, seed=5, steps=2, n_samples=2):
    """Slice by slice by hand: z-score over the whole volume, RAS order, one window per slice seeded by
    (seed, case, (0, 0, z)), outputs back in stored order."""
    s = zscore(torch.from_numpy(vol)[None])
    fwd = ornt_transform(io_orientation(affine), axcodes2ornt("RAS"))
    inv = ornt_transform(axcodes2ornt("RAS"), io_orientation(affine))
    ras = torch.from_numpy(np.ascontiguousarray(apply_orientation(vol, fwd)))
    x = s.forward(ras[None])
    outs: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for z in range(ras.shape[-1]):
            o = method.predict({"image": x[None, :, :, :, z]}, steps=steps, n_samples=n_samples,
                               generator=window_generators(seed, case, [(0, 0, z)]))
            for k in method.io_spec.outputs:
                outs.setdefault(k, []).append(o[k][0, 0].numpy())
    return {k: apply_orientation(np.stack(v, -1), inv) for k, v in outs.items()}


@pytest.mark.parametrize(("affine", "shape"), [(np.diag([1.5, 1.5, 3.0, 1.0]), (16, 16, 4)), (PERMUTED, (4, 16, 16))],
                         ids=["ras", "axial-axis-stored-first"])
def test_volume_slice_by_slice_equals_the_hand_composition_on_the_volume_grid(method, affine, shape, load_niftis,
                                                                              tmp_path):
    src = tmp_path / "vol.nii.gz"
    vol = _nifti(src, shape, affine)
    p = Predictor.from_method(method, scaling="zscore")
    (paths,) = p.predict_files(src, tmp_path / "out", slice_wise=True, batch=3, **RUN)
    assert set(paths) == {"prediction", "uncertainty", "probability"}
    got, want = load_niftis(paths), _hand(method, vol, affine, "vol.nii.gz")
    for k in paths:
        img = nib.load(str(paths[k]))
        assert img.shape == shape  # one volume per output, in stored voxel order
        np.testing.assert_array_equal(img.affine, nib.load(str(src)).affine)  # as stored (float32 sform)
        assert img.header["descrip"].tobytes().rstrip(b"\0") == b"slice-wise phantom"
        np.testing.assert_allclose(got[k], want[k], atol=1e-5, err_msg=k)
    # the per-slice seeds carry z: two slices never share their noise, even on equal input
    assert not np.allclose(got["probability"][..., 0] if shape[2] == 4 else got["probability"][0],
                           got["probability"][..., 1] if shape[2] == 4 else got["probability"][1])
    (again,) = p.predict_files(src, tmp_path / "b1", slice_wise=True, batch=1, **RUN)
    for k, v in load_niftis(again).items():
        np.testing.assert_allclose(v, got[k], atol=1e-6)  # the batch does not change a slice's noise


def test_slices_of_a_volume_get_their_own_seed_but_equal_slices_equal_inputs(method, tmp_path):
    """A volume of identical slices: the model sees identical inputs, but each slice's noise differs."""
    slab = np.random.default_rng(1).normal(100, 20, (16, 16, 1)).astype(np.float32)
    nib.save(nib.Nifti1Image(np.repeat(slab, 3, axis=2), np.eye(4)), str(tmp_path / "same.nii.gz"))
    seen = []
    p = Predictor.from_method(method, scaling="zscore")
    predict = method.predict

    def spy(batch, **kw):
        seen.append(batch["image"].clone())
        return predict(batch, **kw)

    method.predict = spy
    try:
        (paths,) = p.predict_files(tmp_path / "same.nii.gz", tmp_path / "o", slice_wise=True, **RUN)
    finally:
        del method.predict
    x = torch.cat(seen)
    assert x.shape == (3, 1, 16, 16) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    prob = np.asarray(nib.load(str(paths["probability"])).dataobj)
    assert not np.allclose(prob[..., 0], prob[..., 1])


def test_volume_without_slice_wise_is_refused_naming_the_switch(method, tmp_path):
    src = tmp_path / "v.nii.gz"
    _nifti(src, (16, 16, 5), np.eye(4))
    p = Predictor.from_method(method, scaling="zscore")
    with pytest.raises(DataError, match=r"v\.nii\.gz: is a 3-D volume \(16 x 16 x 5 voxels\) given to a 2-D model\. "
                                        r"Fix: .*infer slice-wise: pass --slice-wise \(Python: slice_wise=True\)"):
        p.predict_files(src, tmp_path / "out", **RUN)
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="--slice-wise"):  # checked before any compute, in check_files
        p.check_files([src], tmp_path / "out", False)
    assert p.check_files([src], tmp_path / "out", False, slice_wise=True)
    assert not (tmp_path / "out").exists()


def test_slice_wise_needs_a_2d_model_and_a_bool(tiny_segdiff, tmp_path):
    seg3d = tiny_segdiff(0, spatial_dims=3)
    p3 = Predictor.from_method(seg3d, scaling="zscore")
    src = tmp_path / "v.nii.gz"
    _nifti(src, (16, 16, 8), np.eye(4))
    with pytest.raises(ArgumentError, match="slice_wise runs a 2-D model slice by slice, but this model is 3-D"):
        p3.predict_files(src, tmp_path / "out", slice_wise=True, **RUN)
    with pytest.raises(ArgumentError, match="must be True, False or None"):
        p3.predict_files(src, tmp_path / "out", slice_wise="yes", **RUN)
    with pytest.raises(ArgumentError, match="this model is 3-D"):
        Predictor.from_method(seg3d, slice_wise=True)


def test_a_single_slice_stays_a_2d_image_under_slice_wise(method, load_niftis, tmp_path):
    src = tmp_path / "s.nii.gz"
    aff = np.diag([0.8, 0.8, 3.0, 1.0])
    _nifti(src, (16, 12, 1), aff)
    p = Predictor.from_method(method, scaling="zscore")
    plain = load_niftis(p.predict_files(src, tmp_path / "a", **RUN)[0])
    sliced = load_niftis(p.predict_files(src, tmp_path / "b", slice_wise=True, **RUN)[0])
    for k in plain:
        assert sliced[k].shape == (16, 12, 1)
        np.testing.assert_array_equal(sliced[k], plain[k])


def test_cli_default_comes_from_the_checkpoint_and_the_switch_overrides_it(method, write_checkpoint, tmp_path,
                                                                            capsys):
    src = tmp_path / "in" / "vol.nii.gz"
    src.parent.mkdir()
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])  # LPS storage
    _nifti(src, (16, 16, 3), affine)
    plain = write_checkpoint(method, tmp_path / "plain.ckpt")
    slices = write_checkpoint(method, tmp_path / "slices.ckpt", slices=True, spatial_dims=2)
    assert Predictor.from_checkpoint(slices).slice_wise and not Predictor.from_checkpoint(plain).slice_wise

    def infer(ckpt, out, *extra):
        rc = main(["infer", "--checkpoint", str(ckpt), "--input", str(src.parent), "--output", str(out), *FAST,
                   *extra])
        return rc, [line for line in capsys.readouterr().err.splitlines() if line.strip()]

    rc, err = infer(plain, tmp_path / "o1")
    assert rc == 2 and len(err) == 1 and "--slice-wise" in err[0] and not (tmp_path / "o1").exists()
    rc, err = infer(slices, tmp_path / "o2", "--no-slice-wise")
    assert rc == 2 and len(err) == 1 and "--slice-wise" in err[0] and not (tmp_path / "o2").exists()
    rc, err = infer(plain, tmp_path / "o3", "--slice-wise")
    assert rc == 0, err
    rc, err = infer(slices, tmp_path / "o4")
    assert rc == 0, err
    for out in ("o3", "o4"):
        files = sorted(str(p.relative_to(tmp_path / out)) for p in (tmp_path / out).rglob("*") if p.is_file())
        assert files == ["probability/vol.nii.gz", "uncertainty/vol.nii.gz", "vol.nii.gz"]
        img = nib.load(str(tmp_path / out / "vol.nii.gz"))
        assert img.shape == (16, 16, 3)
        np.testing.assert_array_equal(img.affine, affine)
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "o3" / "vol.nii.gz")).dataobj),
                                  np.asarray(nib.load(str(tmp_path / "o4" / "vol.nii.gz")).dataobj))
