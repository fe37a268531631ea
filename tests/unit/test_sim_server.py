"""The simulator's control API over real HTTP (loopback, no API server): backend settings, the LLM ones
included, are changed with PUT /backends/{ns}/{host}; /request answers the vLLM view of a request and what
its destination received; load flows take sticky-bucket settings; /stats/users tells which destinations
answered each user, for requests sent through the API and for load flows."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from modelrollout.assign import bucket
from modelrollout_dev.sim.simulator import Simulator

NS = "llm"
VIRTUAL_SERVICE = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "chat", "namespace": NS, "creationTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {"hosts": ["llm"], "http": [{"route": [{"destination": {"host": "llm-claude"}}]}]},
}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(None, [NS], seed=5, virtual_services=lambda: [VIRTUAL_SERVICE])
    simulator.server.start()
    try:
        yield simulator
    finally:
        simulator.server.stop()


def call(sim: Simulator, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{sim.url}{path}", data=data, method=method)  # noqa: S310
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  (our loopback server)
        return json.load(response)


def test_put_sets_llm_settings_and_request_reports_them(sim: Simulator) -> None:
    changes = {
        "model_name": "anthropic/claude-x",
        "ttft_median_ms": 90,
        "ttft_p99_ms": 90,
        "itl_ms": 35.5,
        "truncation_rate": 1,
        "tokens_out_jitter": 0,
    }
    answer = call(sim, "PUT", f"/backends/{NS}/llm-claude", changes)
    assert answer["settings"] == {
        **answer["settings"],
        **{name: float(value) if name != "model_name" else value for name, value in changes.items()},
    }
    assert call(sim, "GET", "/backends")[f"{NS}/llm-claude"]["model_name"] == "anthropic/claude-x"
    outcome = call(sim, "POST", "/request", {"host": "llm", "source_namespace": NS})
    assert (outcome["status"], outcome["finished_reason"], outcome["model_name"]) == (
        200,
        "length",
        "anthropic/claude-x",
    )
    assert outcome["ttft_ms"] == pytest.approx(90.0)
    # null gives the model its host's name back.
    call(sim, "PUT", f"/backends/{NS}/llm-claude", {"model_name": None})
    assert call(sim, "POST", "/request", {"host": "llm"})["model_name"] == "llm-claude"
    metrics = urllib.request.urlopen(f"{sim.url}/metrics", timeout=10).read().decode()  # noqa: S310
    assert (
        'vllm:request_success_total{finished_reason="length",model_name="anthropic/claude-x"} 1.0' in metrics
    )
    assert 'vllm:request_success_total{finished_reason="length",model_name="llm-claude"} 1.0' in metrics


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model_name": 7}, "model_name must be a non-empty string"),
        ({"model_name": ""}, "model_name must be a non-empty string"),
        ({"itl_ms": "20"}, "itl_ms must be a number"),
        ({"truncation_rate": 2}, "truncation_rate must be in [0, 1]"),
    ],
)
def test_put_refuses_bad_llm_settings(sim: Simulator, body: dict[str, Any], message: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        call(sim, "PUT", f"/backends/{NS}/llm-claude", body)
    assert refused.value.code == 400
    assert message in json.load(refused.value)["error"]
    assert call(sim, "GET", f"/backends/{NS}/llm-claude")["settings"]["model_name"] == ""


def test_load_takes_bucket_settings(sim: Simulator) -> None:
    body = {"host": "llm", "rps": 5, "bucket_header": "x-user-bucket", "experiment_id": "exp-1"}
    flows = call(sim, "POST", "/load", body)["flows"]
    assert [(f["host"], f["bucket_header"], f["experiment_id"]) for f in flows] == [
        ("llm", "x-user-bucket", "exp-1")
    ]
    assert call(sim, "GET", "/load")["flows"] == flows
    # Without them a flow sends no bucket.
    assert call(sim, "POST", "/load", {"host": "llm", "rps": 5})["flows"][0]["bucket_header"] is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"bucket_header": 7, "experiment_id": "exp-1"}, '"bucket_header" must be a string'),
        ({"bucket_header": "x-user-bucket", "experiment_id": ["exp-1"]}, '"experiment_id" must be a string'),
        ({"bucket_header": "x-user-bucket"}, "bucket_header and experiment_id go together"),
        (
            {"bucket_header": "x-user-id", "experiment_id": "exp-1"},
            "bucket_header must differ from user_header",
        ),
    ],
)
def test_load_refuses_bad_bucket_settings(sim: Simulator, body: dict[str, Any], message: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        call(sim, "POST", "/load", {"host": "llm", "rps": 5, **body})
    assert refused.value.code == 400
    assert message in json.load(refused.value)["error"]
    assert call(sim, "GET", "/load")["flows"] == []


# ---- answers per user ----

EXPERIMENT_ID = "exp-1"
STABLE_KEY, CANARY_KEY = f"{NS}/llm-gpt4o", f"{NS}/llm-claude"
CANARY_BUCKETS = 20  # buckets 0..19 go to the canary


def arm(host: str, variant: str, weight: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "destination": {"host": host},
        "headers": {"request": {"set": {"x-experiment-id": EXPERIMENT_ID, "x-variant": variant}}},
    }
    if weight is not None:
        entry["weight"] = weight
    return entry


# An experiment as the operator writes it: an override header and sticky buckets ahead of the weighted route
# (which serves requests without a bucket), mirrored to a shadow service.
STICKY = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "chat", "namespace": NS, "creationTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {
        "hosts": ["llm"],
        "http": [
            {
                "name": "override-canary",
                "match": [{"headers": {"x-experiment": {"exact": "canary"}}}],
                "route": [arm("llm-claude", "canary")],
            },
            {
                "name": "canary-buckets",
                "match": [{"headers": {"x-user-bucket": {"regex": "[0-9]|1[0-9]"}}}],
                "route": [arm("llm-claude", "canary")],
            },
            {
                "name": "stable-buckets",
                "match": [{"headers": {"x-user-bucket": {"regex": "[2-9][0-9]"}}}],
                "route": [arm("llm-gpt4o", "stable")],
            },
            {
                "name": "primary",
                "route": [arm("llm-gpt4o", "stable", 50), arm("llm-claude", "canary", 50)],
                "mirror": {"host": "llm-shadow"},
            },
        ],
    },
}


@pytest.fixture
def sticky() -> Iterator[Simulator]:
    """A simulator routing by STICKY, its load generator running."""
    simulator = Simulator(None, [NS], seed=5, virtual_services=lambda: [STICKY])
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


def test_request_answers_what_the_destination_received_and_its_user(sticky: Simulator) -> None:
    pinned = call(
        sticky,
        "POST",
        "/request",
        {"host": "llm", "headers": {"x-user-id": "alice", "x-experiment": "canary"}},
    )
    assert (pinned["route"], pinned["user_id"], pinned["authority"], pinned["mirrors"]) == (
        "override-canary",
        "alice",
        "llm",
        [],
    )
    assert pinned["headers"] == {
        "x-user-id": "alice",
        "x-experiment": "canary",
        "x-experiment-id": EXPERIMENT_ID,
        "x-variant": "canary",
    }
    for _ in range(3):
        call(
            sticky,
            "POST",
            "/request",
            {"host": "llm", "headers": {"x-user-id": "bob", "x-user-bucket": "50"}},
        )
    anonymous = call(sticky, "POST", "/request", {"host": "llm.llm.svc.cluster.local"})
    assert (anonymous["route"], anonymous["user_id"]) == ("primary", None)
    # The mirror copy's authority is the request's (no `-shadow` since Istio 1.28).
    assert [(m["service"], m["authority"]) for m in anonymous["mirrors"]] == [
        ("llm-shadow", "llm.llm.svc.cluster.local")
    ]

    users = {"alice": {CANARY_KEY: 1}, "bob": {STABLE_KEY: 3}}
    assert call(sticky, "GET", "/stats/users") == {"since_start": users, "since_reset": users}
    call(sticky, "POST", "/stats/reset")
    assert call(sticky, "GET", "/stats/users") == {"since_start": users, "since_reset": {}}
    with pytest.raises(urllib.error.HTTPError) as refused:
        call(sticky, "POST", "/stats/users")
    assert refused.value.code == 405


def answers_per_user(sim: Simulator, min_requests: int) -> dict[str, dict[str, int]]:
    """/stats/users of a fresh window of at least `min_requests` requests."""
    call(sim, "POST", "/stats/reset")
    deadline = time.monotonic() + 30
    while call(sim, "GET", "/stats")["since_reset"]["requests"] < min_requests:
        assert time.monotonic() < deadline, "the load generator fell short"
        time.sleep(0.05)
    users: dict[str, dict[str, int]] = call(sim, "GET", "/stats/users")["since_reset"]
    return users


def test_bucketed_users_are_answered_by_one_destination_each(sticky: Simulator) -> None:
    call(
        sticky,
        "POST",
        "/load",
        {
            "host": "llm",
            "rps": 2000,
            "users": 200,
            "bucket_header": "x-user-bucket",
            "experiment_id": EXPERIMENT_ID,
        },
    )
    users = answers_per_user(sticky, 2000)
    assert len(users) > 100
    for user, answers in users.items():
        expected = CANARY_KEY if bucket(EXPERIMENT_ID, user) < CANARY_BUCKETS else STABLE_KEY
        assert list(answers) == [expected], (user, answers)
    assert {key for answers in users.values() for key in answers} == {CANARY_KEY, STABLE_KEY}


def test_users_without_buckets_meet_both_destinations(sticky: Simulator) -> None:
    """The same routes without a bucket header: the weighted route answers, so each user meets both
    destinations (what makes the test above able to fail). The flow sends its user ids in a header of its
    own, and that is the one the log reads."""
    call(sticky, "POST", "/load", {"host": "llm", "rps": 2000, "users": 20, "user_header": "x-account"})
    users = answers_per_user(sticky, 2000)
    assert len(users) == 20
    assert all(set(answers) == {CANARY_KEY, STABLE_KEY} for answers in users.values()), users
