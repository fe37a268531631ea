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
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import aiohttp
import httpx

from modelrollout import api, plugin_view, report
from modelrollout.kube import ACTION_ANNOTATION
from modelrollout.kubeclient import (
    EXEC_TIMEOUT_SECONDS,
    MERGE_PATCH,
    ApiError,
    ConfigError,
    KubeClient,
    Kubeconfig,
    LoopThread,
    kubeconfig_paths,
    object_path,
)
from modelrollout.routing.istio import managed_route_indexes, split_view
from modelrollout.routing.router import RoutingProblem, backend_of

PROG = "kubectl modelrollout"
ISTIO_GROUP = "networking.istio.io"
POLL_SECONDS = 0.5
PATCH_ATTEMPTS = 10  # a rollout's status changes at every check; each attempt re-reads and re-checks


class PluginError(Exception):
    """A failure to report as `error: ...` with exit code 1."""


class Kube:
    """The API server, synchronously: each request of the async KubeClient runs on this plugin's own event
    loop thread and the caller waits for its answer: the JSON, ApiError for an error status, PluginError
    when there is no answer (unreachable, TLS trouble, timeout) or the credentials cannot be renewed."""

    def __init__(self, kube_client: KubeClient, timeout: float) -> None:
        self.client = kube_client
        self.timeout = timeout
        self._loop = LoopThread("kubectl-modelrollout")

    def request(self, method: str, path: str, **options: Any) -> Any:
        """KubeClient.request's options (params, body, content_type), with this session's timeout."""
        work = self.client.request(method, path, timeout=self.timeout, **options)
        try:
            # aiohttp bounds the request itself; this bound is for what comes before it (the TLS context,
            # an exec credential renewed on the way).
            return self._loop.run(work, self.timeout + EXEC_TIMEOUT_SECONDS)
        except ConfigError as error:  # an exec credential renewed on the way failed
            raise PluginError(f"cannot load the kubeconfig: {error}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise PluginError(f"cannot reach the API server: {self._unreachable(error)}") from None

    def _unreachable(self, error: Exception) -> str:
        """What went wrong on the way to the API server; a timeout says little by itself."""
        text = str(error)
        if isinstance(error, TimeoutError) and not text:
            return f"no answer within {self.timeout:g}s"
        return text or type(error).__name__

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def close(self) -> None:
        """Close the client's connections on its loop, then stop the loop and its thread."""
        self._loop.stop(self.client.close())


def _path(group: str, version: str, plural: str, namespace: str | None = None, name: str = "") -> str:
    """object_path with the names as typed quoted: a name is one path segment, whatever it holds."""
    where = quote(namespace, safe="") if namespace else None
    return object_path(group, version, plural, where, quote(name, safe=""))


def _timestamp(value: Any) -> datetime | None:
    """An RFC 3339 timestamp of the API (`...Z`, or a MicroTime with microseconds), in UTC when it names no
    zone; None when there is none."""
    moment = plugin_view.parse_time(value)
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _resource_version(meta: Mapping[str, Any]) -> int:
    version = str(meta.get("resourceVersion") or "")
    return int(version) if version.isdigit() else 0


@dataclass
class Session:
    kube: Kube
    namespace: str
    out: Callable[[str], None]

    def close(self) -> None:
        self.kube.close()

    # ---- reads ----

    def get(self, name: str) -> dict[str, Any]:
        try:
            found: dict[str, Any] = self.kube.get(
                _path(api.GROUP, api.VERSION, api.PLURAL, self.namespace, name)
            )
        except ApiError as error:
            if error.status == 404:
                raise PluginError(
                    f'{api.SINGULAR} "{name}" not found in namespace "{self.namespace}"'
                ) from None
            raise
        return found

    def list_rollouts(self, all_namespaces: bool) -> list[dict[str, Any]]:
        namespace = None if all_namespaces else self.namespace
        listed = self.kube.get(_path(api.GROUP, api.VERSION, api.PLURAL, namespace))
        items: list[dict[str, Any]] = listed.get("items") or []
        return items

    def events(self, obj: Mapping[str, Any]) -> list[plugin_view.EventRow]:
        meta = obj["metadata"]
        selector = f"involvedObject.kind={api.KIND},involvedObject.name={meta['name']}"
        if meta.get("uid"):  # not the Events of an earlier object of the same name
            selector += f",involvedObject.uid={meta['uid']}"
        listed = self.kube.get(_path("", "v1", "events", meta["namespace"]), {"fieldSelector": selector})
        rows = []
        for event in (listed or {}).get("items") or []:
            event_meta = event.get("metadata") or {}
            at = (
                _timestamp(event.get("lastTimestamp"))
                or _timestamp(event.get("eventTime"))
                or _timestamp(event.get("firstTimestamp"))
                or _timestamp(event_meta.get("creationTimestamp"))
            )
            rows.append(
                (
                    at or datetime.min.replace(tzinfo=UTC),
                    _resource_version(event_meta),
                    plugin_view.EventRow(
                        type=str(event.get("type") or ""),
                        reason=str(event.get("reason") or ""),
                        message=str(event.get("message") or ""),
                        at=at,
                        count=int(event.get("count") or 1),
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
            vs: dict[str, Any] = self.kube.get(
                _path(ISTIO_GROUP, version, "virtualservices", namespace, istio.virtual_service.name)
            )
            indexes = managed_route_indexes(vs, istio.routes)
            view = split_view(vs, indexes, backend_of(spec.stable), backend_of(spec.canary))
        except ApiError as error:
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
        self.kube.request(
            "PATCH",
            _path(api.GROUP, api.VERSION, api.PLURAL, self.namespace, name),
            body=body,
            content_type=MERGE_PATCH,
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
    except ApiError as error:  # RBAC may allow the rollout but not Events: show the rest
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
        except ApiError as error:
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


def connect(args: argparse.Namespace) -> Session:
    kubeconfig = getattr(args, "kubeconfig", None)
    context = getattr(args, "context", None)
    timeout = float(getattr(args, "request_timeout", 10.0))
    try:
        loaded = Kubeconfig.load([Path(kubeconfig)] if kubeconfig else kubeconfig_paths())
        # The context first: it is checked (with a clear message) even when -n makes its namespace moot.
        if context and context not in loaded.contexts:
            raise PluginError(f'context "{context}" not found in the kubeconfig')
        credentials = loaded.credentials(context)
        if credentials.exec_config is not None:  # a failing credential plugin is a kubeconfig error, now
            credentials.run_exec()
    except (ConfigError, OSError) as error:
        raise PluginError(f"cannot load the kubeconfig: {error}") from None
    namespace = getattr(args, "namespace", None) or credentials.namespace or "default"
    kube_client = KubeClient(credentials, user_agent="kubectl-modelrollout", request_timeout=timeout)
    return Session(
        kube=Kube(kube_client, timeout),
        namespace=str(namespace),
        out=lambda text: print(text, end="", flush=True),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    session: Session | None = None
    try:
        session = connect(args)
        code: int = args.handler(session, args)
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ApiError as error:
        print(f"error: {_api_error(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    finally:
        if session is not None:
            session.close()
    return code


def _api_error(error: ApiError) -> str:
    """The API server's own message when it sent one (a Status object), else the HTTP status."""
    return error.status_message or f"{error.status} {error.reason}"


if __name__ == "__main__":
    sys.exit(main())
