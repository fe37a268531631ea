"""The Grafana dashboard shipped with the chart asks only for metrics the operator exports, in PromQL the real
Prometheus accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from modelrollout.telemetry import Telemetry
from modelrollout_dev.devenv.prometheus import PrometheusServer

pytestmark = pytest.mark.integration

DASHBOARD = (
    Path(__file__).resolve().parents[2]
    / "charts"
    / "modelrollout-operator"
    / "dashboards"
    / "modelrollout.json"
)


def _queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_every_query_names_exported_metrics() -> None:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {
        family.name + suffix for family in Telemetry().registry.collect() for suffix in suffixes[family.type]
    }
    for query in _queries():
        names = set(re.findall(r"\b(modelrollout_[a-z_]+)", query))
        assert names, query
        assert names <= exported, (query, names - exported)


def test_prometheus_accepts_every_query(prometheus: PrometheusServer) -> None:
    for query in _queries():
        concrete = query.replace("$namespace", ".*").replace("$rollout", ".*")
        answer = prometheus.api_get("/api/v1/query", {"query": concrete})
        assert answer["status"] == "success", (query, answer)
