"""``medrs-diff fit / validate / test / predict --config RECIPE``: LightningCLI over
:class:`~medrs_diff.train.DiffusionTask` and the data modules of :mod:`medrs_diff.datamodules`.

Every ``--config`` is resolved first (a file, or a packaged recipe by name, see
:func:`medrs_diff.train.recipe.resolve_recipe`) and checked (an unknown method names the valid
ones); recipes name data modules by short class names, which LightningCLI resolves among the
subclasses of :class:`~medrs_diff.datamodules.DictDataModule`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .quiet import progress_args, quiet_lightning

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def run_lightning(argv: Sequence[str], *, info: bool = True) -> int:
    """Run LightningCLI on ``argv`` (``[command, --config, RECIPE, overrides...]``); returns 0.

    Output is kept readable (:func:`~medrs_diff.cli.quiet.quiet_lightning`): no tips, no harmless
    deprecation warnings, no progress bar when stdout is not a terminal; ``info=False`` also hides
    Lightning's INFO lines.
    """
    from lightning.pytorch.cli import LightningCLI

    from ..datamodules import DictDataModule
    from ..train import DiffusionTask, RecipeConfigCallback
    from ..train.recipe import check_recipe_args, resolve_config_args

    args = progress_args(resolve_config_args(list(argv)))
    check_recipe_args(args)
    with quiet_lightning(info=info):
        LightningCLI(
            DiffusionTask,
            DictDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RecipeConfigCallback,
            save_config_kwargs={"overwrite": True},
            args=args,
            auto_configure_optimizers=False,
        )
    return 0
