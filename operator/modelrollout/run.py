"""`modelrollout run`: start the operator (kopf) with its settings from the command line."""

from __future__ import annotations

import argparse
import logging
import os

import kopf

from modelrollout import handlers
from modelrollout.config import OperatorConfig


def _env_list(name: str) -> list[str]:
    return os.environ.get(name, "").split()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
        "--prometheus-credentials-allow",
        action="append",
        default=_env_list("MODELROLLOUT_PROMETHEUS_CREDENTIALS_ALLOW"),
        metavar="URL",
        help="a Prometheus address that credentials from a rollout's secretRef may be sent to (repeatable; "
        "default the space-separated $MODELROLLOUT_PROMETHEUS_CREDENTIALS_ALLOW). --prometheus-url and the "
        "address a Secret names in its `address` key are allowed too; credentials go nowhere else",
    )
    run.add_argument(
        "--prometheus-workers",
        type=_positive,
        default=16,
        metavar="N",
        help="threads that run Prometheus queries, shared by all rollouts in turn (default 16)",
    )
    run.add_argument(
        "--prometheus-queries-per-rollout",
        type=_positive,
        default=4,
        metavar="N",
        help="most queries one rollout runs at once (default 4)",
    )
    run.add_argument(
        "--tick",
        type=float,
        default=5.0,
        help="seconds between reconciliations of a rollout when nothing changes (gates run every "
        "spec.analysis.interval)",
    )
    run.set_defaults(handler=run_operator)


def config_from_args(args: argparse.Namespace) -> OperatorConfig:
    return OperatorConfig(
        prometheus_url=args.prometheus_url,
        metrics_port=args.metrics_port,
        notify_secret=args.notify_secret,
        prometheus_workers=args.prometheus_workers,
        prometheus_queries_per_rollout=args.prometheus_queries_per_rollout,
        prometheus_credentials_allow=tuple(args.prometheus_credentials_allow),
    )


def run_operator(args: argparse.Namespace) -> int:
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    logging.getLogger("modelrollout").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        # kopf reports every successful handler call; the rollouts' own Events and logs say what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    handlers.Runtime.config = config_from_args(args)
    handlers.Runtime.tick_seconds = args.tick
    handlers.Runtime.namespaces = tuple(args.namespace)
    kopf.run(
        standalone=True,  # no peering objects: one replica with `strategy: Recreate`
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=None if args.liveness == "off" else args.liveness,
    )
    return 0
