"""Exponential moving average of a method's weights, as a Lightning callback.

Diffusion models sample markedly better from EMA weights than from the raw training weights. The
callback keeps a shadow copy of the method's state (floating parameters and buffers are averaged,
integer buffers such as step counters are copied), swaps it in for validation / test / predict and
back afterwards, and lives in the checkpoint through ``state_dict`` / ``load_state_dict`` (Lightning
stores callback states under ``checkpoint["callbacks"]``), so a resumed run continues the same average.

Decay with warm-up (as in TensorFlow's ``ExponentialMovingAverage(num_updates=...)``): the n-th
update (n = 0, 1, ...) uses ``decay_n = min(decay, (1 + n) / (10 + n))``, so early averages are not
dominated by the random initialisation.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

# EMA_FORMAT marks the EMA state among callback states; ema_state_dict reads it back (both live in
# .checkpoint, which does not import this module, and are re-exported here for older imports).
from .checkpoint import EMA_FORMAT, ema_state_dict

__all__ = ["EMA", "EMA_FORMAT", "ema_state_dict"]


class EMA(L.Callback):
    """EMA of ``pl_module.<attr>`` (the task's ``method``; the whole module when ``attr`` is None).

    ``decay``: the asymptotic decay; ``every_n_steps``: update after every k-th optimizer step (the
    average then moves k times slower per step; raise ``decay`` accordingly or keep k = 1);
    ``warmup``: use the ``(1 + n) / (10 + n)`` warm-up; ``swap_for_eval``: evaluate with EMA weights.
    """

    def __init__(
        self,
        decay: float = 0.9999,
        every_n_steps: int = 1,
        warmup: bool = True,
        swap_for_eval: bool = True,
        attr: str | None = "method",
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.decay = float(decay)
        self.every_n_steps = int(every_n_steps)
        self.warmup = bool(warmup)
        self.swap_for_eval = bool(swap_for_eval)
        self.attr = attr
        self.shadow: dict[str, Tensor] | None = None
        self.num_updates = 0
        self._last_step = -1
        self._pending: dict[str, Any] | None = None  # state loaded from a checkpoint, materialised on the device
        self._backup: dict[str, Tensor] | None = None  # training weights while the EMA weights are swapped in

    # -- what is averaged -------------------------------------------------------------------------
    def target(self, pl_module: L.LightningModule) -> nn.Module:
        if self.attr is None:
            return pl_module
        module = getattr(pl_module, self.attr, None)
        if not isinstance(module, nn.Module):
            raise AttributeError(
                f"EMA(attr={self.attr!r}): {type(pl_module).__name__} has no sub-module {self.attr!r}; "
                "set attr to the module to average (or None for the whole LightningModule)"
            )
        return module

    @staticmethod
    def _tensors(module: nn.Module) -> dict[str, Tensor]:
        """The module's state-dict tensors (parameters and persistent buffers), live, not copies."""
        return {k: v for k, v in module.state_dict(keep_vars=True).items() if isinstance(v, Tensor)}

    def decay_at(self, n: int) -> float:
        """Decay used by the n-th update (0-based)."""
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    # -- lifecycle --------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        name = type(trainer.strategy).__name__
        if "FSDP" in name or "ModelParallel" in name or "DeepSpeed" in name:
            raise RuntimeError(
                f"the EMA callback keeps full (unsharded) weights and does not support the sharded {name}; "
                "train with strategy='ddp', or remove the EMA callback from trainer.callbacks"
            )

    def _materialise(self, pl_module: L.LightningModule) -> bool:
        """Create the shadow from a state loaded from a checkpoint, on the module's device; True when one exists."""
        if self.shadow is not None:
            return True
        if self._pending is None:
            return False
        live = self._tensors(self.target(pl_module))
        saved = self._pending["shadow"]
        missing, unexpected = sorted(set(live) - set(saved)), sorted(set(saved) - set(live))
        if missing or unexpected:
            raise RuntimeError(
                "the EMA weights in the checkpoint do not match the model: "
                f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}; "
                "resume with the recipe the checkpoint was trained with"
            )
        self.shadow = {k: saved[k].to(device=v.device, dtype=_shadow_dtype(v)).clone() for k, v in live.items()}
        self.num_updates = int(self._pending["num_updates"])
        self._last_step = int(self._pending.get("last_step", -1))
        self._pending = None
        return True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._materialise(pl_module):
            live = self._tensors(self.target(pl_module))
            self.shadow = {k: v.detach().to(_shadow_dtype(v)).clone() for k, v in live.items()}
            self.num_updates = 0
            self._last_step = trainer.global_step

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step:  # no optimizer step on this batch (gradient accumulation)
            return
        self._last_step = step
        if step % self.every_n_steps == 0:
            self.update(pl_module)

    @torch.no_grad()
    def update(self, pl_module: L.LightningModule) -> None:
        """One EMA update from the current weights: ``shadow = d * shadow + (1 - d) * weights``."""
        if not self._materialise(pl_module):
            raise RuntimeError("EMA.update called before the shadow weights exist (fit has not started)")
        d = self.decay_at(self.num_updates)
        live = self._tensors(self.target(pl_module))
        floats_s, floats_p = [], []
        for k, v in live.items():
            s = self.shadow[k]
            if s.is_floating_point():
                floats_s.append(s)
                floats_p.append(v.detach().to(s.dtype))
            else:
                s.copy_(v)
        if floats_s:
            torch._foreach_lerp_(floats_s, floats_p, 1.0 - d)
        self.num_updates += 1

    # -- swapping for evaluation ------------------------------------------------------------------
    @torch.no_grad()
    def swap_in(self, pl_module: L.LightningModule) -> bool:
        """Load the EMA weights into the module, keeping the training weights aside. True if swapped."""
        if self._backup is not None or not self._materialise(pl_module):
            return False
        live = self._tensors(self.target(pl_module))
        self._backup = {k: v.detach().clone() for k, v in live.items()}
        for k, v in live.items():
            v.copy_(self.shadow[k])
        return True

    @torch.no_grad()
    def swap_out(self, pl_module: L.LightningModule) -> None:
        """Put the training weights back after :meth:`swap_in`."""
        if self._backup is None:
            return
        for k, v in self._tensors(self.target(pl_module)).items():
            v.copy_(self._backup[k])
        self._backup = None

    def _eval_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.swap_for_eval and not self.swap_in(pl_module) and self._backup is None:
            rank_zero_warn("EMA: no EMA weights yet (no fit and no checkpoint with EMA state); evaluating raw weights")

    def on_validation_start(self, trainer, pl_module):
        self._eval_start(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module):
        self.swap_out(pl_module)

    def on_test_start(self, trainer, pl_module):
        self._eval_start(trainer, pl_module)

    def on_test_end(self, trainer, pl_module):
        self.swap_out(pl_module)

    def on_predict_start(self, trainer, pl_module):
        self._eval_start(trainer, pl_module)

    def on_predict_end(self, trainer, pl_module):
        self.swap_out(pl_module)

    def on_exception(self, trainer, pl_module, exception):
        self.swap_out(pl_module)

    # -- checkpointing ----------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # A checkpoint written while the EMA weights are swapped in must still hold the training weights.
        if self._backup is None:
            return
        prefix = "" if self.attr is None else f"{self.attr}."
        sd = checkpoint.get("state_dict", {})
        for k, v in self._backup.items():
            if prefix + k in sd:
                sd[prefix + k] = v.clone()

    def state_dict(self) -> dict[str, Any]:
        if self.shadow is None and self._pending is not None:
            return dict(self._pending)
        return {
            "format": EMA_FORMAT,
            "decay": self.decay,
            "every_n_steps": self.every_n_steps,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "last_step": self._last_step,
            "shadow": {} if self.shadow is None else self.shadow,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict.get("shadow"):
            return
        if state_dict.get("decay", self.decay) != self.decay:
            rank_zero_warn(
                f"EMA: the checkpoint was trained with decay={state_dict['decay']}, the recipe now says "
                f"{self.decay}; continuing the saved average with the new decay"
            )
        self._pending = dict(state_dict)
        self.shadow = None
        self._backup = None


def _shadow_dtype(v: Tensor) -> torch.dtype:
    """Average low-precision floating tensors in float32; keep other dtypes."""
    return torch.float32 if v.is_floating_point() and v.dtype in (torch.float16, torch.bfloat16) else v.dtype

