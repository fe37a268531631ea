"""Console entry point: `modelrollout <command>`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from modelrollout import __version__
from modelrollout.devenv import commands as dev_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelrollout", description=__doc__)
    parser.add_argument("--version", action="version", version=f"modelrollout {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    dev_commands.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
