"""``evaluate --task anomaly``: pooled AUROC / AUPRC, threshold chosen on a validation split, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medrs_diff.errors import ArgumentError
from medrs_diff.evaluation import evaluate
from medrs_diff.io.nifti import write_nifti
from medrs_diff.metrics import anomaly_scores, select_threshold


def _write(folder, maps, labels):
    (folder / "maps").mkdir(parents=True)
    (folder / "labels").mkdir()
    for i, (m, y) in enumerate(zip(maps, labels)):
        write_nifti(m.astype(np.float32), folder / "maps" / f"c{i}.nii.gz", np.eye(4))
        write_nifti(y.astype(np.uint8), folder / "labels" / f"c{i}.nii.gz", np.eye(4))
    return folder / "maps", folder / "labels"


@pytest.fixture
def split(tmp_path):
    rng = np.random.default_rng(0)
    out = {}
    for name in ("val", "test"):
        y = np.zeros((3, 16, 16), np.uint8)
        y[:, 5:9, 6:10] = 1
        m = (rng.random((3, 16, 16)) * 0.6 + 0.5 * y).astype(np.float32)
        out[name] = (m, y, *_write(tmp_path / name, m, y))
    return out


def test_threshold_from_validation_never_from_test(split):
    vm, vy, vmaps, vlabels = split["val"]
    tm, ty, tmaps, tlabels = split["test"]
    res = evaluate(tmaps, tlabels, "anomaly", threshold_from=(str(vmaps), str(vlabels)), write=False)
    tau = select_threshold(vm, vy, "dice")
    assert res["settings"]["threshold"] == pytest.approx(tau)
    want = anomaly_scores(tm, ty, tau)
    agg = res["aggregate"]["all"]
    for k in ("auroc", "auprc", "dice", "iou", "dice_mean"):
        assert agg[k] == pytest.approx(want[k]), k
    assert res["cases"]["c0"]["all"]["dice"] == pytest.approx(anomaly_scores(tm[:1], ty[:1], tau)["dice"])
    pct = evaluate(tmaps, tlabels, "anomaly", threshold_from=(str(vmaps), str(vlabels)), threshold_rule="percentile",
                   threshold_percentile=90.0, write=False)
    assert pct["settings"]["threshold"] == pytest.approx(np.percentile(vm[vy == 0], 90.0))
    plain = evaluate(tmaps, tlabels, "anomaly", write=False)
    assert "dice" not in plain["aggregate"]["all"] and math.isclose(plain["aggregate"]["all"]["auroc"], want["auroc"])


def test_cli_evaluate_anomaly(split, tmp_path, capsys):
    from medrs_diff.cli import main

    _, _, vmaps, vlabels = split["val"]
    _, _, tmaps, tlabels = split["test"]
    argv = ["evaluate", str(tmaps), str(tlabels), "--task", "anomaly", "--threshold-from", str(vmaps), str(vlabels),
            "--out", str(tmp_path / "rep")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "auroc" in printed and "threshold" in printed and (tmp_path / "rep").is_dir()


@pytest.mark.parametrize("kwargs, where", [
    ({"threshold_from": ("a",)}, "threshold_from"),  # rule dice needs labels
    ({"threshold_from": ("a", "b"), "anomaly_threshold": 0.1}, "anomaly_threshold"),
    ({"threshold_rule": "otsu"}, "threshold_rule"),
    ({"threshold_percentile": 100.0}, "threshold_percentile"),
])
def test_refusals(split, kwargs, where):
    _, _, tmaps, tlabels = split["test"]
    with pytest.raises(ArgumentError, match=where):
        evaluate(tmaps, tlabels, "anomaly", write=False, **kwargs)
