"""Learned few-step chains (BDDM schedules, learned step masks) as a recipe switch: the samplers ``bddm`` /
``masked`` walk exactly the stored chain, chains travel through checkpoints (callback and ``fit-schedule``),
they beat evenly spaced chains of the same length on a trained model, and bad requests are refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medrs_diff.cli import main
from medrs_diff.diffusion.samplers import (
    SAMPLERS,
    attach_chain,
    attach_state,
    chains_state,
    ddim,
    ddpm,
    fitted_steps,
)
from medrs_diff.diffusion.schedules import Schedule, make_schedule
from medrs_diff.errors import ArgumentError
from medrs_diff.methods.srdiff import SRDiff
from medrs_diff.train.checkpoint import LEARNED_KEY, load_method_from_checkpoint, read_checkpoint
from medrs_diff.train.learned_schedule import LearnedSchedule, fit_learned_schedules
from medrs_diff.train.recipe import recipe_dir

RECIPE = recipe_dir() / "srdiff_learned_synthetic_phantom.yaml"


def _denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.3 * x + 0.01 * t.float().reshape(-1, *([1] * (x.ndim - 1)))


# -- the samplers over attached chains --------------------------------------------------------------------
def test_samplers_walk_the_attached_chain_and_refuse_unfitted_counts():
    sched = make_schedule("cosine", 100)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="no fitted bddm chain.*fit-schedule"):
        SAMPLERS["bddm"](_denoise, x, sched, steps=5)
    chain = Schedule(sched.alphas_cumprod[[3, 20, 47, 80, 99]], torch.tensor([3, 20, 47, 80, 99]),
                     sched.parent_alphas_cumprod)
    attach_chain(sched, "bddm", chain)
    attach_chain(sched, "mask", sched.respace(4, "linspace"))
    got = SAMPLERS["bddm"](_denoise, x, sched, steps=5, generator=torch.Generator().manual_seed(1))
    want = ddpm(_denoise, x, chain, steps=None, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, want)
    # and not what evenly spaced DDPM of the same length gives
    even = ddpm(_denoise, x, sched, steps=5, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(got, even)
    assert torch.equal(SAMPLERS["bddm"](_denoise, x, sched, generator=torch.Generator().manual_seed(1)), want)
    assert torch.equal(SAMPLERS["masked"](_denoise, x, sched, steps=4), ddim(_denoise, x, sched.respace(4), steps=None))
    with pytest.raises(ValueError, match=r"no bddm chain of 7 steps is fitted \(fitted: 5\)"):
        SAMPLERS["bddm"](_denoise, x, sched, steps=7)
    attach_chain(sched, "bddm", sched.respace(3))
    with pytest.raises(ValueError, match="several bddm chains are fitted; give steps, one of 3, 5"):
        SAMPLERS["bddm"](_denoise, x, sched, steps=None)
    with pytest.raises(ValueError, match="another training schedule"):
        attach_chain(sched, "bddm", make_schedule("linear", 100).respace(4))
    # plain-tensor state round trip onto a fresh copy of the training schedule
    fresh = make_schedule("cosine", 100)
    attach_state(fresh, chains_state(sched))
    assert fitted_steps(fresh, "bddm") == [3, 5] and fitted_steps(fresh, "mask") == [4]
    for kind in ("bddm", "mask"):
        for n, c in sched.learned[kind].items():
            assert torch.equal(fresh.learned[kind][n].alphas_cumprod, c.alphas_cumprod)
            assert torch.equal(fresh.learned[kind][n].timesteps, c.timesteps)


def test_bad_arguments_are_refused_before_compute():
    for kwargs, where in (({"kind": "ddim"}, "kind"), ({"steps": [0, 5]}, "steps"), ({"steps": []}, "steps"),
                          ({"fit_steps": 0}, "fit_steps"), ({"batches": 1.5}, "batches"),
                          ({"kind": "mask", "steps": [50], "candidates": 20}, "steps"),
                          ({"mask_samples": 1}, "mask_samples")):
        with pytest.raises(ArgumentError, match=f"^LearnedSchedule.{where}: .* Fix: "):
            LearnedSchedule(**kwargs)
    m = _tiny_srdiff()
    from medrs_diff.train import DiffusionTask

    with pytest.raises(ArgumentError, match="^model.init_args.val_sampler: bddm walks chains fitted after"):
        DiffusionTask(method=m, val_sampler="bddm")
    with pytest.raises(ArgumentError, match="srdiff has 100 training steps"):
        fit_learned_schedules(m, [], kind="bddm", steps=[200])
    from medrs_diff.methods.anoddpm import AnoDDPM

    with pytest.raises(ArgumentError, match=r"^method anoddpm: its chain starts at lam .* no BDDM schedule"):
        fit_learned_schedules(AnoDDPM.__new__(AnoDDPM), [], kind="bddm", steps=[5])


# -- learning: chains fitted on a trained phantom model beat even spacing on fresh data -------------------------
def _fields(n: int, g: torch.Generator, size: int = 16) -> torch.Tensor:
    """Smooth phantoms in [-1, 1]: three Gaussian blobs of random position, width and sign."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = torch.zeros(n, 1, size, size)
    for _ in range(3):
        c, s, a = torch.rand(n, 2, generator=g), 0.08 + 0.15 * torch.rand(n, generator=g), torch.rand(n, generator=g)
        d2 = (xx - c[:, 0, None, None]) ** 2 + (yy - c[:, 1, None, None]) ** 2
        out += ((2 * a - 1)[:, None, None] * torch.exp(-d2 / (2 * s[:, None, None] ** 2)))[:, None]
    return out.clamp(-1, 1)


