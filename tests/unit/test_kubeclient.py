"""The operator's own Kubernetes client: where credentials come from (ServiceAccount, kubeconfig files merged
as kubectl merges them, exec plugins, rotated tokens), the paths it builds, the API server's errors as it
reports them, and that the operator runs without the official `kubernetes` package installed. Requests and
watches against a real API server are covered by the integration tier (router, watch, Lease)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from modelrollout.kubeclient import (
    MERGE_PATCH,
    ApiError,
    ConfigError,
    Credentials,
    KubeClient,
    Kubeconfig,
    in_cluster_credentials,
    kubeconfig_paths,
    object_path,
)

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kubeconfig(
    tmp_path: Path,
    name: str,
    *,
    current: str | None,
    contexts: list[Any],
    clusters: list[Any],
    users: list[Any],
) -> Path:
    path = tmp_path / name
    body = {"apiVersion": "v1", "kind": "Config", "contexts": contexts, "clusters": clusters, "users": users}
    if current is not None:
        body["current-context"] = current
    path.write_text(yaml.safe_dump(body))
    return path


def ctx(name: str, cluster: str, user: str, namespace: str | None = None) -> dict[str, Any]:
    inner = {"cluster": cluster, "user": user} | ({"namespace": namespace} if namespace else {})
    return {"name": name, "context": inner}


@pytest.mark.parametrize(
    ("group", "version", "plural", "namespace", "name", "path"),
    [
        ("", "v1", "events", "llm", "", "/api/v1/namespaces/llm/events"),
        ("", "v1", "secrets", "llm", "keys", "/api/v1/namespaces/llm/secrets/keys"),
        (
            "networking.istio.io",
            "v1",
            "virtualservices",
            None,
            "",
            "/apis/networking.istio.io/v1/virtualservices",
        ),
        (
            "coordination.k8s.io",
            "v1",
            "leases",
            "ops",
            "lead",
            "/apis/coordination.k8s.io/v1/namespaces/ops/leases/lead",
        ),
    ],
)
def test_object_paths(
    group: str, version: str, plural: str, namespace: str | None, name: str, path: str
) -> None:
    assert object_path(group, version, plural, namespace, name) == path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            json.dumps({"kind": "Status", "message": 'leases "x" is forbidden', "code": 403}),
            'leases "x" is forbidden',
        ),
        ("", "Forbidden"),  # no body: the HTTP reason
        ("<html>proxy error</html>", "Forbidden"),  # not a Status object
        (json.dumps(["a list"]), "Forbidden"),
    ],
)
def test_an_api_error_speaks_with_the_api_servers_message(body: str, message: str) -> None:
    error = ApiError(403, "Forbidden", body)
    assert error.message == message
    assert str(error) == f"HTTP 403: {message}"


def test_kubeconfig_files_merge_as_kubectl_merges_them_and_relative_files_are_read_beside_their_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "ca.crt").write_text(CA)
    (tmp_path / "a" / "token").write_text("from-file\n")
    first = kubeconfig(
        tmp_path / "a",
        "config",
        current="dev",
        contexts=[ctx("dev", "local", "me", "team-a")],
        clusters=[
            {
                "name": "local",
                "cluster": {"server": "https://127.0.0.1:6443/", "certificate-authority": "ca.crt"},
            }
        ],
        users=[{"name": "me", "user": {"tokenFile": "token"}}],
    )
    second = kubeconfig(
        tmp_path,
        "other",
        current="prod",  # the first file's current context wins
        contexts=[ctx("dev", "elsewhere", "nobody"), ctx("prod", "remote", "admin")],
        clusters=[
            {"name": "local", "cluster": {"server": "https://shadowed.invalid"}},
            {"name": "remote", "cluster": {"server": "https://10.0.0.1", "insecure-skip-tls-verify": True}},
        ],
        users=[
            {
                "name": "admin",
                "user": {"client-certificate-data": b64("CERT"), "client-key-data": b64("KEY")},
            },
        ],
    )
    merged = Kubeconfig.load(kubeconfig_paths({"KUBECONFIG": f"{first}{os.pathsep}{second}"}))
    dev = merged.credentials()
    assert (dev.server, dev.ca_data, dev.token, dev.namespace) == (
        "https://127.0.0.1:6443",
        CA,
        "from-file",
        "team-a",
    )
    prod = merged.credentials("prod")
    assert (prod.server, prod.insecure, prod.certificate_pem, prod.key_pem, prod.token) == (
        "https://10.0.0.1",
        True,
        b"CERT",
        b"KEY",
        None,
    )
    assert prod.authorization(0.0) is None  # a client certificate: no header


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        ({"current": None}, "names no current context"),
        ({"contexts": [ctx("dev", "missing", "me")]}, "cluster 'missing' not found"),
        ({"users": [{"name": "me", "user": {"auth-provider": {"name": "gcp"}}}]}, "auth-provider"),
        ({"clusters": [{"name": "local", "cluster": {}}]}, "has no server"),
        (
            {"users": [{"name": "me", "user": {"client-key-data": "not base64!"}}]},
            "client-key-data is not base64",
        ),
    ],
)
def test_an_unusable_kubeconfig_says_what_is_wrong(tmp_path: Path, edit: dict[str, Any], error: str) -> None:
    given: dict[str, Any] = {
        "current": "dev",
        "contexts": [ctx("dev", "local", "me")],
        "clusters": [{"name": "local", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "me", "user": {"token": "t"}}],
    } | edit
    path = kubeconfig(tmp_path, "config", **given)
    with pytest.raises(ConfigError, match=error):
        Kubeconfig.load([path]).credentials()


def test_a_missing_kubeconfig_or_context_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no kubeconfig"):
        Kubeconfig.load([tmp_path / "absent"])
    path = kubeconfig(
        tmp_path,
        "config",
        current="dev",
        contexts=[ctx("dev", "local", "me")],
        clusters=[{"name": "local", "cluster": {"server": "https://x"}}],
        users=[],
    )
    with pytest.raises(ConfigError, match="context 'prod' not found"):
        Kubeconfig.load([path]).credentials("prod")


def test_basic_and_bearer_authorization(tmp_path: Path) -> None:
    assert Credentials(server="https://x", token="abc").authorization(0.0) == "Bearer abc"
    basic = Credentials(server="https://x", username="u", password="p").authorization(0.0)
    assert basic == f"Basic {b64('u:p')}"


def test_in_cluster_credentials_follow_the_rotated_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert in_cluster_credentials(tmp_path) is None  # not in a Pod
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert in_cluster_credentials(tmp_path) is None  # no token mounted
    (tmp_path / "token").write_text("first\n")
    (tmp_path / "ca.crt").write_text(CA)
    (tmp_path / "namespace").write_text("ops\n")
    found = in_cluster_credentials(tmp_path)
    assert found is not None
    assert (found.server, found.ca_data, found.namespace) == ("https://[fd00::1]:443", CA, "ops")
    assert found.authorization(0.0) == "Bearer first"
    (tmp_path / "token").write_text("second\n")
    os.utime(tmp_path / "token", (1e9, 1e9))  # the kubelet's rewrite: another modification time
    assert not found.renewal_due(30.0)
    assert found.authorization(30.0) == "Bearer first"  # looked at again after a minute only
    assert found.renewal_due(61.0)
    assert found.authorization(61.0) == "Bearer second"


def test_an_exec_plugin_is_run_and_run_again_before_its_credential_expires(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    plugin = tmp_path / "credential-plugin"
    plugin.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import json, os, sys
            with open({str(runs)!r}, "a") as f:
                info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
                f.write(os.environ["CLUSTER_NAME"] + " " + info["kind"] + "\\n")
            count = len(open({str(runs)!r}).read().splitlines())
            print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                "status": {{"token": f"token-{{count}}", "expirationTimestamp": "2026-12-05T10:00:00Z"}}}}))
            """
        )
    )
    plugin.chmod(0o755)
    credentials = Credentials(
        server="https://x",
        exec_config={"command": str(plugin), "args": [], "env": [{"name": "CLUSTER_NAME", "value": "prod"}]},
    )
    expiry = datetime(2026, 12, 5, 10, tzinfo=UTC).timestamp()
    assert credentials.renewal_due(expiry - 3600)  # no credential yet
    assert credentials.authorization(expiry - 3600) == "Bearer token-1"
    assert credentials.exec_expires == expiry
    assert not credentials.renewal_due(expiry - 31)
    assert credentials.authorization(expiry - 31) == "Bearer token-1"
    assert credentials.renewal_due(expiry - 29)  # within the margin: asked again
    assert credentials.authorization(expiry - 29) == "Bearer token-2"
    assert runs.read_text() == "prod ExecCredential\nprod ExecCredential\n"

    broken = Credentials(server="https://x", exec_config={"command": str(tmp_path / "absent")}, source="ctx")
    with pytest.raises(ConfigError, match=r"ctx: the exec credential plugin .*absent failed"):
        broken.authorization(0.0)


