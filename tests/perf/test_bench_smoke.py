"""Both benchmark scripts run end to end on the CPU at tiny sizes (``--smoke``) and emit well-formed JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EVAL = REPO / "evaluation"


def _start(script: str, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(
        [sys.executable, str(EVAL / script), "--smoke", "--out", str(out)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs[name]`` -> (stdout records, file records) of ``bench_<name>.py --smoke``.

    In a plain pytest run both scripts start together on first use (two processes, two cores); under
    xdist each worker starts only the script its test needs.
    """
    tmp = tmp_path_factory.mktemp("bench")
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}
    results: dict[str, tuple[list[dict], list[dict]]] = {}

    class Runs:
        def __getitem__(self, name: str) -> tuple[list[dict], list[dict]]:
            if name not in results:
                wanted = [name] if os.environ.get("PYTEST_XDIST_WORKER") else ["train", "sample"]
                for n in wanted:
                    if n not in procs and n not in results:
                        procs[n] = (_start(f"bench_{n}.py", tmp / f"{n}.jsonl"), tmp / f"{n}.jsonl")
                results[name] = _finish(name, *procs.pop(name))
            return results[name]

    yield Runs()
    for proc, _ in procs.values():
        proc.kill()


def _finish(name: str, proc: subprocess.Popen, path: Path) -> tuple[list[dict], list[dict]]:
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"bench_{name}.py --smoke took longer than 120 s")
    assert proc.returncode == 0, f"bench_{name}.py --smoke failed:\n{stderr[-3000:]}"
    printed = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    written = [json.loads(line) for line in path.read_text().splitlines()]
    return printed, written


def _check_env(records: list[dict]) -> None:
    env = records[0]
    assert env["kind"] == "env"
    for key in ("device", "torch", "monai", "date", "argv"):
        assert env[key], key
    assert env["device"].startswith("cpu") and env["peak_bf16_dense_flops"] is None


def test_train_smoke_lines(runs):
    printed, written = runs["train"]
    assert printed == written  # the file holds exactly what was printed
    _check_env(printed)
    lines = [r for r in printed if r["kind"] == "train"]
    summaries = {r["config"]: r for r in printed if r["kind"] == "summary"}
    assert set(summaries) == {"2d", "3d"}
    assert {r["variant"] for r in lines} >= {"monai_default", "monai_bf16_sdpa", "medrs_fast", "medrs_fast_ckpt"}
    for r in lines:
        assert r["error"] is None, r
        for key in ("config", "variant", "library", "batch", "shape", "images_per_s", "step_ms",
                    "train_flops_per_sample", "achieved_tflops", "mfu", "peak_mem_gib", "options"):
            assert key in r, key
        assert r["images_per_s"] > 0 and r["step_ms"] > 0
        assert r["mfu"] is None and r["peak_mem_gib"] is None  # CPU: no peak table, no allocator statistic
        assert r["images_per_s"] == pytest.approx(1000 * r["batch"] / r["step_ms"], rel=1e-2)
    for cfg, s in summaries.items():
        # The same architecture on both sides: identical model FLOPs.
        assert s["train_flops_per_sample"] == s["train_flops_per_sample_monai"] > 0
        medrs = [r for r in lines if r["config"] == cfg and r["library"] == "medrs"]
        best = max(medrs, key=lambda r: r["images_per_s"])
        assert s["medrs_best_variant"] == best["variant"]
        default = next(r for r in lines if r["config"] == cfg and r["variant"] == "monai_default")
        assert s["ratio_vs_monai_default"] == pytest.approx(best["images_per_s"] / default["images_per_s"], rel=1e-2)
        assert s["ratio_vs_monai_best"] > 0 and s["errors"] == {}


