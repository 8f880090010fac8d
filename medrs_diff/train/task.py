"""``DiffusionTask``: the one LightningModule that trains, validates and runs any :class:`~medrs_diff.methods.Method`.

Training calls ``method.loss(batch, generator)`` with a per-rank training-noise generator whose state
is checkpointed; AdamW with linear warm-up and cosine decay steps per optimizer step. Validation
calls ``method.predict`` (diffusion methods sample with a fast sampler), logs the method's
``validation_metrics(batch, out)`` and writes a PNG panel from the first batch. Each metric is
accumulated in a torchmetrics ``MeanMetric`` weighted by batch size, which reduces across DDP ranks,
so the logged epoch value is the mean over every validation sample, as a single process would get.
Validation is RNG-neutral (global RNG states are put back afterwards) and checkpoints carry all RNG
states, so a run resumed from a checkpoint continues exactly where the original would have gone.

Nothing silent: a checkpoint of another method, with weights that do not fit the model, or with NaN /
inf weights is refused before training (:meth:`DiffusionTask.check_checkpoint`). A resumed run trains
the model the recipe describes; its settings that differ from the checkpoint's are named in a warning,
and the optimizer / schedule ones (``lr``, ``weight_decay``, ``warmup_steps``, ``min_lr_ratio`` and the
cosine horizon, e.g. a larger ``trainer.max_steps``) are applied to the restored optimizer state from
the resumed step on. Training stops at the first non-finite loss (:class:`TrainingError` naming the
step and the batch's cases), and no checkpoint with non-finite weights is ever written.
Precision (bf16-mixed on GPU, fp32 on CPU) and gradient clipping are the trainer's settings; sampling
always runs with autocast off.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.aggregation import MeanMetric

from ..errors import ArgumentError, MedrsError
from ..methods.base import PSNR_CAP_DB, Method, check_sampler
from ..nets.fastpath import FastPath, apply_fast_path
from ..viz.panels import save_panel
from .checkpoint import (
    CHECKPOINT_FORMAT,
    EMA_FORMAT,
    LEARNED_KEY,
    CheckpointError,
    attach_learned,
    build_method,
    canonical_method_config,
    capture_rng_state,
    check_finite_checkpoint,
    check_state_fits,
    checkpoint_nonfinite,
    class_path_of,
    clean_stale_temporaries,
    install_atomic_io,
    method_config,
    resolve_method_class,
    restore_rng_state,
)
from .optim import WarmupCosine, param_groups, warmup_cosine

__all__ = ["OPTIMIZER_SETTINGS", "PSNR_CAP_DB", "DiffusionTask", "TrainingError"]

#: Task arguments that shape the optimizer state; changed on resume, they are applied to the restored state.
OPTIMIZER_SETTINGS = ("lr", "weight_decay", "warmup_steps", "max_steps_for_schedule", "min_lr_ratio")
MAX_LISTED = 8


class TrainingError(MedrsError):
    """Training cannot go on (a non-finite loss)."""

_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")
_METRICS_ATTR = "epoch_metrics"


def _given_method_config() -> dict[str, Any] | None:
    """The method's ``{class_path, init_args}`` as written in the LightningCLI config, when the CLI builds us."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # pragma: no cover - private API moved
        return None
    given = _given_hyperparameters.get()
    m = given.get("method") if isinstance(given, Mapping) else None
    if isinstance(m, Mapping) and "class_path" in m:
        return {"class_path": m["class_path"], "init_args": dict(m.get("init_args") or {})}
    return None


