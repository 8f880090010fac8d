"""Issue 11 rows 7 and the `fit` traceback rows: a segmentation data module refuses, at setup and in one
line naming the file, labels outside the declared classes, NaN voxels, grid mismatches, a missing or
empty root and a single case; `medrs-diff fit` reports the same as one line (exit 2, no traceback)."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medrs_diff.cli import main
from medrs_diff.datamodules import NiftiSegmentationDataModule
from medrs_diff.errors import DataError


def _phantoms(root: Path, n: int = 4) -> list[Path]:
    NiftiSegmentationDataModule(str(root), phantoms=n, phantom_size=[16, 16]).prepare_data()
    return sorted(root.glob("*_label.nii.gz"))


def _rewrite(path: Path, fn, affine: np.ndarray | None = None) -> None:
    img = nib.load(path)
    data = fn(np.asarray(img.dataobj, dtype=np.float32))
    nib.save(nib.Nifti1Image(data.astype(np.float32), img.affine if affine is None else affine), path)


def _setup(root: Path, **kw) -> None:
    NiftiSegmentationDataModule(str(root), **kw).setup("fit")


def _labels_two(a):
    return a * 2


def _labels_frac(a):
    return np.where(a > 0, 0.37, 0.0)


def _label_nan(a):
    a = a.copy()
    a.flat[3] = np.nan
    return a


@pytest.mark.parametrize(("fn", "message"), [
    (_labels_two, r"label map holds value\(s\) \{2\} outside the declared classes \{0, 1\}"),
    (_labels_frac, r"label map holds value\(s\) \{0.37\} outside the declared classes"),
    (_label_nan, r"label map holds 1 non-finite voxel"),
])
def test_bad_label_values_are_refused_at_setup_naming_the_file(tmp_path, fn, message):
    labels = _phantoms(tmp_path / "d")
    _rewrite(labels[1], fn)
    with pytest.raises(DataError, match=rf"{labels[1].name}: {message}") as err:
        _setup(tmp_path / "d")
    assert "Fix:" in str(err.value)


def test_declared_classes_accept_the_same_labels(tmp_path):
    labels = _phantoms(tmp_path / "d")
    for p in labels:
        _rewrite(p, _labels_two)
    _setup(tmp_path / "d", label_values=[0, 2])  # declared: accepted
    with pytest.raises(DataError, match="outside the declared classes"):
        _setup(tmp_path / "d", num_classes=2)  # {0, 1} declared, {0, 2} found


def test_nan_image_voxel_is_refused_at_setup(tmp_path):
    _phantoms(tmp_path / "d")
    image = sorted((tmp_path / "d").glob("*_image.nii.gz"))[2]
    _rewrite(image, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, np.inf, a))
    with pytest.raises(DataError, match=rf"{image.name}: image holds 1 non-finite voxel"):
        _setup(tmp_path / "d")


def test_grid_mismatches_between_image_and_label_are_refused(tmp_path):
    labels = _phantoms(tmp_path / "d")
    _rewrite(labels[0], lambda a: a[:12])
    with pytest.raises(DataError, match=rf"{labels[0].name}.*shape"):
        _setup(tmp_path / "d")
    labels = _phantoms(tmp_path / "e")
    _rewrite(labels[0], lambda a: a, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(DataError, match=rf"{labels[0].name}"):
        _setup(tmp_path / "e")


def _fit(root: Path, run: Path) -> int:
    return main(["fit", "--config", "segdiff_phantom2d", "--data.init_args.root", str(root),
                 "--data.init_args.phantoms", "0", "--trainer.default_root_dir", str(run),
                 "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false"])


@pytest.mark.parametrize(("make", "message"), [
    ("missing", "dataset folder does not exist"),
    ("empty", "no .*image"),
    ("one", "found 1 image/label pairs; need at least 2"),
    ("labels", r"outside the declared classes"),
])
def test_fit_reports_data_problems_in_one_line(tmp_path, capsys, make, message):
    root = tmp_path / "d"
    if make == "empty":
        root.mkdir()
    elif make == "one":
        _phantoms(root, 1)
    elif make == "labels":
        _rewrite(_phantoms(root)[0], _labels_two)
    assert _fit(root, tmp_path / "run") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("medrs-diff fit: error: ") and "Fix:" in err[-1]
    assert re.search(message, err[-1]), err[-1]
