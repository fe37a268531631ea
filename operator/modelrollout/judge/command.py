"""`modelrollout judge`: the judge service as a process (its own Deployment; read-only on ModelRollouts,
ConfigMaps and Secrets, nothing on VirtualServices)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal

import httpx

from modelrollout.judge.service import JudgeService, kube_reads, serve
from modelrollout.kube import default_client


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    judge = subparsers.add_parser("judge", help="run the judge service (LLM-as-judge verdicts as metrics)")
    judge.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="only this namespace (repeatable)",
    )
    judge.add_argument("--port", type=int, default=8090, help="port of /metrics and POST /v1/pairs")
    judge.add_argument(
        "--sync-interval", type=float, default=5.0, help="seconds between listings of rollouts"
    )
    judge.add_argument(
        "--redact",
        action="append",
        default=[],
        type=_pattern,
        metavar="REGEX",
        help="also redact matches of this pattern from the samples kept for reports (repeatable)",
    )
    judge.add_argument("--verbose", action="store_true")
    judge.set_defaults(handler=main)


MAX_PATTERN = 200


def _pattern(text: str) -> re.Pattern[str]:
    if len(text) > MAX_PATTERN:
        raise argparse.ArgumentTypeError(f"a pattern is limited to {MAX_PATTERN} characters")
    try:
        return re.compile(text)
    except re.error as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression: {error}") from error


async def _run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    kube_client = await asyncio.to_thread(default_client, "modelrollout-judge")
    try:
        async with httpx.AsyncClient() as http:
            reads = kube_reads(kube_client, tuple(args.namespace))
            service = JudgeService(reads, http, redact_patterns=args.redact)
            await serve(service, args.port, args.sync_interval, stop)
    finally:
        await kube_client.close()


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    asyncio.run(_run(args))
    return 0
