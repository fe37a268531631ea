"""The chart's RBAC is enough and every piece of it counts: `modelrollout run` as a process, authenticated
with a bound token of the chart's ServiceAccount and authorized by exactly the ClusterRole the chart renders,
against the real API server and Prometheus. A healthy rollout (with a manual gate, a human action and
Prometheus credentials from a Secret) promotes, a breach rolls back, and the API server never denies the
operator anything. With `update` on VirtualServices taken away, traffic does not move and the operator
says why, in the API server's words. And each verb the chart grants is needed: without it, a freshly
started operator is refused it while driving an ordinary rollout."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client
from test_prometheus_provider import FakePrometheus

from install_support import CHART, run_helm
from modelrollout_dev.devenv.environment import EnvironmentState
from modelrollout_dev.devenv.netutil import free_port
from modelrollout_dev.devenv.prometheus import PrometheusServer
from modelrollout_dev.sim.istio_exporter import IstioTrafficExporter
from scenario_support import CANARY, RPS, Kubectl, Rollout, prepared_rollout, wait_for

SECRET = "prometheus-auth"
TOKEN = "t0k3n-0f-the-pl4tform-team"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("modelrollout_crd"),
    pytest.mark.timeout(900),  # a cold helm build comes first
]


@dataclass
class Installed:
    """The chart's ServiceAccount and cluster RBAC, applied, and a kubeconfig holding a token of that
    ServiceAccount."""

    namespace: str
    release: str
    service_account: str
    cluster_role: dict[str, Any]
    kubeconfig: Path

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


@pytest.fixture(scope="module")
def installed(
    helm: Path,
    kubectl: Kubectl,
    api_client: client.ApiClient,
    env_state: EnvironmentState,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Installed]:
    suffix = uuid.uuid4().hex[:6]
    namespace = f"operator-{suffix}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    # A release name of its own: the ClusterRole and its binding are cluster-wide and outlive the namespace.
    rendered = run_helm(
        helm,
        "template",
        f"lp-{suffix}",
        str(CHART),
        "--namespace",
        namespace,
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/rbac.yaml",
        # The one Secret the tests' rollouts name; the operator may read no other.
        "--set",
        f"rbac.prometheusSecrets={{{SECRET}}}",
    )
    assert rendered.returncode == 0, rendered.stderr
    objects = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    assert sorted(o["kind"] for o in objects) == ["ClusterRole", "ClusterRoleBinding", "ServiceAccount"]
    applied = kubectl("apply", "-f", "-", input=rendered.stdout)
    assert applied.returncode == 0, applied.stderr

    account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    token = kubectl("-n", namespace, "create", "token", account, "--duration=1h")
    assert token.returncode == 0, token.stderr
    with open(env_state.kubeconfig) as admin_file:
        cluster = yaml.safe_load(admin_file)["clusters"][0]
    kubeconfig = tmp_path_factory.mktemp("operator-sa") / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": account, "user": {"token": token.stdout.strip()}}],
                "contexts": [{"name": account, "context": {"cluster": cluster["name"], "user": account}}],
                "current-context": account,
            }
        )
    )
    yield Installed(
        namespace=namespace,
        release=f"lp-{suffix}",
        service_account=account,
        cluster_role=next(o for o in objects if o["kind"] == "ClusterRole"),
        kubeconfig=kubeconfig,
    )
    kubectl("delete", "--ignore-not-found", "-f", "-", input=rendered.stdout)
    core.delete_namespace(namespace)


class TokenOperator:
    """`modelrollout run` with a kubeconfig of its own (scenario_support.OperatorProcess takes the admin's),
    serving kopf's liveness endpoint as the chart's probes expect it. Each start logs to a new file."""

    def __init__(
        self, kubeconfig: Path, prometheus_url: str, log_dir: Path, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.kubeconfig = kubeconfig
        self.extra_args = extra_args
        self.prometheus_url = prometheus_url
        self.log_dir = log_dir
        self.health_url = f"http://127.0.0.1:{free_port()}/healthz"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self, *, wait: bool = True) -> None:
        """Start afresh; with `wait`, until kopf's /healthz answers (with leader election: until it leads)."""
        self.starts += 1
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "modelrollout.cli",
                    "run",
                    "--liveness",
                    self.health_url,
                    "--tick",
                    "0.5",
                    "--prometheus-url",
                    self.prometheus_url,
                    "--metrics-port",  # none: the default port may be taken on a shared machine
                    "0",
                    *self.extra_args,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            wait_for("the operator's /healthz", self.healthy, timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()

    def healthy(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"the operator exited:\n{self.log()[-3000:]}"
        try:
            return httpx.get(self.health_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        """This start's log, with the JSON escaping of the API server's messages (quoted inside exception
        texts) undone."""
        return self.log_path.read_text(errors="replace").replace('\\"', '"')

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def operator_as_service_account(
    installed: Installed, prometheus: PrometheusServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TokenOperator]:
    operator = TokenOperator(installed.kubeconfig, prometheus.url, tmp_path_factory.mktemp("operator-log"))
    operator.start()
    yield operator
    operator.stop()


@pytest.fixture
def rollout(
    api_client: client.ApiClient,
    kubectl: Kubectl,
    namespace: str,
    exporter: IstioTrafficExporter,
    operator_as_service_account: TokenOperator,
) -> Iterator[Rollout]:
    with prepared_rollout(api_client, kubectl, namespace, exporter) as subject:
        yield subject


def denials(operator: TokenOperator, installed: Installed) -> list[str]:
    """The API server's RBAC refusals of this ServiceAccount, as the operator logged them."""
    return [line for line in operator.log().splitlines() if f'User "{installed.user}" cannot' in line]


def test_a_healthy_rollout_promotes_with_exactly_the_charts_rbac(
    rollout: Rollout,
    installed: Installed,
    operator_as_service_account: TokenOperator,
    prometheus: PrometheusServer,
) -> None:
    # Prometheus credentials from a Secret (Prometheus here ignores them): the rule on Secrets is exercised.
    rollout.core.create_namespaced_secret(
        rollout.namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="prometheus-auth"),
            data={"token": base64.b64encode(b"not-checked").decode()},
        ),
    )
    rollout.create(
        stages=[{"weight": 10, "duration": "1s", "approval": "Manual"}, {"weight": 100}],
        prometheus={"address": prometheus.url, "secretRef": {"name": "prometheus-auth"}},
    )
    rollout.wait_status("awaiting approval", lambda s: s.get("reason") == "AwaitingApproval")
    assert rollout.weights() == (90, 10)
    rollout.act("promote")  # the operator removes the annotation: patch on modelrollouts
    status = rollout.wait_phase("Promoted", timeout=30)

    assert rollout.weights() == (0, 100)
    assert status["lastAnalysis"]["verdict"] == "Pass"
    assert status["lastAction"]["action"] == "promote"
    metadata = rollout.get()["metadata"]
    assert "modelrollout.io/finalizer" in metadata["finalizers"]  # kopf's patch
    assert "modelrollout.io/action" not in (metadata.get("annotations") or {})
    rollout.wait_reasons("RolloutStarted", "AwaitingApproval", "StageAdvanced", "Promoted")
    assert denials(operator_as_service_account, installed) == []


def test_an_error_rate_breach_rolls_back_with_exactly_the_charts_rbac(
    rollout: Rollout,
    exporter: IstioTrafficExporter,
    installed: Installed,
    operator_as_service_account: TokenOperator,
) -> None:
    rollout.create(
        stages=[{"weight": 10, "duration": "2s"}, {"weight": 50, "duration": "60s"}, {"weight": 100}]
    )
    rollout.wait_status("stage 2", lambda s: s.get("stage") == 1)
    assert rollout.weights() == (50, 50)
    exporter.set_traffic(CANARY, rollout.namespace, rps=RPS, error_ratio=0.3, latency_ms=200)
    status = rollout.wait_phase("RolledBack", timeout=30)

    assert rollout.weights() == (100, 0)
    assert status["rollback"]["gate"] == "error-rate"
    rollout.wait_reasons("RolledBack")
    assert any(t == "Warning" and r == "RolledBack" for t, r, _ in rollout.events())
    assert denials(operator_as_service_account, installed) == []


def test_a_secret_the_chart_was_not_told_about_is_refused(
    rollout: Rollout,
    installed: Installed,
    operator_as_service_account: TokenOperator,
    prometheus: PrometheusServer,
) -> None:
    """The chart grants `get` on the Secrets it names, not on Secrets: another one in the same namespace is
    refused by the API server, and the rollout says so."""
    rollout.core.create_namespaced_secret(
        rollout.namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="someone-elses"), data={"token": b64(TOKEN)}),
    )
    rollout.create(
        stages=[{"weight": 10, "duration": "60s"}, {"weight": 100}],
        prometheus={"address": prometheus.url, "secretRef": {"name": "someone-elses"}},
    )
    refused = (
        f'secrets "someone-elses" is forbidden: User "{installed.user}" cannot get resource "secrets" in API '
        f'group "" in the namespace "{rollout.namespace}"'
    )
    wait_for("the refusal in the rollout's status", lambda: refused in status_texts(rollout))


