"""The VirtualServices the rollouts route through, kept current by a watch: a tick reads them from memory, so
an idle rollout costs the API server nothing, and a change made by anyone wakes the rollouts that claim the
VirtualService at once (drift is seen when it happens, not at the next tick).

An informer of our own rather than kopf's handlers: the cache must replace its view of a scope on every
re-list (an object deleted while the watch was down must not linger), start per namespace on first use (a
rollout may route through a VirtualService in a namespace the operator does not watch for rollouts), and
fall back to a plain GET where the operator may not list (RBAC without list/watch on VirtualServices). Each
scope's watch is a task on the event loop, which is the only place the cache is touched.

What the cache answers is never trusted for a write: writes carry the resourceVersion that was read, so a
stale answer costs one 409, after which that VirtualService is read live until the watch shows it again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from modelrollout.kube import describe_api_error
from modelrollout.kubeclient import ApiError, KubeClient, object_path
from modelrollout.routing.istio import VirtualService, keeping_what_is_read

log = logging.getLogger(__name__)

ISTIO_GROUP = "networking.istio.io"
PLURAL = "virtualservices"
# A scope the operator may not watch is tried again after this long (its reads go to the API meanwhile).
REFUSED_RETRY_SECONDS = 300.0
# The versions our own writes replaced, per VirtualService: a watch event still carrying one of them is
# older than what the cache holds. A watch is never more than a few writes behind.
SUPERSEDED_KEPT = 8

Key = tuple[str, str, str]  # API version, namespace, name
ScopeKey = tuple[str, str]  # API version, namespace ("" for every namespace)
OnChange = Callable[[VirtualService | None, VirtualService | None], None]


@dataclass
class _Scope:
    synced: bool = False  # listed, and watching since: absence from the cache means absence
    listed: bool = False  # listed at least once
    refused: str | None = None  # the API server's reason this scope cannot be watched (read live instead)
    task: asyncio.Task[None] | None = None


@dataclass
class _Writes:
    own: str | None = None  # the version our last write stored: its echo on the watch wakes nobody
    superseded: list[str] = field(default_factory=list)


def _version_of(obj: VirtualService) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


@dataclass(frozen=True, slots=True)
class _Kept:
    """A VirtualService as the cache holds it: where it is, its resourceVersion, and the object as compressed
    JSON, with no more managedFields than is read. About 1 KB, against 4 KB as Python objects even with its
    strings shared (one per rollout, for the rollout's life); decoded at each read (~30 us), so every reader
    gets its own copy."""

    namespace: str
    name: str
    version: str
    packed: bytes

    @classmethod
    def of(cls, vs: VirtualService) -> _Kept:
        kept = keeping_what_is_read(vs)
        meta = kept.get("metadata") or {}
        packed = zlib.compress(json.dumps(kept, separators=(",", ":")).encode(), 1)
        return cls(str(meta.get("namespace", "")), str(meta.get("name", "")), _version_of(kept), packed)

    def key(self, version: str) -> Key:
        return version, self.namespace, self.name

    def obj(self) -> VirtualService:
        vs: VirtualService = json.loads(zlib.decompress(self.packed))
        return vs


def _open(kept: _Kept | None) -> VirtualService | None:
    return kept.obj() if kept is not None else None


class VirtualServiceCache:
    def __init__(
        self,
        kube_client: KubeClient,
        *,
        cluster_wide: bool,
        request_timeout: float = 10.0,
        watch_seconds: int = 300,
        on_change: OnChange | None = None,
    ) -> None:
        self._client = kube_client
        self._cluster_wide = cluster_wide
        self._request_timeout = request_timeout
        self._watch_seconds = watch_seconds
        self.on_change = on_change
        self._objects: dict[Key, _Kept] = {}
        self._unsure: set[Key] = set()
        self._writes: dict[Key, _Writes] = {}
        self._scopes: dict[ScopeKey, _Scope] = {}
        self._closed = False

    # ---- what the routers ask (on the event loop) ----

    def cached(self, version: str, namespace: str, name: str) -> tuple[bool, VirtualService | None]:
        """(True, the object) or (True, None: the watch knows it does not exist); (False, None) when the
        cache cannot say: its watch is starting, reconnecting or refused, or the last write to it conflicted.
        The first question about a scope starts its watch."""
        scope = self._scope(version, namespace)
        key = (version, namespace, name)
        if not scope.synced or key in self._unsure:
            return False, None
        return True, _open(self._objects.get(key))

    def fetched(self, version: str, obj: VirtualService) -> None:
        """A live read's answer, kept unless the watch has spoken for that VirtualService while the read was
        under way (its view is then the one to follow: it shows every later change in order)."""
        meta = obj.get("metadata") or {}
        key = (version, str(meta.get("namespace", "")), str(meta.get("name", "")))
        scope = self._scopes.get((version, "" if self._cluster_wide else key[1]))
        if scope is not None and scope.synced and key not in self._unsure:
            return  # not packed at all: the watch's view stands
        self._objects[key] = _Kept.of(obj)
        self._unsure.discard(key)

    def wrote(self, version: str, superseded: str, stored: VirtualService) -> None:
        """Our write replaced `superseded` with `stored`."""
        kept = _Kept.of(stored)
        key = kept.key(version)
        writes = self._writes.setdefault(key, _Writes())
        writes.own = kept.version
        writes.superseded = [*writes.superseded, superseded][-SUPERSEDED_KEPT:]
        self._objects[key] = kept
        self._unsure.discard(key)

    def invalidate(self, version: str, namespace: str, name: str) -> None:
        """A write met a newer version (409) or none (404): read it live until the watch shows it again."""
        self._unsure.add((version, namespace, name))

    def close(self) -> None:
        self._closed = True
        for scope in self._scopes.values():
            if scope.task is not None:
                scope.task.cancel()

    # ---- the watches ----

    def _scope(self, version: str, namespace: str) -> _Scope:
        scope_key = (version, "" if self._cluster_wide else namespace)
        scope = self._scopes.get(scope_key)
        if scope is None:
            scope = self._scopes[scope_key] = _Scope()
            if not self._closed:
                self._start_watch(scope_key, scope)
        return scope

    def _start_watch(self, scope_key: ScopeKey, scope: _Scope) -> None:
        name = f"watch-vs-{scope_key[1] or 'all'}"
        scope.task = asyncio.get_running_loop().create_task(self._watch(scope_key), name=name)

    async def _watch(self, scope_key: ScopeKey) -> None:
        """List, then watch from the listed version; re-list when the version is too old (410) or the
        stream fails. Runs until the cache is closed (the task cancelled)."""
        version, namespace = scope_key
        path = object_path(ISTIO_GROUP, version, PLURAL, namespace or None)
        backoff = 1.0
        while True:
            try:
                listing = await self._client.request("GET", path, timeout=self._request_timeout)
                since = str(listing["metadata"]["resourceVersion"])
                items = [_Kept.of(item) for item in listing.get("items") or ()]
                # Neither the answer nor the listed objects may outlive the watch below, as locals of this
                # task: the cache replaces the listed objects with the ones the watch shows next.
                del listing
                self._relisted(scope_key, items)
                del items
                backoff = 1.0
                while True:
                    async for event in self._client.watch(
                        path,
                        resource_version=since,
                        timeout_seconds=self._watch_seconds,
                        connect_timeout=self._request_timeout,
                    ):
                        kind, obj = event.get("type"), event.get("object") or {}
                        since = _version_of(obj) or since
                        if kind in ("ADDED", "MODIFIED", "DELETED"):
                            self._changed(version, kind, _Kept.of(obj))
            except ApiError as error:
                if error.status in (403, 404):
                    # Not allowed (or not served): read live, and ask again now and then, in case the
                    # permission is granted later. (A 401 is a credential the client has just reloaded:
                    # tried again after the usual pause.)
                    self._refused(scope_key, describe_api_error(error))
                    await asyncio.sleep(REFUSED_RETRY_SECONDS)
                elif error.status != 410:  # 410: the version is too old, list again at once
                    self._lost(scope_key, describe_api_error(error))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
            except Exception as error:  # a dropped connection, a timeout: list again after a pause
                self._lost(scope_key, f"{type(error).__name__}: {error}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    # ---- applying what the watches saw (on the event loop) ----

    def _in_scope(self, key: Key, scope_key: ScopeKey) -> bool:
        return key[0] == scope_key[0] and (not scope_key[1] or key[1] == scope_key[1])

    def _relisted(self, scope_key: ScopeKey, items: list[_Kept]) -> None:
        scope = self._scopes[scope_key]
        version = scope_key[0]
        listed = {kept.key(version): kept for kept in items}
        before = {key: obj for key, obj in self._objects.items() if self._in_scope(key, scope_key)}
        for key in before.keys() - listed.keys():  # deleted while the watch was down
            del self._objects[key]
            self._writes.pop(key, None)
        self._objects.update(listed)
        self._unsure -= listed.keys()
        first, scope.listed, scope.synced = not scope.listed, True, True
        for key in before.keys() | listed.keys():
            old, new = before.get(key), listed.get(key)
            if first and old is None:
                continue  # the first listing: no driver waits on it, each reads at its next tick
            if old is None or new is None or old.version != new.version:
                self._notify(old, new)

    def _changed(self, version: str, kind: str, kept: _Kept) -> None:
        key = kept.key(version)
        old = self._objects.get(key)
        if kind == "DELETED":
            self._objects.pop(key, None)
            self._writes.pop(key, None)
            self._notify(old, None)
            return
        writes = self._writes.get(key)
        seen = kept.version
        if writes is not None and seen in writes.superseded:
            return  # older than what our own write stored
        self._objects[key] = kept
        self._unsure.discard(key)
        if writes is not None and writes.own == seen:
            return  # the echo of our own write
        self._notify(old, kept)

    def _refused(self, scope_key: ScopeKey, reason: str) -> None:
        scope = self._scopes[scope_key]
        scope.synced = False
        if scope.refused == reason:
            return  # said once
        scope.refused = reason
        where = f"namespace {scope_key[1]}" if scope_key[1] else "all namespaces"
        log.warning(
            "VirtualServices in %s cannot be watched (%s): each tick reads them from the API server instead "
            "(grant list and watch on virtualservices.%s to save those reads)",
            where,
            reason,
            ISTIO_GROUP,
        )

    def _lost(self, scope_key: ScopeKey, reason: str) -> None:
        scope = self._scopes[scope_key]
        if scope.synced:
            log.info(
                "VirtualService watch (%s) interrupted: %s; reading live until it is back", scope_key, reason
            )
        scope.synced = False

    def _notify(self, old: _Kept | None, new: _Kept | None) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(_open(old), _open(new))
        except Exception:  # a wake-up that fails must not stop the cache
            log.exception("VirtualService change callback failed")