def test_the_operator_imports_and_builds_its_adapters_without_the_kubernetes_package() -> None:
    """kopf imports `kubernetes` whenever it is installed (about 9 MB of resident memory): the operator, its
    judge service and its kubectl plugin must need none of it, so the image does not install it."""
    probe = textwrap.dedent(
        """\
        import asyncio, sys
        sys.modules["kubernetes"] = None  # as if not installed: any import of it fails
        import modelrollout.cli, modelrollout.run, modelrollout.handlers, modelrollout.plugin
        import modelrollout.judge.command
        from modelrollout.config import OperatorConfig
        from modelrollout.kubeclient import Credentials, KubeClient
        from modelrollout.reconciler import Reconciler

        async def build():
            client = KubeClient(Credentials(server="https://127.0.0.1:9"))
            reconciler, kube = Reconciler.for_cluster(client, OperatorConfig())
            reconciler.close()
            await client.close()

        asyncio.run(build())
        print(sorted(m for m in sys.modules if m.split(".")[0] == "kubernetes" and sys.modules[m]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "kubernetes" not in done.stdout


def test_the_operators_distribution_does_not_depend_on_the_kubernetes_package() -> None:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    import tomllib  # noqa: PLC0415

    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    assert not [d for d in dependencies if d.split(">")[0].split("=")[0].strip() == "kubernetes"]


class FakeApiServer:
    """A few API server answers over real HTTP on loopback: what the client sends, and what it makes of the
    answers (a refused token, a Status error, a watch stream split mid-line, a bookmark, an expired
    version)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, str, str]] = []  # method, path+query, auth, content type, body
        self.valid_token = "fresh"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = (await request.read()).decode()
        self.seen.append(
            (
                request.method,
                request.path_qs,
                request.headers.get("Authorization", ""),
                request.headers.get("Content-Type", ""),
                body,
            )
        )
        if request.headers.get("Authorization") != f"Bearer {self.valid_token}":
            return web.json_response({"kind": "Status", "message": "Unauthorized", "code": 401}, status=401)
        if request.query.get("watch") == "true":
            return await self.stream(request)
        if request.path.endswith("/missing"):
            message = 'virtualservices.networking.istio.io "missing" not found'
            return web.json_response({"kind": "Status", "message": message, "code": 404}, status=404)
        return web.json_response({"echo": json.loads(body) if body else None})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        big = {
            "type": "ADDED",
            "object": {"metadata": {"name": "big", "resourceVersion": "5"}, "pad": "x" * 200_000},
        }
        lines = [
            json.dumps(big),
            json.dumps({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "6"}}}),
            json.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}),
        ]
        data = ("\n".join(lines) + "\n").encode()
        for start in range(0, len(data), 7_000):  # chunks that cut lines anywhere
            await response.write(data[start : start + 7_000])
        return response


