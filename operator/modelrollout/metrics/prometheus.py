"""MetricsProvider over Prometheus' HTTP API, with prometheus-api-client.

The client is synchronous, so each query runs in a worker thread of a QueryPool: threads of Prometheus' own
(the default executor stays for the Kubernetes calls), handed out by a FairScheduler so that rollouts take
turns and none holds more than its share. Three bounds keep a slow or dead Prometheus from hurting the
operator: a turn is held until its thread has really finished (abandoned calls cannot pile up), the HTTP
client's own connect/read timeout ends a call that hangs, and `asyncio.wait_for` caps what the caller waits
once its query has started. The per-query timeout starts when the query does: the wait for a turn is the
operator's own queueing, bounded separately by the caller's `not_after` (QueryDeferred), never counted as a
Prometheus failure. Prometheus also gets the timeout as its `timeout` parameter, so an expensive query is
abandoned on the server too, with its own error message.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import json
import re
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from modelrollout.metrics.credentials import PrometheusAuth, redacted, shown
from modelrollout.metrics.provider import NO_LABELS, MetricsError, Rows, Sample, parse_sample_value
from modelrollout.metrics.scheduler import Deferred, FairScheduler

# The HTTP timeout fires first and says what happened; the asyncio deadline is the backstop for a thread
# that the HTTP timeout does not end (a server that trickles bytes resets the read timeout at each one).
_DEADLINE_SLACK_SECONDS = 1.0

T = TypeVar("T")


class QueryDeferred(Deferred):
    """A query that did not get a worker thread before its `not_after`: the operator's own queueing."""


