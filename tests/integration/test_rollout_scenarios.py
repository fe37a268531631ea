"""The operator for real: `modelrollout run` as a process against the real API server (Istio's CRDs, RBAC) and
a real Prometheus scraping an exporter whose Istio metrics each test sets. Stages and intervals are seconds.
Every scenario asserts the VirtualService weights read from the API server, the status, and the Events."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelrollout import api
from modelrollout_dev.devenv.processes import ProcessSet
from modelrollout_dev.devenv.prometheus import PrometheusServer
from modelrollout_dev.sim.istio_exporter import IstioTrafficExporter
from scenario_support import CANARY, RPS, Kubectl, OperatorProcess, Rollout, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("modelrollout_crd")]


def test_healthy_canary_walks_every_stage_to_promoted(rollout: Rollout) -> None:
    rollout.create()
    seen: set[tuple[int, int]] = set()

    def promoted() -> bool:
        seen.add(rollout.weights())
        return rollout.status().get("phase") == "Promoted"

    wait_for("Promoted", promoted, timeout=60)
    assert {(90, 10), (50, 50)} <= seen
    assert rollout.weights() == (0, 100)
    status = rollout.status()
    assert (status["stage"], status["progress"], status["canaryWeight"]) == (2, "3/3", 100)
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    reasons = rollout.wait_reasons("Promoted")
    assert reasons.count("StageAdvanced") == 2
    assert reasons[-1] == "Promoted"
    # the user's fields are untouched and the VS is marked as ours
    vs = rollout.vs()
    assert vs["spec"]["http"][0]["route"] == [{"destination": {"host": CANARY}}]
    assert vs["spec"]["http"][1]["retries"] == {"attempts": 2, "perTryTimeout": "60s"}
    assert (
        vs["metadata"]["annotations"]["modelrollout.io/managed-by"]
        == f'{{"primary":"{rollout.namespace}/chat"}}'
    )


@pytest.mark.parametrize(
    ("gate", "bad", "value_check"),
    [
        ("error-rate", {"error_ratio": 0.3}, lambda v: v > 0.02),
        ("p99-latency-ms", {"latency_ms": 4000.0}, lambda v: v > 1000),
    ],
)
def test_a_breach_at_stage_two_rolls_back(
    rollout: Rollout,
    exporter: IstioTrafficExporter,
    gate: str,
    bad: dict[str, float],
    value_check: Callable[[float], bool],
) -> None:
    rollout.create(
        stages=[{"weight": 10, "duration": "2s"}, {"weight": 50, "duration": "60s"}, {"weight": 100}]
    )
    rollout.wait_status("stage 2", lambda s: s.get("stage") == 1)
    assert rollout.weights() == (50, 50)
    exporter.set_traffic(
        CANARY, rollout.namespace, rps=RPS, **{"error_ratio": 0.0, "latency_ms": 200.0, **bad}
    )
    status = rollout.wait_phase("RolledBack", timeout=30)
    assert rollout.weights() == (100, 0)
    rollback = status["rollback"]
    assert rollback["gate"] == gate
    assert value_check(rollback["value"])
    assert rollback["threshold"] == ("<= 0.02" if gate == "error-rate" else "<= 1000")
    assert rollback["window"] == "5s"
    assert "rolled back at stage 2/3" in status["message"]
    rollout.wait_reasons("RolledBack")
    warnings = [(reason, message) for type_, reason, message in rollout.events() if type_ == "Warning"]
    assert any(reason == "RolledBack" and gate in message for reason, message in warnings)


def test_manual_gate_waits_and_promote_advances(rollout: Rollout) -> None:
    rollout.create(stages=[{"weight": 10, "duration": "1s", "approval": "Manual"}, {"weight": 100}])
    status = rollout.wait_status("awaiting approval", lambda s: s.get("reason") == "AwaitingApproval")
    assert status["phase"] == "Paused"
    time.sleep(3)
    assert rollout.status()["stage"] == 0  # it waits: time alone does not advance it
    assert rollout.weights() == (90, 10)
    rollout.act("promote")
    rollout.wait_phase("Promoted", timeout=30)
    assert rollout.weights() == (0, 100)
    assert rollout.status()["lastAction"]["action"] == "promote"
    assert "modelrollout.io/action" not in (rollout.get()["metadata"].get("annotations") or {})
    assert "AwaitingApproval" in rollout.reasons()


def test_a_breach_while_awaiting_approval_rolls_back(
    rollout: Rollout, exporter: IstioTrafficExporter
) -> None:
    rollout.create(stages=[{"weight": 10, "duration": "1s", "approval": "Manual"}, {"weight": 100}])
    rollout.wait_status("awaiting approval", lambda s: s.get("reason") == "AwaitingApproval")
    exporter.set_traffic(CANARY, rollout.namespace, rps=RPS, error_ratio=0.5, latency_ms=200)
    rollout.wait_phase("RolledBack")
    assert rollout.weights() == (100, 0)


def test_abort_returns_to_stable_and_retry_starts_again(rollout: Rollout) -> None:
    rollout.create(
        stages=[{"weight": 10, "duration": "2s"}, {"weight": 50, "duration": "60s"}, {"weight": 100}]
    )
    rollout.wait_status("stage 2", lambda s: s.get("stage") == 1)
    rollout.act("abort")
    rollout.wait_phase("Aborted")
    assert rollout.weights() == (100, 0)
    rollout.act("retry")
    status = rollout.wait_status(
        "restarted", lambda s: s.get("phase") == "Progressing" and s.get("stage") == 0
    )
    assert status["failedChecks"] == 0
    wait_for("stage 1 weights", lambda: rollout.weights() == (90, 10))
    reasons = rollout.wait_reasons("Aborted", "Retried")
    assert [r for r in reasons if r in ("Aborted", "Retried")] == ["Aborted", "Retried"]


@pytest.mark.parametrize("on_error", ["Rollback", "Hold"])
def test_prometheus_stopped_mid_stage(
    rollout: Rollout, exporter: IstioTrafficExporter, tmp_path: Path, on_error: str
) -> None:
    """A Prometheus of this test's own, stopped while the rollout runs."""
    own = PrometheusServer(tmp_path, ProcessSet(tmp_path), die_with_parent=True)
    own.start()
    own.set_targets("istio", [exporter.address])
    own.wait_for_job_up("istio")
    try:
        rollout.create(
            stages=[{"weight": 10, "duration": "2s"}, {"weight": 50, "duration": "60s"}, {"weight": 100}],
            prometheus={"address": own.url, "timeout": "1s"},
            errorLimit=2,
            onError=on_error,
        )
        rollout.wait_status("stage 2", lambda s: s.get("stage") == 1)
        own.stop()
        status = rollout.wait_status(
            "MetricsUnavailable",
            lambda s: any(
                c["type"] == "MetricsUnavailable" and c["status"] == "True" for c in s.get("conditions", [])
            ),
        )
        assert status["stage"] == 1  # no advance while the gates cannot be read
        if on_error == "Rollback":
            status = rollout.wait_phase("RolledBack")
            assert rollout.weights() == (100, 0)
            assert status["rollback"]["reason"] == "MetricsUnavailable"
        else:
            status = rollout.wait_status(
                "hold", lambda s: s.get("reason") == "MetricsUnavailable" and s.get("phase") == "Paused"
            )
            assert rollout.weights() == (50, 50)
            assert status["hold"] == "MetricsUnavailable"
        rollout.wait_reasons("MetricsUnavailable")
    finally:
        own.stop()


