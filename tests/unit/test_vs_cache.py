"""The VirtualService cache's bookkeeping, fed by hand instead of a watch: what it can say and when,
whose changes wake whom, our own writes and their echoes, stale events, conflicts and re-lists."""

from __future__ import annotations

import asyncio
from typing import Any

from fakes import sample_vs, unused_client
from modelrollout.routing.watch import ScopeKey, VirtualServiceCache, _Kept, _Scope

V1 = "v1"


class HandFedCache(VirtualServiceCache):
    """No watch task: the test plays the watch."""

    def __init__(self, *, cluster_wide: bool = True) -> None:
        super().__init__(unused_client(), cluster_wide=cluster_wide, on_change=self.record)
        self.started: list[ScopeKey] = []
        self.changes: list[tuple[str | None, str | None]] = []

    def _start_watch(self, scope_key: ScopeKey, scope: _Scope) -> None:
        self.started.append(scope_key)

    def listed(self, scope_key: ScopeKey, items: list[dict[str, Any]]) -> None:
        """A listing, as the watch task hands it over."""
        self._relisted(scope_key, [_Kept.of(item) for item in items])

    def saw(self, version: str, kind: str, obj: dict[str, Any]) -> None:
        """A watch event, as the watch task hands it over."""
        self._changed(version, kind, _Kept.of(obj))

    def record(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        version = lambda vs: vs["metadata"]["resourceVersion"] if vs else None  # noqa: E731
        self.changes.append((version(old), version(new)))


def vs(version: str, name: str = "llm", namespace: str = "llm") -> dict[str, Any]:
    found = sample_vs(namespace, name)
    found["metadata"]["resourceVersion"] = version
    return found


def run(test: Any) -> None:
    asyncio.run(test())


def test_nothing_is_said_until_the_scope_is_listed_then_presence_and_absence_are() -> None:
    async def scenario() -> None:
        cache = HandFedCache()
        assert cache.cached(V1, "llm", "llm") == (False, None)
        assert cache.started == [(V1, "")]  # one watch for every namespace
        cache.cached(V1, "other", "x")
        assert cache.started == [(V1, "")]
        cache.listed((V1, ""), [vs("5")])
        assert cache.cached(V1, "llm", "llm") == (True, vs("5"))
        assert cache.cached(V1, "llm", "gone") == (True, None)
        assert cache.changes == []  # the first listing wakes nobody

    run(scenario)


def test_a_namespaced_operator_watches_each_namespace_it_is_asked_about() -> None:
    async def scenario() -> None:
        cache = HandFedCache(cluster_wide=False)
        cache.cached(V1, "a", "x")
        cache.cached(V1, "b", "x")
        cache.cached("v1beta1", "a", "x")
        assert cache.started == [(V1, "a"), (V1, "b"), ("v1beta1", "a")]
        cache.listed((V1, "a"), [])
        assert cache.cached(V1, "a", "x") == (True, None)
        assert cache.cached(V1, "b", "x") == (False, None)

    run(scenario)


def test_changes_by_others_wake_and_our_own_writes_do_not() -> None:
    async def scenario() -> None:
        cache = HandFedCache()
        cache.cached(V1, "llm", "llm")
        cache.listed((V1, ""), [vs("5")])
        cache.saw(V1, "MODIFIED", vs("6"))  # someone else
        assert cache.changes == [("5", "6")]
        cache.wrote(V1, "6", vs("7"))  # our write replaced 6 with 7
        assert cache.cached(V1, "llm", "llm") == (True, vs("7"))
        cache.saw(V1, "MODIFIED", vs("6"))  # the watch catching up: older than what we hold
        assert cache.cached(V1, "llm", "llm") == (True, vs("7"))
        cache.saw(V1, "MODIFIED", vs("7"))  # the echo of our own write
        assert cache.changes == [("5", "6")]
        cache.saw(V1, "MODIFIED", vs("8"))
        cache.saw(V1, "DELETED", vs("8"))
        assert cache.changes == [("5", "6"), ("7", "8"), ("8", None)]
        assert cache.cached(V1, "llm", "llm") == (True, None)

    run(scenario)


def test_after_a_conflict_the_cache_cannot_say_until_a_read_or_the_watch_shows_a_version() -> None:
    async def scenario() -> None:
        cache = HandFedCache()
        cache.cached(V1, "llm", "llm")
        cache.listed((V1, ""), [vs("5")])
        cache.invalidate(V1, "llm", "llm")
        assert cache.cached(V1, "llm", "llm") == (False, None)
        cache.fetched(V1, vs("9"))  # the live read
        assert cache.cached(V1, "llm", "llm") == (True, vs("9"))
        cache.invalidate(V1, "llm", "llm")
        cache.saw(V1, "MODIFIED", vs("10"))
        assert cache.cached(V1, "llm", "llm") == (True, vs("10"))

    run(scenario)


def test_a_live_read_that_the_watch_overtook_does_not_replace_the_watchs_view() -> None:
    async def scenario() -> None:
        cache = HandFedCache()
        cache.cached(V1, "llm", "llm")
        cache.listed((V1, ""), [vs("5")])
        cache.invalidate(V1, "llm", "llm")  # a 409: the next read is live
        cache.saw(V1, "MODIFIED", vs("11"))  # the watch shows a newer version while the GET is out
        cache.fetched(V1, vs("10"))  # the GET's answer, older
        assert cache.cached(V1, "llm", "llm") == (True, vs("11"))

    run(scenario)


def test_a_relist_drops_what_went_missing_and_wakes_on_what_changed_meanwhile() -> None:
    async def scenario() -> None:
        cache = HandFedCache()
        cache.cached(V1, "llm", "llm")
        cache.listed((V1, ""), [vs("5"), vs("3", name="other"), vs("4", name="same")])
        cache._lost((V1, ""), "connection reset")
        assert cache.cached(V1, "llm", "llm") == (False, None)  # reconnecting: read live meanwhile
        cache.listed((V1, ""), [vs("8"), vs("4", name="same"), vs("9", name="new")])
        assert cache.cached(V1, "llm", "other") == (True, None)  # deleted while the watch was down
        assert sorted(cache.changes, key=str) == sorted([("5", "8"), ("3", None), (None, "9")], key=str)

    run(scenario)


def test_a_refused_scope_is_read_live() -> None:
    async def scenario() -> None:
        cache = HandFedCache(cluster_wide=False)
        cache.cached(V1, "llm", "llm")
        cache.listed((V1, "llm"), [vs("5")])
        cache._refused((V1, "llm"), 'HTTP 403: cannot watch resource "virtualservices"')
        assert cache.cached(V1, "llm", "llm") == (False, None)

    run(scenario)


def test_each_read_is_its_own_copy_and_only_the_managed_fields_read_are_kept() -> None:
    async def scenario() -> None:
        cache = HandFedCache()
        cache.cached(V1, "llm", "llm")
        listed = vs("5")
        listed["metadata"]["managedFields"] = [
            {
                "manager": "argocd",
                "time": "2026-12-01T00:00:00Z",
                "fieldsV1": {"f:spec": {"f:http": {"x": {}}}},
            },
            {"manager": "istiod", "fieldsV1": {"f:status": {}}},
        ]
        cache.listed((V1, ""), [listed])
        _, first = cache.cached(V1, "llm", "llm")
        assert first is not None
        assert first["metadata"]["managedFields"] == [
            {"manager": "argocd", "time": "2026-12-01T00:00:00Z", "fieldsV1": {"f:spec": {"f:http": {}}}}
        ]
        first["spec"]["http"].clear()  # a reader that changes what it got changes nothing kept
        _, second = cache.cached(V1, "llm", "llm")
        assert second is not None
        assert second["spec"] == vs("5")["spec"]

    run(scenario)