def _method_record(method: Method, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` stored in the hyper-parameters: the method class's full path (resolved
    through the method registry, so short names such as ``SegDiff`` never reach a checkpoint) and the
    arguments as the recipe gave them (else the ones the method recorded)."""
    if given is not None:
        try:
            cfg = canonical_method_config(given)
        except MedrsError:  # a class the registry does not know: the instance names its own class
            cfg = None
        if cfg is not None and cfg["class_path"] == class_path_of(method):
            recorded = method.hparams()  # arguments the method resolved itself (e.g. from a file it read)
            cfg["init_args"].update({k: recorded[k] for k in getattr(method, "resolved_args", ()) if k in recorded})
            return cfg
    return method_config(method)


def _plain(v: Any) -> Any:
    """Values as a recipe would write them (tuples as lists), for comparing settings."""
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, Sequence) and not isinstance(v, str | bytes):
        return [_plain(x) for x in v]
    return v


def _with_defaults(cls: type, init_args: Mapping[str, Any]) -> dict[str, Any]:
    """``init_args`` completed with the defaults of ``cls.__init__`` (what the method was built with)."""
    out: dict[str, Any] = {}
    with contextlib.suppress(TypeError, ValueError):
        for name, par in inspect.signature(cls.__init__).parameters.items():
            if name != "self" and par.default is not inspect.Parameter.empty:
                out[name] = par.default
    out.update(init_args)
    return out


def _case_names(batch: Any) -> list[str]:
    """The batch's case names (the data modules' ``case`` key; ``path`` as a fallback), as strings."""
    if not isinstance(batch, Mapping):
        return []
    for key in ("case", "path"):
        names = batch.get(key)
        if isinstance(names, str):
            return [names]
        if isinstance(names, Sequence) and names and all(isinstance(n, str) for n in names):
            return list(names)
    return []


def _listed(items: Sequence[str]) -> str:
    more = f" ... (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


class DiffusionTask(L.LightningModule):
    """Train any method. LightningCLI builds it from ``model.init_args.method.class_path`` + ``init_args``.

    ``lr``, ``weight_decay`` (AdamW; biases and norms are not decayed), ``warmup_steps`` (linear
    warm-up), ``max_steps_for_schedule`` (cosine horizon; default ``trainer.max_steps`` or the
    estimated number of optimizer steps), ``min_lr_ratio`` (floor of the cosine). Validation:
    ``val_sampler`` / ``val_steps`` / ``val_samples`` go to ``method.predict``; ``val_metric`` names a
    reported metric that is also logged as ``val/metric`` (one name for checkpoint monitors);
    ``panels_dir`` (default ``<log_dir>/panels``), ``panel_rows`` images per panel. ``seed`` seeds the
    training-noise generator (offset per rank) and validation sampling. ``fast_path`` (recipe key
    ``model.init_args.fast_path``: ``channels_last``, ``checkpointing``, ``compile``) speeds up the
    denoiser without changing its outputs; all off by default.
    """

    def __init__(
        self,
        method: Method,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        max_steps_for_schedule: int | None = None,
        min_lr_ratio: float = 0.0,
        val_sampler: str = "dpm_solver_pp",
        val_steps: int = 20,
        val_samples: int = 1,
        val_metric: str | None = None,
        panels_dir: str | None = None,
        panel_rows: int = 4,
        seed: int = 0,
        fast_path: FastPath | None = None,
    ) -> None:
        args = {k: v for k, v in locals().items() if k not in ("self", "__class__", "method")}
        if isinstance(fast_path, Mapping):  # load_from_checkpoint passes the stored dict back
            fast_path = FastPath(**fast_path)
        args["fast_path"] = fast_path.to_dict() if fast_path is not None else None
        super().__init__()
        if isinstance(method, Mapping):  # load_from_checkpoint / plain dict configs
            method = build_method(method)
        if not isinstance(method, Method):
            raise TypeError(
                f"method must be a medrs_diff Method (e.g. medrs_diff.methods.SegDiff), got {type(method).__name__}"
            )
        check_sampler(val_sampler)
        if val_sampler in ("bddm", "masked"):  # their chains are fitted after training (LearnedSchedule)
            raise ArgumentError("model.init_args.val_sampler", f"{val_sampler} walks chains fitted after training, "
                                "which validation during training does not have", "validate with ddim or "
                                "dpm_solver_pp; sample the fitted chains after training (infer --sampler)")
        if lr <= 0:
            raise ArgumentError("lr", f"must be > 0, got {lr}", "set model.init_args.lr to a positive learning rate")
        if val_steps < 1 or val_samples < 1:
            raise ArgumentError("val_steps / val_samples", f"must be >= 1, got {val_steps} and {val_samples}",
                                "set model.init_args.val_steps and val_samples to 1 or more")
        self.method = method
        if fast_path is not None:
            # channels_last / activation checkpointing / torch.compile on the denoiser; bf16 is the
            # trainer's `precision: bf16-mixed`. State-dict keys are unchanged either way.
            target = method.fast_path_target()  # a ModuleList (EI-DDPM's branches): each member, as each is called
            for module in target if isinstance(target, nn.ModuleList) else [target]:
                apply_fast_path(module, fast_path)
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.max_steps_for_schedule, self.min_lr_ratio = max_steps_for_schedule, min_lr_ratio
        self.val_sampler, self.val_steps, self.val_samples = val_sampler, val_steps, val_samples
        self.val_metric, self.panels_dir, self.panel_rows, self.seed = val_metric, panels_dir, panel_rows, seed
        self.save_hyperparameters({"method": _method_record(method, _given_method_config()), **args})
        #: per-epoch means of the logged metrics ("val/dice", ...), created on first use; they reduce across ranks
        self.epoch_metrics = nn.ModuleDict()
        self._train_generator: torch.Generator | None = None
        self._rng_to_restore: list[dict[str, Any]] | None = None
        self._val_rng_stash: dict[str, Any] | None = None
        self._panel_done = False
        self._resumed_from: str | None = None  # the checkpoint this fit resumed from (set by on_load_checkpoint)

    # -- setup --------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        install_atomic_io(self.trainer)

    def on_fit_start(self) -> None:
        self._train_generator = torch.Generator(device=self.device)
        self._train_generator.manual_seed(int(self.seed) * 1_000_003 + 7_919 * int(self.global_rank) + 1)
        if self.trainer.is_global_zero:  # temporary checkpoints a killed run left behind
            for cb in self.trainer.checkpoint_callbacks:
                folder = getattr(cb, "dirpath", None)
                if folder:
                    removed = clean_stale_temporaries(folder)
                    if removed:
                        rank_zero_warn(f"removed {len(removed)} temporary checkpoint file(s) left in {folder} by an "
                                       f"interrupted run: {_listed([f.name for f in removed])}")

    def on_train_start(self) -> None:
        self._apply_optimizer_settings()
        states, self._rng_to_restore = self._rng_to_restore, None
        if not states:
            return
        world, rank = self.trainer.world_size, self.global_rank
        if len(states) != world:
            rank_zero_warn(
                f"the checkpoint holds RNG states of {len(states)} process(es), this run has {world}; "
                "restoring the first one everywhere (the resumed run is not bit-exact)"
            )
        state = states[rank] if len(states) == world else states[0]
        restore_rng_state(state["global"])
        gen_state = state.get("train_generator")
        if gen_state is not None and self._train_generator is not None:
            try:
                self._train_generator.set_state(gen_state.cpu())
            except RuntimeError:
                rank_zero_warn("the training-noise generator state does not fit this device type; reseeded instead")

    # -- optimisation ---------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.AdamW(param_groups(self.method, self.weight_decay), lr=self.lr)
        sched = warmup_cosine(opt, self.warmup_steps, self._schedule_horizon(), self.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def _apply_optimizer_settings(self) -> list[str]:
        """After a resume: put this run's optimizer settings into the restored optimizer / schedule state
        (Lightning restores the checkpoint's lr, weight decay and schedule over them). Returns and warns
        the changes, e.g. ``["lr 0.002 -> 0.5"]``; nothing changes when the settings are the checkpoint's."""
        where, self._resumed_from = self._resumed_from, None
        trainer = self._trainer
        own_optimizer = type(self).configure_optimizers is DiffusionTask.configure_optimizers
        if where is None or trainer is None or not own_optimizer:
            return []
        if len(trainer.optimizers) != 1 or len(trainer.lr_scheduler_configs) != 1:
            return []
        opt, sched = trainer.optimizers[0], trainer.lr_scheduler_configs[0].scheduler
        want = param_groups(self.method, self.weight_decay)
        if (not isinstance(sched, LambdaLR) or len(want) != len(opt.param_groups)
                or not all(isinstance(f, WarmupCosine) for f in sched.lr_lambdas)):
            return []
        fn = WarmupCosine(self.warmup_steps, self._schedule_horizon(), self.min_lr_ratio)
        changes: dict[str, str] = {}
        for i, (group, wanted) in enumerate(zip(opt.param_groups, want, strict=True)):
            old = sched.lr_lambdas[i]
            if sched.base_lrs[i] != self.lr:
                changes.setdefault("lr", f"lr {sched.base_lrs[i]:g} -> {self.lr:g}")
                sched.base_lrs[i] = group["initial_lr"] = self.lr
            if group.get("weight_decay") != wanted["weight_decay"]:
                changes.setdefault("wd", f"weight_decay {group.get('weight_decay'):g} -> {wanted['weight_decay']:g}")
                group["weight_decay"] = wanted["weight_decay"]
            for attr, label in (("warmup_steps", "warmup_steps"), ("total_steps", "schedule horizon (steps)"),
                                ("min_ratio", "min_lr_ratio")):
                if getattr(old, attr) != getattr(fn, attr):
                    changes.setdefault(attr, f"{label} {getattr(old, attr)} -> {getattr(fn, attr)}")
            if (old.warmup_steps, old.total_steps, old.min_ratio) != (fn.warmup_steps, fn.total_steps, fn.min_ratio):
                sched.lr_lambdas[i] = WarmupCosine(fn.warmup_steps, fn.total_steps, fn.min_ratio)
        if changes:
            for i, group in enumerate(opt.param_groups):
                group["lr"] = sched.base_lrs[i] * sched.lr_lambdas[i](sched.last_epoch)
            sched._last_lr = [group["lr"] for group in opt.param_groups]
            rank_zero_warn(
                f"{where}: resumed with optimizer settings that differ from the checkpoint's; applied from step "
                f"{self.global_step} on: {'; '.join(changes.values())} (learning rate now "
                f"{opt.param_groups[0]['lr']:.4g})"
            )
        return list(changes.values())

    def _schedule_horizon(self) -> int | None:
        if self.max_steps_for_schedule is not None:
            return int(self.max_steps_for_schedule)
        trainer = self._trainer
        if trainer is None:
            return None
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return int(trainer.max_steps)
        est = trainer.estimated_stepping_batches
        return int(est) if est != float("inf") else None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, logs = self.method.loss(batch, generator=self._train_generator)
        self._check_finite_loss(loss, batch, batch_idx)
        bs = self._batch_size(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for k, v in logs.items():
            if k != "loss":
                self.log(f"train/{k}", v, batch_size=bs)
        return loss

    def _check_finite_loss(self, loss: Tensor, batch: Any, batch_idx: int) -> None:
        """Raise :class:`TrainingError` (on every rank, before any backward pass) when a loss is NaN / inf."""
        finite = bool(torch.isfinite(loss.detach()).all())
        trainer = self._trainer
        everywhere = trainer.strategy.reduce_boolean_decision(finite, all=True) if trainer is not None else finite
        if everywhere:
            return
        step, epoch = self.global_step, self.current_epoch
        if finite:
            raise TrainingError(f"training step {step}", "another process got a non-finite loss (its error names "
                                "the cases); training stopped", "see the error of the other process")
        cases = _case_names(batch)
        names = f"the batch of case(s) {_listed(cases)}" if cases else "a batch without case names"
        raise TrainingError(
            f"training step {step}",
            f"the loss is {float(loss.detach().float().mean())} on {names} (batch {batch_idx} of epoch {epoch}); "
            "training stopped before updating the weights (no checkpoint of this step is written)",
            "check those cases for NaN / inf voxels or labels outside the declared classes; if the data are fine, "
            "resume from the last checkpoint with a lower model.init_args.lr or trainer.gradient_clip_val",
        )

    # -- evaluation -----------------------------------------------------------------------------------
    def _batch_size(self, batch: dict[str, Any]) -> int | None:
        x = batch.get(self.method.input_key) if isinstance(batch, Mapping) else None
        return int(x.shape[0]) if isinstance(x, Tensor) else None

    def _generate(self, batch: dict[str, Any], batch_idx: int, stream: int) -> dict[str, Tensor]:
        """``method.predict`` with the fast sampler, autocast off, seeded per (seed, stream, rank, batch)."""
        g = torch.Generator(device=self.device)
        g.manual_seed(((int(self.seed) * 31 + stream) * 1_000_003 + int(self.global_rank)) * 100_003 + batch_idx)
        ctx = (
            torch.autocast(device_type=self.device.type, enabled=False)
            if self.device.type in _AUTOCAST_DEVICES else contextlib.nullcontext()
        )
        with ctx:
            out = self.method.predict(
                batch, sampler=self.val_sampler, steps=self.val_steps, n_samples=self.val_samples, generator=g,
                progress=False,
            )
        if not isinstance(out, Mapping) or "prediction" not in out:
            raise TypeError(f"{type(self.method).__name__}.predict must return a dict with a 'prediction' tensor")
        return dict(out)

    def compute_metrics(self, batch: dict[str, Any], out: Mapping[str, Tensor]) -> dict[str, Any]:
        """The method's :meth:`~medrs_diff.methods.Method.validation_metrics` of one batch."""
        return dict(self.method.validation_metrics(batch, out))

    def _epoch_metric(self, key: str) -> MeanMetric:
        """The batch-size-weighted epoch mean logged as ``key``; synced across ranks when computed."""
        if key not in self.epoch_metrics:
            # nan_strategy="warn" (NaN batches dropped with a warning): torchmetrics 1.9's "disable" also drops
            # the weights (every batch then counts once), which the 2-process test catches.
            self.epoch_metrics[key] = MeanMetric(nan_strategy="warn").to(self.device)
        return self.epoch_metrics[key]

    def _log_metric(self, key: str, value: Any, weight: int, prog_bar: bool = False) -> None:
        metric = self._epoch_metric(key)
        metric.update(torch.as_tensor(value, dtype=torch.float32, device=self.device).detach(), weight)
        self.log(key, metric, on_step=False, on_epoch=True, prog_bar=prog_bar, add_dataloader_idx=False,
                 metric_attribute=f"{_METRICS_ATTR}.{key}")

    def _evaluate(self, stage: str, batch: dict[str, Any], batch_idx: int, dataloader_idx: int) -> dict[str, Any]:
        out = self._generate(batch, batch_idx, stream=1 if stage == "val" else 2)
        metrics = self.compute_metrics(batch, out)
        bs = self._batch_size(batch)
        weight = bs if bs is not None else 1
        for k, v in metrics.items():
            self._log_metric(f"{stage}/{k}", v, weight, prog_bar=(k == self.val_metric))
        if self.val_metric is not None:
            if self.val_metric not in metrics:
                raise ArgumentError(
                    None, f"val_metric={self.val_metric!r} is not among the metrics {type(self.method).__name__} "
                    f"reports ({sorted(metrics)})", "set model.init_args.val_metric to one of them or to null",
                )
            self._log_metric(f"{stage}/metric", metrics[self.val_metric], weight)
        if batch_idx == 0 and dataloader_idx == 0 and not self._panel_done and not self.trainer.sanity_checking:
            self._panel_done = True
            if self.trainer.is_global_zero:
                self.write_panel(stage, batch, out)
        return metrics

    def write_panel(self, stage: str, batch: Mapping[str, Any], out: Mapping[str, Tensor]) -> str:
        """Write ``<panels_dir>/<stage>_step<global_step>.png`` (input / prediction / reference / uncertainty)."""
        folder = self.panels_dir or os.path.join(self.trainer.log_dir or self.trainer.default_root_dir, "panels")
        path = os.path.join(folder, f"{stage}_step{self.global_step:08d}.png")
        own = getattr(self.method, "panel_columns", None)  # a method with more to show (EI-DDPM: per modality)
        shared: tuple[str, ...] = ("prediction", "reference")
        if own is not None:
            cols, shared = own(batch, out)
        else:
            cols = {
                "input": batch.get(self.method.input_key),
                "prediction": out.get("prediction"),
                "reference": batch.get(self.method.target_key),
                "uncertainty": out.get("uncertainty"),
            }
        cols = {k: v for k, v in cols.items() if isinstance(v, Tensor) and v.ndim in (4, 5)}
        save_panel(path, cols, max_rows=self.panel_rows, title=f"{self.method.name} {stage} step {self.global_step}",
                   shared=shared)
        return path

    def on_validation_start(self) -> None:
        # Sampling must not move the training RNG streams: a resumed run does not re-run this validation.
        self._val_rng_stash = capture_rng_state()
        self._panel_done = False

    def on_validation_end(self) -> None:
        if self._val_rng_stash is not None:
            restore_rng_state(self._val_rng_stash)
            self._val_rng_stash = None

    def on_test_start(self) -> None:
        self._panel_done = False

    def _reset_metrics(self, stage: str) -> None:
        for key, metric in self.epoch_metrics.items():
            if key.startswith(f"{stage}/"):
                metric.reset()

    def on_validation_epoch_start(self) -> None:
        self._reset_metrics("val")

    def on_test_epoch_start(self) -> None:
        self._reset_metrics("test")

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self._evaluate("val", batch, batch_idx, dataloader_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self._evaluate("test", batch, batch_idx, dataloader_idx)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        return self._generate(batch, batch_idx, stream=3)

    # -- checkpoints ----------------------------------------------------------------------------------
    def _rng_states(self) -> list[dict[str, Any]]:
        """This rank's RNG states (the pre-validation ones while validating), gathered from every rank."""
        state = {
            "global": self._val_rng_stash if self._val_rng_stash is not None else capture_rng_state(),
            "train_generator": None if self._train_generator is None else self._train_generator.get_state(),
        }
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
            return states
        return [state]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["medrs_diff"] = {
            "format": CHECKPOINT_FORMAT,
            "task": class_path_of(self),
            "method": dict(self.hparams["method"]),
            "method_name": self.method.name,
        }
        checkpoint["rng_states"] = self._rng_states()
        bad = checkpoint_nonfinite(checkpoint)
        if bad:
            raise CheckpointError(
                f"checkpoint at global step {self.global_step}",
                f"refused to write it: the weights hold NaN / inf in {len(bad)} tensor(s) ({_listed(bad)}); training "
                "diverged", "resume from the last checkpoint written (it is intact) with a lower model.init_args.lr "
                "or trainer.gradient_clip_val",
            )

    def check_checkpoint(self, checkpoint: Mapping[str, Any], where: str | os.PathLike = "checkpoint") -> None:
        """Raise :class:`CheckpointError` unless ``checkpoint`` can resume / be loaded into this task: the same
        method class, weights (and EMA weights) that fit the model, and no NaN / inf weight."""
        record = checkpoint.get("medrs_diff")
        mine = class_path_of(self.method)
        if isinstance(record, Mapping) and isinstance(record.get("method"), Mapping):
            # older spellings (legacy module paths, short names) name the same class; a class path that is no
            # registered method is refused here, listing the valid ones (nothing is imported)
            theirs = canonical_method_config(record["method"], where)["class_path"]
            if theirs != mine:
                raise CheckpointError(
                    where, f"holds a {record.get('method_name', '?')} model ({theirs}), but this run trains "
                    f"{self.method.name} ({mine})",
                    "resume with the recipe the checkpoint was trained with, or start a new run without --ckpt_path",
                )
        raw = checkpoint.get("state_dict")
        if not isinstance(raw, Mapping):
            raise CheckpointError(where, "has no 'state_dict'", "pass a Lightning checkpoint from `medrs-diff fit`")
        check_state_fits(self.method, {k[7:]: v for k, v in raw.items() if k.startswith("method.")}, where,
                         "model weights")
        for state in (checkpoint.get("callbacks") or {}).values():
            if isinstance(state, Mapping) and state.get("format") == EMA_FORMAT and state.get("shadow"):
                shadow = dict(state["shadow"])
                if all(k.startswith("method.") for k in shadow):  # EMA(attr=None) averages the whole task
                    shadow = {k[7:]: v for k, v in shadow.items()}
                check_state_fits(self.method, shadow, where, "EMA weights")
        check_finite_checkpoint(checkpoint, where)

    def changed_settings(self, checkpoint: Mapping[str, Any]) -> list[str]:
        """This task's settings that differ from the ones ``checkpoint`` was trained with, e.g.
        ``["lr: 0.002 -> 0.5", "method.n_samples: 5 -> 3"]`` (method arguments with their defaults)."""
        hp = checkpoint.get("hyper_parameters")
        if not isinstance(hp, Mapping):
            return []
        out = []
        for key, now in self.hparams.items():
            if key != "method" and key in hp and _plain(hp[key]) != _plain(now):
                out.append(f"{key}: {hp[key]!r} -> {now!r}")
        stored = hp.get("method")
        if isinstance(stored, Mapping) and isinstance(stored.get("init_args"), Mapping):
            try:
                cls = resolve_method_class(stored.get("class_path", ""))
            except MedrsError:
                cls = None
            if cls is type(self.method):
                then = _with_defaults(cls, stored["init_args"])
                for key, now in self.method.hparams().items():
                    if key in then and _plain(then[key]) != _plain(now):
                        out.append(f"method.{key}: {then[key]!r} -> {now!r}")
        return out

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        where = "checkpoint"
        if self._trainer is not None and self._trainer.ckpt_path:
            where = str(self._trainer.ckpt_path)
        self.check_checkpoint(checkpoint, where)
        self._rng_to_restore = checkpoint.get("rng_states")
        attach_learned(self.method, checkpoint.get(LEARNED_KEY), where)  # BDDM / step-mask chains, if fitted
        if self._trainer is None:  # load_from_checkpoint: the task is rebuilt from the stored settings
            return
        self._resumed_from = where
        changed = self.changed_settings(checkpoint)
        if changed:
            optim = [c for c in changed if c.split(":", 1)[0] in OPTIMIZER_SETTINGS]
            note = " (the optimizer ones are applied to the restored optimizer state)" if optim else ""
            rank_zero_warn(f"{where}: this run's settings differ from the checkpoint's and are used as given now"
                           f"{note}: {'; '.join(changed)}")
