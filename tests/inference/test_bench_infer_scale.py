"""``evaluation/bench_infer_scale.py --smoke`` runs end to end on the CPU and emits well-formed JSON lines
(the timed run itself is not a test; its table is in evaluation/results/README.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_infer_scale_smoke(tmp_path):
    out = tmp_path / "scale.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(REPO / "evaluation" / "bench_infer_scale.py"), "--smoke", "--out",
                           str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert printed == [json.loads(line) for line in out.read_text().splitlines()]  # the file holds what was printed
    assert printed[0]["kind"] == "env" and printed[0]["steps"] == 2 and printed[0]["samples"] == 1
    cases = [r for r in printed if r["kind"] == "case"]
    assert {(r["format"], r["runner"]) for r in cases} == {
        (f, r) for f in ("geotiff", "nifti", "sr_geotiff") for r in ("infer", "monai")}
    for r in cases:
        assert r["seconds"] > 0 and r["windows"] >= 1 and r["peak_rss_mb"] >= r["rss_before_mb"] > 0
        assert r["pixels"] == r["size"] ** (3 if r["format"] == "nifti" else 2)
        assert r["us_per_pixel"] == round(1e6 * r["seconds"] / r["pixels"], 3)
        if r["runner"] == "monai":  # MONAI's stitched output covers the input (x4 for super-resolution)
            f = 4 if r["format"] == "sr_geotiff" else 1
            assert r["output_shape"][2:] == [r["size"] * f] * (3 if r["format"] == "nifti" else 2)
    for f in ("geotiff", "nifti", "sr_geotiff"):  # the same windows on both sides (one window at smoke sizes)
        a, b = (next(r for r in cases if r["format"] == f and r["runner"] == x) for x in ("infer", "monai"))
        assert a["window"] == b["window"] and a["windows"] == b["windows"] == 1
