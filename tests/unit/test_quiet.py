"""Which decisions are worth a status write: a check that changes only numbers stays in memory until the
refresh period, everything a person or a GitOps tool acts on is written at once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelrollout import api
from modelrollout.engine.quiet import StatusWrite, status_write

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
REFRESH = timedelta(minutes=5)


def is_quiet(before: api.ModelRolloutStatus, after: api.ModelRolloutStatus, **given: Any) -> bool:
    return status_write(before, after, **given) is StatusWrite.QUIET


def gate(verdict: api.Verdict = api.Verdict.PASS, value: float = 0.004, **fields: object) -> api.GateResult:
    return api.GateResult(
        name="error-rate", verdict=verdict, value=value, max=0.02, window="2m", message=f"{value}", **fields
    )


def checked(
    at: datetime, *gates: api.GateResult, verdict: api.Verdict = api.Verdict.PASS
) -> api.AnalysisResult:
    return api.AnalysisResult(at=at, stage=1, verdict=verdict, gates=list(gates or (gate(),)))


def condition(
    type_: str, status: str = "False", reason: str = "Resolved", message: str = ""
) -> api.Condition:
    return api.Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=NOW,
        observed_generation=1,
    )  # type: ignore[arg-type]


BEFORE = api.ModelRolloutStatus(
    phase=api.Phase.PROGRESSING,
    stage=1,
    canary_weight=50,
    last_analysis=checked(NOW - timedelta(seconds=30)),
    conditions=[
        condition("Ready", message="stage 2/3 at 50%: soaking until ..."),
        condition("MetricsUnavailable"),
    ],
    message="stage 2/3 at 50%: soaking until 2026-12-02T12:30:00Z, last check Pass: error-rate 0.004",
)


def changed(**fields: object) -> api.ModelRolloutStatus:
    return BEFORE.model_copy(update=fields)


QUIET: dict[str, Callable[[], api.ModelRolloutStatus]] = {
    "nothing": lambda: BEFORE,
    "a new check's time and values": lambda: changed(last_analysis=checked(NOW, gate(value=0.005))),
    "the message quoting them": lambda: changed(message=BEFORE.message.replace("0.004", "0.005")),
    "the conditions' messages": lambda: changed(
        conditions=[condition("Ready", message="other words"), condition("MetricsUnavailable")]
    ),
    "the sequential counts": lambda: changed(
        accumulations=[
            api.Accumulation(
                name="errors", stage=1, canary_weight=50, since=NOW, canary_events=3, stable_events=2
            )
        ]
    ),
}
WRITTEN: dict[str, Callable[[], api.ModelRolloutStatus]] = {
    "the check's verdict": lambda: changed(
        last_analysis=checked(NOW, gate(api.Verdict.INCONCLUSIVE), verdict=api.Verdict.INCONCLUSIVE)
    ),
    "a gate's verdict": lambda: changed(
        last_analysis=checked(NOW, gate(), gate(api.Verdict.FAIL).model_copy(update={"name": "p99"}))
    ),
    "a gate that is advisory now": lambda: changed(last_analysis=checked(NOW, gate(advisory=True))),
    "a check of another stage": lambda: changed(last_analysis=checked(NOW).model_copy(update={"stage": 2})),
    "a condition's status": lambda: changed(
        conditions=[condition("Ready"), condition("MetricsUnavailable", "True", "QueryFailed")]
    ),
    "a counter toward a limit": lambda: changed(consecutive_inconclusive=1),
    "the phase": lambda: changed(phase=api.Phase.PAUSED),
    "the stage and weight": lambda: changed(stage=2, canary_weight=100),
    "a hold": lambda: changed(hold=api.Hold.INCONCLUSIVE),
    "the generation observed": lambda: changed(observed_generation=2),
}


@pytest.mark.parametrize("what", QUIET)
def test_a_change_of_numbers_only_is_quiet(what: str) -> None:
    after = QUIET[what]()
    assert is_quiet(BEFORE, after, now=NOW, recorded_check_at=NOW - timedelta(minutes=4), refresh=REFRESH)


@pytest.mark.parametrize("what", WRITTEN)
def test_a_change_a_person_acts_on_is_written_at_once(what: str) -> None:
    after = WRITTEN[what]()
    assert not is_quiet(BEFORE, after, now=NOW, recorded_check_at=NOW - timedelta(seconds=1), refresh=REFRESH)


def test_evidence_appearing_is_written() -> None:
    evidence = api.Evidence(canary_events=1, stable_events=1, canary_share=0.5, p_value=0.2)
    after = changed(last_analysis=checked(NOW, gate(evidence=evidence)))
    assert not is_quiet(BEFORE, after, now=NOW, recorded_check_at=NOW, refresh=REFRESH)


def test_numbers_older_than_the_refresh_period_are_written() -> None:
    after = QUIET["a new check's time and values"]()
    assert is_quiet(
        BEFORE, after, now=NOW, recorded_check_at=NOW - REFRESH + timedelta(seconds=1), refresh=REFRESH
    )
    assert not is_quiet(BEFORE, after, now=NOW, recorded_check_at=NOW - REFRESH, refresh=REFRESH)


def test_a_check_an_alert_asked_for_is_written() -> None:
    after = QUIET["a new check's time and values"]()
    assert not is_quiet(BEFORE, after, now=NOW, recorded_check_at=NOW, refresh=REFRESH, requested=True)


def test_without_a_refresh_period_everything_is_written() -> None:
    after = QUIET["a new check's time and values"]()
    assert not is_quiet(BEFORE, after, now=NOW, recorded_check_at=NOW, refresh=None)


def test_a_refresh_is_written_as_one_and_only_when_the_budget_affords_it() -> None:
    after = QUIET["a new check's time and values"]()
    due = {"now": NOW, "recorded_check_at": NOW - REFRESH, "refresh": REFRESH}
    assert status_write(BEFORE, after, **due) is StatusWrite.REFRESH
    assert status_write(BEFORE, after, **due, refresh_affordable=False) is StatusWrite.QUIET
    young = {**due, "recorded_check_at": NOW - timedelta(minutes=1)}
    assert status_write(BEFORE, after, **young) is StatusWrite.QUIET


@pytest.mark.parametrize("what", WRITTEN)
def test_what_is_essential_never_waits_for_the_refresh_budget(what: str) -> None:
    after = WRITTEN[what]()
    for recorded in (NOW, NOW - REFRESH):
        written = status_write(
            BEFORE, after, now=NOW, recorded_check_at=recorded, refresh=REFRESH, refresh_affordable=False
        )
        assert written is StatusWrite.WRITE


def test_a_check_an_alert_asked_for_never_waits_for_the_refresh_budget() -> None:
    after = QUIET["a new check's time and values"]()
    written = status_write(
        BEFORE,
        after,
        now=NOW,
        recorded_check_at=NOW,
        refresh=REFRESH,
        requested=True,
        refresh_affordable=False,
    )
    assert written is StatusWrite.WRITE
