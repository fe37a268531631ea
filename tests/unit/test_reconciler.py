"""The reconciler (observe, decide, execute the plan) over in-memory fakes of the API server, the
VirtualService router and the metrics: failed and refused writes, conflicts, actions that must survive a
failure, deletion racing a tick, and spec edits mid-rollout. The VirtualService goes through the real router
and transforms; only the API server is played by `fakes.FakeApiServer`."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from fakes import NAMESPACE, STABLE, World, sample_spec, sample_vs
from modelrollout import api
from modelrollout.kube import ACTION_ANNOTATION, without_managed_fields
from modelrollout.refresh_budget import RefreshBudget

P, F = api.Verdict.PASS, api.Verdict.FAIL


def world(**analysis: Any) -> World:
    w = World()
    w.server.put_vs(sample_vs())
    w.server.create_rollout(sample_spec(**analysis))
    return w


def at_stage_two(w: World) -> None:
    w.tick()
    w.tick(timedelta(minutes=1))
    assert (w.server.status().stage, w.server.weights()) == (1, (50, 50))


def rollbacks_counted(w: World) -> float:
    total = 0.0
    for metric in w.reconciler.telemetry.registry.collect():
        if metric.name == "modelrollout_rollbacks":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


def test_a_check_is_told_the_live_weight_and_the_recorded_status() -> None:
    """Sequential gates count per stage at the split the VirtualService shows, from the counts in status."""
    w = world()
    at_stage_two(w)
    w.tick(timedelta(seconds=30))
    assert w.measurer.seen[-1] == (50, 1)


def test_a_due_check_the_measurer_put_off_is_reported_as_the_operator_behind() -> None:
    w = world()
    at_stage_two(w)
    w.measurer.verdict = None  # what the measurer answers when the operator's own queue deferred the check
    w.tick(timedelta(seconds=30))
    conditions = {c.type: c for c in w.server.status().conditions}
    assert (conditions["AnalysisDelayed"].status, conditions["AnalysisDelayed"].reason) == (
        "True",
        "OperatorBehind",
    )
    assert w.reasons().count("AnalysisDelayed") == 1
    assert w.server.status().phase == api.Phase.PROGRESSING
    w.measurer.verdict = P
    w.tick(timedelta(seconds=30))
    assert {c.type: c.status for c in w.server.status().conditions}["AnalysisDelayed"] == "False"


def test_a_check_an_alert_asked_for_is_measured_as_asked_for() -> None:
    """So that it reads Prometheus anew rather than a shared answer from before the alert."""
    w = world()
    at_stage_two(w)
    checks = w.measurer.calls
    w.now += timedelta(seconds=5)  # well before the next check is due
    asyncio.run(w.reconciler.reconcile(w.server.rollout("chat"), check_requested=True))
    assert w.measurer.calls == checks + 1
    assert w.measurer.requested[-2:] == [False, True]


def test_a_slow_reconciliation_is_logged_with_where_its_time_went(caplog: pytest.LogCaptureFixture) -> None:
    w = world()
    at_stage_two(w)
    w.reconciler.config.slow_reconcile_seconds = 0.05
    w.measurer.delay = 0.08
    with caplog.at_level(logging.WARNING, logger="modelrollout.reconciler"):
        w.tick(timedelta(seconds=30))
    [line] = [r.getMessage() for r in caplog.records if "reconciliation took" in r.getMessage()]
    assert line.startswith(f"{NAMESPACE}/chat: reconciliation took 0.")
    check = float(line.split("check ")[1].split(" s")[0])
    assert 0.08 <= check < 0.5
    assert "the rest" in line

    caplog.clear()
    w.measurer.delay = 0.0
    with caplog.at_level(logging.WARNING, logger="modelrollout.reconciler"):
        w.tick(timedelta(seconds=30))
    assert not [r for r in caplog.records if "reconciliation took" in r.getMessage()]


# ---- a return to stable: the VirtualService first, recorded there by the write itself ----


def returns_on_the_virtual_service(w: World) -> dict[str, Any]:
    raw = (w.server.vs()["metadata"].get("annotations") or {}).get("modelrollout.io/returning")
    return json.loads(raw) if raw else {}


def test_a_rollback_writes_the_virtual_service_before_any_status_write() -> None:
    """Nothing stands between the failing check and the VirtualService write: the return's record travels
    on that write, and the status that claims it comes after."""
    w = world()
    at_stage_two(w)
    status_writes_before = w.server.status_writes
    at_the_write: list[int] = []
    w.server.before_vs_write = lambda: at_the_write.append(w.server.status_writes)
    w.measurer.verdict, w.measurer.value = F, 0.3
    w.tick(timedelta(seconds=10))

    assert at_the_write == [status_writes_before]
    status = w.server.status()
    assert (status.phase, w.server.weights()) == (api.Phase.ROLLED_BACK, (100, 0))
    record = returns_on_the_virtual_service(w)[f"{NAMESPACE}/chat"]
    assert record["rollback"]["reason"] == "AnalysisFailed"
    assert status.stage_started_at is not None
    started = status.stage_started_at.isoformat().replace("+00:00", "Z")
    assert (record["stage"], record["stageStartedAt"]) == (1, started)


def test_an_operator_stopped_between_the_rollback_write_and_its_record_finishes_the_return() -> None:
    w = world()
    at_stage_two(w)
    kube = w.reconciler.kube
    record_status = kube.record_status

    async def connection_lost(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionResetError("the operator's pod was killed")

    kube.record_status = connection_lost  # type: ignore[method-assign]
    w.measurer.verdict, w.measurer.value = F, 0.3
    with pytest.raises(ConnectionResetError):
        w.tick(timedelta(seconds=10))
    assert w.server.weights() == (100, 0)
    assert w.server.status().phase == api.Phase.PROGRESSING  # the status never got the return
    assert w.notifier.submitted == []

    w.reconciler = w.new_operator()  # a restarted operator, whose first check passes
    w.reconciler.kube.record_status = record_status  # type: ignore[method-assign]
    w.measurer.verdict, w.measurer.value = P, 0.001
    w.tick(timedelta(seconds=5))

    status = w.server.status()
    assert (status.phase, w.server.weights()) == (api.Phase.ROLLED_BACK, (100, 0))
    assert status.rollback is not None
    assert status.rollback.reason == "AnalysisFailed"
    assert "DriftCorrected" not in w.reasons()
    assert [n.event for n in w.notifier.submitted] == ["RolledBack"]
    assert rollbacks_counted(w) == 1
    w.tick(timedelta(seconds=10))
    assert w.server.weights() == (100, 0)
    assert [n.event for n in w.notifier.submitted] == ["RolledBack"]


def test_a_rollback_whose_status_write_meets_a_conflict_is_recorded_on_the_next_attempt() -> None:
    w = world()
    at_stage_two(w)
    w.server.conflict_status_writes = 1
    w.measurer.verdict, w.measurer.value = F, 0.3
    vs_writes = w.server.vs_writes
    w.tick(timedelta(seconds=10))

    status = w.server.status()
    assert (status.phase, w.server.weights()) == (api.Phase.ROLLED_BACK, (100, 0))
    assert w.server.vs_writes == vs_writes + 1  # finishing it wrote nothing again
    assert [n.event for n in w.notifier.submitted] == ["RolledBack"]


def test_a_new_rollout_after_a_rollback_is_not_taken_back_by_the_old_return() -> None:
    """The record of a finished return stays on the VirtualService until our next write there; a new
    canary's rollout, whose first write is refused once, is not rolled back by it."""
    w = world()
    at_stage_two(w)
    w.measurer.verdict, w.measurer.value = F, 0.3
    w.tick(timedelta(seconds=10))
    assert w.server.status().phase == api.Phase.ROLLED_BACK
    assert returns_on_the_virtual_service(w)
    w.measurer.verdict, w.measurer.value = P, 0.001
    w.server.edit_rollout(lambda r: r["spec"]["canary"].update(model="claude-next"))
    w.server.refuse_vs_writes = 1
    w.tick(timedelta(seconds=10))
    assert w.server.weights() == (100, 0)
    assert returns_on_the_virtual_service(w)
    w.tick(timedelta(seconds=10))
    status = w.server.status()
    assert (status.phase, status.stage, status.rollback) == (api.Phase.PROGRESSING, 0, None)
    assert w.server.weights() == (90, 10)
    assert returns_on_the_virtual_service(w) == {}  # its first write took the record away
    w.tick(timedelta(seconds=10))
    assert w.server.status().phase == api.Phase.PROGRESSING


