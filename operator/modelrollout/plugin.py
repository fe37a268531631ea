"""`kubectl modelrollout`: see and act on ModelRollouts from a terminal.

    kubectl modelrollout list [-n NS | -A]
    kubectl modelrollout status NAME [-n NS] [--watch]
    kubectl modelrollout promote NAME [--full] | abort NAME | retry NAME | resume NAME  [--no-wait]

Actions never touch the spec (Git owns it): they set the annotation `modelrollout.io/action`, which the
operator consumes and records in status.lastAction. The plugin refuses an action that does not fit the
rollout's state, then waits (bounded) for the operator's result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import quote

import httpx
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from modelrollout import api, plugin_view, report
from modelrollout.kube import ACTION_ANNOTATION
from modelrollout.routing.istio import managed_route_indexes, split_view
from modelrollout.routing.router import RoutingProblem, backend_of

PROG = "kubectl modelrollout"
ISTIO_GROUP = "networking.istio.io"
POLL_SECONDS = 0.5
PATCH_ATTEMPTS = 10  # a rollout's status changes at every check; each attempt re-reads and re-checks


class PluginError(Exception):
    """A failure to report as `error: ...` with exit code 1."""


@dataclass
class Session:
    objects: Any  # client.CustomObjectsApi
    core: Any  # client.CoreV1Api
    namespace: str
    timeout: float
    out: Callable[[str], None]

    # ---- reads ----

    def get(self, name: str) -> dict[str, Any]:
        try:
            found: dict[str, Any] = self.objects.get_namespaced_custom_object(
                api.GROUP, api.VERSION, self.namespace, api.PLURAL, name, _request_timeout=self.timeout
            )
        except ApiException as error:
            if error.status == 404:
                raise PluginError(
                    f'{api.SINGULAR} "{name}" not found in namespace "{self.namespace}"'
                ) from None
            raise
        return found

    def list_rollouts(self, all_namespaces: bool) -> list[dict[str, Any]]:
        if all_namespaces:
            listed = self.objects.list_cluster_custom_object(
                api.GROUP, api.VERSION, api.PLURAL, _request_timeout=self.timeout
            )
        else:
            listed = self.objects.list_namespaced_custom_object(
                api.GROUP, api.VERSION, self.namespace, api.PLURAL, _request_timeout=self.timeout
            )
        items: list[dict[str, Any]] = listed.get("items") or []
        return items

    def events(self, obj: Mapping[str, Any]) -> list[plugin_view.EventRow]:
        meta = obj["metadata"]
        selector = f"involvedObject.kind={api.KIND},involvedObject.name={meta['name']}"
        if meta.get("uid"):  # not the Events of an earlier object of the same name
            selector += f",involvedObject.uid={meta['uid']}"
        listed = self.core.list_namespaced_event(
            meta["namespace"], field_selector=selector, _request_timeout=self.timeout
        )
        rows = []
        for event in listed.items:
            at = event.last_timestamp or event.event_time or event.first_timestamp
            at = at or event.metadata.creation_timestamp
            rows.append(
                (
                    at or datetime.min.replace(tzinfo=UTC),
                    int(event.metadata.resource_version or 0),
                    plugin_view.EventRow(
                        type=str(event.type or ""),
                        reason=str(event.reason or ""),
                        message=str(event.message or ""),
                        at=at,
                        count=int(event.count or 1),
                    ),
                )
            )
        # Event timestamps have one-second resolution; the resourceVersion orders Events of one second.
        rows.sort(key=lambda row: (row[0], row[1]))
        return [row[2] for row in rows]

    def live_traffic(self, obj: Mapping[str, Any]) -> plugin_view.LiveTraffic | None:
        """The canary weight the VirtualService shows now, read the way the operator reads it."""
        try:
            spec = api.parse_spec(obj.get("spec") or {})
        except ValueError:
            return None
        istio = spec.traffic_routing.istio
        namespace = istio.virtual_service.namespace or obj["metadata"]["namespace"]
        same = namespace == obj["metadata"]["namespace"]
        ref = istio.virtual_service.name if same else f"{namespace}/{istio.virtual_service.name}"
        version = istio.api_version.value.split("/")[1]
        try:
            vs: dict[str, Any] = self.objects.get_namespaced_custom_object(
                ISTIO_GROUP,
                version,
                namespace,
                "virtualservices",
                istio.virtual_service.name,
                _request_timeout=self.timeout,
            )
            indexes = managed_route_indexes(vs, istio.routes)
            view = split_view(vs, indexes, backend_of(spec.stable), backend_of(spec.canary))
        except ApiException as error:
            problem = "not found" if error.status == 404 else f"unreadable ({error.status} {error.reason})"
            return plugin_view.LiveTraffic(ref, problem=problem)
        except RoutingProblem as problem:
            return plugin_view.LiveTraffic(ref, problem=problem.message)
        return plugin_view.LiveTraffic(
            ref, canary_weight=view.canary_weight, consistent=view.consistent, mirror=view.mirror
        )

    # ---- writes ----

    def annotate(self, name: str, resource_version: str, value: str) -> None:
        """Set the action annotation, on the condition that the object is still the one checked."""
        body = {"metadata": {"resourceVersion": resource_version, "annotations": {ACTION_ANNOTATION: value}}}
        self.objects.patch_namespaced_custom_object(
            api.GROUP,
            api.VERSION,
            self.namespace,
            api.PLURAL,
            name,
            body,
            _request_timeout=self.timeout,
            _content_type="application/merge-patch+json",
        )


def _now() -> datetime:
    return datetime.now(UTC)


def _fail(message: str) -> NoReturn:
    raise PluginError(message)


# ---- commands ----


def cmd_list(session: Session, args: argparse.Namespace) -> int:
    all_namespaces = bool(getattr(args, "all_namespaces", False))
    items = session.list_rollouts(all_namespaces)
    if not items:
        where = "" if all_namespaces else f" in {session.namespace} namespace"
        print(f"No {api.PLURAL} found{where}.", file=sys.stderr)
        return 0
    session.out(plugin_view.render_list(items, _now(), all_namespaces=all_namespaces))
    return 0


def _screen(session: Session, obj: Mapping[str, Any]) -> str:
    events: list[plugin_view.EventRow] | None = None
    problem: str | None = None
    try:
        events = session.events(obj)
    except ApiException as error:  # RBAC may allow the rollout but not Events: show the rest
        problem = f"{error.status} {error.reason}"
    return plugin_view.render_status(
        obj, _now(), events=events, live=session.live_traffic(obj), events_problem=problem
    )


def cmd_status(session: Session, args: argparse.Namespace) -> int:
    if not args.watch:
        session.out(_screen(session, session.get(args.name)))
        return 0
    redraw = sys.stdout.isatty()
    while True:
        obj = session.get(args.name)
        stamp = _now().strftime("%Y-%m-%dT%H:%M:%SZ")
        frame = f"Every {args.interval:g}s: {PROG} status {args.name} -n {session.namespace}  {stamp}\n\n"
        frame += _screen(session, obj)
        if redraw:
            session.out("\x1b[H\x1b[2J" + frame)  # home and clear: the screen is drawn again in place
        else:
            session.out(frame + "-" * 40 + "\n")
        phase = (obj.get("status") or {}).get("phase")
        if phase in plugin_view.TERMINAL_PHASES:
            return 0
        time.sleep(args.interval)


def cmd_report(session: Session, args: argparse.Namespace) -> int:
    obj = session.get(args.name)
    samples = _judge_samples(args.judge_url, session.namespace, args.name) if args.judge_url else []
    session.out(report.render(obj, _now(), args.output, samples))
    return 0


def _judge_samples(base_url: str, namespace: str, name: str) -> list[Any]:
    """The sample pairs the judge service kept for this rollout (redacted there)."""
    url = f"{base_url.rstrip('/')}/v1/samples/{quote(namespace, safe='')}/{quote(name, safe='')}"
    try:
        response = httpx.get(url, timeout=10)
        response.raise_for_status()
        samples = response.json().get("samples")
    except (httpx.HTTPError, ValueError, AttributeError) as error:
        raise PluginError(f"could not read the judge's samples from {url}: {error}") from error
    return samples if isinstance(samples, list) else []


def _result(
    session: Session, name: str, action: str, before: Any, timeout: float
) -> tuple[str | None, dict[str, Any]]:
    """Wait until the operator consumed the annotation and recorded a new status.lastAction for it."""
    deadline = time.monotonic() + timeout
    while True:
        obj = session.get(name)
        pending = (obj["metadata"].get("annotations") or {}).get(ACTION_ANNOTATION)
        last = (obj.get("status") or {}).get("lastAction")
        if pending is None and last != before and isinstance(last, dict) and last.get("action") == action:
            return str(last.get("result") or ""), obj
        if time.monotonic() >= deadline:
            return None, obj
        time.sleep(POLL_SECONDS)


def cmd_action(session: Session, args: argparse.Namespace) -> int:
    action = plugin_view.ACTIONS["promote-full"] if getattr(args, "full", False) else args.action
    name = args.name
    for _ in range(PATCH_ATTEMPTS):
        obj = session.get(name)
        refusal = plugin_view.action_refusal(action, obj)
        if refusal:
            _fail(f'cannot {action} {api.SINGULAR} "{name}": {refusal}')
        pending = (obj["metadata"].get("annotations") or {}).get(ACTION_ANNOTATION)
        if pending is not None:
            _fail(
                f'{api.SINGULAR} "{name}" already has the action "{pending}" waiting for the operator; '
                f"wait for it, or remove it: kubectl annotate {api.SINGULAR} {name} -n {session.namespace} "
                f"{ACTION_ANNOTATION}-"
            )
        before = (obj.get("status") or {}).get("lastAction")
        try:
            session.annotate(name, obj["metadata"]["resourceVersion"], action)
            break
        except ApiException as error:
            if error.status != 409:  # 409: changed since read (a status write): read and check again
                raise
    else:
        _fail(f'{api.SINGULAR} "{name}" kept changing; {action} was not sent, try again')
    if args.no_wait:
        session.out(f"{api.SINGULAR}.{api.GROUP}/{name} annotated: {ACTION_ANNOTATION}={action}\n")
        return 0
    result, obj = _result(session, name, action, before, args.timeout)
    if result is None:
        pending = (obj["metadata"].get("annotations") or {}).get(ACTION_ANNOTATION)
        if pending == action:
            _fail(
                f"the operator has not taken {action} within {args.timeout:g}s (is it running?); the "
                f"annotation stays and is acted on when the operator runs, or remove it: kubectl annotate "
                f"{api.SINGULAR} {name} -n {session.namespace} {ACTION_ANNOTATION}-"
            )
        _fail(
            f"the operator took {action} but recorded no result within {args.timeout:g}s; "
            f"see: {PROG} status {name} -n {session.namespace}"
        )
    if result.startswith("ignored"):
        _fail(f'the operator ignored {action} on {api.SINGULAR} "{name}": {result}')
    phase = (obj.get("status") or {}).get("phase") or plugin_view.MISSING
    session.out(
        f'{api.SINGULAR} "{name}" {action}: {result} (phase {phase}, stage {plugin_view.progress(obj)})\n'
    )
    return 0


# ---- command line ----


def _connection_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: given before or after the command, an option is kept; absent, it does not clobber the other.
    parser.add_argument("--kubeconfig", default=argparse.SUPPRESS, help="path to the kubeconfig file")
    parser.add_argument("--context", default=argparse.SUPPRESS, help="kubeconfig context to use")
    parser.add_argument(
        "-n", "--namespace", default=argparse.SUPPRESS, help="namespace (default: the context's namespace)"
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=argparse.SUPPRESS,
        help="seconds to wait for each API request (default 10)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="See and act on ModelRollouts (modelrollout.io/v1alpha1).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="list rollouts: phase, stage, weight, last verdict, message")
    _connection_options(listing)
    listing.add_argument("-A", "--all-namespaces", action="store_true", help="list in every namespace")
    listing.set_defaults(handler=cmd_list)

    status = commands.add_parser("status", help="one rollout: stages, models, weight, gates, history")
    _connection_options(status)
    status.add_argument("name")
    status.add_argument("-w", "--watch", action="store_true", help="redraw until the phase is terminal")
    status.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    status.set_defaults(handler=cmd_status)

    decision = commands.add_parser(
        "report", help="the decision report: per stage, traffic, users, requests, control vs treatment"
    )
    _connection_options(decision)
    decision.add_argument("name")
    decision.add_argument("-o", "--output", choices=sorted(report.RENDERERS), default="table")
    decision.add_argument(
        "--judge-url",
        metavar="URL",
        help="the judge service (e.g. http://127.0.0.1:8090 through kubectl port-forward): adds its redacted "
        "sample pairs",
    )
    decision.set_defaults(handler=cmd_report)

    helps = {
        "promote": "advance one stage (--full: go to the last stage, still analysed)",
        "abort": "return all traffic to stable",
        "retry": "restart a rolled-back or aborted rollout from stage 1",
        "resume": "lift an Inconclusive, MetricsUnavailable or DriftLimit hold",
    }
    for action, text in helps.items():
        sub = commands.add_parser(action, help=text)
        _connection_options(sub)
        sub.add_argument("name")
        if action == "promote":
            sub.add_argument("--full", action="store_true", help="go straight to the last stage (100%%)")
        sub.add_argument("--no-wait", action="store_true", help="set the annotation and return")
        sub.add_argument(
            "--timeout", type=float, default=30.0, help="seconds to wait for the operator (default 30)"
        )
        sub.set_defaults(handler=cmd_action, action=action)
    return parser


def _context_namespace(kubeconfig: str | None, context: str | None) -> str:
    contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    if context and chosen is None:
        raise PluginError(f'context "{context}" not found in the kubeconfig')
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace or "default")


def connect(args: argparse.Namespace) -> Session:
    kubeconfig = getattr(args, "kubeconfig", None)
    context = getattr(args, "context", None)
    try:
        # The context first: it is checked (with a clear message) even when -n makes its namespace moot.
        namespace = _context_namespace(kubeconfig, context)
        namespace = getattr(args, "namespace", None) or namespace
        api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context
        )
    except (config.ConfigException, OSError) as error:
        raise PluginError(f"cannot load the kubeconfig: {error}") from None
    return Session(
        objects=client.CustomObjectsApi(api_client),
        core=client.CoreV1Api(api_client),
        namespace=namespace,
        timeout=float(getattr(args, "request_timeout", 10.0)),
        out=lambda text: print(text, end="", flush=True),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        session = connect(args)
        code: int = args.handler(session, args)
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ApiException as error:
        print(f"error: {_api_error(error)}", file=sys.stderr)
        return 1
    except HTTPError as error:  # unreachable API server, TLS trouble, timeouts
        print(f"error: cannot reach the API server: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return code


def _api_error(error: ApiException) -> str:
    """The API server's own message when it sent one (a Status object), else the HTTP status."""
    try:
        message = str(json.loads(error.body or "{}").get("message") or "")
    except (ValueError, AttributeError):
        message = ""
    return message or f"{error.status} {error.reason}"


if __name__ == "__main__":
    sys.exit(main())
