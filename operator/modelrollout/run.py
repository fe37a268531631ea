"""`modelrollout run`: start the operator (kopf) with its settings from the command line."""

from __future__ import annotations

import argparse
import logging
import os

import kopf

from modelrollout import handlers
from modelrollout.config import OperatorConfig


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = subparsers.add_parser("run", help="run the operator")
    run.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="watch only this namespace (repeatable; glob patterns allowed); default: all namespaces",
    )
    run.add_argument(
        "--prometheus-url",
        default=os.environ.get("MODELROLLOUT_PROMETHEUS_URL"),
        help="Prometheus for rollouts that do not name one (default $MODELROLLOUT_PROMETHEUS_URL)",
    )
    run.add_argument("--log-format", choices=["text", "json"], default="text")
    run.add_argument("--verbose", action="store_true")
    run.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="kopf's liveness endpoint (URL), or 'off'",
    )
    run.add_argument(
        "--metrics-port", type=int, default=9090, help="port of the operator's own /metrics (0: off)"
    )
    run.add_argument(
        "--notify-secret",
        default=os.environ.get("MODELROLLOUT_NOTIFY_SECRET"),
        metavar="NAMESPACE/NAME",
        help="Secret with `webhook-url` and/or `slack-webhook-url` for notifications, as NAMESPACE/NAME or a "
        "name in $POD_NAMESPACE (default $MODELROLLOUT_NOTIFY_SECRET)",
    )
    run.add_argument(
        "--tick",
        type=float,
        default=5.0,
        help="seconds between reconciliations of a rollout when nothing changes (gates run every "
        "spec.analysis.interval)",
    )
    run.set_defaults(handler=run_operator)


def run_operator(args: argparse.Namespace) -> int:
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    logging.getLogger("modelrollout").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        # kopf reports every successful handler call; the rollouts' own Events and logs say what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    handlers.Runtime.config = OperatorConfig(
        prometheus_url=args.prometheus_url, metrics_port=args.metrics_port, notify_secret=args.notify_secret
    )
    handlers.Runtime.tick_seconds = args.tick
    handlers.Runtime.namespaces = tuple(args.namespace)
    kopf.run(
        standalone=True,  # no peering objects: one replica with `strategy: Recreate`
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=None if args.liveness == "off" else args.liveness,
    )
    return 0
