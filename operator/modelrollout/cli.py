"""Console entry point: `modelrollout <command>`.

The operator's own commands are `run`, `judge` (the judge service) and `crds`. Other packages add commands
through the `modelrollout.commands` entry-point group: each entry point, named after its command, is a
function that adds that subcommand (with a `handler` default) to the parser. The repository's dev tooling
(modelrollout-dev, in devtools/) adds `dev`, `sim` and `demo` this way; the operator never imports it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from modelrollout import __version__, crdgen, run
from modelrollout.judge import command as judge_command

COMMANDS_GROUP = "modelrollout.commands"
# Commands of the repository's dev tooling: named here only to say where they come from when it is absent.
DEV_TOOLING_COMMANDS = ("dev", "sim", "demo")
DEV_TOOLING_MISSING = (
    "`modelrollout {command}` is dev tooling, not part of the operator: it comes with the modelrollout-dev "
    "package of the repository (devtools/). In a checkout, `make venv` installs it into .venv; or "
    "`pip install -e ./devtools`."
)


def installed_commands() -> dict[str, EntryPoint]:
    """The commands other installed packages add, by name."""
    return {entry.name: entry for entry in entry_points(group=COMMANDS_GROUP)}


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


def build_parser(extra_commands: Iterable[EntryPoint] = ()) -> argparse.ArgumentParser:
    """The operator's commands, then those the given entry points add."""
    parser = argparse.ArgumentParser(
        prog="modelrollout",
        description="Progressive rollouts of LLM models over Istio, gated by Prometheus.",
    )
    parser.add_argument("--version", action="version", version=f"modelrollout {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    crds = subparsers.add_parser("crds", help="generate the ModelRollout CRD from the API models")
    crds.add_argument("--output-dir", type=Path, default=Path("crds"))
    crds.add_argument("--check", action="store_true", help="fail if the CRD on disk is out of date")
    crds.set_defaults(handler=write_crds)
    run.add_parser(subparsers)
    judge_command.add_parser(subparsers)
    for entry in extra_commands:
        entry.load()(subparsers)
    return parser


def _commands_to_load(command: str | None, installed: Mapping[str, EntryPoint]) -> list[EntryPoint]:
    """Only the command asked for is loaded (`modelrollout run` loads none); without one (help, usage
    errors) all are, so that they are listed."""
    if command is not None and command in installed:
        return [installed[command]]
    if command in ("run", "crds", "judge"):
        return []
    return [installed[name] for name in sorted(installed)]


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = arguments[0] if arguments else None
    installed = installed_commands()
    if command in DEV_TOOLING_COMMANDS and command not in installed:
        print(DEV_TOOLING_MISSING.format(command=command), file=sys.stderr)
        return 2
    args = build_parser(_commands_to_load(command, installed)).parse_args(arguments)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
