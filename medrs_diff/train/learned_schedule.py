"""Learned few-step chains for a trained method: BDDM schedules and learned step masks, fitted after training.

One function, :func:`fit_learned_schedules`, fits them on a frozen method (its EMA weights when the
run has them) from batches of its own data, through the method's optional contract hook
``diffusion_pair(batch) -> (denoise(x_t, t), x0)``, and attaches the chains to ``method.schedule``,
where the samplers ``bddm`` and ``masked`` walk them (:mod:`medrs_diff.diffusion.samplers.learned`).
Two ways to run it, both storing the chains in the checkpoint under ``"learned_schedules"`` (restored by
:func:`~medrs_diff.train.checkpoint.method_from_checkpoint`):

- the :class:`LearnedSchedule` callback (a recipe switch under ``trainer.callbacks``): at the end of
  training it fits and rewrites every checkpoint the run's ModelCheckpoint callbacks wrote (atomically);
- ``medrs-diff fit-schedule --checkpoint last.ckpt --kind bddm --steps 10 --output new.ckpt`` post hoc
  (:func:`fit_schedule_checkpoint`; never overwrites its input).

``kind="bddm"`` (Lam et al. 2022): the schedule network is trained over the frozen noise predictor
on the first ``batches`` loader batches (each iteration one batch, fresh noise levels and noise), then
BDDM's grid search over (abar_N, beta_N) keeps, per step budget K, the chain whose DDPM samples have
the lowest MSE to x0 on one further batch (the selection batch); the chain found may be shorter than K
(it is stored under its own length). ``kind="mask"`` (EDDPM-style): keep-probabilities over
``candidates`` evenly spaced steps are learned so that DDIM on the K-step sub-chain lands near the full
candidate chain's DDIM sample from the same x_T (``ode_error_loss``) on the first batch. Each fit reports
the selection batch's MSE to x0 and distance to the full chain, beside evenly spaced DDPM (bddm) or DDIM
(mask) at the same number of steps.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from ..diffusion.bddm import fit_schedule_net, grid_search
from ..diffusion.samplers import attach_chain, chains_state, ddim, ddpm
from ..diffusion.schedules import Schedule
from ..diffusion.step_masking import learn_step_mask, ode_error_loss
from ..errors import ArgumentError, CheckpointError, DataError
from ..methods.base import DiffusionMethod, DiffusionPair, Method
from .checkpoint import LEARNED_KEY, atomic_torch_save, method_from_checkpoint, read_checkpoint
from .ema import EMA

__all__ = ["KINDS", "FitReport", "LearnedSchedule", "fit_learned_schedules", "fit_schedule_checkpoint"]

KINDS = ("bddm", "mask")
STATE_FORMAT = "medrs_diff.learned_schedule/1"


@dataclass
class FitReport:
    """One fitted chain: its kind, the step budget asked, its length, and selection-batch errors (model space)."""

    kind: str
    budget: int
    steps: int
    mse: float  # MSE of the chain's samples to x0
    baseline_mse: float  # evenly spaced DDPM (bddm) / DDIM (mask) at the same steps, same x_T and noise
    ode_error: float  # mean |sample - full DDIM chain's sample| from the same x_T (meaningful for masks)
    baseline_ode_error: float

    def line(self) -> str:
        base = "ddpm" if self.kind == "bddm" else "ddim"
        text = (f"{self.kind} (budget {self.budget}): {self.steps} steps, MSE to x0 {self.mse:.4g} (evenly spaced "
                f"{base}: {self.baseline_mse:.4g})")
        if self.kind == "mask":  # deterministic chains: the distance to the full chain from the same x_T
            text += f", distance to the full chain {self.ode_error:.4g} ({base}: {self.baseline_ode_error:.4g})"
        return text


# -- argument checks (before any compute) ----------------------------------------------------------------
def _int(value: Any, name: str, low: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ArgumentError(name, f"must be an integer >= {low}, got {value!r}", fix)
    return int(value)


def check_arguments(kind: Any, steps: Any, fit_steps: Any, batches: Any, candidates: Any,
                    mask_samples: Any, where: str = "") -> tuple[str, list[int]]:
    """Checked ``(kind, sorted unique steps)``; one-line :class:`ArgumentError` naming the argument otherwise."""
    if kind not in KINDS:
        raise ArgumentError(f"{where}kind", f"unknown learned-schedule kind {kind!r}",
                            f"choose one of {', '.join(KINDS)} (bddm: BDDM schedule network; mask: learned step mask)")
    if isinstance(steps, int) and not isinstance(steps, bool):
        steps = [steps]
    if not isinstance(steps, Sequence) or isinstance(steps, str) or not steps:
        raise ArgumentError(f"{where}steps", f"must be a step count or a non-empty list of them, got {steps!r}",
                            "give e.g. [5, 10, 20]")
    counts = sorted({_int(s, f"{where}steps", 1, "give step counts >= 1, e.g. [5, 10, 20]") for s in steps})
    _int(fit_steps, f"{where}fit_steps", 1, "give the optimisation iterations, e.g. 400")
    _int(batches, f"{where}batches", 1, "give the number of loader batches to fit on, e.g. 4")
    _int(candidates, f"{where}candidates", 2, "give the candidate steps of the mask, e.g. 100")
    _int(mask_samples, f"{where}mask_samples", 2, "give masks drawn per iteration (>= 2), e.g. 8")
    if kind == "mask" and counts[-1] > candidates:
        raise ArgumentError(f"{where}steps", f"a mask keeps at most the {candidates} candidate steps, asked "
                            f"{counts[-1]}", f"raise candidates or use steps <= {candidates}")
    return kind, counts


def check_method(method: Any, steps: Sequence[int], candidates: int, where: str = "method") -> DiffusionMethod:
    """The method must be a diffusion method that implements ``diffusion_pair`` and has enough training steps."""
    if not isinstance(method, DiffusionMethod):
        raise ArgumentError(where, f"{type(method).__name__} is not a diffusion method (no sampling chain to learn)",
                            "use a diffusion method's checkpoint / recipe")
    refusal = method.pair_refusal()  # the contract's one-line "no plain chain / not supported" error
    if refusal is not None:
        raise refusal
    n = len(method.schedule)
    if steps[-1] > n:
        raise ArgumentError("steps", f"{method.name} has {n} training steps, asked a {steps[-1]}-step chain",
                            f"use steps <= {n}")
    return method


# -- the shared fit -----------------------------------------------------------------------------------------
def _eps_fn(pair: DiffusionPair, abar: Tensor, device: torch.device) -> Callable[[Tensor, Tensor], Tensor]:
    """The pair's denoiser as an eps-predictor on CPU tensors (the net runs on ``device``, without grad)."""
    c, ptype = pair.x0.shape[1], pair.prediction_type
    if ptype not in ("eps", "x0", "v"):
        raise ArgumentError("prediction_type", f"unknown {ptype!r}", "use eps, x0 or v")

    def eps(x: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            out = pair.denoise(x.to(device), t.to(device).long())[:, :c].to(x.device, x.dtype)
        if ptype == "eps":
            return out
        a = abar[t.long().cpu()].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        if ptype == "x0":
            return (x - a.sqrt() * out) / (1 - a).sqrt()
        return a.sqrt() * out + (1 - a).sqrt() * x

    return eps


class _Pool:
    """Fitting pairs for :func:`fit_schedule_net`: ``data`` picks a batch, ``denoise`` is that batch's net."""

    def __init__(self, eps: list[Callable], x0: list[Tensor]) -> None:
        self.eps, self.x0, self.current = eps, x0, 0

    def data(self, n: int, g: torch.Generator) -> Tensor:
        self.current = int(torch.randint(len(self.x0), (1,), generator=g))
        return self.x0[self.current]

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        return self.eps[self.current](x, t)


def _errors(sample: Tensor, x0: Tensor, reference: Tensor) -> tuple[float, float]:
    return float(((sample - x0) ** 2).mean()), float((sample - reference).abs().mean())


def fit_learned_schedules(
    method: DiffusionMethod,
    batches: Iterable[Mapping[str, Any]],
    *,
    kind: str = "bddm",
    steps: int | Sequence[int] = (5, 10, 20),
    fit_steps: int = 400,
    n_batches: int = 4,
    candidates: int = 100,
    mask_samples: int = 8,
    abar_grid: Sequence[float] | None = None,
    beta_grid: Sequence[float] | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[FitReport]:
    """Fit ``kind`` chains of the given step budgets on the frozen ``method`` and attach them to its schedule.

    ``batches``: the method's batches (model space, as its data module gives them); the first ``n_batches``
    of equal size fit, the next one selects / reports (the first one when there is no other).
    """
    kind, counts = check_arguments(kind, steps, fit_steps, n_batches, candidates, mask_samples)
    check_method(method, counts, candidates)
    say = log if log is not None else (lambda _m: None)
    device = next((p.device for p in method.parameters()), torch.device("cpu"))
    was_training = method.training
    method.eval()
    try:
        collected: list[Mapping[str, Any]] = []
        for b in batches:
            collected.append(b)
            if len(collected) > n_batches:
                break
        if not collected:
            raise DataError("data", "gave no batches to fit the learned schedule on", "check the data module")
        from lightning.fabric.utilities.apply_func import move_data_to_device

        with torch.no_grad():
            pairs = [method.diffusion_pair(move_data_to_device(dict(b), device)) for b in collected]
        schedule = method.schedule
        abar = schedule.parent_alphas_cumprod
        eps = [_eps_fn(p, abar, device) for p in pairs]
        x0s = [p.x0.detach().float().cpu() for p in pairs]
        for x in x0s:
            if not bool(torch.isfinite(x).all()):
                raise DataError("data", "a batch's x0 holds NaN or inf", "check the data module's scaling")
        fit_idx = [i for i in range(min(n_batches, len(pairs))) if x0s[i].shape == x0s[0].shape]
        sel = len(pairs) - 1 if len(pairs) > n_batches else 0
        options = dict(pairs[sel].options or {})
        g0 = torch.Generator().manual_seed(seed)
        say(f"{kind}: fitting on {len(fit_idx)} batch(es) of {x0s[0].shape[0]}, selecting on one of "
            f"{x0s[sel].shape[0]} ({method.name}, {len(schedule)} training steps)")
        sel_eps, x0_sel = eps[sel], x0s[sel]
        x_T = torch.randn(x0_sel.shape, generator=torch.Generator().manual_seed(seed + 1))
        n_cand = min(candidates, len(schedule))
        full = (ddim(sel_eps, x_T, schedule, steps=n_cand, **options) if kind == "mask"
                else torch.full_like(x_T, math.nan))

        def run(sampler: Callable, chain: Schedule, n: int | None = None) -> Tensor:
            return sampler(sel_eps, x_T, chain, steps=n, generator=torch.Generator().manual_seed(seed + 2),
                           **options)

        reports: list[FitReport] = []
        if kind == "bddm":
            pool = _Pool([eps[i] for i in fit_idx], [x0s[i] for i in fit_idx])
            fit = fit_schedule_net(pool.denoise, schedule, pool.data, batch=x0s[fit_idx[0]].shape[0],
                                   iters=fit_steps, generator=g0)
            k = max(1, len(fit.losses) // 10)
            say(f"bddm: schedule network {fit_steps} iterations, step loss {sum(fit.losses[:k]) / k:.4g} -> "
                f"{sum(fit.losses[-k:]) / k:.4g}")
            grids = {} if abar_grid is None else {"abar_grid": tuple(abar_grid)}
            grids |= {} if beta_grid is None else {"beta_grid": tuple(beta_grid)}
            for budget in counts:
                res = grid_search(fit.net, sel_eps, schedule, tuple(x0_sel.shape[1:]),
                                  lambda c: float(((run(ddpm, c) - x0_sel) ** 2).mean()), max_steps=budget,
                                  search_batch=x0_sel.shape[0], seed=seed, **grids)
                chain = res.schedule
                n = len(chain)
                mse, ode = _errors(run(ddpm, chain), x0_sel, full)
                bmse, bode = _errors(run(ddpm, schedule, n), x0_sel, full)
                attach_chain(schedule, "bddm", chain)
                reports.append(FitReport("bddm", budget, n, mse, bmse, ode, bode))
                say(reports[-1].line())
        else:
            cand = schedule.respace(n_cand, "linspace")
            x_fit = torch.randn(x0s[0].shape, generator=torch.Generator().manual_seed(seed + 3))
            opts0 = dict(pairs[0].options or {})  # batch 0's options (hooks may hold that batch's conditioning)
            ref = ddim(eps[0], x_fit, cand, steps=None, **opts0)
            loss = ode_error_loss(lambda c: ddim(eps[0], x_fit, c, steps=None, **opts0), ref)
            for budget in counts:
                res = learn_step_mask(loss, cand, budget, iters=fit_steps, samples=mask_samples, generator=g0)
                chain = res.schedule
                mse, ode = _errors(run(ddim, chain), x0_sel, full)
                bmse, bode = _errors(run(ddim, schedule, budget), x0_sel, full)
                attach_chain(schedule, "mask", chain)
                reports.append(FitReport("mask", budget, len(chain), mse, bmse, ode, bode))
                say(reports[-1].line())
        for r in reports:
            if not math.isfinite(r.mse):
                raise FloatingPointError(f"{kind} chain of {r.steps} steps gave non-finite samples")
        return reports
    finally:
        method.train(was_training)


# -- the recipe switch ----------------------------------------------------------------------------------------
def add_chains_to_file(path: str | os.PathLike, state: Mapping[str, Any],
                       output: str | os.PathLike | None = None) -> None:
    """Merge learned chains into a checkpoint file (atomic write to ``output``, default ``path`` itself)."""
    ckpt = read_checkpoint(path)
    merged = {k: dict(v) for k, v in (ckpt.get(LEARNED_KEY) or {}).items()}
    for kind, chains in state.items():
        merged.setdefault(kind, {}).update(chains)
    ckpt[LEARNED_KEY] = merged
    atomic_torch_save(ckpt, output if output is not None else path)


class LearnedSchedule(L.Callback):
    """Recipe switch: fit BDDM schedules or learned step masks at the end of training and store them.

    ``kind``: ``bddm`` or ``mask``; ``steps``: the step budgets (one chain each); ``fit_steps``: schedule
    network iterations (bddm) or mask updates (mask); ``batches``: training-loader batches to fit on (one
    more selects); ``candidates``: evenly spaced steps a mask chooses from; ``mask_samples``: masks drawn
    per update; ``abar_grid`` / ``beta_grid``: BDDM's search grid (None: the paper's 6 x 10 points). The
    method is frozen, with the EMA weights swapped in when the run has an EMA callback. The chains go into
    every checkpoint the run's ModelCheckpoint callbacks wrote (rewritten atomically) and onto the live
    method; sample them with ``--sampler bddm`` / ``--sampler masked``.
    """

    def __init__(
        self,
        kind: str = "bddm",
        steps: list[int] | int = (5, 10, 20),
        fit_steps: int = 400,
        batches: int = 4,
        candidates: int = 100,
        mask_samples: int = 8,
        abar_grid: list[float] | None = None,
        beta_grid: list[float] | None = None,
        seed: int = 0,
    ) -> None:
        self.kind, self.steps = check_arguments(kind, steps, fit_steps, batches, candidates, mask_samples,
                                                where="LearnedSchedule.")
        self.fit_steps, self.batches, self.candidates = int(fit_steps), int(batches), int(candidates)
        self.mask_samples, self.seed = int(mask_samples), int(seed)
        self.abar_grid, self.beta_grid = abar_grid, beta_grid
        self.fitted: dict[str, Any] = {}
        self.reports: list[FitReport] = []

    @property
    def state_key(self) -> str:  # one entry per kind, so a recipe may fit both kinds
        return self._generate_state_key(kind=self.kind)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # refuse before training, not after it
            check_method(getattr(pl_module, "method", None), self.steps, self.candidates, "model.init_args.method")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        method: Method = pl_module.method
        ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None)
        swapped = ema.swap_in(pl_module) if ema is not None else False
        try:
            dm = trainer.datamodule
            loader = dm.train_dataloader() if dm is not None else trainer.train_dataloader
            self.reports = fit_learned_schedules(
                method, loader, kind=self.kind, steps=self.steps, fit_steps=self.fit_steps, n_batches=self.batches,
                candidates=self.candidates, mask_samples=self.mask_samples, abar_grid=self.abar_grid,
                beta_grid=self.beta_grid, seed=self.seed, log=_log,
            )
        finally:
            if swapped:
                ema.swap_out(pl_module)
        self.fitted = chains_state(method.schedule)
        written = set()
        for cb in trainer.checkpoint_callbacks:
            for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", ""),
                      *(getattr(cb, "best_k_models", {}) or {})):
                if p and p not in written and Path(p).is_file():
                    add_chains_to_file(p, self.fitted)
                    written.add(p)
        _log(f"{self.kind}: chains of {', '.join(str(r.steps) for r in self.reports)} steps stored in "
             f"{len(written)} checkpoint(s)" + ("" if written else " (none written: add ModelCheckpoint)"))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self.fitted:
            checkpoint[LEARNED_KEY] = self.fitted

    def state_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "kind": self.kind, "steps": list(self.steps), "fitted": bool(self.fitted)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # the chains are fitted anew at the end of each run


def _log(message: str) -> None:
    print(f"medrs-diff: {message}", file=sys.stderr, flush=True)


# -- post hoc ---------------------------------------------------------------------------------------------------
def _datamodule(ckpt: Mapping[str, Any], path: Path, data_root: str | None) -> L.LightningDataModule:
    """The checkpoint's data module, rebuilt from its stored class path (only ``medrs_diff.datamodules``)."""
    import importlib

    from .checkpoint import checkpoint_data_config

    cfg = checkpoint_data_config(ckpt)
    cp = (cfg or {}).get("class_path")
    if not isinstance(cp, str):
        raise CheckpointError(path, "stores no data module to draw batches from",
                              "use a checkpoint written by `medrs-diff fit` with a recipe's data module")
    module, _, name = cp.rpartition(".")
    if not module.startswith("medrs_diff.datamodules"):
        raise CheckpointError(path, f"names the data module {cp}, outside medrs_diff.datamodules",
                              "fit the schedule from Python with fit_learned_schedules(method, batches)")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, L.LightningDataModule)):
        raise CheckpointError(path, f"names the data module {cp}, which does not exist", "use a matching version")
    args = dict(cfg["init_args"])
    if data_root is not None:
        args["root"] = data_root
    dm = cls(**args)
    dm.setup("fit")
    return dm


