"""The ``medrs-diff`` command line.

``fit / validate / test / predict --config RECIPE`` run LightningCLI on a recipe (the TorchGeo
convention); ``infer`` runs a checkpoint over whole NIfTI volumes or GeoTIFF scenes; ``evaluate``
scores predictions; ``list`` shows methods, recipes and samplers; ``quickstart`` trains, infers and
evaluates SegDiff and SRDiff end to end; ``samplers`` prints the engine's accuracy table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def run_lightning(argv: list[str]) -> int:
    """LightningCLI over :class:`DiffusionTask` and any data module named in the recipe."""
    from lightning.pytorch.cli import LightningCLI

    from .train import DictDataModule, DiffusionTask, RecipeConfigCallback
    from .train.recipe import check_recipe_args

    check_recipe_args(argv)
    LightningCLI(
        DiffusionTask,
        DictDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RecipeConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=argv,
        auto_configure_optimizers=False,
    )
    return 0


def _cmd_samplers(args: argparse.Namespace) -> int:
    from .diffusion.accuracy import format_table, sampler_accuracy

    print(format_table(sampler_accuracy(args.n, args.seed)))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .diffusion.samplers import SAMPLERS
    from .diffusion.schedules import SCHEDULES, SPACINGS
    from .methods import METHODS

    print("methods:   " + ", ".join(f"{k} ({v.__module__}.{v.__name__})" for k, v in METHODS.items()))
    recipes = sorted(p.name for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
    print("recipes:   " + (", ".join(recipes) if recipes else f"(none found in {RECIPES_DIR})"))
    print("samplers:  " + ", ".join([*SAMPLERS, "analytic_dpm", "paradigms"]))
    print("schedules: " + ", ".join(SCHEDULES))
    print("spacings:  " + ", ".join(SPACINGS))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import run

    run(args)
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from .predict_files import run_infer

    run_infer(args)
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart

    run_quickstart(Path(args.out), seed=args.seed, fast=args.fast)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medrs-diff",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="fit/validate/test/predict take LightningCLI arguments: medrs-diff fit --config recipes/X.yaml",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} --config RECIPE (see `medrs-diff {name} --help`)",
                       add_help=False)

    p = sub.add_parser("infer", help="run a checkpoint over NIfTI / GeoTIFF files (whole file, tiled)")
    from .predict_files import add_infer_arguments

    add_infer_arguments(p)
    p.set_defaults(func=_cmd_infer)

    from .evaluate import add_arguments as add_evaluate_arguments

    p = sub.add_parser("evaluate", help="metrics of predictions against references (files or folders)")
    add_evaluate_arguments(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("list", help="list methods, recipes, samplers, schedules and spacings")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("quickstart", help="train, infer and evaluate SegDiff (NIfTI) and SRDiff (GeoTIFF)")
    p.add_argument("--out", default="quickstart_out", help="report folder (default: ./quickstart_out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="a few steps only (smoke test)")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("samplers", help="sampler accuracy against an exact Gaussian-mixture denoiser")
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_samplers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return run_lightning(argv)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        print(f"medrs-diff {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