def test_a_deleted_rollout_takes_its_record_of_returns_with_its_claim() -> None:
    w = world()
    at_stage_two(w)
    w.measurer.verdict, w.measurer.value = F, 0.3
    w.tick(timedelta(seconds=10))
    assert returns_on_the_virtual_service(w)
    w.server.delete_rollout()
    w.delete()
    assert (w.server.claims(), returns_on_the_virtual_service(w)) == ({}, {})


def test_a_record_of_returns_in_a_shape_this_operator_does_not_know_is_no_return() -> None:
    w = world()
    at_stage_two(w)
    w.server.edit_vs(
        lambda vs: (
            vs["metadata"]
            .setdefault("annotations", {})
            .update({"modelrollout.io/returning": json.dumps({f"{NAMESPACE}/chat": {"rollback": "soon"}})})
        ),
        manager="modelrollout-operator",
    )
    w.tick(timedelta(seconds=10))
    status = w.server.status()
    assert (status.phase, status.rollback, w.server.weights()) == (api.Phase.PROGRESSING, None, (50, 50))


# ---- writes that fail ----


def test_a_refused_rollback_is_never_claimed_and_announced_once_when_it_goes_through() -> None:
    w = world()
    at_stage_two(w)
    w.server.refuse_vs_writes = 3
    w.measurer.verdict, w.measurer.value = F, 0.3
    for _ in range(3):
        w.tick(timedelta(seconds=10))
        status = w.server.status()
        assert w.server.weights() == (50, 50)
        assert status.phase == api.Phase.PROGRESSING  # never RolledBack while the VirtualService says 50%
        assert status.rollback is not None  # ... but the decided return is recorded, to be finished
        degraded = next(c for c in status.conditions if c.type == "Degraded")
        assert (degraded.status, degraded.reason) == ("True", "WriteFailed")
        assert "denied by policy" in degraded.message
    assert w.notifier.submitted == []
    assert rollbacks_counted(w) == 0
    assert w.reasons().count("WriteFailed") == 1  # one Event, then a count in the condition
    assert w.server.status().write_failures == 3
    assert "3 attempts in a row" in next(
        c.message for c in w.server.status().conditions if c.type == "Degraded"
    )

    w.tick(timedelta(seconds=10))  # the policy lets it through

    status = w.server.status()
    assert (status.phase, w.server.weights()) == (api.Phase.ROLLED_BACK, (100, 0))
    assert [n.event for n in w.notifier.submitted] == ["RolledBack"]
    # The notification carries the report's rows of the finished stages, the one rolled back last.
    stages = [(row["stage"], row["traffic"], row["outcome"]) for row in w.notifier.submitted[0].stages]
    assert stages[-1][1:] == ("50%", "RolledBack")
    assert stages[0][2].startswith("Advanced")
    assert rollbacks_counted(w) == 1
    assert next(c for c in status.conditions if c.type == "Degraded").status == "False"
    assert status.write_failures == 0
    w.tick(timedelta(seconds=10))
    assert [n.event for n in w.notifier.submitted] == ["RolledBack"]  # once