def test_no_traffic_is_inconclusive_and_holds(rollout: Rollout, exporter: IstioTrafficExporter) -> None:
    exporter.stop_traffic(CANARY, rollout.namespace)
    rollout.create(
        stages=[{"weight": 10, "duration": "1s"}, {"weight": 100}], inconclusiveLimit=3, onInconclusive="Hold"
    )
    status = rollout.wait_status("inconclusive hold", lambda s: s.get("hold") == "Inconclusive", timeout=30)
    assert (status["phase"], status["stage"]) == ("Paused", 0)
    assert status["lastAnalysis"]["verdict"] == "Inconclusive"
    time.sleep(2)
    assert rollout.status()["phase"] == "Paused"
    assert rollout.weights() == (90, 10)


def test_operator_killed_mid_stage_resumes_the_same_stage(
    rollout: Rollout, operator: OperatorProcess
) -> None:
    rollout.create(
        stages=[{"weight": 10, "duration": "2s"}, {"weight": 50, "duration": "6s"}, {"weight": 100}]
    )
    before = rollout.wait_status("stage 2", lambda s: s.get("stage") == 1)
    # Events follow the status write; the kill comes after this one (an Event in flight is not the point).
    rollout.wait_reasons("StageAdvanced")
    operator.kill()
    time.sleep(2)
    assert rollout.weights() == (50, 50)  # traffic stays where it was while nobody drives
    operator.start()
    rollout.wait_phase("Promoted", timeout=60)
    after = rollout.status()
    assert rollout.weights() == (0, 100)
    reasons = rollout.wait_reasons("Promoted")
    advanced = [m for _, r, m in rollout.events() if r == "StageAdvanced"]
    assert len(advanced) == 2, advanced  # 1 -> 2 before the kill, 2 -> 3 after: none skipped or repeated
    assert reasons.count("RolloutStarted") == 1
    assert before["stageStartedAt"] <= after["stageStartedAt"]


