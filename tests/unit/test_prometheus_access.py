"""Where Prometheus credentials may go, and the providers the operator keeps: credentials only to an address
the operator allows (its own, its allow-list, or the one the Secret names), never in a message; providers
closed when idle or when their credentials rotate, never while a query runs."""

from __future__ import annotations

import asyncio
import base64
import random
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest

from modelrollout.metrics.credentials import (
    PrometheusAuth,
    credentials_refusal,
    same_address,
    secret_address,
    shown,
)
from modelrollout.metrics.prometheus import QueryPool
from modelrollout.metrics.providers import ProviderCache

TOKEN = "s3cr3t-t0ken"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(address: str | None = None) -> dict[str, str]:
    data = {"token": b64(TOKEN)}
    if address is not None:
        data["address"] = b64(address + "\n")  # --from-file newline
    return data


@pytest.mark.parametrize(
    ("address", "data", "allowed"),
    [
        ("http://prometheus.monitoring:9090", secret(), ["http://prometheus.monitoring:9090"]),
        ("http://Prometheus.Monitoring:9090/", secret(), ["http://prometheus.monitoring:9090"]),
        ("https://prom.example.com", secret(), ["https://prom.example.com:443/"]),
        ("http://thanos:10902/prom", secret("http://thanos:10902/prom"), []),
        ("http://thanos:10902/prom/", secret("HTTP://THANOS:10902/prom"), ["http://other:9090"]),
    ],
)
def test_credentials_go_to_allowed_addresses(address: str, data: dict[str, str], allowed: list[str]) -> None:
    assert credentials_refusal(address, "prometheus-auth", data, allowed) is None


@pytest.mark.parametrize(
    ("address", "data", "allowed", "says"),
    [
        ("http://evil.example:9090", secret(), [], "the operator does not allow that address"),
        ("http://evil.example:9090", secret(), ["http://prometheus.monitoring:9090"], "does not allow"),
        (
            "http://evil.example:9090",
            secret("http://prometheus.monitoring:9090"),
            [],
            "the Secret belongs to http://prometheus.monitoring:9090",
        ),
        # The same host on another port, scheme or path is another address.
        ("http://prometheus.monitoring:9091", secret("http://prometheus.monitoring:9090"), [], "belongs"),
        ("https://prometheus.monitoring:9090", secret("http://prometheus.monitoring:9090"), [], "belongs"),
        ("http://prometheus.monitoring:9090/x", secret("http://prometheus.monitoring:9090"), [], "belongs"),
        ("http://prometheus.monitoring:9090", {"token": b64(TOKEN), "address": "%%"}, [], "no usable"),
    ],
)
def test_credentials_are_refused_elsewhere_without_showing_them(
    address: str, data: dict[str, str], allowed: list[str], says: str
) -> None:
    refusal = credentials_refusal(address, "prometheus-auth", data, allowed)
    assert refusal is not None
    assert says in refusal
    assert "prometheus-auth" in refusal
    assert TOKEN not in refusal
    assert b64(TOKEN) not in refusal


def test_user_info_in_an_address_is_never_shown() -> None:
    refusal = credentials_refusal(
        "http://evil.example:9090", "s", secret("https://sre:hunter2@prom.example.com"), []
    )
    assert refusal is not None
    assert "hunter2" not in refusal
    assert "https://prom.example.com" in refusal
    assert shown("http://a:b@c:1/d/") == "http://c:1/d"


def test_addresses_compare_as_urls() -> None:
    assert same_address("http://p:80", "http://P/")
    assert not same_address("http://p", "https://p")
    assert not same_address("ftp://p", "ftp://p")
    assert not same_address("http://p?x=1", "http://p?x=1")
    assert secret_address({"token": b64("t")}) is None