def test_a_conflict_on_the_virtual_service_is_observed_again_and_lands_in_the_same_tick() -> None:
    w = world()
    w.tick()
    w.server.conflict_vs_writes = 1
    w.tick(timedelta(minutes=1))
    assert (w.server.status().stage, w.server.weights()) == (1, (50, 50))
    assert "WriteFailed" not in w.reasons()


def test_a_virtual_service_that_keeps_changing_under_every_write_is_a_failed_write_said_once() -> None:
    """A 409 storm (another writer changing the VirtualService under each of a tick's attempts): the
    rollback stays decided and unclaimed, the status says why, a person hears of it once, not every tick."""
    w = world()
    at_stage_two(w)
    w.measurer.verdict, w.measurer.value = F, 0.3
    for tick in range(1, 4):
        w.server.conflict_vs_writes = 1_000
        w.tick(timedelta(seconds=10))
        status = w.server.status()
        assert w.server.weights() == (50, 50)
        assert status.phase == api.Phase.PROGRESSING
        assert status.rollback is not None  # decided, to be finished
        degraded = next(c for c in status.conditions if c.type == "Degraded")
        assert (degraded.status, degraded.reason) == ("True", "WriteFailed")
        assert "writes in a row (409" in degraded.message
        assert status.write_failures == tick
    assert w.notifier.submitted == []
    assert rollbacks_counted(w) == 0
    assert w.reasons().count("WriteFailed") == 1

    w.server.conflict_vs_writes = 0  # the other writer stops
    w.tick(timedelta(seconds=10))
    assert (w.server.status().phase, w.server.weights()) == (api.Phase.ROLLED_BACK, (100, 0))
    assert [n.event for n in w.notifier.submitted] == ["RolledBack"]


def test_a_stale_status_is_never_written_over_a_newer_one() -> None:
    """Someone else wrote the rollout between our read and our status write: the write is refused (409),
    the rollout read again and the decision made again on what it now says."""
    w = world()
    w.tick()
    w.server.conflict_status_writes = 1
    w.tick(timedelta(minutes=1))
    status = w.server.status()
    assert (status.stage, status.canary_weight, w.server.weights()) == (1, 50, (50, 50))
    assert w.reasons().count("StageAdvanced") == 1  # adopted once, not advanced twice


def test_a_body_older_than_our_own_write_is_not_decided_on() -> None:
    """A watch that has not caught up yet hands the driver the object before our last status write."""
    w = world()
    w.tick()
    old = w.server.rollout()
    w.tick(timedelta(minutes=1))  # stage 2 recorded
    asyncio.run(w.reconciler.reconcile(old))
    assert (w.server.status().stage, w.server.weights()) == (1, (50, 50))


