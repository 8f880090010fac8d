"""Fit a packaged recipe with overrides from an evaluation script: the shared step of the real-data tables.

:func:`fit_recipe` loads a recipe by name, overrides data / method arguments, the step count and (optionally) the
learning rate, turns validation off (the scripts score held-out cases themselves) and keeps only ``last.ckpt``,
runs ``medrs-diff fit`` and returns that checkpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrs_diff.cli import main as cli  # noqa: E402
from medrs_diff.train.recipe import resolve_recipe  # noqa: E402


def fit_recipe(recipe: str, work: Path, name: str, *, steps: int, data: Mapping[str, Any] | None = None,
               method: Mapping[str, Any] | None = None, lr: float | None = None, drop_data: Iterable[str] = (),
               drop_method: Iterable[str] = (), seed: int | None = None) -> Path:
    """Fit ``recipe`` for ``steps`` optimizer steps under ``work / name`` with ``data`` / ``method`` init-argument
    overrides (``drop_*``: arguments removed first, back to their defaults), ``lr`` and ``seed`` (the run's
    ``seed_everything``, so the network's initialisation, and the task's ``seed``, so its training noise; None
    keeps the recipe's; the data module's own ``seed`` is a ``data`` override); no validation, only ``last.ckpt``
    kept (returned). The config written is ``work / f"{name}.yaml"``."""
    cfg = yaml.safe_load(resolve_recipe(recipe).read_text())
    model = cfg["model"]["init_args"]
    if seed is not None:
        cfg["seed_everything"] = model["seed"] = int(seed)
    if lr is not None:
        model["lr"] = float(lr)
    for key in drop_data:
        cfg["data"]["init_args"].pop(key, None)
    cfg["data"]["init_args"].update(data or {})
    for key in drop_method:
        model["method"]["init_args"].pop(key, None)
    model["method"]["init_args"].update(method or {})
    model["warmup_steps"] = min(int(model.get("warmup_steps", 0)), steps)
    tr = cfg["trainer"]
    tr.update(max_steps=steps, default_root_dir=str(work / name), limit_val_batches=0, enable_progress_bar=False,
              log_every_n_steps=max(1, min(50, steps // 4)))
    for cb in tr.get("callbacks", []):
        if cb["class_path"].endswith("ModelCheckpoint"):  # no validation: keep the last weights
            cb["init_args"] = {"save_last": True, "save_top_k": 0}
    path = work / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    if cli(["fit", "--config", str(path)]) not in (0, None):
        raise SystemExit(f"fit_recipe: training {name} ({recipe}) failed")
    ckpts = sorted((work / name).rglob("last.ckpt"))
    if not ckpts:
        raise SystemExit(f"fit_recipe: training {name} wrote no last.ckpt under {work / name}")
    return ckpts[-1]
