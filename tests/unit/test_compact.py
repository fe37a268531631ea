"""Decoded objects share their strings: the same content, the same containers, one copy of each key."""

from __future__ import annotations

import copy
import json
import sys

from modelrollout.compact import SHARED_UP_TO, share_strings


def _body() -> dict[str, object]:
    message = "stage 1/2 at 10%: soaking until 2026-12-04T13:44:18Z, last check Pass: error-rate 0 <= 0.02"
    conditions = [
        {"type": kind, "status": "False", "reason": "Resolved", "message": message, "observedGeneration": 1}
        for kind in ("Degraded", "Stalled", "Ready")
    ]
    return {
        "metadata": {"name": "svc-3", "annotations": {"a": "b"}, "generation": 1},
        "spec": {"stages": [{"weight": 10, "duration": "24h"}, {"weight": 100}]},
        "status": {"conditions": conditions, "phase": "Progressing", "ratio": 0.5, "done": None},
    }


def _deep_size(obj: object, seen: set[int]) -> int:
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list):
        size += sum(_deep_size(v, seen) for v in obj)
    return size


def test_content_order_and_container_identity_are_kept() -> None:
    body = json.loads(json.dumps(_body()))
    status, conditions = body["status"], body["status"]["conditions"]
    expected = copy.deepcopy(body)
    share_strings(body)
    assert body == expected
    assert json.dumps(body) == json.dumps(expected)  # key order too
    assert body["status"] is status
    assert body["status"]["conditions"] is conditions


def test_two_decoded_objects_share_keys_and_short_values_and_long_values_repeat_once_within_one() -> None:
    first, second = json.loads(json.dumps(_body())), json.loads(json.dumps(_body()))
    share_strings(first)
    share_strings(second)
    a, b = first["status"]["conditions"][0], second["status"]["conditions"][1]
    key_a = next(k for k in a if k == "observedGeneration")
    key_b = next(k for k in b if k == "observedGeneration")
    assert key_a is key_b
    assert a["reason"] is b["reason"]
    assert len(a["message"]) > SHARED_UP_TO
    assert first["status"]["conditions"][2]["message"] is a["message"]  # within one object
    assert a["message"] is not b["message"]  # long values are not kept process-wide


def test_a_second_rollout_body_costs_about_half_once_its_strings_are_shared() -> None:
    kept = json.loads(json.dumps(_body()))
    share_strings(kept)
    seen: set[int] = set()
    _deep_size(kept, seen)
    alone = _deep_size(json.loads(json.dumps(_body())), set())
    shared = json.loads(json.dumps(_body()))
    share_strings(shared)
    assert _deep_size(shared, seen) < 0.6 * alone


def test_scalars_and_empty_containers_pass_through() -> None:
    for value in (None, 1, "x", [], {}, [[], {"k": []}]):
        before = copy.deepcopy(value)
        share_strings(value)
        assert value == before