def test_our_own_write_is_kept_only_until_the_watch_shows_it() -> None:
    """The object a status write returned stands in for older bodies, and is let go (with its memory) once a
    body shows the version it stored."""
    w = world()
    fields = [{"manager": "modelrollout-operator", "fieldsV1": {"f:status": {"f:phase": {}}}}]
    w.server.edit_rollout(lambda obj: obj["metadata"].__setitem__("managedFields", fields))
    w.tick()
    old = w.server.rollout()
    w.tick(timedelta(minutes=1))  # stage 2 recorded: the reconciler keeps what the write returned
    assert "managedFields" in w.server.rollout()["metadata"]
    asyncio.run(w.reconciler.reconcile(old))
    assert len(w.reconciler._latest) == 1
    assert "managedFields" not in next(iter(w.reconciler._latest.values()))[1]["metadata"]
    asyncio.run(w.reconciler.reconcile(w.server.rollout()))
    assert w.reconciler._latest == {}
    assert (w.server.status().stage, w.server.weights()) == (1, (50, 50))


def test_managed_fields_are_left_out_of_what_the_reconciler_keeps() -> None:
    obj = {"metadata": {"name": "a", "managedFields": [{"manager": "m"}]}, "spec": {}, "status": {"x": 1}}
    kept = without_managed_fields(obj)
    assert kept == {"metadata": {"name": "a"}, "spec": {}, "status": {"x": 1}}
    assert obj["metadata"]["managedFields"] == [{"manager": "m"}]  # the given object is left as it was
    assert without_managed_fields(kept) is kept


# ---- actions: at least once, and once ----


def test_a_promote_survives_a_refused_write_and_is_applied_once() -> None:
    w = world()
    spec = sample_spec()
    spec["stages"][0]["approval"] = "Manual"
    w.server.edit_rollout(lambda obj: obj.__setitem__("spec", spec))
    w.tick()
    w.tick(timedelta(minutes=1))
    assert w.server.status().awaiting_approval
    w.server.annotate("promote")
    w.server.refuse_vs_writes = 1

    w.tick()

    status = w.server.status()
    assert status.pending_action is not None
    assert status.pending_action.action == "promote"  # accepted, not applied
    assert ACTION_ANNOTATION not in w.server.rollout()["metadata"]["annotations"]
    assert (status.stage, w.server.weights()) == (0, (90, 10))

    w.tick(timedelta(seconds=1))
    w.tick(timedelta(seconds=1))

    status = w.server.status()
    assert (status.stage, status.canary_weight, w.server.weights()) == (1, 50, (50, 50))
    assert status.pending_action is None
    assert status.last_action is not None
    assert status.last_action.result == "advanced to stage 2/3"
    assert w.reasons().count("StageAdvanced") == 1


def test_an_action_accepted_before_a_restart_is_applied_once_not_twice() -> None:
    """The operator recorded the accepted action and died before it removed the annotation: the annotation
    still holding the same value is the same request."""
    w = world()
    at_stage_two(w)
    w.server.annotate("abort")
    status = w.server.status().model_copy(
        update={"pending_action": api.PendingAction(action="abort", accepted_at=w.now)}
    )
    w.server.edit_rollout(
        lambda obj: obj.__setitem__("status", status.model_dump(by_alias=True, mode="json"))
    )
    w.reconciler = w.new_operator()

    w.tick()

    status = w.server.status()
    assert (status.phase, w.server.weights()) == (api.Phase.ABORTED, (100, 0))
    assert ACTION_ANNOTATION not in w.server.rollout()["metadata"]["annotations"]
    assert status.last_action is not None
    assert status.last_action.result == "aborted: traffic on stable"


# ---- spec edits mid-rollout ----


@pytest.mark.parametrize(
    ("stages", "stage", "weights", "says"),
    [
        ([5, 100], 0, (95, 5), "continuing at stage 1/2 at 5%"),  # the current stage is gone
        ([10, 20, 50, 100], 2, (50, 50), "continuing at stage 3/4 at 50%"),  # a stage inserted before
        ([10, 40, 100], 1, (60, 40), "continuing at stage 2/3 at 40%"),  # its weight changed
        ([60, 100], 0, (50, 50), "below stage 1/2 (60%)"),  # every stage above the live weight
    ],
)
def test_an_edit_of_the_stages_never_raises_traffic(
    stages: list[int], stage: int, weights: tuple[int, int], says: str
) -> None:
    w = world()
    at_stage_two(w)

    def edit(obj: dict[str, Any]) -> None:
        obj["spec"]["stages"] = [{"weight": weight, "duration": "1m"} for weight in stages]

    w.server.edit_rollout(edit)
    w.tick(timedelta(seconds=5))

    status = w.server.status()
    assert (status.stage, w.server.weights()) == (stage, weights)
    assert status.stage_count == len(stages)
    changed = [m for _, r, m in w.server.events if r == "StagesChanged"]
    assert len(changed) == 1
    assert says in changed[0]
    # It keeps analysing and advancing by its rules.
    w.tick(timedelta(minutes=1))
    w.tick(timedelta(minutes=1))
    assert w.server.status().canary_weight > weights[1] or w.server.status().phase == api.Phase.PROMOTED


