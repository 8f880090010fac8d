"""``medrs-diff fit / validate / test / predict --config RECIPE``: LightningCLI over
:class:`~medrs_diff.train.DiffusionTask` and the data modules of :mod:`medrs_diff.datamodules`.

Every ``--config`` is resolved first (a file, or a packaged recipe by name, see
:func:`medrs_diff.train.recipe.resolve_recipe`) and checked (an unknown method names the valid
ones); recipes name data modules by short class names, which LightningCLI resolves among the
subclasses of :class:`~medrs_diff.datamodules.DictDataModule`.

``--ckpt_path``: the run uses the recipe's model (plus command-line overrides), never the checkpoint's
hyper-parameters (LightningCLI's own ``_parse_ckpt_path`` lays those over the config, which silently
trained the checkpoint's method and dropped overrides such as ``--model.init_args.lr``). Before
anything is built the file is read with one-line errors and NaN / inf weights are refused; once the
model is built, a checkpoint of another method or with weights of another shape is refused
(:meth:`~medrs_diff.train.DiffusionTask.check_checkpoint`); settings that differ from the checkpoint's
are named in a warning, and the optimizer ones (lr, weight decay, warm-up, schedule) are applied from
the resumed step on. ``fit`` from ``<root>/lightning_logs/version_K/checkpoints/*.ckpt`` logs into
``version_K`` again (:func:`~medrs_diff.train.resume.resume_log_version`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from .quiet import progress_args, quiet_lightning

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


@cache
def medrs_cli_class() -> type:
    """The LightningCLI subclass of medrs-diff (built on first use: importing Lightning is slow)."""
    from lightning.pytorch.cli import LightningCLI

    from ..train.resume import check_resume_checkpoint, is_checkpoint_file_arg, resume_log_version

    class MedrsLightningCLI(LightningCLI):
        """LightningCLI whose ``--ckpt_path`` resumes the recipe's model after checking the checkpoint."""

        _resume: tuple[str, dict[str, Any]] | None = None

        def _parse_ckpt_path(self) -> None:  # replaces LightningCLI's: no hyper-parameters from the checkpoint
            self._resume = None
            sub = self.config.get("subcommand")
            if not sub:
                return
            ckpt_path = self.config[sub].get("ckpt_path")
            if is_checkpoint_file_arg(ckpt_path):
                self._resume = (str(ckpt_path), check_resume_checkpoint(ckpt_path))

        def after_instantiate_classes(self) -> None:
            super().after_instantiate_classes()
            resume, self._resume = self._resume, None
            if resume is None:
                return
            path, ckpt = resume
            check = getattr(self.model, "check_checkpoint", None)
            if callable(check):
                check(ckpt, path)
            if self.subcommand == "fit":
                step = ckpt.get("global_step")
                resume_log_version(self.trainer, path, int(step) if isinstance(step, int) else None)

    return MedrsLightningCLI


def run_lightning(argv: Sequence[str], *, info: bool = True) -> int:
    """Run LightningCLI on ``argv`` (``[command, --config, RECIPE, overrides...]``); returns 0.

    Output is kept readable (:func:`~medrs_diff.cli.quiet.quiet_lightning`): no tips, no harmless
    deprecation warnings, no progress bar when stdout is not a terminal; ``info=False`` also hides
    Lightning's INFO lines.
    """
    from ..datamodules import DictDataModule
    from ..train import DiffusionTask, RecipeConfigCallback
    from ..train.recipe import check_recipe_args, resolve_config_args

    args = progress_args(resolve_config_args(list(argv)))
    check_recipe_args(args)
    with quiet_lightning(info=info):
        medrs_cli_class()(
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
