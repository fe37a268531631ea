"""MetricsProvider over Prometheus' HTTP API, with prometheus-api-client.

The client is synchronous, so each query runs in a worker thread. Three bounds keep a slow or dead
Prometheus from hurting the operator: a semaphore caps the threads in flight (a slot is freed only when its
thread has really finished, so abandoned calls cannot pile up), the HTTP client's own connect/read timeout
ends a call that hangs, and `asyncio.wait_for` caps what the caller waits, slot included. Prometheus also gets
the timeout as its `timeout` parameter, so an expensive query is abandoned on the server too, with its own
error message.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from modelrollout.metrics.provider import MetricsError, Sample, parse_sample_value

# The HTTP timeout fires first and says what happened; the asyncio deadline is the backstop for a thread
# that the HTTP timeout does not end (a server that trickles bytes resets the read timeout at each one).
_DEADLINE_SLACK_SECONDS = 1.0


@dataclass(frozen=True)
class PrometheusAuth:
    bearer_token: str | None = None
    basic_auth: tuple[str, str] | None = None


_SECRET_FORMS = "either `token` (bearer token) or `username` and `password` (basic auth)"  # noqa: S105


def auth_from_secret_data(data: Mapping[str, str] | None) -> PrometheusAuth:
    """Credentials from a Kubernetes Secret's `data` (base64 values). Keys other than the three are ignored
    (a Secret may also carry a CA bundle); an ambiguous or incomplete set is a ValueError."""
    data = data or {}
    present = sorted(key for key in ("token", "username", "password") if key in data)
    if present == ["token"]:
        return PrometheusAuth(bearer_token=_decode(data, "token"))
    if present == ["password", "username"]:
        return PrometheusAuth(basic_auth=(_decode(data, "username"), _decode(data, "password")))
    found = ", ".join(sorted(data)) or "none"
    raise ValueError(f"the Prometheus credentials Secret must hold {_SECRET_FORMS}; keys found: {found}")


def _decode(data: Mapping[str, str], key: str) -> str:
    try:
        value = base64.b64decode(data[key], validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as bad:
        raise ValueError(f"Secret key {key!r} is not base64-encoded UTF-8 text: {bad}") from None
    # Secrets made with `kubectl create secret --from-file` from an editor-saved file end in a newline that
    # is never part of the credential.
    value = value.rstrip("\r\n")
    if not value:
        raise ValueError(f"Secret key {key!r} is empty")
    return value


class PrometheusProvider:
    def __init__(
        self,
        address: str,
        *,
        timeout: timedelta = timedelta(seconds=10),
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        max_concurrency: int = 4,
    ) -> None:
        if timeout <= timedelta(0):
            raise ValueError(f"timeout must be positive, got {timeout}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if bearer_token is not None and basic_auth is not None:
            raise ValueError("give a bearer token or basic auth, not both")
        self.address = address.rstrip("/")
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self._seconds = timeout.total_seconds()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._client = PrometheusConnect(
            url=self.address,
            headers={"Authorization": f"Bearer {bearer_token}"} if bearer_token else None,
            auth=basic_auth,
            # No retries inside a query: a down Prometheus must surface within the timeout, and the analysis
            # already retries at its own pace (errorLimit consecutive checks).
            # read=False as in requests' own default: a read timeout then surfaces as a timeout, not as a
            # connection error.
            retry=Retry(total=0, read=False, raise_on_status=False),
            timeout=self._seconds,
        )

    @classmethod
    def with_auth(
        cls, address: str, auth: PrometheusAuth, *, timeout: timedelta = timedelta(seconds=10)
    ) -> PrometheusProvider:
        return cls(address, timeout=timeout, bearer_token=auth.bearer_token, basic_auth=auth.basic_auth)

    def close(self) -> None:
        self._client.close()

    async def query(self, promql: str) -> list[Sample]:
        try:
            return await asyncio.wait_for(self._query(promql), self._seconds + _DEADLINE_SLACK_SECONDS)
        except TimeoutError:
            raise MetricsError(
                promql, f"no answer from Prometheus at {self.address} within {self._seconds:g}s"
            ) from None

    async def _query(self, promql: str) -> list[Sample]:
        await self._slots.acquire()
        # No await between acquiring the slot and handing it to the thread's completion, so a cancellation
        # cannot leak it.
        call = asyncio.ensure_future(asyncio.to_thread(self._fetch, promql))
        call.add_done_callback(self._release)
        # The shield lets a timed-out caller go while the thread runs to its own (HTTP) timeout, still holding
        # its slot.
        raw = await asyncio.shield(call)
        return samples_from_result(promql, raw)

    def _release(self, call: asyncio.Future[Any]) -> None:
        self._slots.release()
        if not call.cancelled():
            call.exception()  # retrieved: an abandoned call's error is not logged as never retrieved

    def _fetch(self, promql: str) -> Any:
        try:
            return self._client.custom_query(promql, params={"timeout": str(self._seconds)})
        except PrometheusApiClientException as refused:
            raise MetricsError(promql, _http_error_reason(str(refused))) from None
        except requests.Timeout:
            raise MetricsError(
                promql,
                f"no answer from Prometheus at {self.address} within {self._seconds:g}s (HTTP timeout)",
            ) from None
        except requests.ConnectionError as unreachable:
            raise MetricsError(
                promql, f"cannot reach Prometheus at {self.address}: {_root_cause(unreachable)}"
            ) from None
        except requests.RequestException as failed:
            raise MetricsError(promql, f"request to Prometheus at {self.address} failed: {failed}") from None
        except (ValueError, KeyError, TypeError) as garbled:
            # A 200 that is not Prometheus' JSON: the address points at something else.
            raise MetricsError(
                promql, f"{self.address} did not answer like Prometheus: {type(garbled).__name__}: {garbled}"
            ) from None


def samples_from_result(promql: str, raw: Any) -> list[Sample]:
    """`data.result` of an instant query as samples. prometheus-api-client drops `resultType`, so the shape
    tells: a list of series objects is a vector, a `[time, "value"]` pair a scalar."""
    if not isinstance(raw, list):
        raise MetricsError(promql, f"unexpected result from Prometheus: {_clip(raw)}")
    if len(raw) == 2 and isinstance(raw[0], int | float) and isinstance(raw[1], str):
        return [Sample(labels={}, value=_value(promql, raw[1]))]
    samples = []
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
        labels = series.get("metric", {})
        samples.append(
            Sample(labels={str(k): str(v) for k, v in labels.items()}, value=_value(promql, value[1]))
        )
    return samples


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
