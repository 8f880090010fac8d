"""``medrs-diff list``: methods, packaged recipes, samplers, schedules and spacings, each from its registry."""

from __future__ import annotations


def list_text() -> str:
    """The lines ``medrs-diff list`` prints."""
    from ..diffusion.samplers import SAMPLERS
    from ..diffusion.schedules import SCHEDULES, SPACINGS
    from ..methods import METHODS
    from ..train.recipe import packaged_recipes, recipe_dir

    recipes = packaged_recipes()
    lines = [
        "methods:   " + ", ".join(f"{k} ({v.__module__}.{v.__name__})" for k, v in METHODS.items()),
        "recipes:   " + (", ".join(recipes) if recipes else f"(none found in {recipe_dir()})"),
        "samplers:  " + ", ".join(SAMPLERS),
        "schedules: " + ", ".join(SCHEDULES),
        "spacings:  " + ", ".join(SPACINGS),
    ]
    return "\n".join(lines)
