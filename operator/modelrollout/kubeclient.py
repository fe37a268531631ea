"""The operator's own small async client of the Kubernetes API: JSON over HTTPS with aiohttp (kopf's HTTP
stack), credentials from the Pod's ServiceAccount or a kubeconfig.

Why not the official `kubernetes` package: it is synchronous (every call took a worker thread, and the
threads shared one queue with everything else run off the loop), and importing it costs about 9 MB of
resident memory in the operator (its generated models; measured with and without it next to kopf, aiohttp,
httpx and pydantic), which kopf imports whenever the package is installed. The operator needs a handful of
verbs on a handful of paths, and watches: this module is those, with the API server's errors as ApiError.

Credentials: a ServiceAccount token is read again when its file changes (the kubelet rotates bound tokens); a
kubeconfig's `exec` credential plugin is run again when its credential expires; any 401 reloads the
credentials once and retries the request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = "~/.kube/config"
# Bound ServiceAccount tokens are refreshed by the kubelet well before they expire; a minute between looks
# at the file is what client-go does.
TOKEN_FILE_RECHECK_SECONDS = 60.0
# An exec credential is asked again this long before the expiry it states.
EXEC_EXPIRY_MARGIN_SECONDS = 30.0
EXEC_TIMEOUT_SECONDS = 60.0
# Requests in flight at once per client (watches apart). Each TLS connection and the work waiting on its
# answer hold memory, and too few slow the start of a large fleet. Measured with the benchmark: at 1,000
# rollouts 64 connections left the operator at 192 MB (peak 242 MB), 8 at 142 MB (peak 175 MB); at 5,000,
# 64: 404 MB, every rollout reconciled once after 267 s; 8: 287-293 MB, 371-373 s; 16: 279 MB (peak
# 305 MB), 297 s. The wait for a connection counts in no timeout.
REQUEST_CONNECTIONS = 16

T = TypeVar("T")


class ConfigError(Exception):
    """No usable credentials: no ServiceAccount, no kubeconfig, or one this client cannot use."""


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        self.status = status
        self.reason = reason
        self.body = body
        super().__init__(f"HTTP {status}: {self.message}")

    @property
    def status_message(self) -> str | None:
        """The API server's own message (a Status object's `message`), when it sent one."""
        try:
            parsed = json.loads(self.body or "{}")
        except ValueError:
            return None
        message = parsed.get("message") if isinstance(parsed, dict) else None
        return str(message) if message else None

    @property
    def message(self) -> str:
        """The API server's own message, else the HTTP reason."""
        return self.status_message or self.reason