def test_a_new_canary_host_first_returns_traffic_and_drops_the_old_destination() -> None:
    w = world()
    at_stage_two(w)

    def new_canary(obj: dict[str, Any]) -> None:
        obj["spec"]["canary"] = {"host": "llm-next", "model": "next"}

    w.server.edit_rollout(new_canary)
    w.tick(timedelta(seconds=5))

    route = w.server.vs()["spec"]["http"][0]["route"]
    assert route == [
        {"destination": {"host": STABLE}, "weight": 90},
        {"destination": {"host": "llm-next"}, "weight": 10},
    ]
    status = w.server.status()
    assert (status.phase, status.stage, status.canary_weight) == (api.Phase.PROGRESSING, 0, 10)
    assert status.canary is not None
    assert status.canary.host == "llm-next"
    assert w.reasons()[-2:] == ["Superseded", "RolloutStarted"]
    assert w.server.claims() == {"primary": f"{NAMESPACE}/chat"}


def test_a_warning_before_a_new_pair_is_posted_once_when_the_record_after_its_write_conflicts() -> None:
    """StableChanged goes out before the new pair's first write; a 409 on the status record after that write
    leads to a new decision within the tick, which must not warn a second time."""
    w = world()
    at_stage_two(w)
    w.tick(timedelta(minutes=1))
    w.tick(timedelta(seconds=30))
    assert w.server.status().phase == api.Phase.PROMOTED

    def other_stable(obj: dict[str, Any]) -> None:
        obj["spec"]["stable"] = {"host": STABLE, "model": "gpt-4o"}  # not what serves 100% now
        obj["spec"]["canary"] = {"host": "llm-next", "model": "next"}

    w.server.edit_rollout(other_stable)
    w.server.conflict_status_writes = 1
    w.tick(timedelta(seconds=5))
    assert w.reasons().count("StableChanged") == 1
    assert w.reasons().count("RolloutStarted") == 2
    assert w.server.status().canary is not None


def test_a_finished_rollout_keeps_its_phase_through_an_invalid_spec() -> None:
    w = world()
    at_stage_two(w)
    w.tick(timedelta(minutes=1))
    w.tick(timedelta(seconds=30))
    assert w.server.status().phase == api.Phase.PROMOTED
    writes = w.server.vs_writes
    good = w.server.rollout()["spec"]
    w.server.edit_rollout(lambda obj: obj["spec"].__setitem__("stages", [{"weight": 50}]))

    w.tick(timedelta(seconds=5))

    status = w.server.status()
    assert status.phase == api.Phase.PROMOTED
    by_type = {c.type: (c.status, c.reason) for c in status.conditions}
    assert by_type["InvalidSpec"] == ("True", "InvalidSpec")
    assert by_type["Stalled"] == ("True", "InvalidSpec")
    assert "the last stage must have weight 100" in status.message

    w.server.edit_rollout(lambda obj: obj.__setitem__("spec", good))
    w.tick(timedelta(seconds=5))
    w.tick(timedelta(minutes=5))

    status = w.server.status()
    assert status.phase == api.Phase.PROMOTED
    assert w.server.weights() == (0, 100)
    assert w.server.vs_writes == writes  # not analysed again, not sent back to 0%
    assert w.reasons().count("Promoted") == 1
    assert {c.type: c.status for c in status.conditions}["Ready"] == "True"


def test_a_query_with_an_unknown_variable_moves_no_traffic() -> None:
    w = World()
    w.server.put_vs(sample_vs())
    spec = sample_spec()
    spec["analysis"]["gates"].append(
        {"name": "refusals", "query": 'sum(rate(x{service="{{ canary.modle }}"}[{{ window }}]))', "max": 1}
    )
    w.server.create_rollout(spec)

    w.tick()

    status = w.server.status()
    assert (status.phase, status.reason) == (api.Phase.DEGRADED, "InvalidSpec")
    assert "spec.analysis.gates[1].query: unknown variable {{ canary.modle }}" in status.message
    assert w.server.vs_writes == 0
    assert w.measurer.calls == 0


# ---- a new rollout, claims and deletion ----


def test_a_new_rollout_records_pending_before_it_moves_traffic() -> None:
    w = world()
    seen: list[api.ModelRolloutStatus] = []
    w.server.before_vs_write = lambda: seen.append(w.server.status())

    w.tick()

    assert seen[0].phase == api.Phase.PENDING
    assert seen[0].routing == api.RoutingRecord(
        virtual_service=f"{NAMESPACE}/llm", api_version="networking.istio.io/v1", routes=["primary"]
    )
    assert w.server.status().phase == api.Phase.PROGRESSING