def test_auth_never_shows_itself() -> None:
    assert TOKEN not in repr(PrometheusAuth(bearer_token=TOKEN))
    assert "hunter2" not in repr(PrometheusAuth(basic_auth=("sre", "hunter2")))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pool() -> Iterator[QueryPool]:
    made = QueryPool(workers=2, per_owner=2)
    yield made
    made.shutdown()


def test_rollouts_with_the_same_settings_share_one_provider(pool: QueryPool) -> None:
    cache = ProviderCache(pool, clock=Clock())
    auth = PrometheusAuth(bearer_token=TOKEN)
    first = cache.provider(("llm", "a"), "http://prom:9090", timedelta(seconds=10), auth)
    assert cache.provider(("llm", "b"), "http://prom:9090/", timedelta(seconds=10), auth) is first
    assert cache.provider(("llm", "c"), "http://prom:9090", timedelta(seconds=5), auth) is not first
    assert len(cache) == 2
    assert all(TOKEN not in repr(key) for key in cache._providers)


def test_rotated_credentials_close_the_old_session_once_its_queries_are_done(pool: QueryPool) -> None:
    cache = ProviderCache(pool, clock=Clock())
    old = cache.provider(("llm", "a"), "http://prom:9090", timedelta(seconds=10), PrometheusAuth("one"))
    old.busy = 1  # a query still running with the old token
    new = cache.provider(("llm", "a"), "http://prom:9090", timedelta(seconds=10), PrometheusAuth("two"))
    assert new is not old
    assert (len(cache), cache.closed) == (2, 0)
    old.busy = 0
    cache.sweep()
    assert (len(cache), cache.closed) == (1, 1)
    # The other rollout still on the old token keeps it open.
    shared = cache.provider(("llm", "b"), "http://prom:9090", timedelta(seconds=10), PrometheusAuth("two"))
    assert shared is new


def test_idle_providers_are_closed(pool: QueryPool) -> None:
    clock = Clock()
    cache = ProviderCache(pool, idle_seconds=600, clock=clock)
    cache.provider(("llm", "a"), "http://prom:9090", timedelta(seconds=10), None)
    cache.provider(("llm", "b"), "http://other:9090", timedelta(seconds=10), None)
    clock.now += 300
    cache.provider(("llm", "b"), "http://other:9090", timedelta(seconds=10), None)
    clock.now += 301
    cache.sweep()
    assert (len(cache), cache.closed) == (1, 1)  # a's, unused for 601s; b's was used 301s ago
    cache.forget(("llm", "b"))
    assert (len(cache), cache.closed) == (0, 2)


def test_user_counts_follow_every_move_and_idle_closing(pool: QueryPool) -> None:
    """The per-key user counts that spare the sweep a walk over all rollouts stay equal to the users' keys
    through moves between settings, forgetting and providers closed as idle."""
    clock = Clock()
    cache = ProviderCache(pool, idle_seconds=600, clock=clock)
    chooser = random.Random(7)  # noqa: S311 - a seeded sequence of moves, not a secret
    addresses = ["http://prom:9090", "http://other:9090", "http://third:9090"]
    for _ in range(500):
        user = ("llm", chooser.choice("abcdefgh"))
        move = chooser.random()
        if move < 0.7:
            cache.provider(user, chooser.choice(addresses), timedelta(seconds=10), None)
        elif move < 0.85:
            cache.forget(user)
        else:
            clock.now += 400
            cache.sweep()
        assert cache._user_counts == Counter(cache._users.values())
        assert set(cache._user_counts) <= set(cache._providers)
    assert cache.closed > 0


def test_a_pool_shut_down_refuses_work_and_keeps_no_turn() -> None:
    pool = QueryPool(workers=1, per_owner=1)
    pool.shutdown()
    finished: list[bool] = []

    async def attempt() -> None:
        with pytest.raises(RuntimeError):
            await pool.run("a", lambda: None, deadline=1, finished=lambda: finished.append(True))

    asyncio.run(attempt())
    assert finished == [True]
    assert pool.scheduler.stats().free == 1
