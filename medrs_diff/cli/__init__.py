"""The ``medrs-diff`` command line.

``fit / validate / test / predict --config RECIPE`` run LightningCLI on a recipe (a YAML file or a
packaged recipe by name, the TorchGeo convention); ``infer`` runs a checkpoint over files (NIfTI,
GeoTIFF, PNG / JPEG, ...), writing every output the method declares on the input's grid;
``generate`` writes synthetic vessel-mask / fundus pairs from the retinal dual model's checkpoints (or
unconditional images from a diffusion autoencoder with its latent DDIM);
``evaluate`` scores predictions; ``list`` shows methods, recipes and samplers; ``quickstart`` trains,
infers and evaluates SegDiff and TCDM (super-resolution) end to end; ``samplers`` prints the engine's accuracy table;
``fit-schedule`` adds BDDM schedules / learned step masks to a checkpoint.

A user error (bad file, argument, recipe or checkpoint) prints one line
``medrs-diff <command>: error: ...`` and exits with status 2; set ``MEDRS_DIFF_TRACEBACK=1`` to see
the traceback instead. Nothing in the package imports this module (only the console script does).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import MedrsError
from .lightning_cli import LIGHTNING_COMMANDS

__all__ = ["LIGHTNING_COMMANDS", "build_parser", "main"]


def _cmd_samplers(args: argparse.Namespace) -> int:
    from ..diffusion.accuracy import format_table, sampler_accuracy

    print(format_table(sampler_accuracy(args.n, args.seed, masks=args.masks, bddm=args.bddm)))
    return 0


def _cmd_fit_schedule(args: argparse.Namespace) -> int:
    from ..train.learned_schedule import fit_schedule_checkpoint

    fit_schedule_checkpoint(args.checkpoint, args.output, kind=args.kind, steps=args.steps, fit_steps=args.fit_steps,
                            batches=args.batches, candidates=args.candidates, mask_samples=args.mask_samples,
                            data_root=args.data_root, seed=args.seed)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .listing import list_text

    print(list_text())
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate_args import run_from_args

    run_from_args(args)
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from .infer_args import run_from_args

    run_from_args(args)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from .generate_args import run_from_args

    run_from_args(args)
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart

    run_quickstart(args.out, seed=args.seed, fast=args.fast)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every command except the LightningCLI ones (listed as stubs)."""
    from .evaluate_args import add_arguments as add_evaluate_arguments
    from .generate_args import add_arguments as add_generate_arguments
    from .infer_args import add_arguments as add_infer_arguments

    parser = argparse.ArgumentParser(
        prog="medrs-diff",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="fit/validate/test/predict take LightningCLI arguments: medrs-diff fit --config segdiff_phantom2d",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} --config RECIPE (see `medrs-diff {name} --help`)",
                       add_help=False)

    p = sub.add_parser("infer", help="run a checkpoint over files (tiled, on the input's grid, every output)")
    add_infer_arguments(p)
    p.set_defaults(func=_cmd_infer)

    p = sub.add_parser("generate", help="synthetic vessel masks and fundus images from the retinal dual model, or "
                                             "unconditional images from a diffusion autoencoder (diffae)")
    add_generate_arguments(p)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("evaluate", help="metrics of predictions against references (files or folders)")
    add_evaluate_arguments(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("list", help="list methods, recipes, samplers, schedules and spacings")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("quickstart", help="train, infer and evaluate SegDiff (NIfTI) and TCDM x4 (GeoTIFF)")
    p.add_argument("--out", default="quickstart_out", help="report folder (default: ./quickstart_out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="a few steps only (smoke test)")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("fit-schedule", help="fit BDDM schedules / learned step masks on a checkpoint (post hoc)")
    p.add_argument("--checkpoint", required=True, help="a .ckpt written by `medrs-diff fit` (not modified)")
    p.add_argument("--output", required=True, help="the new checkpoint with the chains added (atomic write)")
    p.add_argument("--kind", required=True, choices=("bddm", "mask"),
                   help="bddm: BDDM schedule network + search (sample with --sampler bddm); mask: learned step "
                   "mask (--sampler masked)")
    p.add_argument("--steps", type=int, nargs="+", required=True, help="step budget(s), e.g. 5 10 20")
    p.add_argument("--fit-steps", type=int, default=400, help="schedule-net iterations / mask updates (400)")
    p.add_argument("--batches", type=int, default=4, help="training batches to fit on; one more selects (4)")
    p.add_argument("--candidates", type=int, default=100, help="evenly spaced steps a mask chooses from (100)")
    p.add_argument("--mask-samples", type=int, default=8, help="masks drawn per mask update (8)")
    p.add_argument("--data-root", default=None, help="the data module's root, when it moved since training")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_fit_schedule)

    p = sub.add_parser("samplers", help="sampler accuracy against an exact Gaussian-mixture denoiser")
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--masks", action="store_true", help="also learn DDIM step masks (EDDPM-style), ~1 min")
    p.add_argument("--bddm", action="store_true", help="also fit BDDM schedules (<= 5/10/20 steps)")
    p.set_defaults(func=_cmd_samplers)
    return parser


#: What ``main`` reports as one line (MedrsError is a ValueError; FileNotFoundError for missing paths).
USER_ERRORS = (MedrsError, ValueError, FileNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``medrs-diff`` command; returns the exit status (2 for a user error, after one line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else "medrs-diff"
    try:
        if argv and argv[0] in LIGHTNING_COMMANDS:
            from .lightning_cli import run_lightning

            return run_lightning(argv)
        args = build_parser().parse_args(argv)
        command = args.command
        return int(args.func(args) or 0)
    except USER_ERRORS as err:  # bad input: one clear line, no traceback
        if os.environ.get("MEDRS_DIFF_TRACEBACK"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"medrs-diff {command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
