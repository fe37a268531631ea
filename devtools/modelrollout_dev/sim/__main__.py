"""`python -m modelrollout_dev.sim`: run the simulated mesh until interrupted (or for --duration seconds).

The first line of stdout is the URL of `/metrics` and the control API (`http://127.0.0.1:PORT`), so a script
or a test can start it with `--port 0` and read where it listens.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from kubernetes import client, config

from modelrollout_dev.sim.simulator import Simulator


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The simulator's options, on a parser of its own or on a subcommand's parser."""
    parser = parser or argparse.ArgumentParser(
        prog="python -m modelrollout_dev.sim",
        description="A simulated Istio data plane with fake LLM backends.",
    )
    parser.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG"),
        help="kubeconfig of the API server to watch (default $KUBECONFIG, else in-cluster config)",
    )
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="watch VirtualServices of this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument("--api-version", default="v1", help="networking.istio.io version to watch")
    parser.add_argument("--bind", default="127.0.0.1", help="address of /metrics and the control API")
    parser.add_argument("--port", type=int, default=0, help="port of /metrics and the control API; 0: any")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random picks (repeatable runs)")
    parser.add_argument("--host", default=None, help="send load to this host (as a client would address it)")
    parser.add_argument("--rps", type=float, default=0.0, help="requests per second to --host")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a fixed header on every load request (repeatable)",
    )
    parser.add_argument("--users", type=int, default=100, help="distinct x-user-id values of the load")
    parser.add_argument("--path", default="/v1/chat/completions", help="request path of the load")
    parser.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds; 0: until interrupted"
    )
    return parser


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`modelrollout sim`: the same options as `python -m modelrollout_dev.sim`."""
    sim = subparsers.add_parser("sim", help="a simulated Istio data plane with fake LLM backends")
    build_parser(sim)
    sim.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    headers: dict[str, str] = {}
    for header in args.header:
        name, sep, value = header.partition("=")
        if not sep or not name:
            print(f"--header wants NAME=VALUE, got {header!r}", file=sys.stderr)
            return 2
        headers[name] = value
    if args.rps and not args.host:
        print("--rps needs --host", file=sys.stderr)
        return 2
    if args.kubeconfig:
        api_client = config.new_client_from_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    else:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        api_client = client.ApiClient()
    simulator = Simulator(
        api_client,
        args.namespace or None,
        args.seed,
        api_version=args.api_version,
        port=args.port,
        bind=args.bind,
    )
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    simulator.start()
    try:
        print(simulator.url, flush=True)
        if not simulator.wait_synced(timeout=30):
            print(f"warning: VirtualServices not listed yet: {_last_error(simulator)}", file=sys.stderr)
        if args.host and args.rps:
            simulator.set_load(args.host, args.rps, headers=headers, users=args.users, path=args.path)
        done.wait(args.duration or None)
    finally:
        simulator.stop()
        api_client.close()
    return 0


def _last_error(simulator: Simulator) -> str:
    return (simulator.watcher.last_error if simulator.watcher else None) or "no error reported"


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