def test_a_new_canary_mid_rollout_starts_again_from_stage_one(rollout: Rollout) -> None:
    rollout.create(
        stages=[{"weight": 10, "duration": "2s"}, {"weight": 50, "duration": "60s"}, {"weight": 100}]
    )
    rollout.wait_status("stage 2", lambda s: s.get("stage") == 1)
    rollout.objects.patch_namespaced_custom_object(
        api.GROUP,
        api.VERSION,
        rollout.namespace,
        api.PLURAL,
        rollout.name,
        {"spec": {"canary": {"promptVersion": "v14"}}},
    )
    status = rollout.wait_status(
        "stage 1 again",
        lambda s: s.get("stage") == 0 and (s.get("canary") or {}).get("promptVersion") == "v14",
    )
    assert status["phase"] == "Progressing"
    wait_for("stage 1 weights", lambda: rollout.weights() == (90, 10))
    wait_for("two RolloutStarted events", lambda: rollout.reasons().count("RolloutStarted") == 2)


def test_a_weight_edited_by_hand_is_put_back(rollout: Rollout) -> None:
    rollout.create(stages=[{"weight": 10, "duration": "60s"}, {"weight": 100}])
    wait_for("stage 1 weights", lambda: rollout.weights() == (90, 10))
    rollout.edit_weights(40, 60)
    wait_for("weights put back", lambda: rollout.weights() == (90, 10), timeout=15)
    rollout.wait_reasons("DriftCorrected")
    drift = [m for _, r, m in rollout.events() if r == "DriftCorrected"]
    assert drift
    assert "60% set by kubectl-patch put back to 10%" in drift[0]


def test_a_deleted_virtual_service_degrades_and_recovers(rollout: Rollout) -> None:
    rollout.create(stages=[{"weight": 10, "duration": "60s"}, {"weight": 100}])
    wait_for("stage 1 weights", lambda: rollout.weights() == (90, 10))
    rollout.objects.delete_namespaced_custom_object(
        "networking.istio.io", "v1", rollout.namespace, "virtualservices", "llm"
    )
    status = rollout.wait_phase("Degraded")
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "VirtualServiceNotFound"
    assert f"{rollout.namespace}/llm" in degraded["message"]
    time.sleep(2)
    with pytest.raises(ApiException):  # no writes: nothing recreated it
        rollout.vs()
    rollout.create_vs()
    rollout.wait_phase("Progressing")
    wait_for("weights restored", lambda: rollout.weights() == (90, 10))
    rollout.wait_reasons("Recovered")


def test_a_second_rollout_on_the_same_route_gets_a_conflict(
    rollout: Rollout, api_client: client.ApiClient, kubectl: Kubectl
) -> None:
    rollout.create(stages=[{"weight": 10, "duration": "60s"}, {"weight": 100}])
    wait_for("first owns the VS", lambda: rollout.weights() == (90, 10))
    second = Rollout(api_client, kubectl, rollout.namespace, name="chat-2")
    second.create(stages=[{"weight": 30, "duration": "60s"}, {"weight": 100}])
    status = second.wait_status(
        "conflict",
        lambda s: any(c["type"] == "Conflict" and c["status"] == "True" for c in s.get("conditions", [])),
    )
    assert status["phase"] == "Degraded"
    assert f"{rollout.namespace}/chat" in next(
        c["message"] for c in status["conditions"] if c["type"] == "Conflict"
    )
    time.sleep(2)
    assert rollout.weights() == (90, 10)
    assert rollout.status()["phase"] == "Progressing"
    second.wait_reasons("Conflict")


def test_deleting_a_rollout_mid_way_returns_traffic_to_stable(rollout: Rollout) -> None:
    rollout.create(
        stages=[{"weight": 10, "duration": "2s"}, {"weight": 50, "duration": "60s"}, {"weight": 100}]
    )
    rollout.wait_status("stage 2", lambda s: s.get("stage") == 1)
    rollout.objects.delete_namespaced_custom_object(
        api.GROUP, api.VERSION, rollout.namespace, api.PLURAL, rollout.name
    )
    wait_for("rollout gone", rollout.gone)
    assert rollout.weights() == (100, 0)
    assert "modelrollout.io/managed-by" not in (rollout.vs()["metadata"].get("annotations") or {})


def test_deleting_a_promoted_rollout_leaves_the_canary_serving(rollout: Rollout) -> None:
    rollout.create(stages=[{"weight": 50, "duration": "1s"}, {"weight": 100}])
    rollout.wait_phase("Promoted", timeout=60)
    rollout.objects.delete_namespaced_custom_object(
        api.GROUP, api.VERSION, rollout.namespace, api.PLURAL, rollout.name
    )
    wait_for("rollout gone", rollout.gone)
    assert rollout.weights() == (0, 100)