def fit_schedule_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    kind: str,
    steps: int | Sequence[int],
    fit_steps: int = 400,
    batches: int = 4,
    candidates: int = 100,
    mask_samples: int = 8,
    data_root: str | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = _log,
) -> list[FitReport]:
    """``medrs-diff fit-schedule``: fit chains on a checkpoint's method (EMA weights when present) with batches
    of its data module, and write the checkpoint with the chains added to ``output`` (atomic; never the input).
    Chains already stored (of another kind or step count) are kept."""
    kind, counts = check_arguments(kind, steps, fit_steps, batches, candidates, mask_samples, where="--")
    src, dst = Path(checkpoint), Path(output)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ArgumentError("--output", f"{dst} is the input checkpoint", "write to a new file, e.g. last_bddm.ckpt")
    if not dst.parent.is_dir():
        raise ArgumentError("--output", f"its folder {dst.parent} does not exist", "create it or choose another path")
    ckpt = read_checkpoint(src)
    method = method_from_checkpoint(ckpt, src)
    check_method(method, counts, candidates)
    dm = _datamodule(ckpt, src, data_root)
    reports = fit_learned_schedules(method, dm.train_dataloader(), kind=kind, steps=counts, fit_steps=fit_steps,
                                    n_batches=batches, candidates=candidates, mask_samples=mask_samples, seed=seed,
                                    log=log)
    add_chains_to_file(src, chains_state(method.schedule), output=dst)
    if log is not None:
        log(f"wrote {dst} with {kind} chains of {', '.join(str(r.steps) for r in reports)} steps")
    return reports
