"""Recipes: the LightningCLI YAML files shipped inside the package (``medrs_diff/recipes/*.yaml``) and
early, readable checks of a recipe before LightningCLI parses it.

``resolve_recipe`` turns what a user types after ``--config`` into a file: an existing path is used
as it is, else a packaged recipe by name (``segdiff_phantom2d``, ``segdiff_phantom2d.yaml`` or the old
``recipes/segdiff_phantom2d.yaml`` spelling). ``check_recipe_args`` then reads each recipe and names
the valid choices for an unknown method (LightningCLI's own message is an import traceback), without
importing anything the recipe names.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import RecipeError
from .checkpoint import LEGACY_CLASS_PATHS, resolve_method_class, valid_methods

__all__ = [
    "RECIPE_PACKAGE",
    "check_method_class_path",
    "check_recipe",
    "check_recipe_args",
    "config_paths",
    "packaged_recipes",
    "recipe_dir",
    "resolve_config_args",
    "resolve_recipe",
    "valid_methods",
]

#: The package whose data files are the bundled recipes.
RECIPE_PACKAGE = "medrs_diff.recipes"
_SUFFIXES = (".yaml", ".yml")


def recipe_dir() -> Path:
    """The folder of the packaged recipes (inside the installed package, editable or not)."""
    return Path(str(resources.files(RECIPE_PACKAGE)))


def packaged_recipes() -> list[str]:
    """Names of the packaged recipes, sorted, with their ``.yaml`` suffix (``segdiff_phantom2d.yaml``, ...)."""
    root = resources.files(RECIPE_PACKAGE)
    return sorted(p.name for p in root.iterdir() if p.is_file() and p.name.endswith(_SUFFIXES))


def resolve_recipe(name_or_path: str | os.PathLike) -> Path:
    """The recipe file for ``name_or_path``.

    A path that exists is returned as it is. Otherwise a packaged recipe is looked up by name, with or
    without ``.yaml``, also accepting the pre-package spelling ``recipes/<name>.yaml``. Unknown names
    raise :class:`~medrs_diff.errors.RecipeError` listing the packaged recipes.
    """
    given = Path(name_or_path)
    if given.exists():
        if given.is_dir():
            raise RecipeError(given, "is a folder, not a recipe file",
                              f"pass a YAML file or one of the packaged recipes: {', '.join(packaged_recipes())}")
        return given
    name = given.name
    if len(given.parts) > 1 and given.parent.name != "recipes":  # a path elsewhere that does not exist
        raise RecipeError(given, "recipe not found",
                          f"check the path, or use a packaged recipe by name: {', '.join(packaged_recipes())}")
    known = packaged_recipes()
    for candidate in (name, *(name + s for s in _SUFFIXES)):
        if candidate in known:
            return recipe_dir() / candidate
    raise RecipeError(given, "recipe not found (neither a file nor a packaged recipe)",
                      f"use one of the packaged recipes: {', '.join(known)} (`medrs-diff list` shows them), "
                      "or give the path of your own YAML file")


def config_paths(argv: list[str]) -> list[str]:
    """The values given to ``--config`` in ``argv`` (``--config X`` and ``--config=X``), in order."""
    out = []
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith("--config="):
            out.append(a.split("=", 1)[1])
    return out


def resolve_config_args(argv: list[str]) -> list[str]:
    """``argv`` with every ``--config`` value replaced by its :func:`resolve_recipe` file path."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" and i + 1 < len(argv):
            out += [a, str(resolve_recipe(argv[i + 1]))]
            i += 2
            continue
        if a.startswith("--config="):
            a = "--config=" + str(resolve_recipe(a.split("=", 1)[1]))
        out.append(a)
        i += 1
    return out


def check_method_class_path(class_path: str, where: str | os.PathLike) -> None:
    """Raise :class:`RecipeError` unless ``class_path`` names a known method (nothing is imported)."""
    resolve_method_class(class_path, where, RecipeError)


def _get(cfg: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(cfg, dict):
            return None
        cfg = cfg.get(k)
    return cfg


def check_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Read one recipe file and check it early; returns the parsed YAML.

    Checks: the file is a YAML mapping; the method class is known (:func:`check_method_class_path`); a
    data module class path that has moved names its new short name.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(path, "recipe not found", "`medrs-diff list` shows the packaged recipes")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        problem = " ".join(str(err).split())
        raise RecipeError(path, f"is not valid YAML ({problem})", "fix the YAML syntax at the line shown") from err
    if not isinstance(cfg, dict):
        raise RecipeError(path, f"holds a {type(cfg).__name__}, not a mapping of LightningCLI keys",
                          "start from a packaged recipe (`medrs-diff list`)")
    method = _get(cfg, "model", "init_args", "method")
    cp = method.get("class_path") if isinstance(method, dict) else None
    if cp:
        check_method_class_path(cp, path)
    inner = _get(method, "init_args", "method")  # a wrapper's inner method (latent diffusion)
    inner_cp = inner.get("class_path") if isinstance(inner, dict) else None
    if inner_cp:
        cls = resolve_method_class(inner_cp, path, RecipeError)
        if "." not in str(inner_cp):  # LightningCLI re-parses nested class specs and needs a dotted path there
            raise RecipeError(path, f"the inner method's class_path {inner_cp!r} is not a dotted path",
                              f"write `class_path: {cls.__module__}.{cls.__qualname__}`")
    data_cp = _get(cfg, "data", "class_path")
    if isinstance(data_cp, str) and data_cp in LEGACY_CLASS_PATHS:
        new = LEGACY_CLASS_PATHS[data_cp].rsplit(".", 1)[-1]
        raise RecipeError(path, f"data.class_path {data_cp} has moved to medrs_diff.datamodules",
                          f"write `class_path: {new}` (the short class name)")
    return cfg


def check_recipe_args(argv: list[str]) -> None:
    """Check every ``--config`` recipe of a LightningCLI command line (see :func:`check_recipe`).

    The values are resolved with :func:`resolve_recipe` first, so packaged names are accepted.
    """
    for value in config_paths(argv):
        check_recipe(resolve_recipe(value))
