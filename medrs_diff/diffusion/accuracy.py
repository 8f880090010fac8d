"""Sampler accuracy on a problem with a known answer: a two-mode Gaussian mixture and its exact
denoiser. Reports, per sampler, the mean per-coordinate 1-D Wasserstein distance to exact samples
(with the floor set by two independent exact sample sets), mean and variance errors, network
evaluations and, for ParaDiGMS, sequential rounds. gDDIM's order 0 is DDIM, so its deterministic rows use
order 2; its stochastic rows (lam > 0, order 0) use lam = 1 (DDIM eta = 1) and lam = 0.5."""

from __future__ import annotations

import time

import torch

from . import samplers as S
from .schedules import make_schedule
from .toy import GaussianMixture, wasserstein_1d


def default_mixture(dim: int = 4) -> GaussianMixture:
    means = torch.stack([torch.full((dim,), -0.6), torch.full((dim,), 0.6)])
    return GaussianMixture(means, torch.tensor(0.15), torch.tensor([0.3, 0.7]), shape=(1, 1, dim))


def learned_masks(den, sched, shape, seed: int, ks=(10, 20, 50), candidates: int = 100) -> dict:
    """EDDPM-style learned DDIM sub-chains (k of ``candidates`` steps), fitted on their own x_T
    (256 draws, seed + 2) against the 1000-step DDIM solution; name -> chain."""
    from .step_masking import learn_step_mask, ode_error_loss

    x_tr = torch.randn(256, *shape, generator=torch.Generator().manual_seed(seed + 2))
    ref = S.ddim(den, x_tr, sched, steps=len(sched))
    loss = ode_error_loss(lambda c: S.ddim(den, x_tr, c, steps=None), ref)
    cand = sched.respace(candidates)
    g = torch.Generator().manual_seed(seed + 3)
    return {f"masked_ddim-{k}": learn_step_mask(loss, cand, k, generator=g).schedule for k in ks}


def bddm_schedules(den, sched, gm: GaussianMixture, seed: int, ks=(5, 10, 20)) -> dict:
    """BDDM schedules (at most k steps): the schedule network fitted over the exact denoiser on its own
    data (seed + 4), the (abar_N, beta_N) grid scored by DDPM samples' W1 to 2000 validation samples
    (seed + 5); name -> chain. Its length is what the search found (<= k)."""
    from .bddm import fit_schedule_net, grid_search

    net = fit_schedule_net(den, sched, gm.sample, iters=400, generator=torch.Generator().manual_seed(seed + 4)).net
    gv = torch.Generator().manual_seed(seed + 5)
    val, x_val = gm.sample(2000, gv), torch.randn(2000, *gm.shape, generator=gv)

    def score(chain) -> float:
        out = S.ddpm(den, x_val, chain, generator=torch.Generator().manual_seed(seed + 6))
        return float(wasserstein_1d(out, val).mean())

    out = {}
    for k in ks:
        chain = grid_search(net, den, sched, gm.shape, score, max_steps=k, seed=seed + 7).schedule
        out[f"bddm(<={k})-{len(chain)}"] = chain
    return out