@dataclass
class Credentials:
    """Where the API server is and how to prove who we are."""

    server: str
    ca_data: str | None = None  # PEM
    insecure: bool = False
    token: str | None = None
    token_file: Path | None = None
    certificate_pem: bytes | None = None
    key_pem: bytes | None = None
    username: str | None = None
    password: str | None = None
    exec_config: Mapping[str, Any] | None = None
    exec_expires: float | None = None  # loop-independent wall clock (time.time) of the exec credential
    namespace: str | None = None
    source: str = ""  # "in-cluster" or the kubeconfig path and context, for messages
    _token_read_at: float = field(default=0.0, repr=False)
    _token_mtime: float = field(default=0.0, repr=False)

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        context = (
            ssl.create_default_context(cadata=self.ca_data) if self.ca_data else ssl.create_default_context()
        )
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.certificate_pem and self.key_pem:
            # The ssl module loads a client certificate from files only: written for the load, then removed.
            with tempfile.TemporaryDirectory(prefix="modelrollout-") as folder:
                cert, key = Path(folder) / "client.crt", Path(folder) / "client.key"
                cert.write_bytes(self.certificate_pem)
                key.touch(mode=0o600)
                key.write_bytes(self.key_pem)
                context.load_cert_chain(cert, key)
        return context

    def renewal_due(self, now: float) -> bool:
        """Whether `authorization` would read the token file or run the exec plugin now."""
        if self.token_file is not None and now - self._token_read_at >= TOKEN_FILE_RECHECK_SECONDS:
            return True
        return self.exec_config is not None and (
            self.token is None
            or (self.exec_expires is not None and now >= self.exec_expires - EXEC_EXPIRY_MARGIN_SECONDS)
        )

    def authorization(self, now: float) -> str | None:
        """The Authorization header's value now, reading a rotated token file or renewing an exec credential
        when it is due (blocking: a file read or a process; called off the loop when it may be)."""
        if self.token_file is not None and now - self._token_read_at >= TOKEN_FILE_RECHECK_SECONDS:
            self.refresh_token_file(now)
        if self.exec_config is not None and (
            self.token is None
            or (self.exec_expires is not None and now >= self.exec_expires - EXEC_EXPIRY_MARGIN_SECONDS)
        ):
            self.run_exec()
        if self.token:
            return f"Bearer {self.token}"
        if self.username is not None:
            basic = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
            return f"Basic {basic}"
        return None

    def refresh_token_file(self, now: float) -> None:
        if self.token_file is None:
            return
        self._token_read_at = now
        mtime = self.token_file.stat().st_mtime
        if mtime != self._token_mtime or self.token is None:
            self.token = self.token_file.read_text().strip()
            self._token_mtime = mtime

    def run_exec(self) -> None:
        """Run the kubeconfig's credential plugin (client.authentication.k8s.io ExecCredential)."""
        if self.exec_config is None:
            return
        command = [str(self.exec_config["command"]), *(str(a) for a in self.exec_config.get("args") or ())]
        env = {**os.environ}
        for item in self.exec_config.get("env") or ():
            env[str(item["name"])] = str(item["value"])
        api_version = str(self.exec_config.get("apiVersion", "client.authentication.k8s.io/v1"))
        env["KUBERNETES_EXEC_INFO"] = json.dumps(
            {"apiVersion": api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
        )
        try:
            done = subprocess.run(
                command, env=env, capture_output=True, check=True, timeout=EXEC_TIMEOUT_SECONDS, text=True
            )
            status = json.loads(done.stdout)["status"]
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(
                f"{self.source}: the exec credential plugin {command[0]} failed: {error}"
            ) from error
        self.token = status.get("token")
        if status.get("clientCertificateData") and status.get("clientKeyData"):
            self.certificate_pem = str(status["clientCertificateData"]).encode()
            self.key_pem = str(status["clientKeyData"]).encode()
        expires = status.get("expirationTimestamp")
        self.exec_expires = (
            datetime.fromisoformat(str(expires).replace("Z", "+00:00")).timestamp() if expires else None
        )


def in_cluster_credentials(folder: Path = SERVICE_ACCOUNT_DIR) -> Credentials | None:
    """The Pod's ServiceAccount, when running in a Pod; None elsewhere."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    token_file = folder / "token"
    if not host or not port or not token_file.exists():
        return None
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    namespace_file = folder / "namespace"
    credentials = Credentials(
        server=f"https://{host}:{port}",
        ca_data=(folder / "ca.crt").read_text(),
        token_file=token_file,
        namespace=namespace_file.read_text().strip() if namespace_file.exists() else None,
        source="in-cluster ServiceAccount",
    )
    credentials.refresh_token_file(0.0)
    return credentials


def _pem(entry: Mapping[str, Any], key: str, base: Path, what: str) -> bytes | None:
    """`key-data` (base64) or `key` (a file, relative to the kubeconfig's folder) of a kubeconfig entry."""
    data = entry.get(f"{key}-data")
    if data:
        try:
            return base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError) as error:
            raise ConfigError(f"{what}: {key}-data is not base64") from error
    path = entry.get(key)
    if path:
        return (base / os.path.expanduser(str(path))).read_bytes()
    return None


def kubeconfig_paths(env: Mapping[str, str] | None = None) -> list[Path]:
    """$KUBECONFIG's files (os.pathsep-separated) or ~/.kube/config."""
    value = (env if env is not None else os.environ).get("KUBECONFIG") or DEFAULT_KUBECONFIG
    return [Path(os.path.expanduser(p)) for p in value.split(os.pathsep) if p.strip()]


@dataclass(frozen=True)
class Kubeconfig:
    """The merged kubeconfig files: for each name, the first file that defines it wins (as kubectl)."""

    current_context: str | None
    contexts: Mapping[str, tuple[Mapping[str, Any], Path]]
    clusters: Mapping[str, tuple[Mapping[str, Any], Path]]
    users: Mapping[str, tuple[Mapping[str, Any], Path]]

    @classmethod
    def load(cls, paths: list[Path]) -> Kubeconfig:
        current: str | None = None
        sections: dict[str, dict[str, tuple[Mapping[str, Any], Path]]] = {
            "contexts": {},
            "clusters": {},
            "users": {},
        }
        found = False
        for path in paths:
            if not path.exists():
                continue
            found = True
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError) as error:
                raise ConfigError(f"kubeconfig {path} unreadable: {error}") from error
            if not isinstance(loaded, dict):
                raise ConfigError(f"kubeconfig {path} is not a mapping")
            current = current or loaded.get("current-context") or None
            for section, inner in (("contexts", "context"), ("clusters", "cluster"), ("users", "user")):
                for item in loaded.get(section) or ():
                    if isinstance(item, dict) and "name" in item:
                        sections[section].setdefault(str(item["name"]), (item.get(inner) or {}, path.parent))
        if not found:
            raise ConfigError(f"no kubeconfig at {os.pathsep.join(str(p) for p in paths)}")
        return cls(current, sections["contexts"], sections["clusters"], sections["users"])

    def credentials(self, context: str | None = None) -> Credentials:
        name = context or self.current_context
        if not name:
            raise ConfigError("the kubeconfig names no current context")
        if name not in self.contexts:
            raise ConfigError(f"kubeconfig context {name!r} not found")
        ctx, _ = self.contexts[name]
        cluster_name, user_name = str(ctx.get("cluster", "")), str(ctx.get("user", ""))
        if cluster_name not in self.clusters:
            raise ConfigError(f"kubeconfig context {name!r}: cluster {cluster_name!r} not found")
        cluster, cluster_dir = self.clusters[cluster_name]
        user, user_dir = self.users.get(user_name, ({}, Path(".")))
        what = f"kubeconfig context {name!r}"
        if user.get("auth-provider"):
            raise ConfigError(f"{what}: auth-provider credentials are not supported; use an exec plugin")
        ca = _pem(cluster, "certificate-authority", cluster_dir, what)
        token = user.get("token")
        if not token and user.get("tokenFile"):
            token = (user_dir / str(user["tokenFile"])).read_text().strip()
        credentials = Credentials(
            server=str(cluster.get("server", "")).rstrip("/"),
            ca_data=ca.decode() if ca else None,
            insecure=bool(cluster.get("insecure-skip-tls-verify")),
            token=str(token) if token else None,
            certificate_pem=_pem(user, "client-certificate", user_dir, what),
            key_pem=_pem(user, "client-key", user_dir, what),
            username=user.get("username"),
            password=user.get("password"),
            exec_config=user.get("exec"),
            namespace=ctx.get("namespace"),
            source=what,
        )
        if not credentials.server:
            raise ConfigError(f"{what}: cluster {cluster_name!r} has no server")
        return credentials


