"""Which rollouts the judge works for, and with what: read from a ModelRollout object alone (pure).

A rollout is judged while it is under way (Progressing or Paused, a stable/canary pair started) and declares
`spec.analysis.judge`. A new pair (status.pairHash) is a new target: counts of the previous pair stop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from modelrollout import api

UNDER_WAY = (api.Phase.PROGRESSING, api.Phase.PAUSED)


@dataclass(frozen=True)
class JudgeTarget:
    namespace: str
    name: str
    pair_hash: str
    stable_url: str
    canary_url: str
    stable_model: str
    canary_model: str
    judge: api.Judge

    @property
    def key(self) -> tuple[str, str, str]:
        return self.namespace, self.name, self.pair_hash

    @property
    def interval(self) -> timedelta:
        return timedelta(minutes=1) / self.judge.rate_per_minute


def default_url(target: api.Target, namespace: str) -> str:
    host = target.host if "." in target.host else f"{target.host}.{namespace}.svc.cluster.local"
    port = f":{target.port}" if target.port else ""
    return f"http://{host}{port}/v1"


def judge_target(obj: Mapping[str, Any]) -> JudgeTarget | None:
    """The target a rollout asks the judge for now, or None."""
    metadata = obj.get("metadata") or {}
    checked = api.checked_spec(obj.get("spec") or {})
    if isinstance(checked, list) or checked.analysis.judge is None:
        return None
    status = api.ModelRolloutStatus.model_validate(obj.get("status") or {})
    if status.phase not in UNDER_WAY or status.pair_hash is None:
        return None
    spec, judge = checked, checked.analysis.judge
    namespace = str(metadata.get("namespace", ""))
    vs_namespace = spec.traffic_routing.istio.virtual_service.namespace or namespace
    endpoints = judge.endpoints or api.JudgeEndpoints()
    return JudgeTarget(
        namespace=namespace,
        name=str(metadata.get("name", "")),
        pair_hash=status.pair_hash,
        stable_url=endpoints.stable or default_url(spec.stable, vs_namespace),
        canary_url=endpoints.canary or default_url(spec.canary, vs_namespace),
        stable_model=spec.stable.model or spec.stable.host,
        canary_model=spec.canary.model or spec.canary.host,
        judge=judge,
    )
