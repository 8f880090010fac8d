"""Multi-modal NIfTI cases at inference (issue 12): a BraTS case folder, a folder of cases or a flat folder of
``<case>_<m>.nii.gz`` files is grouped into cases, each case's modalities are stacked as channels with
per-modality scaling (the values the model sees equal the training pipeline's), and ``<case>.nii.gz`` outputs
land on the modalities' grid. A missing modality or a modality on another grid stops before any compute with
one line naming the file; a 4-D NIfTI of the stacked modalities gives the same outputs as the case."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest
import torch

from medrs_diff.cli import main
from medrs_diff.data.scaling import zscore
from medrs_diff.datamodules import NiftiSegmentationDataModule
from medrs_diff.errors import CheckpointError, DataError
from medrs_diff.inference import Predictor
from medrs_diff.inference.cases import find_cases

pytestmark = [pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"), pytest.mark.usefixtures("one_thread")]

MODS = ["t1n", "t1c", "t2w", "t2f"]
#: very different ranges per modality: one z-score over the stacked case would not match training
LEVELS = {"t1n": (100.0, 10.0), "t1c": (500.0, 80.0), "t2w": (1000.0, 200.0), "t2f": (50.0, 5.0)}
SHAPE = (12, 10, 8)
LPS = np.array([[-1.0, 0, 0, 20.0], [0, -1.0, 0, 15.0], [0, 0, 1.5, -6.0], [0, 0, 0, 1]])
RUN = dict(steps=1, n_samples=2, seed=3)
FAST = ["--steps", "1", "--n-samples", "1", "--device", "cpu", "--no-progress"]
OUTPUTS = ("prediction", "uncertainty", "probability")


@pytest.fixture(scope="module")
def seg3d(tiny_segdiff):
    return tiny_segdiff(0, spatial_dims=3, in_channels=4)


@pytest.fixture(scope="module")
def seg2d(tiny_segdiff):
    return tiny_segdiff(1, spatial_dims=2, in_channels=4)


def _modality(seed, m, shape=SHAPE):
    mean, sd = LEVELS[m]
    rng = np.random.default_rng([seed, MODS.index(m)])
    ramp = np.linspace(0, 3 * sd, shape[0], dtype=np.float32)[:, None, None]
    return (rng.normal(mean, sd, shape).astype(np.float32) + ramp).astype(np.float32)


def _write(path, data, affine=LPS):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def _case(root, case, layout="brats", seed=0, skip=(), label=True, affine=LPS):
    """Write one case; returns its modality volumes in channel order."""
    folder, sep = (root / case, "-") if layout == "brats" else (root, "_")
    vols = {}
    for m in MODS:
        vols[m] = _modality(seed, m)
        if m not in skip:
            _write(folder / f"{case}{sep}{m}.nii.gz", vols[m], affine)
    if label:
        seg = np.zeros(SHAPE, np.uint8)
        seg[4:8, 3:7, 2:6] = 1
        _write(folder / (f"{case}-seg.nii.gz" if layout == "brats" else f"{case}_seg.nii.gz"), seg, affine)
    return vols


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


class Spy:
    """Replaces a method's predict: records every window the model sees and returns zeros (or counts the
    windows of the real predict with ``real=True``)."""

    def __init__(self, method, real=False):
        self.method, self.real, self.seen = method, real, []

    def __enter__(self):
        predict = self.method.predict

        def spy(batch, **kw):
            x = batch["image"]
            self.seen.append(x.clone())
            if self.real:
                return predict(batch, **kw)
            return {k: torch.zeros(x.shape[0], 1, *x.shape[2:]) for k in OUTPUTS}

        self.method.predict = spy
        return self

    def __exit__(self, *exc):
        del self.method.predict


def test_brats_case_folder_and_folder_of_cases_write_case_files_on_the_grid(seg3d, load_niftis, tmp_path):
    root = tmp_path / "cases"
    for i, case in enumerate(("BraTS-001", "BraTS-002")):
        _case(root, case, seed=i)
    p = Predictor.from_method(seg3d, scaling="zscore", modalities=MODS, layout="brats")
    (one,) = p.predict_files(root / "BraTS-002", tmp_path / "one", **RUN)  # a single case folder
    assert _files(tmp_path / "one") == ["BraTS-002.nii.gz", "probability/BraTS-002.nii.gz",
                                        "uncertainty/BraTS-002.nii.gz"]
    both = p.predict_files(root, tmp_path / "both", **RUN)  # a folder of cases
    assert [r["prediction"].name for r in both] == ["BraTS-001.nii.gz", "BraTS-002.nii.gz"]
    ref = nib.load(str(root / "BraTS-002" / "BraTS-002-t1n.nii.gz"))
    for path in one.values():
        img = nib.load(str(path))
        assert img.shape == SHAPE
        np.testing.assert_array_equal(img.affine, ref.affine)
    same = load_niftis(both[1])  # seeded by the case name: alone or with another case, the same outputs
    for k, v in load_niftis(one).items():
        np.testing.assert_array_equal(same[k], v)
    (named,) = p.predict_files(root / "BraTS-001", tmp_path / "single.nii.gz", **RUN)  # one case -> a file name
    assert named["prediction"] == tmp_path / "single.nii.gz"
    assert named["uncertainty"].name == "single_uncertainty.nii.gz"


def test_flat_folder_is_grouped_into_cases_and_labels_are_left_alone(seg3d, tmp_path):
    root = tmp_path / "flat"
    for i, case in enumerate(("p01", "p_02")):
        _case(root, case, layout="flat", seed=i)
    p = Predictor.from_method(seg3d, scaling="zscore", modalities=MODS, layout="flat")
    cases = find_cases(root, MODS, "flat")
    assert [c.name for c in cases] == ["p01", "p_02"] and cases[0].modalities == MODS
    results = p.predict_files(root, tmp_path / "out", **RUN)
    assert _files(tmp_path / "out") == [f"{d}{c}.nii.gz" for d in ("", "probability/", "uncertainty/")
                                        for c in ("p01", "p_02")]
    for r in results:
        assert nib.load(str(r["prediction"])).shape == SHAPE
    # the brats-recorded model reads the flat folder too (its own layout first, then the other)
    pb = Predictor.from_method(seg3d, scaling="zscore", modalities=MODS, layout="brats")
    assert [c.name for c in pb.input_sources(root)[0]] == ["p01", "p_02"]


def test_a_4d_nifti_of_the_stacked_modalities_gives_the_case_outputs(seg3d, load_niftis, tmp_path):
    vols = _case(tmp_path / "cases", "c7", seed=4)
    stacked = _write(tmp_path / "stacked" / "c7.nii.gz", np.stack([vols[m] for m in MODS], -1))
    p = Predictor.from_method(seg3d, scaling="zscore", modalities=MODS, layout="brats")
    (a,) = p.predict_files(tmp_path / "cases" / "c7", tmp_path / "a", **RUN)
    (b,) = p.predict_files(stacked, tmp_path / "b", **RUN)  # per-channel scaling on the 4-D file as well
    got, want = load_niftis(b), load_niftis(a)
    for k in OUTPUTS:
        np.testing.assert_array_equal(got[k], want[k])
    pooled = Predictor.from_method(seg3d, scaling="zscore")  # no modalities: one z-score over the 4 channels
    (c,) = pooled.predict_files(stacked, tmp_path / "c", **RUN)
    assert not np.allclose(load_niftis(c)["probability"], want["probability"])


@pytest.mark.parametrize("nan", [False, True], ids=["finite", "nan-filled"])
def test_the_model_sees_what_the_training_pipeline_gives(seg3d, nan, tmp_path):
    root = tmp_path / "cases"
    vols = _case(root, "c1", seed=2)
    if nan:  # NaN in one modality: training fills it with that modality's own minimum before scaling
        vols["t2w"][3, 4, 5] = np.nan
        _write(root / "c1" / "c1-t2w.nii.gz", vols["t2w"])
    dm = NiftiSegmentationDataModule(str(root), spatial_dims=3, scaling="zscore", modalities=MODS, layout="brats",
                                     check_files=False)
    (record,) = dm.records()
    train = torch.as_tensor(dm.transforms(train=False)(record)["image"]).as_subclass(torch.Tensor)
    assert train.shape == (4, *SHAPE)
    p = Predictor.from_method(seg3d, scaling="zscore", modalities=MODS, layout="brats")
    with Spy(seg3d) as spy:
        p.predict_files(root / "c1", tmp_path / "out", tile=list(SHAPE), nan_policy="fill" if nan else "error", **RUN)
    (x,) = spy.seen  # one window over the whole case, in RAS as in training
    np.testing.assert_allclose(x[0].numpy(), train.numpy(), rtol=1e-5, atol=1e-5)
    for c, m in enumerate(MODS):  # each channel z-scored on its own
        assert abs(float(x[0, c].mean())) < 1e-4 and abs(float(x[0, c].std(unbiased=False)) - 1) < 1e-3, m
    stacked = torch.from_numpy(np.nan_to_num(np.stack([vols[m] for m in MODS]), nan=0.0))
    assert not np.allclose(zscore(stacked).forward(stacked).numpy()[:, ::-1, ::-1], train.numpy(), atol=0.1)


def test_slice_wise_multimodal_case_sees_the_training_slices(seg2d, write_checkpoint, tmp_path):
    root = tmp_path / "cases"
    _case(root, "c1", seed=5)
    dm = NiftiSegmentationDataModule(str(root), spatial_dims=2, scaling="zscore", modalities=MODS, layout="brats",
                                     slices=True, check_files=False)
    (record,) = dm.records()
    train = torch.as_tensor(dm.transforms(train=False)(record)["image"]).as_subclass(torch.Tensor)
    assert train.shape == (4, *SHAPE[:2])  # one axial slice, scaled on the whole volume
    ckpt = write_checkpoint(seg2d, tmp_path / "s.ckpt", spatial_dims=2, modalities=MODS, layout="brats", slices=True)
    p = Predictor.from_checkpoint(ckpt)
    assert p.slice_wise and p.modalities == tuple(MODS)
    with Spy(p.method) as spy:
        (paths,) = p.predict_files(root / "c1", tmp_path / "out", tile=list(SHAPE[:2]), **RUN)
    windows = torch.cat(spy.seen)
    assert windows.shape == (SHAPE[2], 4, *SHAPE[:2])  # every slice of the volume, once
    assert min(float((w - train).abs().max()) for w in windows) < 1e-5
    img = nib.load(str(paths["prediction"]))
    assert img.shape == SHAPE
    np.testing.assert_array_equal(img.affine, nib.load(str(root / "c1" / "c1-t1n.nii.gz")).affine)


@pytest.fixture
def ckpt3d(seg3d, write_checkpoint, tmp_path):
    return write_checkpoint(seg3d, tmp_path / "mm.ckpt", spatial_dims=3, modalities=MODS, layout="brats")


def _infer(capsys, ckpt, src, out):
    rc = main(["infer", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), *FAST])
    return rc, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_cli_missing_modality_is_one_line_naming_the_file(ckpt3d, seg3d, tmp_path, capsys):
    root = tmp_path / "cases"
    _case(root, "A", seed=0)
    _case(root, "B", seed=1, skip=("t2f",))
    with Spy(seg3d, real=True) as spy:
        rc, err = _infer(capsys, ckpt3d, root, tmp_path / "out")
        assert rc == 2 and len(err) == 1, err
        assert "B-t2f.nii.gz: case B has no t2f modality file. Fix: add it" in err[0]
        assert spy.seen == [] and not (tmp_path / "out").exists()  # case A was not computed either
        rc, err = _infer(capsys, ckpt3d, root / "A", tmp_path / "out")  # the complete case runs
        assert rc == 0, err
    assert _files(tmp_path / "out") == ["A.nii.gz", "probability/A.nii.gz", "uncertainty/A.nii.gz"]


def test_flat_case_missing_a_modality_names_the_file(seg3d, tmp_path):
    _case(tmp_path / "flat", "x1", layout="flat", skip=("t1c",))
    p = Predictor.from_method(seg3d, scaling="zscore", modalities=MODS)
    with pytest.raises(DataError, match=r"flat/x1_t1c\.nii\.gz: case x1 has no t1c modality file"):
        p.predict_files(tmp_path / "flat", tmp_path / "out", **RUN)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("bad", "message"), [
    ("affine", r"c1-t2w\.nii\.gz: affine differs from that of .*c1-t1n\.nii\.gz by up to 5"),
    ("shape", r"c1-t2w\.nii\.gz: spatial shape \(12, 10, 6\) differs from \(12, 10, 8\) of .*c1-t1n\.nii\.gz"),
])
def test_cli_modality_on_another_grid_is_one_line_naming_it(bad, message, ckpt3d, seg3d, tmp_path, capsys):
    root = tmp_path / "cases"
    vols = _case(root, "c1")
    shifted = LPS.copy()
    shifted[0, 3] += 5.0
    if bad == "affine":
        _write(root / "c1" / "c1-t2w.nii.gz", vols["t2w"], shifted)
    else:
        _write(root / "c1" / "c1-t2w.nii.gz", vols["t2w"][:, :, :6])
    with Spy(seg3d, real=True) as spy:
        rc, err = _infer(capsys, ckpt3d, root / "c1", tmp_path / "out")
    assert rc == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert "Fix:" in err[0] and spy.seen == [] and not (tmp_path / "out").exists()


def test_one_modality_file_alone_names_the_ways_to_give_the_case(seg3d, tmp_path):
    _case(tmp_path / "cases", "c1")
    p = Predictor.from_method(seg3d, scaling="zscore", modalities=MODS, layout="brats")
    with pytest.raises(DataError, match=r"c1-t1n\.nii\.gz: has 1 channel\(s\) but the model expects 4 modalities "
                                        r"\(t1n, t1c, t2w, t2f\)\. Fix: .*<case>/<case>-<m>\.nii\.gz"):
        p.predict_files(tmp_path / "cases" / "c1" / "c1-t1n.nii.gz", tmp_path / "o", **RUN)


def test_checkpoint_modalities_must_fit_the_model(seg3d, write_checkpoint, tmp_path):
    good = Predictor.from_checkpoint(write_checkpoint(seg3d, tmp_path / "g.ckpt", modalities=MODS, layout="flat"))
    assert good.modalities == tuple(MODS) and good.layout == "flat" and good.channelwise and not good.slice_wise
    with pytest.raises(CheckpointError, match=r"records modalities \['t1n', 't2w'\] for a model with 4 input"):
        Predictor.from_checkpoint(write_checkpoint(seg3d, tmp_path / "b.ckpt", modalities=["t1n", "t2w"]))
