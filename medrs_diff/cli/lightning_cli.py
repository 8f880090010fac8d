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

import argparse
import re
from collections.abc import Sequence
from functools import cache
from typing import Any

from ..errors import ArgumentError, MedrsError
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

        def init_parser(self, **kwargs: Any) -> Any:  # argument errors raise (one line in main), not print usage
            parser = super().init_parser(**kwargs)
            parser.exit_on_error = False
            return parser

        def _add_subcommands(self, parser: Any, **kwargs: Any) -> None:
            super()._add_subcommands(parser, **kwargs)
            for sub in self._subcommand_parsers.values():
                sub.exit_on_error = False

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
    deprecation warnings, no progress bar when stdout is not a terminal (a progress line a minute instead,
    :class:`~medrs_diff.train.progress.TextProgress`); ``info=False`` also hides Lightning's INFO lines.
    """
    from ..datamodules import DictDataModule
    from ..train import DiffusionTask, RecipeConfigCallback, TextProgress
    from ..train.recipe import check_recipe_args, resolve_config_args

    args = progress_args(resolve_config_args(list(argv)))
    check_recipe_args(args)
    with quiet_lightning(info=info):
        try:
            medrs_cli_class()(
                DiffusionTask,
                DictDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_callback=RecipeConfigCallback,
                save_config_kwargs={"overwrite": True},
                args=args,
                auto_configure_optimizers=False,
                trainer_defaults={"callbacks": [TextProgress()]},  # a line a minute when no bar is shown
            )
        except ValueError as err:  # jsonargparse wraps our errors raised while it builds the classes: unwrap
            inner = _medrs_cause(err)
            if inner is None:
                raise
            raise inner from None
        except argparse.ArgumentError as err:  # jsonargparse's multi-line report -> one line
            raise ArgumentError(args[0] if args else None, condense_parser_error(str(err)),
                                f"check the option's name and type (`medrs-diff {args[0] if args else 'fit'} --config "
                                "RECIPE --print_config` lists every option with its value)") from None
    return 0


def _medrs_cause(err: BaseException) -> MedrsError | None:
    """The medrs-diff error ``err`` is or was caused by (through ``__cause__`` / ``__context__``), if any."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        if isinstance(e, MedrsError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


#: Lines of a jsonargparse error that say what is wrong (the rest lists what each union member expected).
_DETAIL = re.compile(r"not accepted|Expected a|Got value|Unrecognized|does not|invalid|not a valid|must be|required",
                     re.IGNORECASE)


def condense_parser_error(text: str) -> str:
    """The key and the most telling lines of a jsonargparse error, on one line."""
    lines = [line.strip().rstrip(":") for line in text.splitlines() if line.strip()]
    if not lines:
        return "invalid arguments"
    details = [line.lstrip("- ") for line in lines[1:] if _DETAIL.search(line) and not line.startswith("Does not val")]
    return "; ".join(dict.fromkeys([lines[0], *details[:2]]))