def _pairs(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    hr = _fields(n, g)
    return {"cond": F.avg_pool2d(hr, 2), "image": hr}


def _tiny_srdiff() -> SRDiff:
    torch.manual_seed(0)
    return SRDiff(in_channels=1, scale=2, channels=(16, 32), attention_levels=(False, False), num_res_blocks=1,
                  norm_num_groups=8, rrdb_blocks=2, rrdb_features=8, rrdb_growth=8, timesteps=100, pretrain_steps=0)


@pytest.fixture(scope="module")
def trained() -> SRDiff:
    m = _tiny_srdiff()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        loss, _ = m.loss(_pairs(16, g), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    gb = torch.Generator().manual_seed(1)
    batches = [_pairs(8, gb) for _ in range(3)]
    fit_learned_schedules(m, batches, kind="bddm", steps=[3], fit_steps=150, n_batches=2,
                          abar_grid=[1e-3, 1e-2, 3e-2], beta_grid=[0.2, 0.4, 0.6, 0.8])
    fit_learned_schedules(m, batches, kind="mask", steps=[3], fit_steps=30, n_batches=2, candidates=20,
                          mask_samples=4)
    return m


@pytest.mark.slow
def test_learned_chains_beat_even_spacing_on_fresh_data(trained):
    val = _pairs(32, torch.Generator().manual_seed(5))
    hr = val["image"]

    def predict(sampler: str, steps: int, seed: int) -> torch.Tensor:
        return trained.predict(val, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(seed))[
            "prediction"]

    (n_bddm,) = fitted_steps(trained.schedule, "bddm")
    assert 2 <= n_bddm <= 3
    mse = {s: sum(float(((predict(s, n_bddm, k) - hr) ** 2).mean()) for k in range(2)) / 2 for s in ("bddm", "ddpm")}
    assert mse["bddm"] < 0.5 * mse["ddpm"], mse  # measured 0.0045 vs 0.032 (3 steps)
    # masks: DDIM on the learned 3 steps lands nearer the 100-step DDIM solution from the same x_T
    full = predict("ddim", 100, 3)
    dist = {s: float((predict(s, 3, 3) - full).abs().mean()) for s in ("masked", "ddim")}
    assert dist["masked"] < 0.8 * dist["ddim"], dist


# -- the recipe switch, checkpoints, infer and fit-schedule ----------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from medrs_diff.cli.lightning_cli import run_lightning

    tmp = tmp_path_factory.mktemp("learned")
    args = ["fit", "--config", str(RECIPE), "--trainer.default_root_dir", str(tmp / "run"),
            "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.check_val_every_n_epoch",
            "null", "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "false", "--data.init_args.root", str(tmp / "data"),
            "--data.init_args.phantoms", "4", "--data.init_args.samples_per_epoch", "4",
            "--data.init_args.batch_size", "2", "--model.init_args.val_steps", "2",
            "--model.init_args.method.init_args.pretrain_steps", "1"]
    assert run_lightning(args) == 0
    return tmp


def _last(run: Path) -> Path:
    return next((run / "run").rglob("last.ckpt"))


def test_callback_stores_chains_and_checkpoints_restore_them(run):
    ckpts = sorted((run / "run").rglob("*.ckpt"))
    assert len(ckpts) >= 2
    for path in ckpts:  # last and the top-k checkpoint both carry the chains
        stored = read_checkpoint(path)[LEARNED_KEY]
        assert set(stored) == {"bddm", "mask"} and list(stored["mask"]) == ["4"]
    method = load_method_from_checkpoint(_last(run))
    stored = read_checkpoint(_last(run))[LEARNED_KEY]
    assert fitted_steps(method.schedule, "bddm") == sorted(int(n) for n in stored["bddm"])
    for kind, chains in stored.items():
        for n, c in chains.items():
            chain = method.schedule.learned[kind][int(n)]
            assert torch.equal(chain.alphas_cumprod, c["alphas_cumprod"]) and torch.equal(chain.timesteps,
                                                                                           c["timesteps"])
            assert len(chain) == int(n) and (chain.alphas_cumprod[1:] < chain.alphas_cumprod[:-1]).all()
    from medrs_diff.train import DiffusionTask

    task = DiffusionTask.load_from_checkpoint(_last(run), map_location="cpu")  # Lightning's own loader too
    assert fitted_steps(task.method.schedule, "mask") == [4]


def test_infer_with_bddm_walks_exactly_the_stored_chain(run, tmp_path, capsys):
    from medrs_diff.inference.predictor import Predictor

    ckpt = _last(run)
    p = Predictor.from_checkpoint(ckpt)
    n = fitted_steps(p.method.schedule, "bddm")[-1]
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 3000  # reflectance DN
    got = p.predict_array(x[0], sampler="bddm", steps=n, seed=3)["prediction"]
    p.method.schedule = p.method.schedule.learned["bddm"][n]  # walk the stored chain by hand with plain DDPM
    p.method.sampling_steps = None
    want = p.predict_array(x[0], sampler="ddpm", steps=None, seed=3)["prediction"]
    assert torch.equal(torch.as_tensor(got), torch.as_tensor(want))
    # the CLI: a fitted count writes the outputs; an unfitted one is one line naming the fitted counts
    src = next((run / "data" / "lr").glob("*.tif"))
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(tmp_path / "o.tif"),
                 "--sampler", "masked", "--steps", "4"]) == 0
    assert (tmp_path / "o.tif").is_file()
    capsys.readouterr()
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(tmp_path / "p.tif"),
                 "--sampler", "masked", "--steps", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no mask chain of 7 steps is fitted (fitted: 4)" in err, err
    assert not (tmp_path / "p.tif").exists()


