"""A thin async adapter over the (synchronous) kubernetes client: the ModelRollout's status subresource, its
Events, its action annotation, and Secrets. Every call runs in a worker thread with a request timeout, so the
event loop never blocks on the API server."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelrollout import api

ACTION_ANNOTATION = f"{api.GROUP}/action"
REPORTING_COMPONENT = "modelrollout-operator"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutRef:
    namespace: str
    name: str
    uid: str


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

    async def patch_status(self, ref: RolloutRef, status: api.ModelRolloutStatus) -> None:
        """Write the whole status through the status subresource. Fields the model holds as None are sent as
        null, so a merge patch removes them: the stored status is exactly the decided one."""
        await self._patch_status_subresource(ref, status.model_dump(by_alias=True, mode="json"))

    async def patch_conditions(self, ref: RolloutRef, conditions: list[api.Condition]) -> None:
        """Write only the conditions (a failure report that must not touch anything else in the status)."""
        await self._patch_status_subresource(
            ref, {"conditions": [c.model_dump(by_alias=True, mode="json") for c in conditions]}
        )

    async def _patch_status_subresource(self, ref: RolloutRef, status: dict[str, Any]) -> None:
        await asyncio.to_thread(
            self._objects.patch_namespaced_custom_object_status,
            api.GROUP,
            api.VERSION,
            ref.namespace,
            api.PLURAL,
            ref.name,
            {"status": status},
            _request_timeout=self._timeout,
        )

    async def consume_action(self, ref: RolloutRef, value: str) -> bool:
        """Remove the action annotation if it still holds `value`. At most once: the annotation goes before
        the action is applied, so an operator killed in between loses the action (the user sees it was not
        recorded in status.lastAction and asks again) rather than applying a promote twice."""
        key = ACTION_ANNOTATION.replace("/", "~1")
        patch = [
            {"op": "test", "path": f"/metadata/annotations/{key}", "value": value},
            {"op": "remove", "path": f"/metadata/annotations/{key}"},
        ]
        try:
            await asyncio.to_thread(
                self._objects.patch_namespaced_custom_object,
                api.GROUP,
                api.VERSION,
                ref.namespace,
                api.PLURAL,
                ref.name,
                patch,
                _request_timeout=self._timeout,
                _content_type="application/json-patch+json",
            )
        except ApiException as error:
            if error.status in (404, 409, 422):  # gone, or changed meanwhile: someone else's value now
                return False
            raise
        return True

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
