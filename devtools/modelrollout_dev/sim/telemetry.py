"""Istio Telemetry resources as the destination sidecar applies them to the standard metrics, for the one tag
the simulator knows: `variant`.

Istio takes the Telemetry of the workload's namespace, else the root namespace's (`istio-system`): a
namespace's resource replaces the mesh-wide one, it is not merged with it. Only Telemetries without a
selector or target are read (the simulated workloads carry no pod labels). An override applies to the
destination-reported request metrics when its match names `REQUEST_COUNT`, `REQUEST_DURATION` or
`ALL_METRICS` (or no metric) in mode `SERVER` or `CLIENT_AND_SERVER` (or none). Its value is evaluated for the
forms the operator's chart writes: `request.headers['NAME']`, optionally followed by `| 'DEFAULT'`; any other
expression is not understood here and the tag is left unset, as a metric with an empty label.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

ROOT_NAMESPACE = "istio-system"
TAG = "variant"
_APPLIES_TO = {None, "ALL_METRICS", "REQUEST_COUNT", "REQUEST_DURATION"}
_SERVER_MODES = {None, "SERVER", "CLIENT_AND_SERVER"}
_HEADER_EXPRESSION = re.compile(
    r"""^\s*request\.headers\[\s*'(?P<header>[A-Za-z0-9_-]+)'\s*\]\s*(?:\|\s*'(?P<default>[^']*)'\s*)?$"""
)


def _tag_value(expression: str, headers: Mapping[str, str]) -> str:
    form = _HEADER_EXPRESSION.match(expression)
    if form is None:
        return ""
    value = headers.get(form.group("header").lower())
    return value if value else (form.group("default") or "")


def _expression(telemetry: Mapping[str, Any]) -> str | None:
    """The value expression of the `variant` tag in `telemetry`, for destination-reported requests."""
    spec = telemetry.get("spec") or {}
    if spec.get("selector") or spec.get("targetRef") or spec.get("targetRefs"):
        return None
    found = None
    for metrics in spec.get("metrics") or []:
        for override in metrics.get("overrides") or []:
            match = override.get("match") or {}
            if match.get("metric") not in _APPLIES_TO or match.get("mode") not in _SERVER_MODES:
                continue
            tag = (override.get("tagOverrides") or {}).get(TAG) or {}
            if tag.get("operation", "UPSERT") == "UPSERT" and isinstance(tag.get("value"), str):
                found = tag["value"]
    return found


class VariantTag:
    """The `variant` label the live Telemetries give a request served in a namespace ("" for none)."""

    def __init__(self, telemetries: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        self._telemetries = telemetries

    def __call__(self, namespace: str, headers: Mapping[str, str]) -> str:
        """Called for every request served: one pass over the (few) live Telemetries, no index built."""
        mesh_wide: str | None = None
        in_namespace = False
        for telemetry in self._telemetries():
            where = (telemetry.get("metadata") or {}).get("namespace")
            if where == namespace:
                in_namespace = True  # the namespace's own Telemetries replace the mesh-wide ones
                expression = _expression(telemetry)
                if expression is not None:
                    return _tag_value(expression, headers)
            elif where == ROOT_NAMESPACE and mesh_wide is None:
                mesh_wide = _expression(telemetry)
        if in_namespace or mesh_wide is None:
            return ""
        return _tag_value(mesh_wide, headers)
