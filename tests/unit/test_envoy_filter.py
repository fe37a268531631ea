"""The bucket EnvoyFilter as an object: its name, the hosts its Lua acts on, when a live one is current."""

from __future__ import annotations

import copy

import pytest

from fakes import sample_bucket_filter
from modelrollout.routing.envoy_filter import authority_hosts, filter_name

SVC = "svc.cluster.local"


@pytest.mark.parametrize(
    ("hosts", "vs_namespace", "client_namespace", "expected"),
    [
        (["chat"], "llm", "llm", ["chat", "chat.llm", "chat.llm.svc", f"chat.llm.{SVC}"]),
        # A client in another namespace cannot call the service by its short name.
        (["chat"], "llm", "apps", ["chat.llm", "chat.llm.svc", f"chat.llm.{SVC}"]),
        ([f"chat.llm.{SVC}"], "other", "llm", ["chat", "chat.llm", "chat.llm.svc", f"chat.llm.{SVC}"]),
        (["Chat"], "llm", "llm", ["chat", "chat.llm", "chat.llm.svc", f"chat.llm.{SVC}"]),
        (["api.example.com"], "llm", "llm", ["api.example.com"]),
        (["*.example.com", "*"], "llm", "llm", []),
        (["chat", f"chat.llm.{SVC}"], "llm", "llm", ["chat", "chat.llm", "chat.llm.svc", f"chat.llm.{SVC}"]),
        ([f"a.b.c.{SVC}"], "llm", "llm", [f"a.b.c.{SVC}"]),  # not a service name: as written
    ],
)
def test_authority_hosts(
    hosts: list[str], vs_namespace: str, client_namespace: str, expected: list[str]
) -> None:
    assert authority_hosts(hosts, vs_namespace, client_namespace) == expected


def test_the_name_is_the_rollouts_and_stays_a_valid_object_name() -> None:
    assert filter_name("chat") == "chat-modelrollout-buckets"
    long = "r" * 253
    name = filter_name(long)
    assert len(name) <= 253
    assert name.endswith("-modelrollout-buckets")
    assert filter_name(long) == name
    assert filter_name("s" * 253) != name


def test_a_live_filter_is_current_only_with_the_same_spec_and_our_labels() -> None:
    desired = sample_bucket_filter()
    live = copy.deepcopy(desired.manifest())
    live["metadata"]["resourceVersion"] = "7"  # what the server adds does not matter
    live["metadata"]["labels"]["team"] = "ml"
    assert desired.matches(live)
    assert not desired.matches(None)
    edited = copy.deepcopy(live)
    edited["spec"]["configPatches"][0]["match"]["context"] = "ANY"
    assert not desired.matches(edited)
    relabelled = copy.deepcopy(live)
    relabelled["metadata"]["labels"]["modelrollout.io/rollout"] = "other"
    assert not desired.matches(relabelled)
    other_id = sample_bucket_filter("exp-2")
    assert not other_id.matches(live)
