"""Rollouts driven from git commits by Flux's own controllers (source-controller and kustomize-controller,
built from their Go modules), with the operator as a process, on the real API server and Prometheus.

What docs/gitops.md promises Flux users, checked with Flux itself: the Kustomization's health check turns
Ready when the rollout is Promoted and not before (not on the commit itself either); re-applies every few
seconds neither revert the operator's weights nor restart the rollout (with `kustomize.toolkit.fluxcd.io/ssa:
IfNotPresent` on the VirtualService); a new pair in Git starts a new rollout; a bad spec is refused by the API
server and Flux says so, traffic untouched; a rollback reads as a failed health check. And what happens
without the VirtualService setting: Flux puts Git's weights back at every reconciliation and the operator
stops fighting after its drift limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from flux_fleet import IF_NOT_PRESENT, Fleet, Readiness

from modelrollout_dev.devenv.gitops import GitopsTool
from modelrollout_dev.sim.istio_exporter import IstioTrafficExporter
from scenario_support import CANARY, RPS, STABLE, wait_for

pytestmark = [pytest.mark.integration]


@dataclass(frozen=True)
class Sample:
    at: float
    readiness: Readiness | None
    phase: str | None


def healthy_traffic(exporter: IstioTrafficExporter, namespace: str, canary_errors: float = 0.0) -> None:
    exporter.set_traffic(STABLE, namespace, rps=RPS, error_ratio=0.0, latency_ms=200)
    exporter.set_traffic(CANARY, namespace, rps=RPS, error_ratio=canary_errors, latency_ms=200)


def watch_until_ready(fleet: Fleet, revision: str, timeout: float = 90.0) -> list[Sample]:
    """Samples of (Kustomization Ready, rollout phase) until Ready is True for `revision`. Flux is read
    first: a Ready it already shows must be backed by the phase read after it."""
    samples: list[Sample] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readiness = fleet.readiness()
        phase = fleet.phase()
        samples.append(Sample(time.monotonic(), readiness, phase))
        if readiness and readiness.status == "True" and readiness.last_applied == revision:
            return samples
        time.sleep(0.2)
    raise AssertionError(f"Kustomization not Ready at {revision} in {timeout:.0f}s; last: {samples[-1]}")


def test_a_rollout_from_git_through_flux(
    fleet: Fleet, exporter: IstioTrafficExporter, gitops: GitopsTool
) -> None:
    namespace = fleet.namespace
    rollout = fleet.rollout
    healthy_traffic(exporter, namespace)
    vs = fleet.virtual_service(IF_NOT_PRESENT)

    # 1. The first commit: applied, rolled out, Ready exactly when Promoted.
    first_pair = fleet.model_rollout(stable=(STABLE, "gpt-4o"), canary=(CANARY, "claude-a"))
    revision = fleet.commit("roll out claude-a", rollout=first_pair, vs=vs)
    fleet.follow()
    samples = watch_until_ready(fleet, revision)
    ready_samples = [s for s in samples if s.readiness and s.readiness.status == "True"]
    assert {s.phase for s in ready_samples} == {"Promoted"}, "Flux read a rollout as Ready before Promoted"
    running = [s for s in samples if s.phase in ("Pending", "Progressing")]
    assert running, "the rollout was never seen running"
    seen = sorted(
        {(s.readiness.status, s.readiness.reason, s.readiness.message[:60]) for s in running if s.readiness}
    )
    print(f"Kustomization Ready while the rollout ran: {seen}")
    assert all(s.readiness is None or s.readiness.status != "True" for s in running)
    promoted_at = next(s.at for s in samples if s.phase == "Promoted")
    lag = ready_samples[0].at - promoted_at
    print(f"Kustomization Ready {lag:.1f}s after the rollout was Promoted (Flux polls health every 5s)")
    assert 0 <= lag <= 12
    assert rollout.reasons().count("RolloutStarted") == 1
    assert "DriftCorrected" not in rollout.reasons()
    assert rollout.get()["metadata"]["generation"] == 1
    assert rollout.weights() == (0, 100)
    first_hash = rollout.status()["pairHash"]

    # 2. The GitOps cycle: the promoted model becomes stable, a new canary on the other host.
    second_pair = fleet.model_rollout(stable=(CANARY, "claude-a"), canary=(STABLE, "gpt-5"))
    revision = fleet.commit("promote claude-a; roll out gpt-5", rollout=second_pair, vs=vs)
    samples = watch_until_ready(fleet, revision)
    assert rollout.status()["pairHash"] != first_hash
    assert rollout.reasons().count("RolloutStarted") == 2
    assert {s.phase for s in samples if s.readiness and s.readiness.status == "True"} <= {"Promoted"}
    assert any(
        s.readiness and s.readiness.last_attempted == revision and s.readiness.status != "True"
        for s in samples
    ), "the new revision was never shown in progress"
    assert rollout.status()["phase"] == "Promoted"
    assert rollout.weights() == (100, 0)
    assert "DriftCorrected" not in rollout.reasons()
    good_revision = revision

    # 3. A bad spec: the API server refuses it, Flux reports the field, nothing moves.
    vs_before = rollout.vs()
    generation = rollout.get()["metadata"]["generation"]
    bad = fleet.model_rollout(stable=(STABLE, "gpt-5"), canary=(CANARY, "claude-b"))
    bad["spec"]["stages"] = [{"weight": 150}]
    revision = fleet.commit("a stage above 100%", rollout=bad, vs=vs)
    refused = fleet.wait_readiness(revision, "False", "ReconciliationFailed")
    print(f"Flux on the bad spec: {refused.message}")
    assert "spec.stages[0].weight" in refused.message
    assert refused.last_applied == good_revision
    assert rollout.get()["metadata"]["generation"] == generation
    assert rollout.vs()["metadata"]["resourceVersion"] == vs_before["metadata"]["resourceVersion"]
    assert rollout.weights() == (100, 0)

    # 4. A canary that breaks its gate: rolled back, and Flux's health check fails on it.
    healthy_traffic(exporter, namespace, canary_errors=0.5)
    breaking = fleet.model_rollout(stable=(STABLE, "gpt-5"), canary=(CANARY, "claude-b"))
    revision = fleet.commit("roll out claude-b", rollout=breaking, vs=vs)
    rolled_back = rollout.wait_phase("RolledBack", timeout=60)
    failed = fleet.wait_readiness(revision, "False", "HealthCheckFailed")
    print(f"Flux on the rollback: {failed.message}")
    assert f"ModelRollout/{namespace}/{rollout.name} status: 'Failed'" in failed.message
    # Applied (the rollout ran the new pair); Flux keeps the last revision whose health passed as "applied".
    assert rollout.get()["spec"]["canary"]["model"] == "claude-b"
    assert failed.last_applied == good_revision
    assert rollout.weights() == (100, 0)
    # The reason is what kstatus (Flux's reader) reports for the object: the rollout's own message.
    assert gitops.kstatus(rollout.get()) == ("Failed", rolled_back["message"])
    assert "error-rate" in rolled_back["message"]


def test_flux_reapplying_every_two_seconds_neither_reverts_the_weights_nor_restarts_the_rollout(
    fleet: Fleet, exporter: IstioTrafficExporter
) -> None:
    # No health check here: a Kustomization that waits on health blocks its next apply for the wait (30s at
    # least), so this one re-applies every 2s, the way a Kustomization without healthChecks does.
    rollout = fleet.rollout
    healthy_traffic(exporter, fleet.namespace)
    pair = fleet.model_rollout(
        stable=(STABLE, "gpt-4o"),
        canary=(CANARY, "claude-a"),
        stages=[{"weight": 10, "duration": "4s"}, {"weight": 50, "duration": "4s"}, {"weight": 100}],
    )
    fleet.commit("roll out claude-a", rollout=pair, vs=fleet.virtual_service(IF_NOT_PRESENT))
    fleet.follow(health_check=False)
    rollout.wait_reasons("RolloutStarted", timeout=30)
    applied_before = fleet.reconciliations()
    rollout.wait_phase("Promoted", timeout=60)
    reapplied = fleet.reconciliations() - applied_before
    print(f"kustomize-controller reconciled (dry-run, diff, apply) {reapplied} times while the rollout ran")
    assert reapplied >= 3
    assert rollout.reasons().count("RolloutStarted") == 1
    assert "DriftCorrected" not in rollout.reasons()
    assert rollout.get()["metadata"]["generation"] == 1
    assert rollout.weights() == (0, 100)
    ready = fleet.readiness()
    assert ready is not None
    # Flux re-applies every 2 s and reads Ready Unknown (Progressing) while an apply runs, so one read may
    # land inside one: what must hold is that its applies succeed, so the next settled read is True.
    fleet.wait_readiness(ready.last_attempted, "True", "ReconciliationSucceeded", timeout=30)


def test_without_if_not_present_flux_reverts_the_weights_until_the_operator_stops_fighting(
    fleet: Fleet, exporter: IstioTrafficExporter
) -> None:
    namespace = fleet.namespace
    rollout = fleet.rollout
    healthy_traffic(exporter, namespace)
    pair = fleet.model_rollout(
        stable=(STABLE, "gpt-4o"),
        canary=(CANARY, "claude-a"),
        stages=[{"weight": 10, "duration": "10m"}, {"weight": 100}],
    )
    fleet.commit("roll out claude-a", rollout=pair, vs=fleet.virtual_service())
    fleet.follow(health_check=False)
    rollout.wait_reasons("RolloutStarted", timeout=30)
    corrected = wait_for(
        "a DriftCorrected Event naming kustomize-controller",
        lambda: [m for _, r, m in rollout.events() if r == "DriftCorrected" and "kustomize-controller" in m],
        timeout=30,
    )
    print(f"first correction: {corrected[0]}")
    held = rollout.wait_status(
        "the drift limit", lambda s: (s.get("phase"), s.get("reason")) == ("Degraded", "DriftLimit"), 90
    )
    corrections = rollout.reasons().count("DriftCorrected")
    print(f"{corrections} corrections, then: {held['message']}")
    assert corrections >= 5
