"""Faults at the edges, on the real control plane and Prometheus: the API server refusing the rollback's
VirtualService write (a ValidatingAdmissionPolicy standing in for a refusing Istio webhook), the operator
killed between the rollback's VirtualService write and its status write (status writes refused by such a
policy), kube-apiserver restarted mid-rollout, and a rollout deleted while its driver ticks, again and
again."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from modelrollout import api
from modelrollout_dev.devenv.environment import DevEnvironment
from modelrollout_dev.devenv.prometheus import PrometheusServer
from modelrollout_dev.sim.istio_exporter import IstioTrafficExporter
from scenario_support import CANARY, RPS, STABLE, Kubectl, Rollout, prepared_rollout, wait_for

pytestmark = pytest.mark.usefixtures("modelrollout_crd")


class WebhookReceiver:
    """A notification receiver on loopback: every JSON body posted to it, in order."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.received = received
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def events(self) -> list[str]:
        return [str(body.get("event")) for body in self.received]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    serving = WebhookReceiver()
    yield serving
    serving.close()


@pytest.fixture
def rollout(
    api_client: client.ApiClient, kubectl: Kubectl, namespace: str, exporter: IstioTrafficExporter
) -> Iterator[Rollout]:
    with prepared_rollout(api_client, kubectl, namespace, exporter) as subject:
        yield subject


def freeze_updates(kubectl: Kubectl, namespace: str, api_group: str, resource: str) -> str:
    """A ValidatingAdmissionPolicy that refuses every update of `resource` (e.g. `virtualservices`, or a
    subresource as `modelrollouts/status`) in `namespace`; returns the binding's name (deleting it lifts the
    freeze)."""
    name = f"freeze-{resource.replace('/', '-')}-{namespace}"[:63]
    manifests = [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [api_group],
                            "apiVersions": ["*"],
                            "operations": ["UPDATE"],
                            "resources": [resource],
                        }
                    ]
                },
                "validations": [{"expression": "false", "message": f"{resource} are frozen by policy"}],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                },
            },
        },
    ]
    applied = kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
    assert applied.returncode == 0, applied.stderr
    return name


def lift(kubectl: Kubectl, binding: str) -> None:
    lifted = kubectl(
        "delete", f"validatingadmissionpolicybinding/{binding}", f"validatingadmissionpolicy/{binding}"
    )
    assert lifted.returncode == 0, lifted.stderr


def update_refused(kubectl: Kubectl, namespace: str) -> bool:
    """Whether the API server refuses an update of the VirtualService now (a server-side dry run goes
    through admission without changing anything)."""
    tried = kubectl(
        "-n", namespace, "annotate", "--dry-run=server", "--overwrite",
        "virtualservices.networking.istio.io", "llm", "probe=1",
    )  # fmt: skip
    return tried.returncode != 0 and "frozen by policy" in tried.stderr


def notify_to(rollout: Rollout, receiver: WebhookReceiver) -> None:
    """The Secret `notify` in the rollout's namespace, naming `receiver` as the webhook."""
    rollout.core.create_namespaced_secret(
        rollout.namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="notify"),
            data={"webhook-url": base64.b64encode(receiver.url.encode()).decode()},
        ),
    )


