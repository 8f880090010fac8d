"""Early, readable checks of a recipe before LightningCLI parses it: an unknown method class names the
valid ones (LightningCLI's own message is an import traceback)."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from ..methods import METHODS
from ..methods.base import DiffusionMethod


def _config_paths(argv: list[str]) -> list[Path]:
    paths = []
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            paths.append(Path(argv[i + 1]))
        elif a.startswith("--config="):
            paths.append(Path(a.split("=", 1)[1]))
    return paths


def valid_methods() -> str:
    return ", ".join(f"{v.__module__}.{v.__name__}" for v in METHODS.values())


def check_method_class_path(class_path: str, where: str) -> None:
    """Raise ValueError unless ``class_path`` imports a DiffusionMethod subclass."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, DiffusionMethod)):
        raise ValueError(f"{where}: unknown method {class_path!r}; valid methods: {valid_methods()}")


def check_recipe_args(argv: list[str]) -> None:
    """Check every ``--config`` recipe: the file exists, is YAML, and names a known method."""
    for path in _config_paths(argv):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: recipe not found; `medrs-diff list` shows the bundled recipes")
        try:
            cfg = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from err
        method = (((cfg.get("model") or {}).get("init_args") or {}).get("method")) or {}
        cp = method.get("class_path") if isinstance(method, dict) else None
        if cp:
            check_method_class_path(cp, str(path))
