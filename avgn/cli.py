"""The ``avgn`` command line. Every subcommand calls the same library function a notebook calls.

    avgn env                                   print the environment report
    avgn data build --profile P --seed S --out DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avgn.config import PROFILES


def _cmd_env(args: argparse.Namespace) -> int:
    from avgn.env import environment_report

    for key, value in environment_report(args.device).items():
        print(f"{key:>14}: {value}")
    return 0


def _cmd_data_build(args: argparse.Namespace) -> int:
    from avgn.data.build import build_dataset

    manifest = build_dataset(profile=args.profile, seed=args.seed, out=Path(args.out), progress=not args.quiet)
    print(f"manifest: {manifest}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for the ``avgn`` console script."""
    parser = argparse.ArgumentParser(prog="avgn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p_env = sub.add_parser("env", help="print versions and the compute device")
    p_env.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p_env.set_defaults(func=_cmd_env)

    p_data = sub.add_parser("data", help="build or inspect the embedded benchmark")
    data_sub = p_data.add_subparsers(dest="data_command", required=True)
    p_build = data_sub.add_parser("build", help="build the embedded benchmark for a profile")
    p_build.add_argument("--profile", choices=PROFILES, default="cpu")
    p_build.add_argument("--seed", type=int, default=0)
    p_build.add_argument("--out", default="data/embedded", help="output folder (default: data/embedded)")
    p_build.add_argument("--quiet", action="store_true", help="no progress bars")
    p_build.set_defaults(func=_cmd_data_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``avgn`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
