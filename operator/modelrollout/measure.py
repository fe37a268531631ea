"""One check of a rollout's gates: render every gate's query, ask Prometheus, evaluate the answers.

The operator holds one Measurer; it keeps the Prometheus providers (one per address, timeout and
credentials) and reads the credentials Secrets a rollout names.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta

from modelrollout import api
from modelrollout.analysis import CheckMeasurement, CheckResult, GateMeasurement, evaluate_check
from modelrollout.config import OperatorConfig
from modelrollout.durations import format_duration
from modelrollout.kube import Kube, RolloutRef
from modelrollout.metrics.prometheus import PrometheusProvider, auth_from_secret_data
from modelrollout.metrics.provider import MetricsError, MetricsProvider
from modelrollout.metrics.templates import (
    TemplateError,
    TemplateVariables,
    render_gate_query,
    request_count_query,
)


class Measurer:
    def __init__(self, kube: Kube, config: OperatorConfig) -> None:
        self.kube = kube
        self.config = config
        self._providers: dict[
            tuple[str, timedelta, str | None, tuple[str, str] | None], PrometheusProvider
        ] = {}

    async def _provider(self, spec: api.ModelRolloutSpec, namespace: str) -> MetricsProvider:
        config = spec.analysis.prometheus
        address = config.address if config else self.config.prometheus_url
        if not address:
            raise MetricsError(
                "",
                "no Prometheus address: set spec.analysis.prometheus.address or "
                "the operator's --prometheus-url",
            )
        timeout = config.timeout if config else timedelta(seconds=10)
        token, basic = None, None
        if config and config.secret_ref:
            try:
                data = await self.kube.read_secret_data(namespace, config.secret_ref.name)
                auth = auth_from_secret_data(data)
            except Exception as error:  # reported as the reason every query failed
                raise MetricsError(
                    "", f"Prometheus credentials from Secret {config.secret_ref.name}: {error}"
                ) from None
            token, basic = auth.bearer_token, auth.basic_auth
        key = (address, timeout, token, basic)
        if key not in self._providers:
            self._providers[key] = PrometheusProvider(
                address, timeout=timeout, bearer_token=token, basic_auth=basic
            )
        return self._providers[key]

    async def measure(
        self, spec: api.ModelRolloutSpec, ref: RolloutRef, now: datetime, *, virtual_service_namespace: str
    ) -> CheckResult | None:
        analysis = spec.analysis
        variables = TemplateVariables.for_rollout(
            stable=spec.stable,
            canary=spec.canary,
            rollout_name=ref.name,
            rollout_namespace=ref.namespace,
            window=analysis.window,
        )
        try:
            provider = await self._provider(spec, ref.namespace)
        except MetricsError as error:
            gates = tuple(
                GateMeasurement(g, format_duration(g.window or analysis.window), error=error.reason)
                for g in analysis.gates
            )
            return evaluate_check(CheckMeasurement(now, gates, None, error.reason), analysis.min_requests)

        async def gate(g: api.Gate) -> GateMeasurement:
            window = format_duration(g.window or analysis.window)
            try:
                samples = await provider.query(render_gate_query(g, variables))
            except (MetricsError, TemplateError) as error:
                return GateMeasurement(g, window, error=str(error))
            return GateMeasurement(g, window, values=tuple(s.value for s in samples))

        async def requests() -> tuple[float | None, str | None]:
            try:
                samples = await provider.query(request_count_query(variables))
            except (MetricsError, TemplateError) as error:
                return None, str(error)
            values = [s.value for s in samples if not math.isnan(s.value)]
            return (sum(values) if values else 0.0), None  # no series at all: no traffic, 0 requests

        measured, (count, count_error) = await asyncio.gather(
            asyncio.gather(*(gate(g) for g in analysis.gates)), requests()
        )
        measurement = CheckMeasurement(now, tuple(measured), count, count_error)
        return evaluate_check(measurement, analysis.min_requests)

    def close(self) -> None:
        for provider in self._providers.values():
            provider.close()
