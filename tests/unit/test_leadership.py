"""Leader election's pure rules: who may take the Lease and what is written, when a Lease counts as expired
(by the candidate's own clock only), and when a leader must stop writing."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from modelrollout.kubeclient import ApiError
from modelrollout.leadership import LeaderElector, LeaseTiming, claimed_spec, released_spec

NOW = datetime(2026, 12, 2, 14, 0, 0, 123456, tzinfo=UTC)
STAMP = "2026-12-02T14:00:00.123456Z"
TIMING = LeaseTiming(duration=15, renew_deadline=10, retry_period=2)


def held(by: str | None, transitions: int = 3) -> dict[str, Any]:
    return {
        "holderIdentity": by,
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-12-02T13:00:00.000000Z",
        "renewTime": "2026-12-02T13:59:58.000000Z",
        "leaseTransitions": transitions,
    }


def test_a_missing_lease_is_created_held_by_the_candidate() -> None:
    assert claimed_spec(None, "a", NOW, False, TIMING) == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": STAMP,
        "renewTime": STAMP,
        "leaseTransitions": 0,
    }


def test_the_holder_renews_keeping_its_acquire_time_and_the_count_of_transitions() -> None:
    renewed = claimed_spec(held("a"), "a", NOW, False, TIMING)
    assert renewed is not None
    assert (renewed["renewTime"], renewed["acquireTime"], renewed["leaseTransitions"]) == (
        STAMP,
        "2026-12-02T13:00:00.000000Z",
        3,
    )


@pytest.mark.parametrize("expired", [False, True])
def test_another_holders_lease_is_taken_only_once_expired(expired: bool) -> None:
    taken = claimed_spec(held("b"), "a", NOW, expired, TIMING)
    if not expired:
        assert taken is None
        return
    assert taken is not None
    assert (taken["holderIdentity"], taken["acquireTime"], taken["leaseTransitions"]) == ("a", STAMP, 4)


def test_a_released_lease_is_taken_at_once() -> None:
    released = released_spec(held("b"), NOW)
    assert released["holderIdentity"] is None
    assert released["leaseDurationSeconds"] == 1
    taken = claimed_spec(released, "a", NOW, False, TIMING)
    assert taken is not None
    assert taken["holderIdentity"] == "a"
    assert taken["leaseTransitions"] == 3  # nobody held it: no transition from another holder


@pytest.mark.parametrize(
    ("duration", "deadline", "retry"), [(10, 10, 2), (15, 10, 10), (15, 20, 2), (15, 10, 0)]
)
def test_timings_that_could_let_two_replicas_lead_are_refused(
    duration: float, deadline: float, retry: float
) -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        LeaseTiming(duration=duration, renew_deadline=deadline, retry_period=retry)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(clock: Clock) -> LeaderElector:
    return LeaderElector(
        FakeLeases(held("b")), namespace="ops", name="lease", identity="a", timing=TIMING, clock=clock
    )


def test_a_lease_expires_only_after_it_was_seen_unchanged_for_its_duration_by_our_clock() -> None:
    clock = Clock()
    candidate = elector(clock)
    # The record's renewTime is an hour old by its writer's clock: that says nothing here.
    stale = held("b") | {"renewTime": "2026-12-02T12:00:00.000000Z"}
    assert not candidate._expired(stale)
    clock.now += 14.9
    assert not candidate._expired(stale)
    clock.now += 0.1
    assert candidate._expired(stale)
    renewed = stale | {"renewTime": "2026-12-02T14:00:15.000000Z"}
    assert not candidate._expired(renewed)  # renewed meanwhile: the wait starts again
    clock.now += 14
    assert not candidate._expired(renewed)


def test_a_leader_stops_leading_once_its_last_renewal_is_older_than_the_renew_deadline() -> None:
    clock = Clock()
    leader = elector(clock)
    assert not leader.leading()  # never acquired
    leader._renewed_at = clock.now
    clock.now += 9.9
    assert leader.leading()
    clock.now += 0.1
    assert not leader.leading()  # well before any standby may take over (15 s)


@pytest.mark.parametrize(
    ("seen", "after", "wait"),
    [
        (False, 0.0, 2.0),  # nothing seen yet: the retry period
        (True, 5.0, 2.0),  # ten seconds to go: the retry period
        (True, 14.0, 1.005),  # one second to go: at the expiry, a few milliseconds after
        (True, 15.0, 0.005),
        (True, 15.5, 2.0),  # the expiry passed and the attempt after it failed: the retry period again
    ],
)
def test_a_standby_tries_again_at_the_expiry_of_the_record_it_saw(
    seen: bool, after: float, wait: float
) -> None:
    clock = Clock()
    standby = elector(clock)
    if seen:
        standby._note(held("b"))
    clock.now += after
    assert standby.next_attempt_in() == pytest.approx(wait)


def test_the_lease_watch_records_each_renewal_when_it_arrives_and_wakes_a_standby_on_a_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    standby = elector(clock)
    standing_by = threading.Event()
    standing_by.set()
    renewed = held("b") | {"renewTime": "2026-12-02T14:00:02.000000Z"}
    arrivals = [(0.0, "ADDED", held("b")), (2.0, "MODIFIED", renewed), (2.0, "MODIFIED", held(None))]
    requests: list[tuple[Any, ...]] = []

    class OneWatch(FakeLeases):
        def watch(self, namespace: str, name: str, window: int, timeout: float, on_event: Any) -> None:
            requests.append((namespace, name, window, timeout))
            for gap, kind, spec in arrivals:
                clock.now += gap
                assert on_event(kind, {"spec": spec})
                if kind == "MODIFIED" and spec is renewed:
                    assert standby._observed == (
                        "b|2026-12-02T14:00:02.000000Z|3",
                        clock.now,
                        15.0,
                    )
                    assert standby.next_attempt_in() == 2.0
                    clock.now += 14
                    assert standby.next_attempt_in() == pytest.approx(1.005)  # 15 s after it arrived
                    assert not standby._wake.is_set()
            standing_by.clear()
            assert not on_event("MODIFIED", {"spec": renewed})  # no longer standing by: the watch ends

    standby._api = OneWatch(held("b"))
    standby._watch_lease(standing_by)
    assert requests == [("ops", "lease", 15, 4.0)]
    assert standby._wake.is_set()  # released: the standby tries at once


class FakeLeases:
    """The Lease endpoints of an API server: conditional replace on resourceVersion, as the real one."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.stored: dict[str, Any] = {"metadata": {"name": "lease", "resourceVersion": "1"}, "spec": spec}
        self.calls: list[str] = []

    def read(self, namespace: str, name: str, timeout: float) -> dict[str, Any]:
        self.calls.append("read")
        return dict(self.stored)

    def replace(self, namespace: str, name: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.calls.append("replace")
        if body["metadata"]["resourceVersion"] != self.stored["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict")
        version = str(int(self.stored["metadata"]["resourceVersion"]) + 1)
        self.stored = {**body, "metadata": {**body["metadata"], "resourceVersion": version}}
        return dict(self.stored)

    def create(self, namespace: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        raise ApiError(409, "AlreadyExists")

    def watch(self, namespace: str, name: str, window: int, timeout: float, on_event: Any) -> None:
        raise ApiError(403, "Forbidden")

    def taken_by(self, holder: str) -> None:
        version = str(int(self.stored["metadata"]["resourceVersion"]) + 1)
        spec = {**self.stored["spec"], "holderIdentity": holder}
        self.stored = {"metadata": {**self.stored["metadata"], "resourceVersion": version}, "spec": spec}


def test_a_leader_renews_the_record_it_wrote_without_reading_it_and_reads_again_after_a_conflict() -> None:
    clock = Clock()
    leader = elector(clock)
    leases = FakeLeases(held("a"))
    leader._api = leases
    assert leader.try_acquire_or_renew()  # first: read, then write
    clock.now += 2
    assert leader.try_acquire_or_renew()  # then: the record it wrote, conditionally, in one request
    assert leases.calls == ["read", "replace", "replace"]
    assert leases.stored["spec"]["holderIdentity"] == "a"
    assert leader._renewed_at == clock.now

    leases.taken_by("b")  # another replica wrote since (its valid Lease)
    leases.calls.clear()
    renewed_at = leader._renewed_at
    clock.now += 2
    assert not leader.try_acquire_or_renew()  # 409 on the fast path, then read: b holds it, not expired
    assert leases.calls == ["replace", "read"]
    assert leader._renewed_at == renewed_at
    assert leases.stored["spec"]["holderIdentity"] == "b"


class _CountedStop:
    """The renewal loop's stop flag: records each wait, moves the clock by it, stops after `rounds`."""

    def __init__(self, clock: Clock, rounds: int) -> None:
        self.clock, self.rounds, self.waits = clock, rounds, list[float]()

    def wait(self, timeout: float) -> bool:
        self.waits.append(round(timeout, 6))
        self.clock.now += timeout
        return len(self.waits) > self.rounds

    def set(self) -> None:
        pass


def test_renewal_attempts_start_every_retry_period_however_long_each_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    leader = elector(clock)
    durations = iter([0.5, 1.5, 3.0, 0.0])

    def attempt() -> bool:
        clock.now += next(durations)
        leader._renewed_at = clock.now
        return True

    monkeypatch.setattr(leader, "try_acquire_or_renew", attempt)
    stop = _CountedStop(clock, rounds=4)
    leader._stop = stop  # type: ignore[assignment]
    leader.keep_renewing()
    assert leader._thread is not None
    leader._thread.join(timeout=5)
    # 2 s apart from start to start: 0.5 s taken leaves 1.5 s, 1.5 s leaves 0.5 s, 3 s (late) none.
    assert stop.waits == [2.0, 1.5, 0.5, 0.0, 2.0]