def test_two_rollouts_on_two_routes_of_one_virtual_service_both_progress() -> None:
    w = World()
    vs = sample_vs()
    vs["spec"]["http"].append({"name": "batch", "route": [{"destination": {"host": STABLE}, "weight": 100}]})
    w.server.put_vs(vs)
    w.server.create_rollout(sample_spec(), name="chat")
    batch = sample_spec()
    batch["trafficRouting"]["istio"]["routes"] = ["batch"]
    w.server.create_rollout(batch, name="batch")

    w.tick(name="chat")
    w.tick(name="batch")

    assert w.server.weights(route=0) == (90, 10)
    assert w.server.weights(route=1) == (90, 10)
    assert w.server.claims() == {"primary": f"{NAMESPACE}/chat", "batch": f"{NAMESPACE}/batch"}
    assert "Conflict" not in w.reasons()


def test_a_claim_left_by_a_deleted_rollout_is_taken_over() -> None:
    w = World()
    vs = sample_vs()
    vs["metadata"]["annotations"] = {
        "modelrollout.io/managed-by": json.dumps({"primary": f"{NAMESPACE}/gone"})
    }
    w.server.put_vs(vs)
    w.server.create_rollout(sample_spec())

    w.tick()

    assert w.server.claims() == {"primary": f"{NAMESPACE}/chat"}
    assert w.server.weights() == (90, 10)
    assert "ClaimTakenOver" in w.reasons()


def test_a_live_claim_is_left_alone() -> None:
    w = World()
    vs = sample_vs()
    vs["metadata"]["annotations"] = {
        "modelrollout.io/managed-by": json.dumps({"primary": f"{NAMESPACE}/first"})
    }
    w.server.put_vs(vs)
    w.server.create_rollout(sample_spec(), name="first")
    w.server.create_rollout(sample_spec(), name="chat")

    w.tick(name="chat")

    assert w.server.status("chat").phase == api.Phase.DEGRADED
    assert w.server.claims() == {"primary": f"{NAMESPACE}/first"}
    assert w.server.vs_writes == 0


def test_deletion_acts_on_what_was_recorded_even_when_the_spec_is_invalid_now() -> None:
    w = world()
    at_stage_two(w)
    w.server.edit_rollout(lambda obj: obj["spec"]["trafficRouting"]["istio"].__setitem__("routes", ["nope"]))
    w.server.edit_rollout(lambda obj: obj["spec"].__setitem__("stages", [{"weight": 50}]))

    w.delete()

    assert w.server.weights() == (100, 0)
    assert w.server.claims() == {}


def test_deletion_releases_the_claim_when_the_route_is_gone() -> None:
    w = world()
    at_stage_two(w)
    w.server.edit_vs(lambda vs: vs["spec"]["http"][0].__setitem__("name", "renamed"))

    w.delete()

    assert w.server.claims() == {}


def test_a_rollout_moved_to_another_virtual_service_gives_up_its_claim_on_one_whose_route_is_gone() -> None:
    """The spec names another VirtualService after the recorded route was renamed: nothing of the rollout's
    is left to put back there, but its claim goes, or it would outlive the rollout."""
    w = world()
    at_stage_two(w)
    w.server.put_vs(sample_vs(name="llm-next"))
    w.server.edit_vs(lambda vs: vs["spec"]["http"][0].__setitem__("name", "renamed"))
    assert w.server.claims() == {"primary": f"{NAMESPACE}/chat"}

    def move(obj: dict[str, Any]) -> None:
        obj["spec"]["trafficRouting"]["istio"]["virtualService"]["name"] = "llm-next"

    w.server.edit_rollout(move)
    w.tick(timedelta(seconds=5))

    assert w.server.claims() == {}
    assert w.server.claims("llm-next") == {"primary": f"{NAMESPACE}/chat"}
    status = w.server.status()
    assert status.routing is not None
    assert status.routing.virtual_service == f"{NAMESPACE}/llm-next"
    w.delete()
    assert (w.server.claims(), w.server.claims("llm-next")) == ({}, {})


def test_a_deletion_during_a_tick_ends_at_stable_and_unclaimed() -> None:
    """The finalizer runs while a tick is about to write: the tick's write meets a 409, it reads the rollout
    again, sees it being deleted and writes nothing more; nothing re-claims the released route."""
    w = world()
    at_stage_two(w)
    w.measurer.verdict = P

    async def delete_now() -> None:
        w.server.delete_rollout()
        await w.reconciler.on_delete(w.server.rollout())

    w.server.before_vs_write = delete_now
    w.tick(timedelta(minutes=1))

    assert w.server.weights() == (100, 0)
    assert w.server.claims() == {}


def test_a_stopped_driver_writes_nothing() -> None:
    w = world()
    w.tick()
    writes = w.server.vs_writes
    asyncio.run(w.reconciler.reconcile(w.server.rollout(), may_write=lambda: False))
    w.now += timedelta(minutes=1)
    asyncio.run(w.reconciler.reconcile(w.server.rollout(), may_write=lambda: False))
    assert w.server.vs_writes == writes


def test_deletion_retries_a_refused_write() -> None:
    w = world()
    at_stage_two(w)
    w.server.refuse_vs_writes = 1
    with pytest.raises(Exception, match="HTTP 403: denied by policy"):
        w.delete()
    w.delete()
    assert (w.server.weights(), w.server.claims()) == ((100, 0), {})


