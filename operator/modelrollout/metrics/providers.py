"""The Prometheus providers the operator holds: one per address, timeout and credentials, shared by the
rollouts that use the same three, all running their queries in one QueryPool.

A provider keeps an HTTP session (a connection pool), so providers are not kept forever: one that no rollout
has used for `idle_seconds` is closed, and so is one whose every rollout moved on to other credentials (a
rotated token) or another address, as soon as its last query has finished. Credentials are keyed by a digest,
never held in the key itself.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import timedelta

from modelrollout.metrics.credentials import PrometheusAuth
from modelrollout.metrics.prometheus import PrometheusProvider, QueryPool


@dataclass(frozen=True)
class ProviderKey:
    address: str
    timeout: timedelta
    credentials: str | None  # a salted digest of the credentials


class ProviderCache:
    def __init__(
        self, pool: QueryPool, *, idle_seconds: float = 600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.pool = pool
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._providers: dict[ProviderKey, PrometheusProvider] = {}
        self._users: dict[Hashable, ProviderKey] = {}  # each user's (rollout's) current provider
        # How many users each key has: a sweep runs on every query, so it must not walk the users (measured
        # at 1,000 rollouts, walking them was 9% of the operator's CPU).
        self._user_counts: dict[ProviderKey, int] = {}
        self._salt = secrets.token_bytes(16)
        self.closed = 0  # providers closed so far (for the operator's metrics and tests)

    def __len__(self) -> int:
        return len(self._providers)

    def provider(
        self, user: Hashable, address: str, timeout: timedelta, auth: PrometheusAuth | None
    ) -> PrometheusProvider:
        """The provider for `user` (a rollout) with these settings, made if needed. A user's previous provider
        that nobody else uses any more is closed once its queries are done."""
        key = ProviderKey(address.rstrip("/"), timeout, self._digest(auth))
        self._use(user, key)
        provider = self._providers.get(key)
        if provider is None:
            auth = auth or PrometheusAuth()
            provider = PrometheusProvider.with_auth(key.address, auth, timeout=timeout, pool=self.pool)
            self._providers[key] = provider
        provider.last_used = self._clock()
        self.sweep()
        return provider

    def forget(self, user: Hashable) -> None:
        """`user` is gone (a deleted rollout): its provider may be closed once nobody else uses it."""
        self._use(user, None)
        self.sweep()

    def _use(self, user: Hashable, key: ProviderKey | None) -> None:
        """Record `user`'s provider (None: no longer any)."""
        previous = self._users.pop(user, None)
        if previous is not None:
            left = self._user_counts[previous] - 1
            if left:
                self._user_counts[previous] = left
            else:
                del self._user_counts[previous]
        if key is not None:
            self._users[user] = key
            self._user_counts[key] = self._user_counts.get(key, 0) + 1

    def sweep(self) -> None:
        now = self._clock()
        closed: set[ProviderKey] = set()
        for key, provider in list(self._providers.items()):
            if provider.busy:
                continue
            idle = now - provider.last_used >= self.idle_seconds
            if idle or key not in self._user_counts:
                self._close(key)
                closed.add(key)
        if closed:
            # Users whose provider was closed as idle start afresh next time (rare: one walk per closing).
            for user in [user for user, key in self._users.items() if key in closed]:
                self._use(user, None)

    def close(self) -> None:
        for key in list(self._providers):
            self._close(key)

    def _close(self, key: ProviderKey) -> None:
        provider = self._providers.pop(key)
        provider.close()
        self.closed += 1

    def _digest(self, auth: PrometheusAuth | None) -> str | None:
        if auth is None or (auth.bearer_token is None and auth.basic_auth is None):
            return None
        material = repr((auth.bearer_token, auth.basic_auth)).encode()
        return hashlib.blake2b(material, key=self._salt, digest_size=16).hexdigest()
