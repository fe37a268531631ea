"""Which rollouts an Alertmanager payload names, and the canary Service a destination host names."""

from __future__ import annotations

from typing import Any

import pytest

from modelrollout.alerts import AlertTarget, NotAnAlertPayload, canary_service, targets_of


def payload(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {"version": "4", "status": status, "receiver": "modelrollout", "alerts": list(alerts)}


def firing(**labels: str) -> dict[str, Any]:
    return {"status": "firing", "labels": labels, "annotations": {"summary": "x"}}


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"modelrollout": "chat", "namespace": "llm"}, AlertTarget(rollout="llm/chat")),
        (
            {"modelrollout": "chat", "modelrollout_namespace": "llm", "namespace": "monitoring"},
            AlertTarget(rollout="llm/chat"),
        ),
        ({"modelrollout": "chat", "rollout_namespace": "llm"}, AlertTarget(rollout="llm/chat")),
        ({"rollout": "chat", "rollout_namespace": "llm"}, AlertTarget(rollout="llm/chat")),
        (
            {"destination_service_name": "llm-claude", "destination_service_namespace": "llm"},
            AlertTarget(canary=("llm", "llm-claude")),
        ),
        (
            {"destination_service": "llm-claude.llm.svc.cluster.local"},
            AlertTarget(canary=("llm", "llm-claude")),
        ),
        # A rollout named outright wins over the Service.
        (
            {
                "modelrollout": "chat",
                "namespace": "llm",
                "destination_service_name": "x",
                "destination_service_namespace": "y",
            },
            AlertTarget(rollout="llm/chat"),
        ),
        # Names that are not Kubernetes names name nothing.
        ({"modelrollout": "Chat!", "namespace": "llm"}, AlertTarget()),
        ({"modelrollout": "chat", "namespace": "../x"}, AlertTarget()),
        ({"modelrollout": "chat"}, AlertTarget()),
        ({"alertname": "HighErrorRate", "severity": "page"}, AlertTarget()),
        ({"destination_service": "llm-claude"}, AlertTarget()),
    ],
)
def test_what_a_firing_alert_names(labels: dict[str, str], expected: AlertTarget) -> None:
    assert targets_of(payload(firing(**labels))).firing == (expected,)


def test_resolved_alerts_name_nothing_and_are_counted() -> None:
    resolved = {"status": "resolved", "labels": {"modelrollout": "chat", "namespace": "llm"}}
    targets = targets_of(payload(resolved, firing(rollout="a", rollout_namespace="b"), status="firing"))
    assert targets.firing == (AlertTarget(rollout="b/a"),)
    assert targets.resolved == 1
    # An alert without its own status takes the payload's.
    group_resolved = payload({"labels": {"modelrollout": "chat", "namespace": "llm"}}, status="resolved")
    assert targets_of(group_resolved).firing == ()


@pytest.mark.parametrize(
    "body",
    [None, [], "alerts", {}, {"alerts": {}}, {"alerts": ["x"]}, {"alerts": [{"labels": "x"}]}],
)
def test_what_is_not_an_alertmanager_payload_is_refused(body: Any) -> None:
    with pytest.raises(NotAnAlertPayload):
        targets_of(body)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("llm-claude", ("llm", "llm-claude")),
        ("llm-claude.models", ("models", "llm-claude")),
        ("llm-claude.models.svc", ("models", "llm-claude")),
        ("llm-claude.models.svc.cluster.local", ("models", "llm-claude")),
        ("api.example.com", None),
        ("*.models.svc.cluster.local", None),
        ("", None),
    ],
)
def test_the_canary_service_a_host_names(host: str, expected: tuple[str, str] | None) -> None:
    assert canary_service(host, "llm") == expected
