"""The simulator's HTTP face: `/metrics` for Prometheus and a small JSON control API.

    GET  /metrics                 Prometheus text: istio_requests_total, istio_request_duration_milliseconds,
                                  llm_tokens_total, and vLLM's request families by model_name (see `metrics`)
    GET  /healthz                 "ok"
    GET  /stats                   requests per destination / status / route, mirror copies: since start and
                                  since the last reset; load requests sent and failed (an exception)
    GET  /stats/users             answers per user id and destination (only the answering one, never a mirror;
                                  requests without a user id are not kept): {"since_start": {user: {dest:
                                  n}}, "since_reset": ...}; a load flow's users are its user_header's values,
                                  a /request's its x-user-id
    POST /stats/reset             start a new "since_reset" window
    GET  /backends                every backend's settings, by namespace/host
    GET  /backends/{ns}/{host}    one backend's settings
    PUT  /backends/{ns}/{host}    change some of: error_rate, latency_median_ms, latency_p99_ms, tokens_in,
                                  tokens_out, error_code, ttft_median_ms, ttft_p99_ms, itl_ms,
                                  truncation_rate, tokens_out_jitter (numbers), model_name (a string; null:
                                  the host's name); answers the new settings
    GET  /load                    the running flows
    POST /load                    {"host", "rps", "headers"?, "users"?, "user_header"?, "path"?,
                                  "source_workload"?, "source_namespace"?, "bucket_header"?,
                                  "experiment_id"?}: replace the flow of that host (rps 0 ends it); with
                                  bucket_header and experiment_id (strings, both or neither) each request
                                  also carries its user's sticky bucket; answers the running flows
    POST /request                 {"host", "headers"?, "path"? (or "uri"), "method"?, "port"?,
                                  "source_workload"?, "source_namespace"?}: route one request now and answer
                                  its outcome (status, latency_ms, tokens, ttft_ms, finished_reason,
                                  model_name, destination, route, the headers and authority the
                                  destination received, user_id, mirrors with their authority)
    GET  /virtualservices         namespace, name and resourceVersion of the VirtualServices in force

Errors are JSON `{"error": "..."}` with 400 (bad input), 404 (no such path) or 405 (wrong method).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST

from modelrollout_dev.sim.load import USER_HEADER, Flow
from modelrollout_dev.sim.routing import Request

if TYPE_CHECKING:
    from modelrollout_dev.sim.simulator import Simulator

MAX_BODY_BYTES = 1 << 20
_LOAD_FIELDS = frozenset(
    {
        "host",
        "rps",
        "headers",
        "users",
        "user_header",
        "path",
        "source_workload",
        "source_namespace",
        "bucket_header",
        "experiment_id",
    }
)
_REQUEST_FIELDS = frozenset(
    {"host", "headers", "path", "uri", "method", "port", "source_workload", "source_namespace"}
)


class BadRequest(ValueError):
    pass


class ControlServer:
    def __init__(self, simulator: Simulator, bind: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = simulator
        handler = type("Handler", (_Handler,), {"simulator": simulator})
        self._server = ThreadingHTTPServer((bind, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="sim-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    simulator: Simulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # Prometheus scrapes every second; access logs would drown everything else

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        parts = [unquote(part) for part in path.strip("/").split("/")]
        try:
            if path == "/metrics":
                self._expect(method, "GET")
                self._send(200, self.simulator.metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._expect(method, "GET")
                self._send(200, b"ok\n", "text/plain; charset=utf-8")
            elif path == "/stats":
                self._expect(method, "GET")
                self._json(200, self._stats())
            elif path == "/stats/users":
                self._expect(method, "GET")
                self._json(200, self.simulator.stats.users())
            elif path == "/stats/reset":
                self._expect(method, "POST")
                self.simulator.stats.reset()
                self._json(200, self._stats())
            elif path == "/backends":
                self._expect(method, "GET")
                backends = self.simulator.backends.snapshot()
                self._json(200, {key: settings.as_dict() for key, settings in backends.items()})
            elif len(parts) == 3 and parts[0] == "backends":
                self._backend(method, namespace=parts[1], host=parts[2])
            elif path == "/load":
                self._expect(method, "GET", "POST")
                if method == "POST":
                    self._set_load(self._body())
                self._json(200, {"flows": [flow.as_dict() for flow in self.simulator.load.flows()]})
            elif path == "/request":
                self._expect(method, "POST")
                self._json(200, self._route(self._body()))
            elif path == "/virtualservices":
                self._expect(method, "GET")
                self._json(200, {"items": [_summary(vs) for vs in self.simulator.virtual_services()]})
            else:
                self._json(404, {"error": f"no such path {path}"})
        except _WrongMethod as wrong:
            self._json(405, {"error": f"{method} not allowed on {path}; use {', '.join(wrong.allowed)}"})
        except (BadRequest, ValueError, TypeError) as bad:
            self._json(400, {"error": str(bad)})

    def _stats(self) -> dict[str, Any]:
        load = self.simulator.load
        return {**self.simulator.stats.snapshot(), "load": {"sent": load.sent, "failed": load.failed}}

    def _backend(self, method: str, namespace: str, host: str) -> None:
        self._expect(method, "GET", "PUT")
        backend = self.simulator.backends.get(host, namespace)
        settings = backend.update(**self._body()) if method == "PUT" else backend.settings
        self._json(200, {"namespace": namespace, "host": host, "settings": settings.as_dict()})

    def _set_load(self, body: dict[str, Any]) -> None:
        _only(body, _LOAD_FIELDS, "load")
        host, rps = body.get("host"), body.get("rps")
        if not isinstance(host, str) or isinstance(rps, bool) or not isinstance(rps, int | float):
            raise BadRequest('load needs "host" (a string) and "rps" (a number)')
        flow = Flow(
            host=host,
            rps=float(rps),
            headers=_headers(body.get("headers")),
            users=_integer(body, "users", 100),
            user_header=str(body.get("user_header", USER_HEADER)),
            path=str(body.get("path", "/v1/chat/completions")),
            source_workload=str(body.get("source_workload", "loadgen")),
            source_namespace=str(body.get("source_namespace") or self.simulator.source_namespace),
            bucket_header=_optional_string(body, "bucket_header"),
            experiment_id=_optional_string(body, "experiment_id"),
        )
        self.simulator.load.set_flow(flow)

    def _route(self, body: dict[str, Any]) -> dict[str, Any]:
        _only(body, _REQUEST_FIELDS, "request")
        host = body.get("host")
        if not isinstance(host, str) or not host:
            raise BadRequest('a request needs "host" (a string)')
        if "path" in body and "uri" in body:
            raise BadRequest('give "path" or "uri", not both')
        port = body.get("port")
        request = Request(
            host=host,
            path=str(body.get("path", body.get("uri", "/v1/chat/completions"))),
            headers=_headers(body.get("headers")),
            method=str(body.get("method", "POST")),
            port=_integer(body, "port", 0) if port is not None else None,
            source_namespace=str(body.get("source_namespace") or self.simulator.source_namespace),
        )
        outcome = self.simulator.handle(
            request, source_workload=str(body.get("source_workload", "client")), user_header=USER_HEADER
        )
        return outcome.as_dict()

    # ---- plumbing ----

    def _expect(self, method: str, *allowed: str) -> None:
        if method not in allowed:
            raise _WrongMethod(allowed)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise BadRequest(f"body larger than {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as bad:
            raise BadRequest(f"body is not JSON: {bad}") from None
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        return body

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode() + b"\n", "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _WrongMethod(Exception):
    def __init__(self, allowed: tuple[str, ...]) -> None:
        super().__init__(allowed)
        self.allowed = allowed


def _only(body: dict[str, Any], known: frozenset[str], what: str) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"unknown {what} field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BadRequest('"headers" must be an object of strings')
    return {str(name): text for name, text in value.items()}


def _optional_string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f'"{name}" must be a string, got {value!r}')
    return value


def _integer(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f'"{name}" must be an integer, got {value!r}')
    return value


def _summary(vs: Any) -> dict[str, Any]:
    metadata = vs.get("metadata") or {}
    return {
        "namespace": metadata.get("namespace"),
        "name": metadata.get("name"),
        "resourceVersion": metadata.get("resourceVersion"),
    }
