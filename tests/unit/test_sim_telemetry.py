"""The simulator's reading of Istio Telemetry tag overrides (`sim.telemetry`): which resource applies to a
namespace, which overrides reach the destination-reported request metrics, and the header expressions."""

from __future__ import annotations

from typing import Any

import pytest

from modelrollout_dev.sim.telemetry import VariantTag


def telemetry(namespace: str, value: str, **match: str) -> dict[str, Any]:
    override = {"match": match, "tagOverrides": {"variant": {"operation": "UPSERT", "value": value}}}
    return {
        "metadata": {"namespace": namespace, "name": "t"},
        "spec": {"metrics": [{"providers": [{"name": "prometheus"}], "overrides": [override]}]},
    }


CHART = "request.headers['x-variant'] | 'none'"


@pytest.mark.parametrize(
    ("telemetries", "namespace", "headers", "variant"),
    [
        ([], "llm", {"x-variant": "canary"}, ""),
        (
            [telemetry("llm", CHART, metric="REQUEST_COUNT", mode="SERVER")],
            "llm",
            {"x-variant": "canary"},
            "canary",
        ),
        ([telemetry("llm", CHART, metric="REQUEST_COUNT", mode="SERVER")], "llm", {}, "none"),
        ([telemetry("llm", CHART)], "other", {"x-variant": "stable"}, ""),
        ([telemetry("istio-system", CHART)], "other", {"x-variant": "stable"}, "stable"),
        # a namespace's own Telemetry replaces the mesh-wide one
        (
            [telemetry("istio-system", CHART), telemetry("llm", "request.headers['x-model']")],
            "llm",
            {"x-variant": "stable", "x-model": "gpt"},
            "gpt",
        ),
        (
            [telemetry("llm", CHART, metric="REQUEST_COUNT", mode="CLIENT")],
            "llm",
            {"x-variant": "canary"},
            "",
        ),
        ([telemetry("llm", CHART, metric="TCP_SENT_BYTES")], "llm", {"x-variant": "canary"}, ""),
        ([telemetry("llm", "request.headers['x-variant']")], "llm", {}, ""),
        ([telemetry("llm", "upstream_peer.labels['app'].value")], "llm", {"x-variant": "canary"}, ""),
        (
            [telemetry("llm", "request.headers['X-Variant'] | 'none'")],
            "llm",
            {"x-variant": "canary"},
            "canary",
        ),
    ],
    ids=[
        "no-telemetry",
        "header",
        "default",
        "another-namespace",
        "mesh-wide",
        "namespace-replaces-mesh",
        "client-side-only",
        "tcp-metric",
        "no-default",
        "unsupported-expression",
        "header-case",
    ],
)
def test_the_variant_tag(
    telemetries: list[dict[str, Any]], namespace: str, headers: dict[str, str], variant: str
) -> None:
    assert VariantTag(lambda: telemetries)(namespace, headers) == variant


def test_a_selector_scoped_telemetry_is_not_applied() -> None:
    scoped = telemetry("llm", CHART)
    scoped["spec"]["selector"] = {"matchLabels": {"app": "chat"}}
    assert VariantTag(lambda: [scoped])("llm", {"x-variant": "canary"}) == ""