def test_credentials_are_not_sent_to_an_address_the_operator_does_not_allow(
    rollout: Rollout, operator_as_service_account: TokenOperator, prometheus: PrometheusServer
) -> None:
    """Whoever may write a rollout chooses its Prometheus address, not where the platform team's token goes:
    the operator sends a Secret's credentials only to its own --prometheus-url, an allowed address, or the
    address the Secret names. Refused, the rollout says why; the credential shows up nowhere."""
    listener = FakePrometheus(delay=0.0)
    try:
        rollout.core.create_namespaced_secret(
            rollout.namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=SECRET),
                data={"token": b64(TOKEN), "address": b64(prometheus.url)},
            ),
        )
        rollout.create(
            stages=[{"weight": 10, "duration": "60s"}, {"weight": 100}],
            prometheus={"address": listener.url, "secretRef": {"name": SECRET}},
        )
        refusal = f"the credentials of Secret {SECRET} are not sent to {listener.url}"
        status = rollout.wait_status(
            "a MetricsUnavailable condition naming the refusal",
            lambda s: any(
                c["type"] == "MetricsUnavailable" and c["status"] == "True" and refusal in c["message"]
                for c in s.get("conditions", [])
            ),
        )
        assert f"belongs to {prometheus.url}" in status_texts(rollout)
        time.sleep(2)  # more checks, all refused before anything is sent
        assert listener.requests == []
        assert TOKEN not in json.dumps(status)
        assert all(TOKEN not in message for _, _, message in rollout.events())
        assert TOKEN not in operator_as_service_account.log()
        assert refusal in operator_as_service_account.log()  # logged once, for the operator's owner
    finally:
        listener.close()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def status_texts(rollout: Rollout) -> str:
    status = rollout.status()
    texts = [status.get("message") or ""] + [c.get("message", "") for c in status.get("conditions", [])]
    return "\n".join(texts).replace('\\"', '"')


