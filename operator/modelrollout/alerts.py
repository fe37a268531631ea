"""Which rollouts an Alertmanager webhook payload names. Pure: no I/O.

An alert names a rollout by labels, in this order of preference:
- `modelrollout` (the rollout's name) with `modelrollout_namespace`, `rollout_namespace` or `namespace`;
- `rollout` with `rollout_namespace` (the labels of the judge's metrics);
- the canary Service it is about: `destination_service_name` with `destination_service_namespace` (Istio's
  standard labels), or `destination_service` as `name.namespace.svc.cluster.local`.
Only firing alerts count; resolved ones ask for nothing. An alert never decides anything by itself: it makes
the rollouts it names check their gates now instead of at their next interval.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# A Kubernetes object name (DNS-1123 subdomain) or namespace (label): anything else names nothing here.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class NotAnAlertPayload(ValueError):
    """The body is not an Alertmanager webhook payload."""


@dataclass(frozen=True)
class AlertTarget:
    """What one firing alert names: a rollout ("namespace/name"), or else a canary Service, or nothing."""

    rollout: str | None = None
    canary: tuple[str, str] | None = None  # (namespace, Service name)


@dataclass(frozen=True)
class AlertTargets:
    firing: tuple[AlertTarget, ...] = ()
    resolved: int = 0


def _rollout(labels: dict[str, str]) -> str | None:
    name = labels.get("modelrollout")
    namespace = (
        labels.get("modelrollout_namespace") or labels.get("rollout_namespace") or labels.get("namespace")
    )
    if not name:
        name, namespace = labels.get("rollout"), labels.get("rollout_namespace")
    if name and namespace and _NAME.match(name) and _NAMESPACE.match(namespace):
        return f"{namespace}/{name}"
    return None


def _canary(labels: dict[str, str]) -> tuple[str, str] | None:
    name, namespace = labels.get("destination_service_name"), labels.get("destination_service_namespace")
    if not (name and namespace):
        parts = (labels.get("destination_service") or "").split(".")
        if len(parts) >= 2:
            name, namespace = parts[0], parts[1]
    if name and namespace and _NAME.match(name) and _NAMESPACE.match(namespace):
        return namespace, name
    return None


def targets_of(payload: Any) -> AlertTargets:
    """What each firing alert of `payload` names, and how many were resolved."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise NotAnAlertPayload("expected an Alertmanager webhook payload: an object with a list `alerts`")
    firing: list[AlertTarget] = []
    resolved = 0
    for alert in payload["alerts"]:
        if not isinstance(alert, dict) or not isinstance(alert.get("labels"), dict):
            raise NotAnAlertPayload("every alert must be an object with an object `labels`")
        if alert.get("status", payload.get("status", "firing")) != "firing":
            resolved += 1
            continue
        labels = {str(k): str(v) for k, v in alert["labels"].items()}
        rollout = _rollout(labels)
        firing.append(AlertTarget(rollout, None if rollout else _canary(labels)))
    return AlertTargets(tuple(firing), resolved)


def canary_service(host: str, namespace: str) -> tuple[str, str] | None:
    """The (namespace, Service) a destination host names: `svc`, `svc.ns` or `svc.ns.svc.<domain>`; short
    names are in `namespace` (where Istio resolves them). None for a host that is not a Service name."""
    parts = host.split(".")
    if len(parts) == 1 or (len(parts) >= 3 and parts[2] != "svc"):
        service, where = (parts[0], namespace) if len(parts) == 1 else (None, None)
    else:
        service, where = parts[0], parts[1]
    if service and where and _NAME.match(service) and _NAMESPACE.match(where):
        return where, service
    return None