def test_sample_smoke_lines(runs):
    printed, written = runs["sample"]
    assert printed == written
    _check_env(printed)
    configs = {r["config"]: r for r in printed if r["kind"] == "sample_config"}
    assert set(configs) == {"2d", "3d"} and all(c["forward_flops_per_sample"] > 0 for c in configs.values())
    lines = [r for r in printed if r["kind"] == "sample"]
    assert {r["variant"] for r in lines} == {"fp32", "fast", "fast_cuda_graph"}
    samplers = {r["sampler"] for r in lines}
    assert {"ddpm_1000", "ddim_50", "dpmpp2m_20", "dpmpp2m_10"} < samplers
    assert any(s.startswith("paradigms") for s in samplers)
    for r in lines:
        assert r["error"] is None, r
        if r.get("skipped"):
            assert r["sampler"].startswith("paradigms") and r["batch"] > 1
            continue
        for key in ("latency_s", "samples_per_s", "ms_per_call", "network_calls", "nfe_per_sample",
                    "extrapolated", "speedup_vs_fp32", "peak_mem_gib", "mfu"):
            assert key in r, key
        assert r["latency_s"] > 0 and r["samples_per_s"] == pytest.approx(r["batch"] / r["latency_s"], rel=1e-2)
        # No CUDA: the graph variant falls back to eager calls.
        assert r["cuda_graph_replays"] == 0 and r["cuda_graphs_active"] is False
        if r["sampler"].startswith("paradigms"):
            assert not r["extrapolated"] and r["rounds"] == r["network_calls"] >= 1
            assert r["nfe_per_sample"] >= r["steps"]  # Picard rounds evaluate whole windows
        else:
            # --smoke times 2 network calls and extrapolates to the chain's length.
            assert r["extrapolated"] and r["measured_calls"] == 2 and r["network_calls"] == r["steps"]
            assert r["latency_s"] == pytest.approx(r["ms_per_call"] * r["steps"] / 1000, rel=1e-2)
    assert all(r["speedup_vs_fp32"] == 1.0 for r in lines if r["variant"] == "fp32" and not r.get("skipped"))


def test_peak_table():
    sys.path.insert(0, str(EVAL))
    try:
        from bench_train import peak_flops
    finally:
        sys.path.remove(str(EVAL))
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A10G") is None and peak_flops(None) is None


def _nfe_module():
    sys.path.insert(0, str(EVAL))
    try:
        import bench_nfe_quality
    finally:
        sys.path.remove(str(EVAL))
    return bench_nfe_quality


def test_nfe_reference_and_cheapest_within_tolerance():
    """bench_nfe_quality: the reference is DDPM over all T steps with the largest ensemble; the pick is the fewest
    network evaluations whose Dice is within the tolerance of it (seconds break NFE ties)."""
    m = _nfe_module()
    #       sampler, steps, n, NFE, Dice, s/case, non-binary member, fused
    rows = [("ddpm", 1000, 1, 1000, 0.80, 5.0, 0, 0), ("ddpm", 1000, 9, 9000, 0.90, 20.0, 0, 0),
            ("ddpm", 100, 5, 500, 0.95, 2.0, 0, 0),  # better than the reference: allowed
            ("ddim", 10, 1, 10, 0.885, 0.10, 0, 0),  # 1.5 points below: out
            ("ddim", 10, 3, 30, 0.891, 0.30, 0, 0),  # within 1 point
            ("dpm_solver_pp", 10, 3, 30, 0.895, 0.20, 0, 0),  # same NFE, faster: the pick
            ("dpm_solver_pp", 20, 1, 20, 0.70, 0.10, 0, 0)]
    ref = m.reference_row(rows, 1000)
    assert ref[:3] == ("ddpm", 1000, 9)
    assert m.select_cheapest(rows, ref, 0.01)[:3] == ("dpm_solver_pp", 10, 3)
    assert m.select_cheapest(rows, ref, 0.02)[:3] == ("ddim", 10, 1)
    assert m.select_cheapest(rows, ref, 0.0)[:3] == ("ddpm", 100, 5)
    with pytest.raises(SystemExit, match="ddpm 50-step"):
        m.reference_row(rows, 50)
