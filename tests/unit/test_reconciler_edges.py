"""Edges of the reconciler that the main reconciler tests pass over, each pinned so that losing the behaviour
fails a test: a stale rollout body never overwrites a newer status or moves traffic (and status writes carry
the resourceVersion they were decided on); a VirtualService in another namespace is the one measured and
written; the spec's subset label reaches the rendered queries. Over the in-memory fakes of `fakes`, as
`test_reconciler`."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from fakes import NAMESPACE, World, sample_spec, sample_vs
from modelrollout import api
from modelrollout.kube import Kube, RolloutRef, StaleObject
from modelrollout.metrics.templates import (
    TemplateVariables,
    grouped_gate_query,
    render_gate_query,
    request_count_query,
)

P, F = api.Verdict.PASS, api.Verdict.FAIL


def world(spec: dict[str, Any] | None = None) -> World:
    w = World()
    w.server.put_vs(sample_vs())
    w.server.create_rollout(spec or sample_spec())
    return w


def at_stage_two(w: World) -> None:
    w.tick()
    w.tick(timedelta(minutes=1))
    assert (w.server.status().stage, w.server.weights()) == (1, (50, 50))


def rolled_back_after(w: World) -> dict[str, Any]:
    """Roll the rollout back from stage 2 (50%); the body read just before, while it was Progressing."""
    at_stage_two(w)
    stale = w.server.rollout()
    w.measurer.verdict = F
    w.tick(timedelta(seconds=30))
    assert (w.server.status().phase, w.server.weights()) == (api.Phase.ROLLED_BACK, (100, 0))
    w.measurer.verdict = P
    return stale


# ---- status written with optimistic concurrency ----


def test_every_status_write_is_conditional_on_the_version_the_tick_read() -> None:
    w = world()
    read = w.server.rollout()["metadata"]["resourceVersion"]
    w.tick()
    assert w.server.status_versions[0] == read
    assert None not in w.server.status_versions


def test_the_status_patch_carries_the_resource_version_and_a_conflict_is_a_stale_object() -> None:
    """The real adapter: the merge patch names the version it was decided on, so the API server refuses it
    (409) once the object has moved on."""
    patches: list[dict[str, Any]] = []

    class StatusEndpoint:
        def __init__(self) -> None:
            self.answer: Any = {"metadata": {"resourceVersion": "8"}}

        def patch_namespaced_custom_object_status(self, *args: Any, **options: Any) -> Any:
            patches.append(args[-1])
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer

    kube = Kube(client.ApiClient())
    endpoint = StatusEndpoint()
    kube._objects = endpoint  # type: ignore[assignment]
    ref = RolloutRef(NAMESPACE, "chat", "uid-chat")
    status = api.ModelRolloutStatus(phase=api.Phase.ROLLED_BACK)

    assert asyncio.run(kube.record_status(ref, status, "7")) == endpoint.answer
    assert patches[0]["metadata"] == {"resourceVersion": "7"}
    assert patches[0]["status"]["phase"] == "RolledBack"

    endpoint.answer = ApiException(status=409, reason="Conflict")
    with pytest.raises(StaleObject):
        asyncio.run(kube.record_status(ref, status, "7"))


def test_a_body_from_before_our_own_rollback_moves_no_traffic() -> None:
    """The watch hands the driver the Progressing body after our rollback was recorded: the reconciler decides
    on what its own write stored, so the canary gets nothing back, not even for a moment."""
    w = world()
    stale = rolled_back_after(w)
    writes = w.server.vs_writes

    asyncio.run(w.reconciler.reconcile(stale))

    assert (w.server.status().phase, w.server.weights()) == (api.Phase.ROLLED_BACK, (100, 0))
    assert w.server.vs_writes == writes


def test_a_restarted_operator_handed_a_stale_body_keeps_the_newer_status() -> None:
    """A new leader whose watch is behind: the body says Progressing at 50%, the stored rollout is RolledBack.
    Its status write is refused, and the decision made again on the stored rollout leaves it RolledBack."""
    w = world()
    stale = rolled_back_after(w)
    w.reconciler = w.new_operator()
    w.now += timedelta(seconds=5)

    asyncio.run(w.reconciler.reconcile(stale))

    status = w.server.status()
    assert (status.phase, status.canary_weight, w.server.weights()) == (api.Phase.ROLLED_BACK, 0, (100, 0))
    assert status.rollback is not None
    assert w.reasons().count("RolledBack") == 1


# ---- a VirtualService in another namespace ----


def mesh_world() -> World:
    """The rollout in `llm` routes through the VirtualService `mesh/llm`; `llm/llm` is someone else's."""
    w = World()
    w.server.put_vs(sample_vs(namespace="mesh"))
    w.server.put_vs(sample_vs())
    spec = sample_spec()
    spec["trafficRouting"]["istio"]["virtualService"]["namespace"] = "mesh"
    w.server.create_rollout(spec)
    return w


def test_a_virtual_service_in_another_namespace_is_the_one_written() -> None:
    w = mesh_world()
    untouched = w.server.vs()
    w.tick()
    w.tick(timedelta(minutes=1))

    assert w.server.weights(namespace="mesh") == (50, 50)
    assert w.server.vs() == untouched
    routing = w.server.status().routing
    assert routing is not None
    assert routing.virtual_service == "mesh/llm"


def test_checks_resolve_short_hosts_in_the_virtual_services_namespace() -> None:
    """Istio resolves a short host in the namespace of the VirtualService that routes to it."""
    w = mesh_world()
    w.tick()
    w.tick(timedelta(minutes=1))
    assert w.measurer.calls > 0
    assert set(w.measurer.namespaces) == {"mesh"}


# ---- the subset label ----


def test_the_specs_subset_label_selects_each_subset_in_the_built_in_queries() -> None:
    raw = sample_spec(subsetLabel="destination_canonical_revision")
    raw["stable"] = {"host": "llm", "subset": "v1", "model": "gpt-4o"}
    raw["canary"] = {"host": "llm", "subset": "v2", "model": "claude-opus-4-8"}
    spec = api.parse_spec(raw)
    gate = spec.analysis.gates[0]
    variables = TemplateVariables.for_spec(
        spec, rollout_name="chat", rollout_namespace=NAMESPACE, hosts_namespace=NAMESPACE
    )

    canary = render_gate_query(gate, variables)
    stable = render_gate_query(gate, variables.targeting("stable"))
    assert 'destination_canonical_revision="v2"' in canary
    assert 'destination_canonical_revision="v1"' in stable
    assert "destination_version" not in canary + stable
    assert 'destination_canonical_revision="v2"' in request_count_query(variables)
    grouped = grouped_gate_query(gate, variables)
    assert grouped is not None
    assert dict(zip(grouped.labels, grouped.key, strict=True))["destination_canonical_revision"] == "v2"