class QueryPool:
    """Prometheus' worker threads, shared by every provider and handed out fairly between owners (rollouts):
    `workers` threads, at most `per_owner` of them for one owner at a time."""

    def __init__(
        self,
        workers: int = 16,
        per_owner: int = 4,
        *,
        on_wait: Callable[[float], None] | None = None,
        on_query: Callable[[float], None] | None = None,
    ) -> None:
        self.workers = workers
        self.scheduler = FairScheduler(workers, min(per_owner, workers))
        self.on_wait = on_wait
        self.on_query = on_query
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prometheus")

    async def run(
        self,
        owner: Hashable,
        call: Callable[[], T],
        *,
        deadline: float,
        not_after: float | None = None,
        finished: Callable[[], None] | None = None,
    ) -> T:
        """`call()` in a worker thread once `owner` has a turn; TimeoutError if it runs longer than `deadline`
        seconds (the thread keeps its turn until it really ends); QueryDeferred if no turn came by
        `not_after` (loop time). `finished` is called once the call is over or will never start."""
        loop = asyncio.get_running_loop()
        asked = loop.time()
        try:
            await self.scheduler.acquire(owner, not_after)
        except Deferred:
            if finished:
                finished()
            raise QueryDeferred() from None
        except BaseException:
            if finished:
                finished()
            raise
        started = loop.time()
        if self.on_wait:
            self.on_wait(started - asked)
        # No await between getting the turn and handing it to the thread's completion, so a cancellation
        # cannot leak it.
        try:
            future = loop.run_in_executor(self._executor, call)
        except RuntimeError:  # shut down meanwhile (the operator is stopping)
            self.scheduler.release(owner)
            if finished:
                finished()
            raise
        future.add_done_callback(functools.partial(self._done, owner, started, finished))
        # The shield lets a timed-out caller go while the thread runs to its own (HTTP) timeout, still holding
        # its turn.
        return await asyncio.wait_for(asyncio.shield(future), deadline)

    def _done(
        self,
        owner: Hashable,
        started: float,
        finished: Callable[[], None] | None,
        future: asyncio.Future[Any],
    ) -> None:
        self.scheduler.release(owner)
        if self.on_query:
            self.on_query(asyncio.get_running_loop().time() - started)
        if finished:
            finished()
        if not future.cancelled():
            future.exception()  # retrieved: an abandoned call's error is not logged as never retrieved

    def shutdown(self) -> None:
        """Stop taking work; threads still running end on their own (HTTP) timeouts."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class PrometheusProvider:
    def __init__(
        self,
        address: str,
        *,
        timeout: timedelta = timedelta(seconds=10),
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        max_concurrency: int = 4,
        pool: QueryPool | None = None,
    ) -> None:
        """`pool`: the worker threads to run queries in, shared with other providers; without one, the
        provider has a pool of its own with `max_concurrency` threads."""
        if timeout <= timedelta(0):
            raise ValueError(f"timeout must be positive, got {timeout}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if bearer_token is not None and basic_auth is not None:
            raise ValueError("give a bearer token or basic auth, not both")
        self.address = address.rstrip("/")
        self.shown_address = shown(self.address)
        self.timeout = timeout
        self._seconds = timeout.total_seconds()
        self._own_pool = pool is None
        self.pool = pool or QueryPool(workers=max_concurrency, per_owner=max_concurrency)
        self.max_concurrency = self.pool.scheduler.per_owner
        self.busy = 0  # queries waiting for a turn or running in a thread
        self.last_used = time.monotonic()
        # No retries inside a query: a down Prometheus must surface within the timeout, and the analysis
        # already retries at its own pace (errorLimit consecutive checks).
        # read=False as in requests' own default: a read timeout then surfaces as a timeout, not as a
        # connection error.
        retry = Retry(total=0, read=False, raise_on_status=False)
        session = requests.Session()
        self._client = PrometheusConnect(
            url=self.address,
            headers={"Authorization": f"Bearer {bearer_token}"} if bearer_token else None,
            auth=basic_auth,
            retry=retry,
            timeout=self._seconds,
            session=session,
        )
        # As many pooled connections as threads may query at once (requests keeps 10 per host otherwise and
        # opens, then drops, one more per query beyond them). The longer prefix wins over the client's mount.
        session.mount(f"{self.address}/api/", HTTPAdapter(max_retries=retry, pool_maxsize=self.pool.workers))

    @classmethod
    def with_auth(
        cls,
        address: str,
        auth: PrometheusAuth,
        *,
        timeout: timedelta = timedelta(seconds=10),
        pool: QueryPool | None = None,
    ) -> PrometheusProvider:
        return cls(
            address, timeout=timeout, bearer_token=auth.bearer_token, basic_auth=auth.basic_auth, pool=pool
        )

    def close(self) -> None:
        self._client.close()
        if self._own_pool:
            self.pool.shutdown()

    async def query(
        self, promql: str, *, owner: Hashable = None, not_after: float | None = None
    ) -> list[Sample]:
        """The instant query `promql`, run when `owner` (a rollout; None for all callers alike) gets a turn;
        QueryDeferred if that is not before `not_after` (loop time)."""
        return await self._run(promql, functools.partial(samples_from_result, promql), owner, not_after)

    async def query_rows(
        self,
        promql: str,
        labels: tuple[str, ...],
        *,
        owner: Hashable = None,
        not_after: float | None = None,
    ) -> Rows:
        """The grouped query `promql`, its answer split by `labels` (`rows_from_result`); as `query`."""
        read = functools.partial(rows_from_result, promql, labels=labels)
        return await self._run(promql, read, owner, not_after)

    async def _run(
        self, promql: str, read: Callable[[Any], T], owner: Hashable, not_after: float | None
    ) -> T:
        self.busy += 1
        self.last_used = time.monotonic()
        try:
            # Read in the worker too: a grouped answer for thousands of rollouts takes tens of ms to read,
            # which on the event loop would hold up every check and write meanwhile.
            return await self.pool.run(
                owner,
                lambda: read(self._fetch(promql)),
                deadline=self._seconds + _DEADLINE_SLACK_SECONDS,
                not_after=not_after,
                finished=self._finished,
            )
        except TimeoutError:
            raise MetricsError(
                promql, f"no answer from Prometheus at {self.shown_address} within {self._seconds:g}s"
            ) from None

    def _finished(self) -> None:
        self.busy -= 1
        self.last_used = time.monotonic()

    def _fetch(self, promql: str) -> Any:
        try:
            return self._client.custom_query(promql, params={"timeout": str(self._seconds)})
        except PrometheusApiClientException as refused:
            raise MetricsError(promql, _http_error_reason(str(refused))) from None
        except requests.Timeout:
            raise MetricsError(
                promql,
                f"no answer from Prometheus at {self.shown_address} within {self._seconds:g}s (HTTP timeout)",
            ) from None
        except requests.ConnectionError as unreachable:
            raise MetricsError(
                promql,
                f"cannot reach Prometheus at {self.shown_address}: {redacted(_root_cause(unreachable))}",
            ) from None
        except requests.RequestException as failed:
            raise MetricsError(
                promql, f"request to Prometheus at {self.shown_address} failed: {redacted(str(failed))}"
            ) from None
        except (ValueError, KeyError, TypeError) as garbled:
            # A 200 that is not Prometheus' JSON: the address points at something else.
            raise MetricsError(
                promql,
                f"{self.shown_address} did not answer like Prometheus: {type(garbled).__name__}: {garbled}",
            ) from None


def samples_from_result(promql: str, raw: Any) -> list[Sample]:
    """`data.result` of an instant query as samples. prometheus-api-client drops `resultType`, so the shape
    tells: a list of series objects is a vector, a `[time, "value"]` pair a scalar."""
    scalar = _scalar(promql, raw)
    if scalar is not None:
        return [Sample(labels={}, value=scalar)]
    return [
        Sample(labels={str(k): str(v) for k, v in metric.items()}, value=value)
        for metric, value in _series(promql, raw)
    ]


def rows_from_result(promql: str, raw: Any, labels: tuple[str, ...]) -> Rows:
    """`data.result` of a grouped query split per target: each series under the values of `labels` it
    carries (a label Prometheus left out is empty), without those labels, so a target's rows read exactly as
    its own query's `samples_from_result` would. In one pass over the answer, not samples then a split: a
    fleet's answer has a row per target, and at 2,500 rollouts reading them twice was 16% of the operator's
    CPU (a profile of the process holding the GIL)."""
    rows = Rows()
    scalar = _scalar(promql, raw)
    if scalar is not None:
        rows.add(tuple("" for _ in labels), NO_LABELS, scalar)
        return rows
    grouping = frozenset(labels)
    for metric, value in _series(promql, raw):
        key = tuple([str(metric.get(label, "")) for label in labels])
        if grouping.issuperset(metric):
            rows.add(key, NO_LABELS, value)
        else:
            rows.add(key, {str(k): str(v) for k, v in metric.items() if k not in grouping}, value)
    return rows


def _scalar(promql: str, raw: Any) -> float | None:
    """The value of a scalar answer; None for a vector; MetricsError for neither."""
    if not isinstance(raw, list):
        raise MetricsError(promql, f"unexpected result from Prometheus: {_clip(raw)}")
    if len(raw) == 2 and isinstance(raw[0], int | float) and isinstance(raw[1], str):
        return _value(promql, raw[1])
    return None


def _series(promql: str, raw: list[Any]) -> Iterator[tuple[Mapping[Any, Any], float]]:
    """The labels (as Prometheus sent them) and the value of each series of a vector answer."""
    for series in raw:
        if not isinstance(series, dict):
            raise MetricsError(promql, f"unexpected result from Prometheus: {_clip(raw)}")
        if "value" not in series:
            shape = "a range vector" if "values" in series else "neither a vector nor a scalar"
            raise MetricsError(
                promql, f"the query returns {shape}; a gate needs an instant vector or a scalar"
            )
        value = series["value"]
        if not (isinstance(value, list) and len(value) == 2):
            raise MetricsError(promql, f"unexpected sample from Prometheus: {_clip(series)}")
        metric = series.get("metric", {})
        if not isinstance(metric, dict):
            raise MetricsError(promql, f"unexpected labels from Prometheus: {_clip(series)}")
        yield metric, _value(promql, value[1])


def _value(promql: str, text: object) -> float:
    try:
        return parse_sample_value(text)
    except ValueError as bad:
        raise MetricsError(promql, f"the query returns a non-numeric value: {bad}") from None


_HTTP_ERROR = re.compile(r"HTTP Status Code (\d+) \((b(['\"]).*\3)\)\Z", re.DOTALL)


def _http_error_reason(message: str) -> str:
    """Prometheus' own error text from the client's exception, which wraps the raw response body as
    `HTTP Status Code 400 (b'{"status":"error",...}')`."""
    match = _HTTP_ERROR.match(message)
    if match is None:
        return message
    status = match.group(1)
    try:
        body = json.loads(ast.literal_eval(match.group(2)))
        error_type, error = body.get("errorType", "error"), body["error"]
    except (ValueError, SyntaxError, TypeError, KeyError, AttributeError):
        return f"HTTP {status} from Prometheus: {_clip(match.group(2))}"
    return f"Prometheus answered HTTP {status} ({error_type}): {error}"


def _root_cause(error: BaseException) -> str:
    """The innermost reason of a requests/urllib3 connection error (`Connection refused`), not the
    wrapping."""
    reason: BaseException = error
    while True:
        inner = getattr(reason, "reason", None) or reason.__context__ or reason.__cause__
        if not isinstance(inner, BaseException) or inner is reason:
            break
        reason = inner
    text = str(reason)
    # urllib3 prefixes its own object repr: "<urllib3.connection.HTTPConnection object at 0x..>: Failed ..."
    return re.sub(r"^<[^>]+>: ", "", text)


def _clip(value: object, limit: int = 300) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else f"{text[:limit]}..."
