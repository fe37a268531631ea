"""The API server for the reconciler: the ModelRollout's status subresource, its Events, its action
annotation, Secrets and the bucket EnvoyFilter, over the operator's async client (no worker threads)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelrollout import api
from modelrollout.kubeclient import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    ApiError,
    KubeClient,
    load_credentials,
    object_path,
)
from modelrollout.routing import envoy_filter

ACTION_ANNOTATION = f"{api.GROUP}/action"
REPORTING_COMPONENT = "modelrollout-operator"

log = logging.getLogger(__name__)


def default_client(user_agent: str, request_timeout: float = 10.0) -> KubeClient:
    """In a Pod, its ServiceAccount; elsewhere, the kubeconfig ($KUBECONFIG or ~/.kube/config). Blocking
    (reads files): called once at the start."""
    return KubeClient(
        load_credentials(), user_agent=user_agent, request_timeout=request_timeout, refresh=load_credentials
    )


@dataclass(frozen=True)
class RolloutRef:
    namespace: str
    name: str
    uid: str

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> RolloutRef:
        """The reference of a rollout object as the API server or a watch gave it."""
        meta = obj["metadata"]
        return cls(namespace=meta["namespace"], name=meta["name"], uid=meta.get("uid", ""))


class StaleObject(Exception):
    """The ModelRollout changed since it was read (HTTP 409): observe again and decide again."""


def _as_dict(found: object) -> dict[str, Any]:
    if not isinstance(found, dict):
        raise TypeError(f"the API server answered {type(found).__name__}, not an object")
    return found


def without_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without metadata.managedFields (the server's bookkeeping): for keeping an object, or for
    a full replace that must leave the live ones as they are. The given object is left as it was."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or "managedFields" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


def describe_api_error(error: BaseException) -> str:
    """`HTTP 403: <the API server's message>` rather than the client's dump of headers and body."""
    if isinstance(error, ApiError):
        return f"HTTP {error.status}: {error.message}"
    return f"{type(error).__name__}: {error}"


def _rollout_path(ref: RolloutRef, subresource: str = "") -> str:
    path = object_path(api.GROUP, api.VERSION, api.PLURAL, ref.namespace, ref.name)
    return f"{path}/{subresource}" if subresource else path


def _envoy_filter_path(namespace: str, name: str) -> str:
    return object_path(envoy_filter.GROUP, envoy_filter.VERSION, envoy_filter.PLURAL, namespace, name)


class Kube:
    def __init__(self, client: KubeClient, request_timeout: float = 10.0) -> None:
        self._client = client
        self._timeout = request_timeout

    async def record_status(
        self, ref: RolloutRef, status: api.ModelRolloutStatus, resource_version: str | None
    ) -> dict[str, Any]:
        """Write the whole status through the status subresource, on condition that the object is still at
        `resource_version` (StaleObject otherwise: someone wrote since it was read). Fields the model holds as
        None are sent as null, so the merge patch removes them: the stored status is exactly the decided
        one. Returns the stored object."""
        patch: dict[str, Any] = {"status": status.model_dump(by_alias=True, mode="json")}
        if resource_version is not None:
            patch["metadata"] = {"resourceVersion": resource_version}
        try:
            stored = await self._client.request(
                "PATCH",
                _rollout_path(ref, "status"),
                body=patch,
                content_type=MERGE_PATCH,
                timeout=self._timeout,
            )
        except ApiError as error:
            if error.status == 409:
                raise StaleObject(
                    f"ModelRollout {ref.namespace}/{ref.name} changed since it was read"
                ) from error
            raise
        return _as_dict(stored)

    async def get_rollout(self, ref: RolloutRef) -> dict[str, Any] | None:
        """The ModelRollout as stored now; None when it is gone."""
        try:
            found = await self._client.request("GET", _rollout_path(ref), timeout=self._timeout)
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return _as_dict(found)

    async def rollout_exists(self, namespace: str, name: str) -> bool:
        """Whether a ModelRollout exists (to tell a live claim from one left by a deleted rollout). An object
        being deleted still exists: its finalizer releases its claims."""
        return await self.get_rollout(RolloutRef(namespace=namespace, name=name, uid="")) is not None

    async def consume_action(self, ref: RolloutRef, value: str) -> dict[str, Any] | None:
        """Remove the action annotation if it still holds `value`; the stored object, or None when the
        annotation changed or went meanwhile. The action is in status (accepted) before this is called, so
        an operator killed in between applies it once when it comes back, and never loses it."""
        key = ACTION_ANNOTATION.replace("/", "~1")
        patch = [
            {"op": "test", "path": f"/metadata/annotations/{key}", "value": value},
            {"op": "remove", "path": f"/metadata/annotations/{key}"},
        ]
        try:
            stored = await self._client.request(
                "PATCH", _rollout_path(ref), body=patch, content_type=JSON_PATCH, timeout=self._timeout
            )
        except ApiError as error:
            if error.status in (404, 409, 422):  # gone, or changed meanwhile: someone else's value now
                return None
            raise
        return _as_dict(stored)

    async def emit_event(self, ref: RolloutRef, type_: str, reason: str, message: str) -> None:
        """Post a core/v1 Event on the rollout (what `kubectl describe` shows). Never raises: an Event that
        cannot be posted must not stop a rollback."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace},
            "involvedObject": {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "name": ref.name,
                "namespace": ref.namespace,
                "uid": ref.uid,
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": REPORTING_COMPONENT},
            "reportingComponent": REPORTING_COMPONENT,
            "reportingInstance": REPORTING_COMPONENT,
            "action": reason,
        }
        try:
            await self._client.request(
                "POST", object_path("", "v1", "events", ref.namespace), body=event, timeout=self._timeout
            )
        except Exception as error:  # reported, never fatal
            log.warning("could not post event %s on %s/%s: %s", reason, ref.namespace, ref.name, error)

    async def read_secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """A Secret's `data`, still base64-encoded as the API serves it."""
        secret = await self._client.request(
            "GET", object_path("", "v1", "secrets", namespace, name), timeout=self._timeout
        )
        return dict(_as_dict(secret).get("data") or {})

    # ---- the bucket EnvoyFilter (experiment.stickiness.userHeader) ----

    async def get_envoy_filter(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = await self._client.request(
                "GET", _envoy_filter_path(namespace, name), timeout=self._timeout
            )
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return _as_dict(found)

    async def apply_envoy_filter(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create or update the filter by server-side apply: the operator owns every field it sets, and an
        unchanged manifest changes nothing."""
        meta = manifest["metadata"]
        stored = await self._client.request(
            "PATCH",
            _envoy_filter_path(meta["namespace"], meta["name"]),
            params={"fieldManager": REPORTING_COMPONENT, "force": "true"},
            body=manifest,
            content_type=APPLY_PATCH,
            timeout=self._timeout,
        )
        return _as_dict(stored)

    async def delete_envoy_filter(self, namespace: str, name: str) -> None:
        """Remove the filter; one already gone is removed."""
        try:
            await self._client.request("DELETE", _envoy_filter_path(namespace, name), timeout=self._timeout)
        except ApiError as error:
            if error.status != 404:
                raise
