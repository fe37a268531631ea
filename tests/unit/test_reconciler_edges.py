"""Edges of the reconciler that the main reconciler tests pass over, each pinned so that losing the behaviour
fails a test: a stale rollout body never overwrites a newer status or moves traffic (and status writes carry
the resourceVersion they were decided on); a VirtualService in another namespace is the one measured and
written; the spec's subset label reaches the rendered queries; an invalid spec measures nothing and holds the
traffic; a new pair after a rollback drops the old canary from the route; a built-in template that does not
render is an InvalidSpec; a VirtualService write the API server does not store as sent is a failed write.
Over the in-memory fakes of `fakes`, as `test_reconciler`."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from fakes import CANARY, NAMESPACE, STABLE, World, sample_spec, sample_vs
from modelrollout import api
from modelrollout.kube import Kube, RolloutRef, StaleObject
from modelrollout.kubeclient import ApiError
from modelrollout.metrics import templates
from modelrollout.metrics.families import FAMILIES
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


def conditions(w: World) -> dict[str, api.Condition]:
    return {c.type: c for c in w.server.status().conditions}


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

        async def request(self, method: str, path: str, **options: Any) -> Any:
            assert (method, path) == (
                "PATCH",
                f"/apis/{api.GROUP}/{api.VERSION}/namespaces/llm/{api.PLURAL}/chat/status",
            )
            assert options["content_type"] == "application/merge-patch+json"
            patches.append(options["body"])
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer

    endpoint = StatusEndpoint()
    kube = Kube(endpoint)  # type: ignore[arg-type]
    ref = RolloutRef(NAMESPACE, "chat", "uid-chat")
    status = api.ModelRolloutStatus(phase=api.Phase.ROLLED_BACK)

    assert asyncio.run(kube.record_status(ref, status, "7")) == endpoint.answer
    assert patches[0]["metadata"] == {"resourceVersion": "7"}
    assert patches[0]["status"]["phase"] == "RolledBack"

    endpoint.answer = ApiError(409, "Conflict")
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


# ---- an invalid spec ----


def test_a_promoted_rollout_is_not_measured_again_through_an_invalid_spec_and_its_fix() -> None:
    w = world()
    at_stage_two(w)
    w.tick(timedelta(minutes=1))
    w.tick(timedelta(seconds=30))
    assert w.server.status().phase == api.Phase.PROMOTED
    checks, writes = w.measurer.calls, w.server.vs_writes
    good = w.server.rollout()["spec"]

    w.server.edit_rollout(lambda obj: obj["spec"].__setitem__("stages", [{"weight": 50}]))
    w.tick(timedelta(seconds=30))
    w.server.edit_rollout(lambda obj: obj.__setitem__("spec", good))
    for _ in range(3):
        w.tick(timedelta(seconds=30))

    assert w.server.status().phase == api.Phase.PROMOTED
    assert w.measurer.calls == checks
    assert (w.server.vs_writes, w.server.weights()) == (writes, (0, 100))
    assert w.reasons().count("Promoted") == 1


def test_a_rollout_invalid_mid_way_holds_its_traffic_and_resumes_at_the_same_stage() -> None:
    w = world()
    at_stage_two(w)
    checks, writes = w.measurer.calls, w.server.vs_writes
    good = w.server.rollout()["spec"]

    w.server.edit_rollout(lambda obj: obj["spec"].__setitem__("stages", [{"weight": 50}]))
    for _ in range(3):
        w.tick(timedelta(seconds=10))
        status = w.server.status()
        assert (status.phase, status.reason) == (api.Phase.DEGRADED, "InvalidSpec")
        assert (status.stage, status.canary_weight, w.server.weights()) == (1, 50, (50, 50))
    assert (w.measurer.calls, w.server.vs_writes) == (checks, writes)

    w.server.edit_rollout(lambda obj: obj.__setitem__("spec", good))
    w.tick(timedelta(seconds=1))

    status = w.server.status()
    assert (status.phase, status.stage, status.canary_weight) == (api.Phase.PROGRESSING, 1, 50)
    assert (w.server.vs_writes, w.server.weights()) == (writes, (50, 50))
    assert conditions(w)["InvalidSpec"].status == "False"
    assert w.reasons().count("RolloutStarted") == 1


def test_a_built_in_template_that_does_not_render_is_an_invalid_spec_that_moves_no_traffic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The models take the gate (its source is listed as serving the template), but the metric families the
    templates are built from lack what it needs: the reconciler's own check refuses it before any traffic
    moves, naming the gate."""
    families = dict(FAMILIES)
    families["vllm"] = replace(families["vllm"], time_to_first_token=None)
    monkeypatch.setattr(templates, "FAMILIES", families)
    spec = sample_spec()
    spec["analysis"]["gates"].append({"name": "ttft", "template": "llm-ttft-p99", "source": "vllm", "max": 2})
    assert not isinstance(api.checked_spec(spec), list)
    w = world(spec)

    w.tick()

    status = w.server.status()
    assert (status.phase, status.reason) == (api.Phase.DEGRADED, "InvalidSpec")
    assert "spec.analysis.gates[1].template" in status.message
    assert "llm-ttft-p99" in status.message
    assert (w.server.vs_writes, w.measurer.calls) == (0, 0)
    assert w.reasons() == ["InvalidSpec"]