def without(role: dict[str, Any], group: str, resource: str, verb: str) -> dict[str, Any]:
    """The ClusterRole less one verb on one resource."""
    rules = []
    for rule in role["rules"]:
        kept = rule
        if rule["apiGroups"] == [group] and rule["resources"] == [resource] and verb in rule["verbs"]:
            kept = {**rule, "verbs": [v for v in rule["verbs"] if v != verb]}
        if kept["verbs"]:
            rules.append(kept)
    assert rules != role["rules"]
    return {**role, "rules": rules}


@contextmanager
def applied_role(kubectl: Kubectl, weakened: dict[str, Any], role: dict[str, Any]) -> Iterator[None]:
    """`weakened` in force for the block; the chart's role back afterwards, whatever happens."""
    replaced = kubectl("apply", "-f", "-", input=yaml.safe_dump(weakened))
    assert replaced.returncode == 0, replaced.stderr
    try:
        yield
    finally:
        restored = kubectl("apply", "-f", "-", input=yaml.safe_dump(role))
        assert restored.returncode == 0, restored.stderr


def test_without_update_on_virtual_services_traffic_stays_and_the_operator_says_why(
    rollout: Rollout,
    kubectl: Kubectl,
    installed: Installed,
    operator_as_service_account: TokenOperator,
) -> None:
    role = installed.cluster_role
    with applied_role(kubectl, without(role, "networking.istio.io", "virtualservices", "update"), role):
        refused = (
            f'User "{installed.user}" cannot update resource "virtualservices" in API group '
            f'"networking.istio.io" in the namespace "{rollout.namespace}"'
        )
        rollout.create(stages=[{"weight": 10, "duration": "60s"}, {"weight": 100}])

        # The API server's own refusal, naming the verb, the resource and the namespace, is in the log.
        wait_for("the refusal in the operator's log", lambda: refused in operator_as_service_account.log())
        # ... and on the rollout, as a Warning Event and a Degraded condition, in the API server's words.
        failures = wait_for(
            "a WriteFailed Event",
            lambda: [m for t, r, m in rollout.events() if t == "Warning" and r == "WriteFailed"],
        )
        assert failures[0].startswith("could not set the canary weight to 10%: HTTP 403: ")
        assert refused in failures[0]
        degraded = rollout.wait_status(
            "a WriteFailed condition",
            lambda s: any(
                c["type"] == "Degraded" and c["reason"] == "WriteFailed" for c in s.get("conditions", [])
            ),
        )
        assert refused in next(c["message"] for c in degraded["conditions"] if c["type"] == "Degraded")

        time.sleep(2)  # several ticks: every one is refused, none moves traffic
        assert rollout.weights() == (100, 0)
        assert (rollout.status().get("canaryWeight") or 0) == 0  # no claim of traffic it did not move
    # With the rule back, the next tick moves traffic: the failure left nothing in a bad state.
    wait_for("stage 1 weights", lambda: rollout.weights() == (90, 10), timeout=15)