def test_a_refused_rollback_is_never_claimed_and_notified_once_when_it_lands(
    rollout: Rollout,
    kubectl: Kubectl,
    exporter: IstioTrafficExporter,
    operator_process: Any,
    prometheus: PrometheusServer,
    receiver: WebhookReceiver,
    namespace: str,
) -> None:
    notify_to(rollout, receiver)
    operator_process(prometheus.url, "--namespace", namespace, "--notify-secret", f"{namespace}/notify")
    rollout.create(stages=[{"weight": 50, "duration": "120s"}, {"weight": 100}])
    wait_for("stage 1 live", lambda: rollout.weights() == (50, 50), timeout=30)

    binding = freeze_updates(kubectl, namespace, "networking.istio.io", "virtualservices")
    try:
        wait_for("the policy in force", lambda: update_refused(kubectl, namespace), timeout=30)
        exporter.set_traffic(CANARY, namespace, rps=RPS, error_ratio=0.5, latency_ms=200)
        failing = rollout.wait_status(
            "a refused write",
            lambda s: any(
                c["type"] == "Degraded" and c["reason"] == "WriteFailed" for c in s.get("conditions", [])
            ),
            timeout=45,
        )
        assert "frozen by policy" in failing["message"]
        time.sleep(5)  # ten ticks: each one tries, each one is refused
        reasons = rollout.reasons()
        status = rollout.status()
        assert rollout.weights() == (50, 50)
        assert status["phase"] == "Progressing"  # never RolledBack while the VirtualService says 50%
        assert status["rollback"]["gate"] == "error-rate"  # ... but the decided return is recorded
        assert status["writeFailures"] >= 5
        assert receiver.events() == []
        assert "RolledBack" not in reasons
        # Said at the first failure and then at the 10th, 100th...: counted in the condition, not posted anew.
        said = reasons.count("WriteFailed")
        assert 1 <= said <= sum(1 for count in (1, 10, 100) if count <= status["writeFailures"])
    finally:
        lift(kubectl, binding)

    rolled_back = rollout.wait_phase("RolledBack", timeout=45)
    assert rollout.weights() == (100, 0)
    assert rolled_back["rollback"]["gate"] == "error-rate"
    wait_for("the notification", lambda: receiver.events() == ["RolledBack"], timeout=30)
    time.sleep(3)
    assert receiver.events() == ["RolledBack"]  # one, and only after the write went through
    assert rollout.reasons().count("RolledBack") == 1
    degraded = next(c for c in rollout.status()["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "False"


def status_update_refused(kubectl: Kubectl, rollout: Rollout) -> bool:
    """Whether the API server refuses a status write of the rollout now (a server-side dry run)."""
    tried = kubectl(
        "-n", rollout.namespace, "patch", "--dry-run=server", "--subresource=status", "--type=merge",
        f"modelrollouts.{api.GROUP}", rollout.name, "-p", '{"status":{"message":"probe"}}',
    )  # fmt: skip
    return tried.returncode != 0 and "frozen by policy" in tried.stderr


def test_an_operator_killed_between_the_rollback_write_and_its_record_finishes_that_return(
    rollout: Rollout,
    kubectl: Kubectl,
    exporter: IstioTrafficExporter,
    operator_process: Any,
    prometheus: PrometheusServer,
    receiver: WebhookReceiver,
    namespace: str,
) -> None:
    """The rollback's VirtualService write lands and every status write after it is refused; the operator
    is killed there. Its return is on the VirtualService only: the next operator finishes that return (the
    same rollback, not a new decision, and not a drift to put back), says so once and notifies once."""
    notify_to(rollout, receiver)
    flags = ("--namespace", namespace, "--notify-secret", f"{namespace}/notify")
    operator = operator_process(prometheus.url, *flags)
    rollout.create(stages=[{"weight": 50, "duration": "120s"}, {"weight": 100}])
    wait_for("stage 1 live", lambda: rollout.weights() == (50, 50), timeout=30)

    binding = freeze_updates(kubectl, namespace, api.GROUP, f"{api.PLURAL}/status")
    try:
        wait_for("the policy in force", lambda: status_update_refused(kubectl, rollout), timeout=30)
        exporter.set_traffic(CANARY, namespace, rps=RPS, error_ratio=0.5, latency_ms=200)
        wait_for("the return written", lambda: rollout.weights() == (100, 0), timeout=45)
        time.sleep(3)  # six ticks with every status write refused: none puts the canary back
        assert rollout.weights() == (100, 0)
        owner = f"{namespace}/{rollout.name}"
        returning = json.loads(rollout.vs()["metadata"]["annotations"]["modelrollout.io/returning"])[owner]
        assert returning["rollback"]["gate"] == "error-rate"
        status = rollout.status()
        assert (status["phase"], status.get("rollback")) == ("Progressing", None)  # it never got there
        assert receiver.events() == []
        operator.kill()
    finally:
        lift(kubectl, binding)

    operator.start(*flags)
    rolled_back = rollout.wait_phase("RolledBack", timeout=45)
    assert rollout.weights() == (100, 0)
    assert rolled_back["rollback"]["at"] == returning["rollback"]["at"]  # the return decided before the kill
    assert rolled_back["rollback"]["gate"] == "error-rate"
    wait_for("the notification", lambda: receiver.events() == ["RolledBack"], timeout=30)
    time.sleep(3)
    assert receiver.events() == ["RolledBack"]
    said = [(reason, message) for _, reason, message in rollout.events() if reason == "RolledBack"]
    assert len(said) == 1
    assert said[0][1].startswith("completing the return to stable")
    assert "DriftCorrected" not in rollout.reasons()


def test_kube_apiserver_restarted_mid_rollout(
    rollout: Rollout, dev_env: DevEnvironment, operator_process: Any, prometheus: PrometheusServer
) -> None:
    operator = operator_process(prometheus.url, "--namespace", rollout.namespace)
    rollout.create(
        stages=[{"weight": 10, "duration": "4s"}, {"weight": 50, "duration": "8s"}, {"weight": 100}]
    )
    rollout.wait_status("stage 2", lambda s: s.get("stage") == 1, timeout=45)
    # The Event of that advance follows its status write by milliseconds; stopping the API server in
    # between would lose it (Events are posted once, not retried) and say nothing about the outage.
    rollout.wait_reasons("StageAdvanced")
    control_plane = dev_env.control_plane
    assert control_plane is not None

    control_plane.stop_apiserver()
    time.sleep(6)  # the operator's watches break and its ticks fail: nothing it can do, nothing it claims
    control_plane.start_apiserver()
    restarted = time.monotonic()

    rollout.wait_phase("Promoted", timeout=90)
    recovered_in = time.monotonic() - restarted
    assert rollout.weights() == (0, 100)
    reasons = rollout.wait_reasons("Promoted")
    assert reasons.count("StageAdvanced") == 2, reasons  # none skipped or repeated across the outage
    assert reasons.count("Promoted") == 1
    print(f"promoted {recovered_in:.1f}s after kube-apiserver was back (the last stage soaks 8s)")
    assert operator.proc is not None
    assert operator.proc.poll() is None


def test_deleting_a_rollout_while_it_ticks_leaves_stable_and_no_claim_every_time(
    api_client: client.ApiClient,
    kubectl: Kubectl,
    namespace: str,
    exporter: IstioTrafficExporter,
    operator_process: Any,
    prometheus: PrometheusServer,
) -> None:
    exporter.set_traffic(CANARY, namespace, rps=RPS, error_ratio=0.0, latency_ms=200)
    exporter.set_traffic(STABLE, namespace, rps=RPS, error_ratio=0.0, latency_ms=200)
    operator_process(prometheus.url, "--namespace", namespace)
    objects = client.CustomObjectsApi(api_client)
    outcomes = []
    for attempt in range(20):
        subject = Rollout(api_client, kubectl, namespace, name=f"chat-{attempt}")
        subject.create_vs()
        subject.create(
            stages=[{"weight": 10, "duration": "1s"}, {"weight": 50, "duration": "30s"}, {"weight": 100}]
        )
        # Delete at a different moment of the rollout each time: before, during and after its first advance.
        wait_for("stage 1 live", lambda s=subject: s.weights() != (100, 0), timeout=30)
        time.sleep((attempt % 5) * 0.3)
        objects.delete_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, subject.name)

        wait_for("the rollout gone", subject.gone, timeout=30)
        time.sleep(1.5)  # three ticks' worth: nothing may come back
        vs = subject.vs()
        outcomes.append(
            (subject.weights(), (vs["metadata"].get("annotations") or {}).get("modelrollout.io/managed-by"))
        )
        objects.delete_namespaced_custom_object(
            "networking.istio.io", "v1", namespace, "virtualservices", "llm"
        )
        wait_for("the VirtualService gone", subject.vs_gone, timeout=30)
    assert outcomes == [((100, 0), None)] * 20