# ---- a new pair after a finished rollout ----


def test_a_new_canary_after_a_rollback_drops_the_old_canary_from_the_route() -> None:
    """A rolled-back rollout has nothing to return (its canary sits at 0%): the new pair starts at once, and
    the old canary's destination leaves the route with that first write."""
    w = world()
    rolled_back_after(w)
    assert CANARY in {e["destination"]["host"] for e in w.server.vs()["spec"]["http"][0]["route"]}

    w.server.edit_rollout(
        lambda obj: obj["spec"].__setitem__("canary", {"host": "llm-next", "model": "next"})
    )
    w.tick(timedelta(seconds=5))

    assert w.server.vs()["spec"]["http"][0]["route"] == [
        {"destination": {"host": STABLE}, "weight": 90},
        {"destination": {"host": "llm-next"}, "weight": 10},
    ]
    status = w.server.status()
    assert (status.phase, status.stage, status.canary_weight) == (api.Phase.PROGRESSING, 0, 10)
    assert "Superseded" not in w.reasons()  # the start itself dropped it, no retirement step ran


# ---- the read-back of a VirtualService write ----


def test_a_write_stored_with_other_weights_is_a_failed_write_and_claims_no_new_weight() -> None:
    """A mutating webhook (or anything between the write and the store) puts the old weights back: the
    answer does not show what was written, so the advance is not recorded."""
    w = world()
    w.tick()
    assert w.server.weights() == (90, 10)

    def keep_ten_percent(vs: dict[str, Any]) -> None:
        for entry in vs["spec"]["http"][0]["route"]:
            entry["weight"] = 10 if entry["destination"]["host"] == CANARY else 90

    w.server.admit_vs = keep_ten_percent
    w.tick(timedelta(minutes=1))

    status = w.server.status()
    assert (status.stage, status.canary_weight, w.server.weights()) == (0, 10, (90, 10))
    degraded = conditions(w)["Degraded"]
    assert (degraded.status, degraded.reason) == ("True", "WriteFailed")
    assert "reads back canary weight 10" in degraded.message
    assert "StageAdvanced" not in w.reasons()
    assert w.reasons().count("WriteFailed") == 1


def test_a_restarted_operator_handed_a_stale_body_never_moves_traffic_to_the_canary() -> None:
    """Not even for a moment: the VirtualService write is conditional on the VirtualService only, so the
    rollout is confirmed current before traffic moves on a decision no conditional status write confirmed."""
    w = World()
    w.server.put_vs(sample_vs())
    w.server.create_rollout(sample_spec())
    w.tick()
    w.tick(timedelta(minutes=1))
    stale = w.server.rollout()  # Progressing, stage 2 at 50%
    w.measurer.verdict = api.Verdict.FAIL
    w.tick(timedelta(seconds=30))
    assert (w.server.status().phase, w.server.weights()) == (api.Phase.ROLLED_BACK, (100, 0))
    w.measurer.verdict = api.Verdict.PASS
    w.reconciler = w.new_operator()  # a new leader whose watch is behind the old leader's writes
    seen: list[tuple[int, int]] = []
    replace = w.server.replace_vs

    def recorded(namespace: str, name: str, body: dict[str, Any], manager: str) -> dict[str, Any]:
        stored = replace(namespace, name, body, manager)
        seen.append(w.server.weights())
        return stored

    w.server.replace_vs = recorded  # type: ignore[method-assign]
    w.now += timedelta(seconds=5)
    asyncio.run(w.reconciler.reconcile(stale))
    assert seen == []  # the decision on the stale body would have written (50, 50), then put it back
    assert (w.server.status().phase, w.server.weights()) == (api.Phase.ROLLED_BACK, (100, 0))


def test_an_istio_template_with_source_istio_is_a_valid_spec_the_operator_acts_on() -> None:
    """The API (the model and the CRD's rule) lets istio-* templates name source istio."""
    spec = sample_spec()
    spec["analysis"]["gates"][0]["source"] = "istio"
    assert not isinstance(api.checked_spec(spec), list)
    w = World()
    w.server.put_vs(sample_vs())
    w.server.create_rollout(spec)
    w.tick()
    status = w.server.status()
    assert (status.phase, w.server.weights()) == (api.Phase.PROGRESSING, (90, 10)), status.message
