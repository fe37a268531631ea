"""`modelrollout run`: start the operator (kopf) with its settings from the command line."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import uuid
from datetime import timedelta

import kopf

from modelrollout import handlers, memory
from modelrollout.config import OperatorConfig
from modelrollout.kubeclient import ConfigError, load_credentials
from modelrollout.leadership import LeaderElector, LeaseEndpoints, LeaseTiming
from modelrollout.shards import SHARD_LABEL, of_shard, shard_name_problem

DEFAULT_LEASE = "modelrollout-operator"


def _env_list(name: str) -> list[str]:
    return os.environ.get(name, "").split()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def _batch_max_age(text: str) -> float | None:
    return None if text == "off" else _seconds(text)


def _status_refresh(text: str) -> timedelta | None:
    value = _seconds(text)
    return timedelta(seconds=value) if value > 0 else None


def _per_second(text: str) -> float | None:
    if text == "off":
        return None
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of writes per second > 0, or 'off', got {text}")
    return value


def _shard(text: str) -> str:
    problem = shard_name_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


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
        "--shard",
        type=_shard,
        default=None,
        metavar="NAME",
        help=f"drive only the rollouts labelled {SHARD_LABEL}=NAME; without it, only those without that "
        "label. One operator (or set of replicas) per shard: each rollout is driven by the operator of its "
        "shard alone",
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
        "--batch-max-age",
        type=_batch_max_age,
        default=5.0,
        metavar="SECONDS",
        help="built-in gates ask one grouped query for every rollout (by destination service, model or "
        "rollout) and rollouts share its answer for up to SECONDS after it was asked, never across a stage "
        "start or an alert (default 5; 0: share only answers still coming; 'off': every rollout asks its "
        "own queries)",
    )
    run.add_argument(
        "--status-refresh",
        type=_status_refresh,
        default=timedelta(minutes=5),
        metavar="SECONDS",
        help="a check that changes nothing but numbers (its time and values, sequential counts) is written "
        "to status only once the last check written is this old; phase, stage, verdicts, conditions, holds "
        "and counters are written at once, and so is a check an alert asked for (default 300; 0: every "
        "check is written)",
    )
    run.add_argument(
        "--status-refreshes-per-second",
        type=_per_second,
        default=2.0,
        metavar="RATE",
        help="those refresh writes, for all rollouts together, at most RATE per second (a burst of ten "
        "seconds' worth after a quiet spell): a large fleet's numbers are refreshed less often, its idle "
        "write rate stays RATE; a refresh put off waits for a later check, nothing essential waits for it "
        "(default 2; 'off': no limit)",
    )
    run.add_argument(
        "--tick",
        type=float,
        default=5.0,
        help="seconds between reconciliations of a rollout when nothing changes (gates run every "
        "spec.analysis.interval)",
    )
    run.add_argument(
        "--alerts-port",
        type=int,
        default=0,
        metavar="PORT",
        help="serve an Alertmanager webhook receiver on PORT at /alerts: a firing alert that names a rollout "
        "(or its canary Service) makes it check its gates at once (default 0: off). With "
        "$MODELROLLOUT_ALERTS_TOKEN set, requests must carry `Authorization: Bearer <token>`",
    )
    run.add_argument(
        "--virtual-services",
        choices=["watch", "get"],
        default="watch",
        help="watch: VirtualServices come from a watch, an idle tick costs the API server nothing and a "
        "change wakes the rollouts that claim it; get: every tick reads them (default watch)",
    )
    run.add_argument(
        "--leader-elect",
        action="store_true",
        help="run as one of several replicas: reconcile only while holding a coordination.k8s.io Lease, "
        "stand by otherwise (the chart turns it on)",
    )
    run.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE", "default"),
        metavar="NS",
        help="namespace of the Lease (default $POD_NAMESPACE, else default)",
    )
    run.add_argument(
        "--leader-election-id",
        default=None,
        metavar="NAME",
        help=f"the Lease's name (default {DEFAULT_LEASE}, with --shard {DEFAULT_LEASE}-NAME)",
    )
    run.add_argument(
        "--lease-duration", type=float, default=15.0, metavar="SECONDS", help="how long a Lease holds (15)"
    )
    run.add_argument(
        "--renew-deadline",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a leader that could not renew for this long stops (10; below --lease-duration)",
    )
    run.add_argument(
        "--retry-period", type=float, default=2.0, metavar="SECONDS", help="between renewals and attempts (2)"
    )
    run.add_argument(
        "--max-concurrent-reconciles",
        type=_positive,
        default=128,
        metavar="N",
        help="rollouts reconciling at once; the others wait for a slot, those woken by an alert, an action, "
        "a spec edit or a VirtualService change first. Bounds memory when every rollout wakes together "
        "(the start, a re-list) (default 128)",
    )
    run.add_argument(
        "--return-memory-every",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="give memory freed after a burst (the start, a re-list) back to the system this often, on "
        "glibc; 0 turns it off (default 60)",
    )
    run.add_argument(
        "--gc-freeze-every",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="collect every cyclic garbage this often, then leave the objects still alive out of the "
        "collector's walks until the next time (shorter pauses of the event loop); the first time after "
        "30 s, each next one after twice as long, up to SECONDS; 0 turns it off (default 600)",
    )
    run.add_argument(
        "--log-reconciles-over",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="log each reconciliation that takes this long, with where its time went (the check's queries, "
        "status and VirtualService writes, reads, Events, the event loop); 0 turns it off (default 5)",
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
        watch_virtual_services=args.virtual_services == "watch",
        batch_max_age=args.batch_max_age,
        status_refresh=args.status_refresh,
        status_refreshes_per_second=args.status_refreshes_per_second,
        cluster_wide=not args.namespace,
        return_memory_seconds=args.return_memory_every or None,
        gc_freeze_seconds=args.gc_freeze_every or None,
        max_concurrent_reconciles=args.max_concurrent_reconciles,
        slow_reconcile_seconds=args.log_reconciles_over or None,
    )


def run_operator(args: argparse.Namespace) -> int:
    memory.limit_arenas()  # before any thread: each would otherwise get a heap of its own
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
    handlers.Runtime.shard = args.shard
    handlers.Runtime.alerts_port = args.alerts_port
    handlers.Runtime.alerts_token = os.environ.get("MODELROLLOUT_ALERTS_TOKEN") or None
    # Who this replica is, in the Lease and in the API server's audit log (the user agent of its requests).
    identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    handlers.Runtime.identity = identity
    elector = None
    if args.leader_elect:
        try:
            timing = LeaseTiming(args.lease_duration, args.renew_deadline, args.retry_period)
        except ValueError as error:
            raise SystemExit(f"modelrollout run: {error}") from None
        try:
            credentials = load_credentials()
        except ConfigError as error:
            raise SystemExit(f"modelrollout run: {error}") from None
        # Its own loop and connections: renewals never queue behind ticks.
        agent = handlers.user_agent(identity)
        leases = LeaseEndpoints(credentials, user_agent=agent, refresh=load_credentials)
        elector = LeaderElector(
            leases,
            namespace=args.leader_election_namespace,
            name=args.leader_election_id or of_shard(DEFAULT_LEASE, args.shard),
            identity=identity,
            timing=timing,
        )
        if not elector.acquire():
            return 1
        handlers.Runtime.leading = elector.leading
        handlers.Runtime.elected = True
        elector.keep_renewing()
    kopf.run(
        # No kopf peering: one replica, or several with a Lease deciding which one runs.
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=None if args.liveness == "off" else args.liveness,
    )
    if elector is None:
        return 0
    lost = not elector.leading()
    elector.stop(release=not lost)
    leases.close()
    return 1 if lost else 0
