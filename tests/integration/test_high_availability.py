"""Two operator replicas against one API server, electing a leader with a Lease: one leads and drives the
rollout while the other stands by; killing the leader hands over within the lease duration; a clean stop
hands over at once; and at no moment do both write (the API server's audit log of VirtualService writes,
by each replica's user agent, says so)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelrollout.kubeclient import KubeClient
from modelrollout.leadership import LeaderElector, LeaseEndpoints, LeaseTiming
from modelrollout_dev.devenv.environment import EnvironmentState
from modelrollout_dev.devenv.prometheus import PrometheusServer
from scenario_support import OperatorProcess, Rollout, virtual_service_writes, wait_for

LEASE = "modelrollout-test-lease"
LEASE_SECONDS, RENEW_DEADLINE, RETRY = 4.0, 3.0, 0.5


class Replica(OperatorProcess):
    def __init__(self, env_state: EnvironmentState, prometheus_url: str, log_dir: Path, name: str) -> None:
        super().__init__(env_state, prometheus_url, log_dir / name)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.env["POD_NAME"] = name

    def run(self, namespace: str) -> None:
        self.start(
            "--namespace",
            namespace,
            "--leader-elect",
            "--leader-election-namespace",
            namespace,
            "--leader-election-id",
            LEASE,
            "--lease-duration",
            f"{LEASE_SECONDS:g}",
            "--renew-deadline",
            f"{RENEW_DEADLINE:g}",
            "--retry-period",
            f"{RETRY:g}",
        )

    def signal(self, number: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(number)
        self.proc.wait(timeout=30)


@pytest.fixture
def replicas(
    env_state: EnvironmentState, prometheus: PrometheusServer, tmp_path: Path, modelrollout_crd: str
) -> Iterator[dict[str, Replica]]:
    started = {
        name: Replica(env_state, prometheus.url, tmp_path, name)
        for name in ("replica-a", "replica-b", "replica-c")
    }
    yield started
    for replica in started.values():
        replica.stop()


def holder(api_client: client.ApiClient, namespace: str) -> str:
    try:
        lease = client.CoordinationV1Api(api_client).read_namespaced_lease(LEASE, namespace)
    except ApiException as missing:
        if missing.status == 404:
            return ""
        raise
    return str(lease.spec.holder_identity or "")


def test_one_replica_leads_a_killed_leader_is_replaced_and_both_never_write(
    replicas: dict[str, Replica],
    subject: Rollout,
    api_client: client.ApiClient,
    env_state: EnvironmentState,
    namespace: str,
) -> None:
    a, b, c = replicas["replica-a"], replicas["replica-b"], replicas["replica-c"]
    a.run(namespace)
    wait_for("replica-a to lead", lambda: holder(api_client, namespace).startswith("replica-a-"))
    b.run(namespace)
    wait_for("replica-b to stand by", lambda: "standing by" in b.log_text(), timeout=30)

    subject.create(
        stages=[{"weight": 10, "duration": "2s"}, {"weight": 50, "duration": "600s"}, {"weight": 100}]
    )
    wait_for("stage 2 weights", lambda: subject.weights() == (50, 50), timeout=30)
    assert holder(api_client, namespace).startswith("replica-a-")

    # The leader dies without a word: the standby takes over once the Lease has gone unrenewed long enough.
    a.signal(signal.SIGKILL)
    killed_at, killed_wall = time.monotonic(), datetime.now(UTC)
    wait_for("replica-b to lead", lambda: holder(api_client, namespace).startswith("replica-b-"), timeout=30)
    takeover = time.monotonic() - killed_at
    print(
        f"\nleader killed -> standby holds the Lease: {takeover:.2f} s (lease duration {LEASE_SECONDS:g} s)"
    )
    # The standby watches the Lease: it takes over one lease duration after the last renewal it saw, which
    # was at most a retry period before the kill. Never sooner (the old leader may still have been writing),
    # and the upper bound leaves a loaded machine 2 s.
    assert LEASE_SECONDS - RETRY <= takeover < LEASE_SECONDS + 2

    # The new leader drives: a hand edit is put back, by replica-b.
    subject.edit_weights(30, 70)
    wait_for("weights put back by the new leader", lambda: subject.weights() == (50, 50), timeout=20)

    # A clean stop gives the Lease up: the next standby takes over at once, not after the lease duration.
    c.run(namespace)
    wait_for("replica-c to stand by", lambda: "standing by" in c.log_text(), timeout=30)
    b.signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    wait_for("replica-c to lead", lambda: holder(api_client, namespace).startswith("replica-c-"), timeout=30)
    handover = time.monotonic() - stopped_at
    print(f"leader stopped cleanly -> standby holds the Lease: {handover:.2f} s")
    assert handover < LEASE_SECONDS
    subject.edit_weights(30, 70)
    wait_for("weights put back by replica-c", lambda: subject.weights() == (50, 50), timeout=20)
    assert subject.status()["phase"] == "Progressing"

    # The audit log: replica-a wrote before it died, replica-b only after, replica-c only after b stopped.
    writes = wait_for(
        "replica-c's write in the audit log",
        lambda: (
            (found := virtual_service_writes(env_state, namespace)) and found[-1][1] == "replica-c" and found
        ),
        timeout=10,
    )
    by = {name: [at for at, who in writes if who == name] for name in ("replica-a", "replica-b", "replica-c")}
    print("VirtualService writes: " + ", ".join(f"{name} {len(times)}" for name, times in by.items()))
    assert len(by["replica-a"]) >= 2  # 10%, then 50%
    assert by["replica-b"]
    assert by["replica-c"]
    assert max(by["replica-a"]) < killed_wall <= min(by["replica-b"])
    assert max(by["replica-b"]) < min(by["replica-c"])
    assert [who for _, who in writes] == sorted(
        (who for _, who in writes), key=["replica-a", "replica-b", "replica-c"].index
    )


def test_a_standby_sees_each_renewal_as_it_is_written_and_takes_over_at_its_expiry(
    api_client: client.ApiClient, kube_client: KubeClient, namespace: str
) -> None:
    """The elector on its own against the API server: another holder (this test) renews every second; the
    standby polls only every 3 s, so only its watch can see each renewal within a fraction of a second. Once
    the renewals stop, it takes the Lease one lease duration after the last one, not a poll later."""
    leases = client.CoordinationV1Api(api_client)

    def renew() -> float:
        """Renew as the other holder would; when the write was sent."""
        lease = leases.read_namespaced_lease(LEASE, namespace)
        lease.spec.renew_time = datetime.now(UTC)
        sent = time.monotonic()
        leases.replace_namespaced_lease(LEASE, namespace, lease)
        return sent

    def seen_since(sent: float) -> bool:
        observed = standby._observed
        return observed is not None and observed[1] >= sent

    spec = {"holderIdentity": "another-replica", "leaseDurationSeconds": 4}
    leases.create_namespaced_lease(namespace, {"metadata": {"name": LEASE}, "spec": spec})  # type: ignore[arg-type]
    timing = LeaseTiming(duration=4, renew_deadline=3.5, retry_period=3)
    endpoints = LeaseEndpoints(kube_client.credentials, user_agent="standby", refresh=None)
    standby = LeaderElector(endpoints, namespace=namespace, name=LEASE, identity="standby", timing=timing)
    acquired: list[float] = []
    thread = threading.Thread(target=lambda: standby.acquire() and acquired.append(time.monotonic()))
    thread.start()
    try:
        time.sleep(0.5)
        lags = []
        for _ in range(3):
            sent = renew()
            wait_for("the standby to see the renewal", lambda sent=sent: seen_since(sent), timeout=3)  # type: ignore[misc]
            assert standby._observed is not None
            lags.append(standby._observed[1] - sent)
            time.sleep(1)
        last = renew()
        thread.join(timeout=10)
        assert acquired, "the standby never took the Lease"
        seen = ", ".join(f"{lag * 1000:.0f} ms" for lag in lags)
        print(f"\nrenewal -> seen by the standby: {seen}; last renewal -> taken over: "
              f"{acquired[0] - last:.2f} s (lease 4 s, polls every 3 s)")  # fmt: skip
        assert max(lags) < 0.5  # a poll would see it up to 3 s late
        assert 4 <= acquired[0] - last < 4.5  # at the expiry: never sooner, not a poll later
        assert holder(api_client, namespace) == "standby"
    finally:
        standby.stop(release=False)
        thread.join(timeout=10)
        endpoints.close()
