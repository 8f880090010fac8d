"""Task ``fusion``: fused PNGs scored against two source folders give exactly the metric functions' values;
bad ranges, missing second sources and grids are refused naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medrs_diff.cli import main
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.evaluation import MissingFileError, evaluate
from medrs_diff.metrics.fusion import FUSION_KEYS, fusion_scores


def _png(a: np.ndarray, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a.astype(np.uint8)).save(path)


@pytest.fixture()
def folders(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for case in ("c1", "c2"):
        a = rng.integers(0, 256, (32, 40))
        b = np.clip(np.roll(a, 3, axis=1) // 2 + rng.integers(0, 60, (32, 40)), 0, 255)
        f = (a + b) // 2
        for name, x in (("fused", f), ("mri", a), ("ct", b)):
            _png(x, tmp_path / name / f"{case}.png")
        arrays[case] = (f / 255.0, a / 255.0, b / 255.0)
    return tmp_path, arrays


def test_scores_equal_the_metric_functions_and_aggregate_is_the_mean(folders):
    root, arrays = folders
    res = evaluate(root / "fused", root / "mri", "fusion", second_source=root / "ct", data_range=255, write=False)
    assert res["n_cases"] == 2
    want = {c: fusion_scores(*arrays[c]) for c in arrays}
    for c in arrays:
        for k in FUSION_KEYS:
            assert res["cases"][c]["all"][k] == pytest.approx(want[c][k], rel=1e-9, abs=1e-12)
    for k in FUSION_KEYS:
        assert res["aggregate"]["all"][k] == pytest.approx((want["c1"][k] + want["c2"][k]) / 2)


def test_one_second_source_file_for_every_case_and_cli(folders, tmp_path, capsys):
    root, arrays = folders
    argv = ["evaluate", str(root / "fused" / "c1.png"), str(root / "mri" / "c1.png"), "--task", "fusion",
            "--second-source", str(root / "ct" / "c1.png"), "--data-range", "255", "--out", str(tmp_path / "rep")]
    assert main(argv) == 0
    assert "Qabf" in capsys.readouterr().out and (tmp_path / "rep").is_dir()


def test_refusals(folders):
    root, _ = folders
    with pytest.raises(ArgumentError, match=r"second_source \(--second-source\): task 'fusion' needs"):
        evaluate(root / "fused", root / "mri", "fusion", data_range=255, write=False)
    with pytest.raises(ArgumentError, match=r"data_range"):
        evaluate(root / "fused", root / "mri", "fusion", second_source=root / "ct", write=False)
    with pytest.raises(DataError, match=r"c1\.png: fused image spans \[\d+, \d+\], outside \[0, 1\]"):
        evaluate(root / "fused", root / "mri", "fusion", second_source=root / "ct", data_range=1, write=False)
    (root / "ct" / "c2.png").unlink()
    with pytest.raises(MissingFileError, match=r"ct: no second source file for case\(s\) c2"):
        evaluate(root / "fused", root / "mri", "fusion", second_source=root / "ct", data_range=255, write=False)
    _png(np.zeros((16, 16)), root / "ct" / "c2.png")
    with pytest.raises(DataError, match="geometry mismatch"):
        evaluate(root / "fused", root / "mri", "fusion", second_source=root / "ct", data_range=255, write=False)


def test_source_scaling_maps_raw_sources_like_the_data_layer(folders):
    root, arrays = folders
    res = evaluate(root / "fused", root / "mri", "fusion", second_source=root / "ct", data_range=255,
                   source_scaling="minmax", write=False)
    f, a, b = arrays["c1"]
    unit = [(x - x.min()) / (x.max() - x.min()) for x in (a, b)]  # the images' own range onto [0, 1]
    want = fusion_scores(f, *unit)
    for k in FUSION_KEYS:
        assert res["cases"]["c1"]["all"][k] == pytest.approx(want[k], rel=1e-5, abs=1e-7)
    assert res["settings"]["source_scaling"] == "minmax"
    with pytest.raises(ArgumentError, match=r"source_scaling \(--source-scaling\): unknown scaling 'mri2'"):
        evaluate(root / "fused", root / "mri", "fusion", second_source=root / "ct", data_range=255,
                 source_scaling="mri2", write=False)
