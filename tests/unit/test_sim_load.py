"""The load generator's flows: the requests one flow sends, with its user ids and, when asked, the sticky
bucket an app computes for each user (`modelrollout.assign.bucket`), and the flows it refuses."""

from __future__ import annotations

import random
from typing import Any

import pytest

from modelrollout.assign import bucket
from modelrollout_dev.sim.load import Flow

REQUESTS = 5000


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311  (simulated traffic: repeatable draws, not secrets)


@pytest.mark.parametrize(
    ("flow_fields", "user_header", "bucket_header"),
    [
        ({"bucket_header": "x-user-bucket", "experiment_id": "chat-exp-1"}, "x-user-id", "x-user-bucket"),
        # Header names are read case-insensitively, as a sidecar reads them.
        (
            {"bucket_header": "X-User-Bucket", "experiment_id": "exp:2", "user_header": "X-Account"},
            "x-account",
            "x-user-bucket",
        ),
    ],
)
def test_bucket_header_is_the_assigned_bucket_of_the_request_user(
    flow_fields: dict[str, Any], user_header: str, bucket_header: str
) -> None:
    flow = Flow(host="llm", rps=10, users=1000, **flow_fields)
    rng = seeded(11)
    buckets_seen: set[str] = set()
    for _ in range(REQUESTS):
        headers = flow.request(rng).headers
        assert headers[bucket_header] == str(bucket(flow_fields["experiment_id"], headers[user_header]))
        buckets_seen.add(headers[bucket_header])
    # The bucket follows the user, not the flow: the ~990 users these requests come from fill every bucket
    # (a bucket is empty with probability 0.99^990, about 5e-5, and the seed fixes the draws anyway).
    assert buckets_seen == {str(b) for b in range(100)}


def test_the_bucket_costs_no_draw_and_is_sent_only_when_asked() -> None:
    """The same seed picks the same users with or without buckets, so a seeded run repeats either way."""
    plain = Flow(host="llm", rps=10, users=50, headers={"x-app": "chat"})
    bucketed = Flow(
        host="llm",
        rps=10,
        users=50,
        headers={"x-app": "chat"},
        bucket_header="x-user-bucket",
        experiment_id="e",
    )
    plain_rng, bucketed_rng = seeded(3), seeded(3)
    for _ in range(200):
        without, with_bucket = plain.request(plain_rng).headers, bucketed.request(bucketed_rng).headers
        assert set(without) == {"x-app", "x-user-id"}
        assert dict(with_bucket) == {**without, "x-user-bucket": str(bucket("e", without["x-user-id"]))}
    # Without users there is no user id, so no bucket either.
    anonymous = Flow(host="llm", rps=10, users=0, bucket_header="x-user-bucket", experiment_id="e")
    assert dict(anonymous.request(seeded(1)).headers) == {}


@pytest.mark.parametrize(
    ("flow_fields", "message"),
    [
        ({"bucket_header": "x-user-bucket"}, "bucket_header and experiment_id go together"),
        ({"experiment_id": "exp-1"}, "bucket_header and experiment_id go together"),
        ({"bucket_header": "", "experiment_id": "exp-1"}, "bucket_header must be a header name"),
        ({"bucket_header": "x-user-bucket", "experiment_id": ""}, "experiment_id must not be empty"),
        (
            {"bucket_header": "X-User-Id", "experiment_id": "exp-1"},
            "bucket_header must differ from user_header",
        ),
    ],
)
def test_flows_refuse_half_or_empty_bucket_settings(flow_fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Flow(host="llm", rps=10, **flow_fields)


def test_as_dict_carries_the_bucket_settings() -> None:
    bucketed = Flow(host="llm", rps=5, bucket_header="x-user-bucket", experiment_id="exp-1").as_dict()
    plain = Flow(host="llm", rps=5).as_dict()
    assert (bucketed["bucket_header"], bucketed["experiment_id"]) == ("x-user-bucket", "exp-1")
    assert (plain["bucket_header"], plain["experiment_id"]) == (None, None)