def test_a_refused_write_mid_rollout_is_not_reported_as_progress(
    rollout: Rollout, kubectl: Kubectl, installed: Installed, operator_as_service_account: TokenOperator
) -> None:
    rollout.create(
        stages=[{"weight": 10, "duration": "2s"}, {"weight": 50, "duration": "2s"}, {"weight": 100}]
    )
    wait_for("stage 1 weights", lambda: rollout.weights() == (90, 10))
    role = installed.cluster_role
    with applied_role(kubectl, without(role, "networking.istio.io", "virtualservices", "update"), role):
        time.sleep(8)  # past both soaks: every advance since is refused by the API server
        status = rollout.status()
        assert rollout.weights() == (90, 10)
        assert (status.get("canaryWeight"), status.get("phase")) == (10, "Progressing"), status.get("message")


def test_leader_election_needs_exactly_the_lease_role_the_chart_renders(
    helm: Path,
    kubectl: Kubectl,
    api_client: client.ApiClient,
    installed: Installed,
    prometheus: PrometheusServer,
    tmp_path: Path,
) -> None:
    """With leader election on, the chart adds a Role on the one Lease: with it the operator leads and is
    never refused; without any one of its verbs, it is refused that verb and stands by, never leading."""
    rendered = run_helm(
        helm, "template", installed.release, str(CHART), "--namespace", installed.namespace,
        "--show-only", "templates/rbac.yaml", "--set", "replicas=2",
        "--set", f"rbac.prometheusSecrets={{{SECRET}}}",
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    election = [
        o
        for o in yaml.safe_load_all(rendered.stdout)
        if o and o["metadata"]["name"].endswith("-leader-election")
    ]
    assert sorted(o["kind"] for o in election) == ["Role", "RoleBinding"]
    role = next(o for o in election if o["kind"] == "Role")
    applied = kubectl("apply", "-f", "-", input=yaml.safe_dump_all(election))
    assert applied.returncode == 0, applied.stderr
    lease = installed.service_account  # the chart names the Lease after the release, as its ServiceAccount
    leases = client.CoordinationV1Api(api_client)
    elect = (
        "--leader-elect",
        "--leader-election-namespace",
        installed.namespace,
        "--leader-election-id",
        lease,
    )
    timing = ("--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5")
    operator = TokenOperator(
        installed.kubeconfig, prometheus.url, tmp_path, ("--namespace", installed.namespace, *elect, *timing)
    )
    try:
        operator.start()  # healthy once it leads
        held = leases.read_namespaced_lease(lease, installed.namespace).spec
        assert held.holder_identity
        assert held.holder_identity in operator.log() or "leading: Lease" in operator.log()
        operator.stop()  # a clean stop releases the Lease
        assert not leases.read_namespaced_lease(lease, installed.namespace).spec.holder_identity
        assert denials(operator, installed) == []
        for verb in ("get", "update", "create", "watch"):
            if verb == "create":
                leases.delete_namespaced_lease(lease, installed.namespace)
            if verb == "watch":  # only a standby watches the Lease: another replica holds it
                other = {"holderIdentity": "another-replica", "leaseDurationSeconds": 3600}
                leases.create_namespaced_lease(
                    installed.namespace,
                    {"metadata": {"name": lease}, "spec": other},  # type: ignore[arg-type]
                )
            with applied_role(kubectl, without(role, "coordination.k8s.io", "leases", verb), role):
                operator.start(wait=False)
                refused = f'User "{installed.user}" cannot {verb} resource "leases"'
                wait_for(
                    f"the refusal of {verb} on leases in the operator's log",
                    lambda refused=refused: refused in operator.log(),  # type: ignore[misc]
                )
                assert not operator.healthy()  # standing by: kopf never started
                operator.stop()
    finally:
        operator.stop()
        kubectl("delete", "--ignore-not-found", "-f", "-", input=yaml.safe_dump_all(election))


# Every verb the chart grants, with where its refusal shows: the operator's log (kopf's requests and the
# operator's own API calls), or the rollout's status (a refused Secret read is a gate error, reported there).
NEEDED = [
    ("modelrollout.io", "modelrollouts", "get", "log"),
    ("modelrollout.io", "modelrollouts", "list", "log"),
    ("modelrollout.io", "modelrollouts", "watch", "log"),
    ("modelrollout.io", "modelrollouts", "patch", "log"),
    ("modelrollout.io", "modelrollouts/status", "patch", "log"),
    ("networking.istio.io", "virtualservices", "get", "log"),
    ("networking.istio.io", "virtualservices", "list", "log"),
    ("networking.istio.io", "virtualservices", "watch", "log"),
    ("networking.istio.io", "virtualservices", "update", "log"),
    ("", "events", "create", "log"),
    ("", "secrets", "get", "status"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list", "log"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch", "log"),
]


def test_the_needed_list_is_every_verb_the_chart_grants(installed: Installed) -> None:
    granted = {
        (group, resource, verb)
        for rule in installed.cluster_role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {(group, resource, verb) for group, resource, verb, _ in NEEDED}


@pytest.mark.parametrize(
    ("group", "resource", "verb", "shown_in"), NEEDED, ids=[f"{v}-{r}" for _, r, v, _ in NEEDED]
)
def test_every_granted_verb_is_needed(
    rollout: Rollout,
    kubectl: Kubectl,
    installed: Installed,
    operator_as_service_account: TokenOperator,
    prometheus: PrometheusServer,
    group: str,
    resource: str,
    verb: str,
    shown_in: str,
) -> None:
    """Without the verb, an operator started afresh (kopf lists and watches at start) is refused it while
    it drives an ordinary rollout. A verb nobody asks for any more fails here: take it out of the chart."""
    role = installed.cluster_role
    refused = f'User "{installed.user}" cannot {verb} resource "{resource}" in API group "{group}"'
    with applied_role(kubectl, without(role, group, resource, verb), role):
        operator_as_service_account.restart()
        rollout.core.create_namespaced_secret(
            rollout.namespace,
            client.V1Secret(metadata=client.V1ObjectMeta(name=SECRET), data={"token": b64("not-checked")}),
        )
        if (resource, verb) == ("modelrollouts", "get"):
            # A claim on the route by a rollout that may be gone: the operator reads whether it still exists.
            claim = '{"primary":"%s/deleted-long-ago"}' % rollout.namespace  # noqa: UP031 - JSON braces
            rollout.objects.patch_namespaced_custom_object(
                "networking.istio.io", "v1", rollout.namespace, "virtualservices", "llm",
                {"metadata": {"annotations": {"modelrollout.io/managed-by": claim}}},
            )  # fmt: skip
        rollout.create(
            stages=[{"weight": 10, "duration": "1s", "approval": "Manual"}, {"weight": 100}],
            prometheus={"address": prometheus.url, "secretRef": {"name": SECRET}},
        )

        def shown() -> bool:
            if shown_in == "log":
                return refused in operator_as_service_account.log()
            texts = [rollout.status().get("message") or ""]
            texts += [c.get("message", "") for c in rollout.status().get("conditions", [])]
            return any(refused in text.replace('\\"', '"') for text in texts)

        wait_for(f"the refusal of {verb} on {resource} in the operator's {shown_in}", shown, timeout=30)
    # The operator keeps running as it was started, without the verb: these cases come last in the module,
    # and each one starts it afresh.