# ---- the compact report ----


def test_the_status_carries_the_compact_report_and_a_quiet_tick_does_not_rewrite_it() -> None:
    w = world()
    at_stage_two(w)
    w.measurer.verdict, w.measurer.value = F, 0.3
    w.tick(timedelta(seconds=30))
    status = w.server.status()
    assert status.phase == api.Phase.ROLLED_BACK
    assert status.report is not None
    assert status.report.decision.startswith("RolledBack: rolled back at stage 2/3")
    assert status.report.stages == [
        "1/3 at 10% for 60s: Advanced (Soak), last check Pass",
        "2/3 at 50% for 30s: RolledBack, last check Fail",
    ]
    assert status.report.gates == [
        "error-rate: control -, treatment 0.3, delta -, required <= 0.02: Fail: breached"
    ]
    writes = w.server.status_writes
    w.tick(timedelta(seconds=30))
    assert w.server.status_writes == writes


def test_a_spec_of_any_shape_leaves_a_report_and_never_crashes_the_tick() -> None:
    """An invalid spec is not read for the report: fields of the wrong type cannot break the driver."""
    w = world()
    at_stage_two(w)

    def mangle(obj: dict[str, Any]) -> None:
        obj["spec"]["analysis"] = "every gate"
        obj["spec"]["experiment"] = ["not", "a", "map"]
        obj["spec"]["stages"] = "many"

    w.server.edit_rollout(mangle)
    w.tick(timedelta(seconds=5))
    status = w.server.status()
    assert any(c.type == "InvalidSpec" and c.status == "True" for c in status.conditions)
    assert status.report is not None
    assert status.report.decision.startswith(f"{status.phase.value}: invalid spec")
    assert "spec.analysis" in status.report.decision
    assert status.report.stages[0] == "1/3 at 10% for 60s: Advanced (Soak), last check Pass"


def test_a_rollout_deleted_between_its_first_write_and_its_record_returns_traffic_to_stable() -> None:
    """Only the intent (where it routes) made it into status before the deletion; the write had landed."""
    w = World()
    w.server.put_vs(sample_vs())
    w.server.create_rollout(sample_spec())
    w.tick()
    assert w.server.weights() == (90, 10)
    stored = w.server.rollout()["status"]
    w.server.rollouts[(NAMESPACE, "chat")]["status"] = {"routing": stored["routing"], "message": "starting"}
    w.server.delete_rollout()
    w.delete()
    assert w.server.weights() == (100, 0)
    assert w.server.claims() == {}


# ---- quiet checks: numbers kept in memory, essentials written at once ----


def soaking_world(*others: str) -> World:
    """Stage 1 soaks for an hour, checked every 10 s: the rollout "chat" on the VirtualService "llm", and each
    of `others` on a VirtualService of its own name, checked at the same moments."""
    w = World()
    names = ("chat", *others)
    for name in names:
        vs = "llm" if name == "chat" else name
        w.server.put_vs(sample_vs(name=vs))
        spec = sample_spec()
        spec["stages"] = [{"weight": 10, "duration": "1h"}, {"weight": 100}]
        spec["trafficRouting"]["istio"]["virtualService"]["name"] = vs
        w.server.create_rollout(spec, name=name)
        w.tick(name=name)
    w.now += timedelta(seconds=10)
    for name in names:
        w.tick(name=name)  # the first check: written (there was none)
        assert w.server.status(name).last_analysis is not None
    return w


def clock_of(w: World) -> Callable[[], float]:
    def clock() -> float:  # the test's clock, as it moves
        return w.now.timestamp()

    return clock


def test_passing_checks_are_kept_in_memory_until_the_refresh_period() -> None:
    w = soaking_world()
    writes, checks = w.server.status_writes, w.measurer.calls
    first = w.server.status().last_analysis
    assert first is not None
    for _ in range(24):  # four minutes of ticks every 10 s
        w.tick(timedelta(seconds=10))
    assert w.measurer.calls == checks + 24  # a check every interval: decided from the check kept in memory
    assert w.server.status_writes == writes
    assert w.server.status().last_analysis == first
    for _ in range(6):  # the last check written is five minutes old: the next one is written
        w.tick(timedelta(seconds=10))
    last = w.server.status().last_analysis
    assert w.server.status_writes == writes + 1
    assert last is not None
    assert last.at == w.now


