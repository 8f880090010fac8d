"""The learning-test loop shared by the SegDiff / MedSegDiff V1 / V2 tests: Lightning training on phantoms
with EMA weights, then Dice of a DPM-Solver++ ensemble on the validation cases."""

from __future__ import annotations

import time

import lightning as L
import torch

from medrs_diff.methods.base import Method
from medrs_diff.metrics import dice
from medrs_diff.train import EMA, DiffusionTask


def fit(method: Method, dm: L.LightningDataModule, steps: int, lr: float, ema_decay: float = 0.99,
        warmup_steps: int = 20, use_ema: bool = True) -> Method:
    """Train ``method`` for ``steps`` optimizer steps; with ``use_ema`` the EMA weights are left in it. Eval mode."""
    task = DiffusionTask(method, lr=lr, warmup_steps=warmup_steps)
    ema = EMA(decay=ema_decay)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[ema], gradient_clip_val=1.0)
    trainer.fit(task, dm)
    if use_ema and not ema.swap_in(task):
        raise RuntimeError("_learning.py: the EMA callback holds no weights after fit; check the EMA callback")
    return method.eval()


def class_dice(prediction: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-image Dice of each foreground class ``(B, num_classes - 1)`` from class-index maps ``(B, 1, *spatial)``."""
    return torch.stack([dice(prediction == c, label == c) for c in range(1, num_classes)], dim=1)


@torch.no_grad()
def score(method: Method, dm: L.LightningDataModule, num_classes: int = 2, steps: int = 20,
          seed: int = 1) -> tuple[float, list[float]]:
    """Mean foreground Dice over the validation cases and its per-class values (classes 1 .. K-1)."""
    per_image = []
    gen = torch.Generator().manual_seed(seed)
    for batch in dm.val_dataloader():
        out = method.predict(batch, sampler="dpm_solver_pp", steps=steps, generator=gen)
        per_image.append(class_dice(out["prediction"], batch["label"], num_classes))
    per_class = torch.cat(per_image).mean(0)
    return float(per_class.mean()), [float(v) for v in per_class]


def fit_and_score(method: Method, dm: L.LightningDataModule, steps: int, lr: float, num_classes: int = 2,
                  ema_decay: float = 0.99, use_ema: bool = True, name: str = "") -> tuple[float, list[float]]:
    """:func:`fit` then :func:`score`; prints the scores and the seconds (shown with ``pytest -s``)."""
    start = time.perf_counter()
    fit(method, dm, steps, lr, ema_decay=ema_decay, use_ema=use_ema)
    mean, per_class = score(method, dm, num_classes)
    print(f"{name}: mean foreground Dice {mean:.3f} (per class {[round(v, 3) for v in per_class]}) "
          f"after {steps} steps, {time.perf_counter() - start:.0f} s")
    return mean, per_class