async def _served(server: FakeApiServer) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def test_requests_send_json_and_a_refused_token_is_reloaded_once_then_the_request_is_made_again() -> None:
    async def scenario() -> None:
        server = FakeApiServer()
        runner, url = await _served(server)
        reloads: list[str] = []

        def reload() -> Credentials:
            reloads.append("reload")
            return Credentials(server=url, token="fresh")

        client = KubeClient(Credentials(server=url, token="expired"), user_agent="probe", refresh=reload)
        try:
            answer = await client.request(
                "PATCH", "/apis/g/v1/namespaces/n/things/a", body={"spec": {"x": 1}}, content_type=MERGE_PATCH
            )
            assert answer == {"echo": {"spec": {"x": 1}}}
            assert reloads == ["reload"]
            assert [(m, auth, ctype) for m, _, auth, ctype, _ in server.seen] == [
                ("PATCH", "Bearer expired", MERGE_PATCH),
                ("PATCH", "Bearer fresh", MERGE_PATCH),
            ]
            with pytest.raises(ApiError) as missing:
                await client.get("/apis/g/v1/namespaces/n/things/missing", params={"a": "b"})
            assert (missing.value.status, missing.value.message) == (
                404,
                'virtualservices.networking.istio.io "missing" not found',
            )
            assert server.seen[-1][1] == "/apis/g/v1/namespaces/n/things/missing?a=b"
            server.valid_token = "another"  # refused again after the reload: the 401 is the answer
            with pytest.raises(ApiError, match="HTTP 401: Unauthorized"):
                await client.get("/api/v1/namespaces/n/secrets/s")
            assert reloads == ["reload", "reload"]
        finally:
            await client.close()
            await runner.cleanup()

    asyncio.run(scenario())


def test_a_watch_reads_lines_larger_than_a_chunk_and_raises_an_expired_version_as_410() -> None:
    async def scenario() -> None:
        server = FakeApiServer()
        runner, url = await _served(server)
        client = KubeClient(Credentials(server=url, token="fresh"))
        events: list[tuple[str, str]] = []
        try:

            async def follow() -> None:
                async for event in client.watch(
                    "/apis/g/v1/things", resource_version="4", timeout_seconds=60
                ):
                    events.append((event["type"], event["object"]["metadata"]["resourceVersion"]))

            with pytest.raises(ApiError) as expired:
                await follow()
            assert events == [("ADDED", "5"), ("BOOKMARK", "6")]
            assert expired.value.status == 410
            query = set(server.seen[0][1].split("?")[1].split("&"))
            assert {"watch=true", "resourceVersion=4", "allowWatchBookmarks=true"} <= query
        finally:
            await client.close()
            await runner.cleanup()

    asyncio.run(scenario())