def sampler_accuracy(
    n: int = 4000, seed: int = 0, schedule: str = "linear", masks: bool = False, bddm: bool = False
) -> list[dict]:
    """Run each engine sampler from the same x_T and compare with exact samples (``masks``: also
    learn EDDPM-style step masks for DDIM at 10/20/50 steps, about a minute on one CPU thread;
    ``bddm``: also fit BDDM's schedule network and search schedules of <= 5/10/20 steps, sampled with
    DDPM as in the paper and with DDIM, a few seconds)."""
    sched = make_schedule(schedule, 1000)
    gm = default_mixture()
    den = gm.denoiser(sched)
    g = torch.Generator().manual_seed(seed)
    ref, ref2 = gm.sample(n, g), gm.sample(n, g)
    x_T = torch.randn(n, *gm.shape, generator=g)
    gamma = S.estimate_gamma(den, sched.respace(50), [gm.sample(n, g)], generator=g)

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(seed + 1)

    runs = {
        "ddpm-1000": lambda: S.ddpm(den, x_T, sched, generator=gen()),
        "ddim-10": lambda: S.ddim(den, x_T, sched, steps=10),
        "ddim-20": lambda: S.ddim(den, x_T, sched, steps=20),
        "ddim-50": lambda: S.ddim(den, x_T, sched, steps=50),
        "gddim(q=2)-10": lambda: S.gddim(den, x_T, sched, steps=10, order=2),
        "gddim(q=2)-20": lambda: S.gddim(den, x_T, sched, steps=20, order=2),
        "gddim(q=2)-50": lambda: S.gddim(den, x_T, sched, steps=50, order=2),
        **{f"gddim(lam={lam:g})-{k}": (lambda lam=lam, k=k: S.gddim(den, x_T, sched, steps=k, order=0, lam=lam,
                                                                     generator=gen()))
           for lam in (0.5, 1.0) for k in (10, 20, 50)},
        "dpm_solver_pp-10": lambda: S.dpm_solver_pp(den, x_T, sched, steps=10),
        "dpm_solver_pp-20": lambda: S.dpm_solver_pp(den, x_T, sched, steps=20),
        "dpm_solver_pp3m-20": lambda: S.dpm_solver_pp(den, x_T, sched, steps=20, order=3),
        "analytic_dpm-50": lambda: S.analytic_dpm(den, x_T, sched, gamma, steps=50, generator=gen()),
        "paradigms(ddpm-100)": lambda: S.paradigms(den, x_T, sched, steps=100, window=20, tolerance=0.1,
                                                   generator=gen()),
    }
    if masks:
        for name, chain in learned_masks(den, sched, gm.shape, seed).items():
            runs[name] = lambda chain=chain: S.ddim(den, x_T, chain, steps=None)
    if bddm:
        chains = bddm_schedules(den, sched, gm, seed)
        for chain in chains.values():  # baseline: DDPM on linearly spaced steps, same count
            runs[f"ddpm-{len(chain)}"] = lambda k=len(chain): S.ddpm(den, x_T, sched, steps=k, generator=gen())
        for name, chain in chains.items():
            runs[name] = lambda chain=chain: S.ddpm(den, x_T, chain, steps=None, generator=gen())
        for name, chain in chains.items():
            runs[name.replace("bddm", "bddm_ddim")] = lambda chain=chain: S.ddim(den, x_T, chain, steps=None)
    rows = [{"sampler": "exact (floor)", "w1": float(wasserstein_1d(ref2, ref).mean()), "nfe": 0}]
    for name, fn in runs.items():
        t0 = time.perf_counter()
        out = fn()
        rounds = None
        if isinstance(out, S.ParadigmsResult):
            rounds, nfe, out = out.rounds, out.nfe, out.sample
        else:
            nfe = {"ddpm-1000": 1000, "ddim-50": 50, "analytic_dpm-50": 50}.get(name, int(name.split("-")[-1]))
        rows.append({
            "sampler": name,
            "w1": float(wasserstein_1d(out, ref).mean()),
            "mean_err": float((out.flatten(1).mean(0).double() - gm.mean()).abs().max()),
            "var_err": float((out.flatten(1).var(0).double() - gm.variance()).abs().max()),
            "nfe": nfe,
            "rounds": rounds if rounds is not None else nfe,
            "seconds": time.perf_counter() - t0,
        })
    return rows


def format_table(rows: list[dict]) -> str:
    head = "| sampler | W1 to exact | max mean error | max variance error | NFE | sequential rounds |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {r['w1']:.4f} | {r.get('mean_err', 0):.4f} | {r.get('var_err', 0):.4f} | "
            f"{r['nfe']} | {r.get('rounds', '-')} |"
        )
    return "\n".join(lines)
