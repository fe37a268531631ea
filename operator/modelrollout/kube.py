"""A thin async adapter over the (synchronous) kubernetes client: the ModelRollout's status subresource, its
Events, its action annotation, and Secrets. Every call runs in a worker thread with a request timeout, so the
event loop never blocks on the API server."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from modelrollout import api
from modelrollout.routing import envoy_filter

ACTION_ANNOTATION = f"{api.GROUP}/action"
REPORTING_COMPONENT = "modelrollout-operator"

log = logging.getLogger(__name__)


def default_api_client() -> client.ApiClient:
    """In a Pod, its ServiceAccount; elsewhere, the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


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
    if isinstance(error, ApiException):
        try:
            message = json.loads(error.body or "{}").get("message") or error.reason
        except (ValueError, AttributeError):
            message = error.reason
        return f"HTTP {error.status}: {message}"
    return f"{type(error).__name__}: {error}"


class Kube:
    def __init__(self, api_client: client.ApiClient, request_timeout: float = 10.0) -> None:
        self._objects = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._timeout = request_timeout

    async def _on_rollout(self, call: Any, ref: RolloutRef, *args: Any, **options: Any) -> Any:
        """One custom-objects call on the ModelRollout `ref`, in a worker thread, with the request timeout."""
        return await asyncio.to_thread(
            call,
            api.GROUP,
            api.VERSION,
            ref.namespace,
            api.PLURAL,
            ref.name,
            *args,
            _request_timeout=self._timeout,
            **options,
        )

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
            stored = await self._on_rollout(self._objects.patch_namespaced_custom_object_status, ref, patch)
        except ApiException as error:
            if error.status == 409:
                raise StaleObject(
                    f"ModelRollout {ref.namespace}/{ref.name} changed since it was read"
                ) from error
            raise
        return _as_dict(stored)

    async def get_rollout(self, ref: RolloutRef) -> dict[str, Any] | None:
        """The ModelRollout as stored now; None when it is gone."""
        try:
            found = await self._on_rollout(self._objects.get_namespaced_custom_object, ref)
        except ApiException as error:
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
            stored = await self._on_rollout(
                self._objects.patch_namespaced_custom_object,
                ref,
                patch,
                _content_type="application/json-patch+json",
            )
        except ApiException as error:
            if error.status in (404, 409, 422):  # gone, or changed meanwhile: someone else's value now
                return None
            raise
        return _as_dict(stored)

    async def emit_event(self, ref: RolloutRef, type_: str, reason: str, message: str) -> None:
        """Post a core/v1 Event on the rollout (what `kubectl describe` shows). Never raises: an Event that
        cannot be posted must not stop a rollback."""
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{ref.name}.", namespace=ref.namespace),
            involved_object=client.V1ObjectReference(
                api_version=api.API_VERSION,
                kind=api.KIND,
                name=ref.name,
                namespace=ref.namespace,
                uid=ref.uid,
            ),
            type=type_,
            reason=reason,
            message=message[:1024],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component=REPORTING_COMPONENT),
            reporting_component=REPORTING_COMPONENT,
            reporting_instance=REPORTING_COMPONENT,
            action=reason,
        )
        try:
            await asyncio.to_thread(
                self._core.create_namespaced_event, ref.namespace, event, _request_timeout=self._timeout
            )
        except Exception as error:  # reported, never fatal
            log.warning("could not post event %s on %s/%s: %s", reason, ref.namespace, ref.name, error)

    async def read_secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """A Secret's `data`, still base64-encoded as the API serves it."""
        secret: Any = await asyncio.to_thread(
            self._core.read_namespaced_secret, name, namespace, _request_timeout=self._timeout
        )
        return dict(secret.data or {})

    # ---- the bucket EnvoyFilter (experiment.stickiness.userHeader) ----

    async def _on_envoy_filter(self, call: Any, namespace: str, name: str, *args: Any, **options: Any) -> Any:
        """One custom-objects call on the EnvoyFilter `namespace/name`, off the event loop."""
        return await asyncio.to_thread(
            call,
            envoy_filter.GROUP,
            envoy_filter.VERSION,
            namespace,
            envoy_filter.PLURAL,
            name,
            *args,
            _request_timeout=self._timeout,
            **options,
        )

    async def get_envoy_filter(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = await self._on_envoy_filter(self._objects.get_namespaced_custom_object, namespace, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return _as_dict(found)

    async def apply_envoy_filter(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create or update the filter by server-side apply: the operator owns every field it sets, and an
        unchanged manifest changes nothing."""
        meta = manifest["metadata"]
        stored = await self._on_envoy_filter(
            self._objects.patch_namespaced_custom_object,
            meta["namespace"],
            meta["name"],
            manifest,
            field_manager=REPORTING_COMPONENT,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        return _as_dict(stored)

    async def delete_envoy_filter(self, namespace: str, name: str) -> None:
        """Remove the filter; one already gone is removed."""
        try:
            await self._on_envoy_filter(self._objects.delete_namespaced_custom_object, namespace, name)
        except ApiException as error:
            if error.status != 404:
                raise
