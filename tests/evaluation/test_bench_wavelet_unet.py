"""evaluation/bench_wavelet_unet.py --smoke: the table's parameter counts follow the closed form of the
swapped samplers, timings are positive."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_wavelet_unet", REPO / "evaluation" / "bench_wavelet_unet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_wavelet_unet_smoke(tmp_path):
    out = _bench().main(["--smoke", "--repeats", "1", "--batch", "1", "--out", str(tmp_path / "w.md")])
    rows = [r.strip("|").split("|") for r in out.read_text().splitlines() if r.startswith("| tiny")]
    assert [r[1].strip() for r in rows] == ["16x16", "8x8x8"]
    for row, d in zip(rows, (2, 3), strict=True):
        conv_p, wave_p = (int(v.replace(",", "")) for v in row[2:4])
        # widths (8, 16): one downsampler 8 -> 8 and one upsampler 16 -> 16 are swapped
        k = 3**d
        conv_side = (8 * 8 * k + 8) + (16 * 16 * k + 16)  # 3^d convs with bias
        wave_side = (8 * 2**d * 8 + 8) + (16 * 16 * 2**d + 16 * 2**d)  # 1^d convs: 2^d C -> C, C -> 2^d C
        assert conv_p - wave_p == conv_side - wave_side
        assert float(row[5]) > 0 and float(row[6]) > 0