def load_credentials(context: str | None = None) -> Credentials:
    """In a Pod, its ServiceAccount; elsewhere, the kubeconfig ($KUBECONFIG or ~/.kube/config), its
    current context unless `context` is given. Blocking (files, maybe an exec plugin)."""
    if context is None:
        found = in_cluster_credentials()
        if found is not None:
            return found
    credentials = Kubeconfig.load(kubeconfig_paths()).credentials(context)
    if credentials.exec_config is not None:
        credentials.run_exec()
    return credentials


def object_path(group: str, version: str, plural: str, namespace: str | None = None, name: str = "") -> str:
    """The REST path of a resource collection or object: /api/v1/... for the core group."""
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    where = f"/namespaces/{namespace}" if namespace else ""
    return f"{prefix}{where}/{plural}" + (f"/{name}" if name else "")


JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


class KubeClient:
    """Requests to one API server, with aiohttp sessions for the event loop that uses it (the operator has
    one loop; a session made on another loop is not used on this one)."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        user_agent: str = "modelrollout",
        request_timeout: float = 10.0,
        connections: int = REQUEST_CONNECTIONS,
        refresh: Callable[[], Credentials] | None = None,
    ) -> None:
        self.credentials = credentials
        self.user_agent = user_agent
        self.request_timeout = request_timeout
        self._connections = connections
        self._refresh = refresh
        self._session: aiohttp.ClientSession | None = None
        self._watch_session: aiohttp.ClientSession | None = None
        self._loops: dict[bool, asyncio.AbstractEventLoop] = {}
        self._ssl: ssl.SSLContext | bool | None = None
        self._auth_lock = asyncio.Lock()

    def _open(self, *, streaming: bool = False) -> aiohttp.ClientSession:
        """The session for requests (at most `connections` at once), or the one for watches: a watch holds
        its connection for minutes, so watches have their own, unbounded, and never take a request's."""
        session = self._watch_session if streaming else self._session
        loop = asyncio.get_running_loop()
        # A session belongs to the loop it was made on: a caller on another loop (a test's asyncio.run per
        # step) gets a new one.
        if session is None or session.closed or self._loops.get(streaming) is not loop:
            self._loops[streaming] = loop
            if self._ssl is None:  # no await from the check to the new session: no two sessions made
                self._ssl = self.credentials.ssl_context()
            connector = aiohttp.TCPConnector(
                ssl=self._ssl, limit=0 if streaming else self._connections, limit_per_host=0
            )
            session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": self.user_agent, "Accept": JSON},
            )
            if streaming:
                self._watch_session = session
            else:
                self._session = session
        return session

    async def close(self) -> None:
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()
        self._session = self._watch_session = None

    async def _headers(self, content_type: str | None) -> dict[str, str]:
        now = time.time()
        credentials = self.credentials
        if credentials.renewal_due(now):  # a file read or a process: off the loop, one at a time
            async with self._auth_lock:
                authorization = await asyncio.to_thread(credentials.authorization, now)
        else:
            authorization = credentials.authorization(now)
        headers = {}
        if authorization:
            headers["Authorization"] = authorization
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def _reload(self) -> None:
        """After a 401: the credentials again (a rotated token, a renewed certificate)."""
        async with self._auth_lock:
            if self._refresh is not None:
                fresh = await asyncio.to_thread(self._refresh)
                changed_tls = (fresh.certificate_pem, fresh.key_pem, fresh.ca_data) != (
                    self.credentials.certificate_pem,
                    self.credentials.key_pem,
                    self.credentials.ca_data,
                )
                self.credentials = fresh
                if changed_tls:
                    self._ssl = None
                    await self.close()
            elif self.credentials.token_file is not None:
                await asyncio.to_thread(self.credentials.refresh_token_file, time.time())
            elif self.credentials.exec_config is not None:
                await asyncio.to_thread(self.credentials.run_exec)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-request limit handed to aiohttp
    ) -> Any:
        """One request; the answer's JSON. ApiError for an error status; aiohttp's and asyncio's errors
        (TimeoutError) for no answer."""
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            content_type = content_type or JSON
        limit = timeout or self.request_timeout
        for attempt in (1, 2):
            session = self._open()
            headers = await self._headers(content_type)
            async with session.request(
                method,
                self.credentials.server + path,  # the server may carry a path of its own (a proxy's)
                params=params,
                data=data,
                headers=headers,
                # Per connect and per read, as a socket timeout: the wait for one of the client's connections
                # (all busy under load) is not the API server's slowness and does not count.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=limit, sock_read=limit),
            ) as response:
                payload = await response.read()
                if response.status == 401 and attempt == 1:
                    await self._reload()
                    continue
                if response.status >= 400:
                    raise ApiError(response.status, response.reason or "", payload.decode(errors="replace"))
                return json.loads(payload) if payload else None
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, path: str, **options: Any) -> Any:
        return await self.request("GET", path, **options)

    async def watch(
        self,
        path: str,
        *,
        resource_version: str | None = None,
        params: Mapping[str, str] | None = None,
        timeout_seconds: int = 300,
        connect_timeout: float | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The watch events ({"type", "object"}) of a collection from `resource_version`, until the server
        ends the watch (after `timeout_seconds`). An ERROR event is raised as ApiError with its code (410:
        the version is too old, list again)."""
        query = {**(params or {}), "watch": "true", "timeoutSeconds": str(timeout_seconds)}
        query["allowWatchBookmarks"] = "true"
        if resource_version:
            query["resourceVersion"] = resource_version
        session = self._open(streaming=True)
        headers = await self._headers(None)
        limit = connect_timeout or self.request_timeout
        async with session.get(
            self.credentials.server + path,
            params=query,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=limit, sock_read=timeout_seconds + 30),
        ) as response:
            if response.status >= 400:
                payload = await response.read()
                if response.status == 401:
                    await self._reload()
                raise ApiError(response.status, response.reason or "", payload.decode(errors="replace"))
            pending = b""
            # Lines split by hand: aiohttp's readline refuses lines over its buffer size, and an object can
            # be larger than that.
            async for chunk in response.content.iter_any():
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise ApiError(
                            int(status.get("code") or 500), str(status.get("reason") or ""), line.decode()
                        )
                    yield event


class LoopThread:
    """An event loop of its own in a daemon thread, for synchronous callers (the leader election's renewals,
    which must not queue behind the operator's loop, and the kubectl plugin)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, work: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(work, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def submit(self, work: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.loop))

    def stop(self, cleanup: Awaitable[Any] | None = None) -> None:
        """Cancel what still runs on the loop (a watch), then `cleanup` (closing a client), then end the
        thread and close the loop."""
        if self.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_wound_down(cleanup), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


async def _wound_down(cleanup: Awaitable[Any] | None) -> None:
    running = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    if cleanup is not None:
        await cleanup


__all__ = [
    "APPLY_PATCH",
    "JSON_PATCH",
    "MERGE_PATCH",
    "ApiError",
    "ConfigError",
    "Credentials",
    "KubeClient",
    "Kubeconfig",
    "LoopThread",
    "load_credentials",
    "object_path",
]
