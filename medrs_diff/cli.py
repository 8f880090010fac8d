"""The ``medrs-diff`` command line."""

from __future__ import annotations

import argparse
import sys


def _cmd_samplers(args: argparse.Namespace) -> int:
    from .diffusion.accuracy import format_table, sampler_accuracy

    print(format_table(sampler_accuracy(args.n, args.seed)))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .diffusion.samplers import SAMPLERS
    from .diffusion.schedules import SCHEDULES, SPACINGS

    print("samplers:  " + ", ".join([*SAMPLERS, "analytic_dpm", "paradigms"]))
    print("schedules: " + ", ".join(SCHEDULES))
    print("spacings:  " + ", ".join(SPACINGS))
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    print("medrs-diff quick start: sampler accuracy on a Gaussian mixture with an exact denoiser\n")
    return _cmd_samplers(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medrs-diff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("samplers", help="sampler accuracy against an exact Gaussian-mixture denoiser")
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_samplers)
    p = sub.add_parser("list", help="list samplers, schedules and spacings")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("quickstart", help="the README's quick start")
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
