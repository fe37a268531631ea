"""The live VirtualServices (or other Istio objects: EnvoyFilters, Telemetries) of some namespaces (or all),
kept current from the API server: list, then watch from the list's resourceVersion, in a background thread
per scope.

Any failure (410 Gone when the resourceVersion expired, a dropped connection, an API error) ends the watch and
the thread lists again after a short backoff, replacing what it held, so deletions missed while disconnected
are not remembered. Readers get a snapshot: the objects are replaced on every event and never mutated in
place, so a snapshot stays consistent while routing reads it (callers must not mutate it either).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, cast

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

ISTIO_GROUP = "networking.istio.io"
PLURAL = "virtualservices"
ALL_NAMESPACES = ""

log = logging.getLogger(__name__)

# The server ends each watch after this long; the next one resumes from the last resourceVersion seen.
_WATCH_SECONDS = 60
_REQUEST_TIMEOUT = (5.0, _WATCH_SECONDS + 15.0)  # (connect, read) seconds
_BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


class IstioWatcher:
    def __init__(
        self,
        api_client: client.ApiClient,
        namespaces: Sequence[str] | None = None,
        *,
        api_version: str = "v1",
        plural: str = PLURAL,
        group: str = ISTIO_GROUP,
    ) -> None:
        self._api = client.CustomObjectsApi(api_client)
        self._group = group
        self._version = api_version
        self._plural = plural
        self._scopes = list(dict.fromkeys(namespaces)) if namespaces else [ALL_NAMESPACES]
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # Per scope: (namespace, name) -> object; a scope is present once its first list succeeded.
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        self._stopping = threading.Event()
        self._watches: dict[str, watch.Watch] = {}
        self._threads: list[threading.Thread] = []
        self.errors = 0
        self.last_error: str | None = None

    def start(self) -> None:
        for scope in self._scopes:
            thread = threading.Thread(
                target=self._run, args=(scope,), name=f"{self._plural}-watch-{scope or 'all'}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with self._lock:
            watches = list(self._watches.values())
        for running in watches:
            running.stop()  # type: ignore[no-untyped-call]  # shuts the socket down, so a blocked read returns at once
        for thread in self._threads:
            thread.join(timeout=timeout)

    def wait_synced(self, timeout: float) -> bool:
        """Whether every namespace was listed at least once within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._objects) < len(self._scopes):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def snapshot(self) -> list[dict[str, Any]]:
        """The VirtualServices currently known, ordered by namespace and name. Read-only."""
        with self._lock:
            merged = {key: vs for objects in self._objects.values() for key, vs in objects.items()}
        return [merged[key] for key in sorted(merged)]

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            for objects in self._objects.values():
                if (namespace, name) in objects:
                    return objects[(namespace, name)]
        return None

    def wait_for(self, namespace: str, name: str, resource_version: str, timeout: float) -> bool:
        """Whether the VirtualService was seen at `resource_version` (or later) within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                current = next(
                    (objs[(namespace, name)] for objs in self._objects.values() if (namespace, name) in objs),
                    None,
                )
                # etcd revisions are increasing integers; the API calls them opaque, so only equality is
                # certain, and a later one is accepted when both parse.
                seen = str((current or {}).get("metadata", {}).get("resourceVersion", ""))
                if seen == resource_version or (
                    seen.isdigit() and resource_version.isdigit() and int(seen) > int(resource_version)
                ):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)

    # ---- the background thread ----

    def _run(self, scope: str) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                resource_version = self._list(scope)
                failures = 0
                while not self._stopping.is_set():
                    resource_version = self._watch(scope, resource_version)
            except ApiException as failed:
                self._failed(
                    scope, f"API error {failed.status}: {failed.reason}", expected=failed.status == 410
                )
            except Exception as failed:  # any other failure: connection reset, timeout, bad payload
                self._failed(scope, f"{type(failed).__name__}: {failed}", expected=False)
            if self._stopping.is_set():
                break
            self._stopping.wait(_BACKOFF_SECONDS[min(failures, len(_BACKOFF_SECONDS) - 1)])
            failures += 1

    def _failed(self, scope: str, message: str, *, expected: bool) -> None:
        if self._stopping.is_set():
            return  # stop() broke the connection on purpose
        with self._lock:
            self.errors += 1
            self.last_error = message
        # An expired resourceVersion is routine (the watch outlived etcd's compaction): list again quietly.
        log.log(
            logging.DEBUG if expected else logging.WARNING,
            "%s watch %s: %s; re-listing",
            self._plural,
            scope or "(all namespaces)",
            message,
        )

    def _list(self, scope: str) -> str:
        timeout = _REQUEST_TIMEOUT[0] * 2
        if scope:
            answer = self._api.list_namespaced_custom_object(
                self._group, self._version, scope, self._plural, _request_timeout=timeout
            )
        else:
            answer = self._api.list_cluster_custom_object(
                self._group, self._version, self._plural, _request_timeout=timeout
            )
        listed = cast(dict[str, Any], answer)
        objects = {_key(vs): vs for vs in listed.get("items") or []}
        with self._changed:
            self._objects[scope] = objects
            self._changed.notify_all()
        return str(listed["metadata"]["resourceVersion"])

    def _watch(self, scope: str, resource_version: str) -> str:
        """One watch request, until the server ends it; the resourceVersion to resume from."""
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        with self._lock:
            self._watches[scope] = stream
        if scope:
            call: Any = self._api.list_namespaced_custom_object
            args: tuple[str, ...] = (self._group, self._version, scope, self._plural)
        else:
            call = self._api.list_cluster_custom_object
            args = (self._group, self._version, self._plural)
        try:
            if self._stopping.is_set():  # stop() ran before this watch was registered
                return resource_version
            for event in stream.stream(  # type: ignore[no-untyped-call]
                call,
                *args,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=_WATCH_SECONDS,
                _request_timeout=_REQUEST_TIMEOUT,
            ):
                kind = event["type"]
                obj: dict[str, Any] = event["raw_object"]
                resource_version = str(obj.get("metadata", {}).get("resourceVersion") or resource_version)
                if kind == "BOOKMARK":
                    continue
                with self._changed:
                    objects = self._objects.setdefault(scope, {})
                    if kind == "DELETED":
                        objects.pop(_key(obj), None)
                    else:
                        objects[_key(obj)] = obj
                    self._changed.notify_all()
        finally:
            with self._lock:
                self._watches.pop(scope, None)
        return resource_version


def _key(vs: dict[str, Any]) -> tuple[str, str]:
    metadata = vs.get("metadata") or {}
    return str(metadata.get("namespace", "")), str(metadata.get("name", ""))