def test_fit_schedule_cli_adds_chains_to_a_new_file(run, tmp_path, capsys):
    plain = tmp_path / "plain.ckpt"
    ckpt = torch.load(_last(run), map_location="cpu", weights_only=True)
    del ckpt[LEARNED_KEY]
    torch.save(ckpt, plain)
    src = next((run / "data" / "lr").glob("*.tif"))
    # an unfitted checkpoint given --sampler bddm: one line saying how to fit it
    assert main(["infer", "--checkpoint", str(plain), "--input", str(src), "--output", str(tmp_path / "o.tif"),
                 "--sampler", "bddm", "--steps", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no fitted bddm chain" in err and "medrs-diff fit-schedule" in err
    before = hashlib.sha256(plain.read_bytes()).hexdigest()
    out = tmp_path / "fitted.ckpt"
    argv = ["fit-schedule", "--checkpoint", str(plain), "--kind", "mask", "--steps", "3", "--fit-steps", "3",
            "--batches", "1", "--candidates", "10", "--mask-samples", "2"]
    assert main([*argv, "--output", str(plain)]) == 2  # never the input
    assert "--output" in capsys.readouterr().err
    assert main([*argv, "--output", str(out)]) == 0
    assert "mask (budget 3): 3 steps" in capsys.readouterr().err
    assert hashlib.sha256(plain.read_bytes()).hexdigest() == before
    method = load_method_from_checkpoint(out)
    assert fitted_steps(method.schedule, "mask") == [3] and fitted_steps(method.schedule, "bddm") == []
    assert main([*argv[:-6], "--steps", "0", "--output", str(tmp_path / "x.ckpt")]) == 2
    assert "--steps: must be an integer >= 1" in capsys.readouterr().err
