"""One check of a rollout's gates: render every gate's query, ask Prometheus, evaluate the answers.

The operator holds one Measurer. It keeps the Prometheus providers (one per address, timeout and credentials,
closed when idle or replaced), runs every query in Prometheus' own worker threads where rollouts take turns,
and reads the credentials Secrets a rollout names, sending them only where the operator allows.

A check whose queries cannot all get a turn within the rollout's analysis interval is deferred (`measure`
returns None): that wait is the operator's own queueing, so it never counts as a check that could not run.
The timeout of each query starts when the query does.

Built-in gates, the request counts and the judge's counters are asked in their grouped form, shared between
rollouts (`metrics.batching`), unless the operator runs with batching off; gates with their own query ask it
on their own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta

from modelrollout import api
from modelrollout.analysis import (
    CheckContext,
    CheckMeasurement,
    CheckResult,
    GateMeasurement,
    evaluate_check,
    needs_control,
)
from modelrollout.analysis.sequential import series_key
from modelrollout.config import OperatorConfig
from modelrollout.durations import format_duration
from modelrollout.engine.stages import check_window
from modelrollout.kube import Kube, RolloutRef, describe_api_error
from modelrollout.metrics.batching import QueryBatcher
from modelrollout.metrics.credentials import PrometheusAuth, auth_from_secret_data, credentials_refusal
from modelrollout.metrics.prometheus import PrometheusProvider, QueryDeferred, QueryPool
from modelrollout.metrics.provider import MetricsError, Sample
from modelrollout.metrics.providers import ProviderCache
from modelrollout.metrics.templates import (
    GroupedQuery,
    Role,
    TemplateError,
    TemplateVariables,
    grouped_gate_query,
    grouped_judge_counter_queries,
    grouped_request_count_query,
    grouped_requests_series_query,
    judge_counter_queries,
    render_gate_query,
    request_count_query,
    requests_series_query,
)
from modelrollout.telemetry import Telemetry

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(seconds=10)


class Measurer:
    def __init__(self, kube: Kube, config: OperatorConfig, *, telemetry: Telemetry | None = None) -> None:
        self.kube = kube
        self.config = config
        self.telemetry = telemetry
        self.pool = QueryPool(
            workers=config.prometheus_workers,
            per_owner=config.prometheus_queries_per_rollout,
            on_wait=telemetry.prometheus_queue_wait.observe if telemetry else None,
            on_query=telemetry.prometheus_query_seconds.observe if telemetry else None,
        )
        self.providers = ProviderCache(self.pool, idle_seconds=config.prometheus_idle_seconds)
        max_age = config.batch_max_age
        self.batcher = None
        if max_age is not None:
            counted: Callable[[str], None] | None = None
            if telemetry:
                # Every check counts how its grouped answers came: the counters are looked up once.
                grouped = telemetry.grouped_queries
                hows = ("asked", "shared", "waited", "renewed")
                counters = {how: grouped.labels(how).inc for how in hows}

                def counted(how: str) -> None:
                    counters[how]()

            self.batcher = QueryBatcher(max_age=max_age, on_answer=counted)
        # Credentials may go to the operator's own Prometheus and to the addresses it is told to allow.
        own = (config.prometheus_url,) if config.prometheus_url else ()
        self.credentials_allow = (*own, *config.prometheus_credentials_allow)
        self._refusals: dict[Hashable, str] = {}  # the last refusal logged per rollout

    async def _provider(self, spec: api.ModelRolloutSpec, ref: RolloutRef) -> PrometheusProvider:
        config = spec.analysis.prometheus
        address = config.address if config else self.config.prometheus_url
        if not address:
            raise MetricsError(
                "",
                "no Prometheus address: set spec.analysis.prometheus.address or "
                "the operator's --prometheus-url",
            )
        timeout = config.timeout if config else DEFAULT_TIMEOUT
        auth: PrometheusAuth | None = None
        if config and config.secret_ref:
            name = config.secret_ref.name
            try:
                data = await self.kube.read_secret_data(ref.namespace, name)
            except Exception as error:  # reported as the reason every query failed
                raise MetricsError(
                    "", f"Prometheus credentials from Secret {name}: {describe_api_error(error)}"
                ) from None
            refusal = credentials_refusal(address, name, data, self.credentials_allow)
            self._log_refusal(ref, refusal)
            if refusal is not None:
                raise MetricsError("", refusal)
            try:
                auth = auth_from_secret_data(data)
            except ValueError as error:
                raise MetricsError("", f"Prometheus credentials from Secret {name}: {error}") from None
        return self.providers.provider((ref.namespace, ref.name), address, timeout, auth)

    def _log_refusal(self, ref: RolloutRef, refusal: str | None) -> None:
        key = (ref.namespace, ref.name)
        if refusal is None:
            self._refusals.pop(key, None)
        elif self._refusals.get(key) != refusal:
            self._refusals[key] = refusal
            log.warning("%s/%s: %s", ref.namespace, ref.name, refusal)

    async def measure(
        self,
        spec: api.ModelRolloutSpec,
        ref: RolloutRef,
        now: datetime,
        *,
        virtual_service_namespace: str,
        canary_weight: int | None = None,
        mirror: int = 0,
        status: api.ModelRolloutStatus | None = None,
        requested: bool = False,
    ) -> CheckResult | None:
        """The check of every gate, or None: the check could not get its turn in time because of the
        operator's own queueing (not the metrics backend's fault); the caller makes no check this tick and
        does not count it as an Error. Short hosts are Services in `virtual_service_namespace`, where Istio
        resolves them. `canary_weight`: the live weight (at 100 there is no control to compare with);
        `mirror`: the live percent mirrored to the canary (a shadow stage); `requested`: an alert asked for
        this check: it asks its own queries, now, rather than wait for a grouped query over every rollout
        (an alert is rare and wants an answer in well under a second; the workers' bound and fair shares
        still hold when many come at once)."""
        analysis = spec.analysis
        loop = asyncio.get_running_loop()
        not_after = loop.time() + analysis.interval.total_seconds()
        self.pool.scheduler.sweep()
        variables = TemplateVariables.for_spec(
            spec,
            rollout_name=ref.name,
            rollout_namespace=ref.namespace,
            hosts_namespace=virtual_service_namespace,
        )
        context = CheckContext(
            analysis.min_requests,
            canary_weight=canary_weight,
            mirror=mirror,
            stage=status.stage if status else 0,
            stage_started_at=status.stage_started_at if status else None,
            rollout_started_at=status.rollout_started_at if status else None,
            accumulations=tuple(status.accumulations) if status else (),
            sticky=spec.experiment is not None and spec.experiment.stickiness is not None,
        )
        try:
            provider = await self._provider(spec, ref)
        except MetricsError as error:
            gates = tuple(
                GateMeasurement(g, format_duration(g.window or analysis.window), error=error.reason)
                for g in analysis.gates
            )
            failed = CheckMeasurement(now, gates, None, error.reason)
            return evaluate_check(failed, analysis.min_requests, context)
        finally:
            if self.telemetry is not None:
                self.telemetry.prometheus_connections.set(len(self.providers))
        owner = (ref.namespace, ref.name)

        async def ask(promql: str) -> list[Sample]:
            return await provider.query(promql, owner=owner, not_after=not_after)

        ask_grouped = None
        if self.batcher is not None and not requested:
            batcher = self.batcher
            fresh_after = _fresh_after(status, check_window(spec), now)

            async def ask_grouped(grouped: GroupedQuery) -> list[Sample]:
                return await batcher.query(provider, grouped, not_after=not_after, fresh_after=fresh_after)

        queries = _CheckQueries(ask, variables, analysis, ask_grouped)
        counting = asyncio.ensure_future(queries.requests("canary"))
        controls = any(needs_control(g) and not g.judged for g in analysis.gates)
        control_counting = asyncio.ensure_future(queries.requests("stable") if controls else _nothing())
        # Requests per variant for every check: the report's counts per stage, the exposure of sticky
        # experiments and the sample-ratio check of sequential gates.
        routing_counting = asyncio.ensure_future(queries.request_counters())
        judged = any(g.judged for g in analysis.gates)
        judge_counting = asyncio.ensure_future(queries.judge_counters() if judged else _no_counters())
        gating = [asyncio.ensure_future(queries.gate(g)) for g in analysis.gates]
        tasks = (counting, control_counting, routing_counting, judge_counting, *gating)
        try:
            measured = await asyncio.gather(*gating)
            count, count_error = await counting
            control_count, control_count_error = await control_counting
            canary_requests, stable_requests = await routing_counting
            judge_failures, judge_verdicts = await judge_counting
        except QueryDeferred:
            # The queries still waiting give up their places; those already running finish in their threads
            # (holding their turns) and are not waited for.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._deferred(ref, analysis.interval)
            return None
        measurement = CheckMeasurement(
            now,
            tuple(measured),
            count,
            count_error,
            control_count,
            control_count_error,
            canary_request_counters=canary_requests,
            stable_request_counters=stable_requests,
            judge_failure_counters=judge_failures,
            judge_verdict_counters=judge_verdicts,
        )
        return evaluate_check(measurement, analysis.min_requests, context)

    def _deferred(self, ref: RolloutRef, interval: timedelta) -> None:
        log.debug(
            "%s/%s: check deferred: its queries got no Prometheus worker within %s (the operator's own "
            "queue; not counted as an error)",
            ref.namespace,
            ref.name,
            format_duration(interval),
        )
        if self.telemetry is not None:
            self.telemetry.rollouts.count_deferred(ref.namespace, ref.name)

    def forget(self, ref: RolloutRef) -> None:
        """A deleted rollout: its Prometheus connection may close once no other rollout uses it."""
        self.providers.forget((ref.namespace, ref.name))
        self._refusals.pop((ref.namespace, ref.name), None)

    def close(self) -> None:
        self.providers.close()
        self.pool.shutdown()


def _fresh_after(status: api.ModelRolloutStatus | None, window: timedelta, now: datetime) -> float:
    """The earliest moment (wall clock) a shared answer may have been asked at for this check made `now`:
    not before the rollout's previous check (each check reads data newer than the last one did: no answer
    counts twice towards a limit) and not before the stage started (its data would be the previous stage's).
    A check made a whole `window` (the longest a check reads) after its stage began may end the stage
    (`engine.stages.passed_here`): the answers it takes must have been asked that late too, so that what
    they read is this stage's traffic only."""
    moments: list[datetime] = []
    if status is not None:
        started = status.stage_started_at
        if started is not None:
            moments.append(started)
            if now - window >= started:
                moments.append(started + window)
        if status.last_analysis is not None:
            moments.append(status.last_analysis.at)
    return max((moment.timestamp() for moment in moments), default=0.0)


async def _nothing() -> tuple[float | None, str | None]:
    return None, None


async def _no_counters() -> tuple[dict[str, float] | None, dict[str, float] | None]:
    return None, None


@dataclass(frozen=True)
class _CheckQueries:
    """The queries of one check, each answered or failed on its own (a QueryDeferred ends them all)."""

    ask: Callable[[str], Awaitable[list[Sample]]]
    variables: TemplateVariables
    analysis: api.Analysis
    # Asks a query's grouped form (an answer shared with other rollouts); None: every query on its own.
    ask_grouped: Callable[[GroupedQuery], Awaitable[list[Sample]]] | None = None

    async def samples(self, promql: str | None, grouped: GroupedQuery | None = None) -> list[Sample]:
        """The answer to `grouped` where the operator batches and the query has a grouped form, else to the
        query on its own (`promql`: rendered only where it is asked; most checks have no use for it)."""
        if grouped is not None and self.ask_grouped is not None:
            return await self.ask_grouped(grouped)
        if promql is None:
            raise TemplateError("a query with neither a grouped form nor a query of its own")
        return await self.ask(promql)

    def grouped(
        self, form: Callable[[TemplateVariables], GroupedQuery | None], variables: TemplateVariables
    ) -> GroupedQuery | None:
        """A query's grouped form, built only when the operator batches."""
        return form(variables) if self.ask_grouped is not None else None

    async def values(
        self, promql: str | None, grouped: GroupedQuery | None = None
    ) -> tuple[tuple[float, ...], str | None]:
        try:
            return tuple(s.value for s in await self.samples(promql, grouped)), None
        except MetricsError as error:
            return (), str(error)

    async def counters(
        self, promql: str | None, grouped: GroupedQuery | None = None
    ) -> tuple[dict[str, float] | None, str | None]:
        try:
            return {series_key(s.labels): s.value for s in await self.samples(promql, grouped)}, None
        except MetricsError as error:
            return None, str(error)

    async def gate(self, g: api.Gate) -> GateMeasurement:
        window = format_duration(g.window or self.analysis.window)
        stable_variables = self.variables.targeting("stable")
        compared = bool(g.compare or g.test)
        try:
            canary_grouped = self.grouped(functools.partial(grouped_gate_query, g), self.variables)
            control_grouped = (
                self.grouped(functools.partial(grouped_gate_query, g), stable_variables) if compared else None
            )
            # The query on its own is rendered only where it is asked: no grouped form, or no batching.
            canary_query = render_gate_query(g, self.variables) if canary_grouped is None else None
            control_query = (
                render_gate_query(g, stable_variables) if compared and control_grouped is None else None
            )
        except TemplateError as unrenderable:
            return GateMeasurement(g, window, error=str(unrenderable))
        if g.test is not None and compared:
            (canary, failure), (stable, stable_failure) = await asyncio.gather(
                self.counters(canary_query, canary_grouped), self.counters(control_query, control_grouped)
            )
            error = failure or stable_failure
            if error is not None:
                return GateMeasurement(g, window, error=error)
            return GateMeasurement(g, window, canary_counters=canary, stable_counters=stable)
        if not compared:
            found, failure = await self.values(canary_query, canary_grouped)
            return GateMeasurement(g, window, values=found, error=failure)
        (found, failure), (control, control_failure) = await asyncio.gather(
            self.values(canary_query, canary_grouped), self.values(control_query, control_grouped)
        )
        return GateMeasurement(
            g, window, values=found, error=failure, control_values=control, control_error=control_failure
        )

    async def requests(self, role: Role) -> tuple[float | None, str | None]:
        variables = self.variables.targeting(role)
        try:
            grouped = self.grouped(grouped_request_count_query, variables)
            samples = await self.samples(
                None if grouped is not None else request_count_query(variables), grouped
            )
        except (MetricsError, TemplateError) as error:
            return None, str(error)
        values = [s.value for s in samples if not math.isnan(s.value)]
        return (sum(values) if values else 0.0), None  # no series at all: no traffic, 0 requests

    async def request_counters(self) -> tuple[dict[str, float] | None, dict[str, float] | None]:
        """Both variants' request counters; None for a variant whose query failed (no sample-ratio check)."""

        def counted(variables: TemplateVariables) -> Awaitable[tuple[dict[str, float] | None, str | None]]:
            grouped = self.grouped(grouped_requests_series_query, variables)
            return self.counters(None if grouped is not None else requests_series_query(variables), grouped)

        (canary, _), (stable, _) = await asyncio.gather(
            *(counted(self.variables.targeting(role)) for role in ("canary", "stable"))
        )
        return canary, stable

    async def judge_counters(self) -> tuple[dict[str, float] | None, dict[str, float] | None]:
        """The judge's failed judgements and its verdicts on this rollout (None for a query that failed)."""
        failures_query, verdicts_query = judge_counter_queries(self.variables)
        failures_grouped, verdicts_grouped = (
            grouped_judge_counter_queries(self.variables) if self.ask_grouped is not None else (None, None)
        )
        (failures, _), (verdicts, _) = await asyncio.gather(
            self.counters(failures_query, failures_grouped), self.counters(verdicts_query, verdicts_grouped)
        )
        return failures, verdicts