def test_refreshes_wait_for_the_fleets_budget_and_essentials_do_not() -> None:
    w = soaking_world()
    # One refresh per ten minutes for the whole operator.
    w.reconciler.refresh_budget = RefreshBudget(1 / 600, burst=1.0, clock=clock_of(w))
    writes = w.server.status_writes
    for _ in range(30):  # five minutes: the refresh is due and the budget affords it
        w.tick(timedelta(seconds=10))
    assert w.server.status_writes == writes + 1
    refreshed_at = w.now
    assert w.reconciler.telemetry.status_refreshes._value.get() == 1
    for _ in range(59):  # due again after five minutes, afforded only ten minutes after the last one
        w.tick(timedelta(seconds=10))
        assert w.server.status_writes == writes + 1
    w.tick(timedelta(seconds=10))
    last = w.server.status().last_analysis
    assert w.server.status_writes == writes + 2
    assert last is not None
    assert last.at == w.now == refreshed_at + timedelta(minutes=10)
    w.measurer.verdict = F  # the budget is spent: a failing check is written at once all the same
    w.tick(timedelta(seconds=10))
    assert w.server.status().phase == api.Phase.ROLLED_BACK
    assert w.reconciler.telemetry.status_refreshes._value.get() == 2


def test_a_refresh_decided_during_another_ones_write_sees_the_budget_spent() -> None:
    """Spent when decided, not after the write: a tick deciding during the round trip of another rollout's
    refresh is told the budget is spent (one write for one token), and a refresh that wrote is counted."""
    w = soaking_world("chat-2")
    for _ in range(29):  # both due for a refresh at the next check after these
        w.now += timedelta(seconds=10)
        for name in ("chat", "chat-2"):
            w.tick(name=name)
    w.reconciler.refresh_budget = RefreshBudget(1 / 600, burst=1.0, clock=clock_of(w))
    w.server.status_write_seconds = 0.05
    writes = w.server.status_writes
    w.now += timedelta(seconds=10)

    async def both() -> None:
        await asyncio.gather(*(w.reconciler.reconcile(w.server.rollout(name)) for name in ("chat", "chat-2")))

    asyncio.run(both())
    assert w.server.status_writes == writes + 1
    assert w.reconciler.telemetry.status_refreshes._value.get() == 1
    assert not w.reconciler.refresh_budget.affordable()


def test_a_refresh_whose_write_conflicts_is_paid_for_once() -> None:
    w = soaking_world()
    for _ in range(29):  # due for a refresh at the next check
        w.tick(timedelta(seconds=10))
    w.reconciler.refresh_budget = RefreshBudget(1 / 3600, burst=2.0, clock=clock_of(w))
    w.server.conflict_status_writes = 1
    writes = w.server.status_writes
    w.tick(timedelta(seconds=10))
    assert w.server.status_writes == writes + 1  # decided again after the 409, then written
    assert w.reconciler.telemetry.status_refreshes._value.get() == 1
    assert w.reconciler.refresh_budget.affordable()  # one of two tokens spent: the 409's was given back


def test_a_rollout_with_nothing_unwritten_spends_no_refresh() -> None:
    w = soaking_world()
    w.measurer.verdict = F
    w.tick(timedelta(seconds=10))
    assert w.server.status().phase == api.Phase.ROLLED_BACK
    w.reconciler.refresh_budget = RefreshBudget(1 / 3600, burst=1.0)
    writes = w.server.status_writes
    for _ in range(3):  # its last check is older than the refresh period, and all of it is stored
        w.tick(timedelta(minutes=10))
    assert w.server.status_writes == writes
    assert w.reconciler.refresh_budget.affordable()
    assert w.reconciler.telemetry.status_refreshes._value.get() == 0


def test_a_failing_check_is_written_at_once() -> None:
    w = soaking_world()
    w.tick(timedelta(seconds=10))
    writes = w.server.status_writes
    w.measurer.verdict = F
    w.tick(timedelta(seconds=10))
    assert w.server.status_writes > writes
    assert w.server.status().phase == api.Phase.ROLLED_BACK


def test_a_status_changed_by_someone_else_is_decided_from_as_stored() -> None:
    w = soaking_world()
    w.tick(timedelta(seconds=10))  # kept in memory
    stored = w.server.rollouts[(NAMESPACE, "chat")]
    stored["status"]["lastAnalysis"]["at"] = "2026-01-01T00:00:00Z"  # another writer (a restore, a person)
    stored["metadata"]["resourceVersion"] = w.server.bump()
    checks = w.measurer.calls
    w.tick(timedelta(seconds=1))
    assert w.measurer.calls == checks + 1  # the stored last check is old: a check is due at once


def test_a_change_that_leaves_the_status_as_it_was_keeps_the_checks_in_memory() -> None:
    w = soaking_world()
    for _ in range(3):
        w.tick(timedelta(seconds=10))  # kept in memory: the stored last check is 30 s old
    stored = w.server.rollouts[(NAMESPACE, "chat")]
    stored["metadata"].setdefault("labels", {})["team"] = "search"  # a new version, the same status
    stored["metadata"]["resourceVersion"] = w.server.bump()
    checks, writes = w.measurer.calls, w.server.status_writes
    w.tick(timedelta(seconds=1))
    assert w.measurer.calls == checks  # decided from the check kept in memory, 1 s old: none is due
    assert w.server.status_writes == writes
    w.tick(timedelta(seconds=9))
    assert w.measurer.calls == checks + 1
