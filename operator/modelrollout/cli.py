"""Console entry point: `modelrollout <command>`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from modelrollout import __version__, crdgen, run
from modelrollout.devenv import commands as dev_commands
from modelrollout.sim.__main__ import build_parser as sim_parser
from modelrollout.sim.__main__ import run as sim_run


def _demo() -> int:
    from modelrollout.demo.runner import main as demo_main  # noqa: PLC0415 - needs the demo extra

    return demo_main()


def write_crds(args: argparse.Namespace) -> int:
    """Generate the CRD from the models; with --check, fail when the file on disk differs."""
    target: Path = args.output_dir / crdgen.CRD_FILE
    rendered = crdgen.render_crd()
    if args.check:
        current = target.read_text() if target.exists() else ""
        if current != rendered:
            print(
                f"{target} is out of date with operator/modelrollout/api.py: run `make crds`", file=sys.stderr
            )
            return 1
        print(f"{target} is up to date")
        return 0
    args.output_dir.mkdir(parents=True, exist_ok=True)
    target.write_text(rendered)
    print(f"wrote {target}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelrollout", description=__doc__)
    parser.add_argument("--version", action="version", version=f"modelrollout {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    dev_commands.add_parser(subparsers)
    crds = subparsers.add_parser("crds", help="generate the ModelRollout CRD from the API models")
    crds.add_argument("--output-dir", type=Path, default=Path("crds"))
    crds.add_argument("--check", action="store_true", help="fail if the CRD on disk is out of date")
    crds.set_defaults(handler=write_crds)
    run.add_parser(subparsers)
    sim = subparsers.add_parser("sim", help="a simulated Istio data plane with fake LLM backends")
    sim_parser(sim)
    sim.set_defaults(handler=sim_run)
    demo = subparsers.add_parser(
        "demo", help="two rollouts on simulated traffic: one promotes, one rolls back"
    )
    demo.set_defaults(handler=lambda _args: _demo())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
