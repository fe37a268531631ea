"""The judge service: for every rollout under way that declares `spec.analysis.judge`, replay its evaluation
set to the stable and the canary, have the judge model compare each pair blind and in random order, and
export the verdicts as Prometheus metrics; live pairs posted by apps to `POST /v1/pairs` count the same way.

It only reads ModelRollouts, ConfigMaps (evaluation sets) and Secrets (judge keys) and never writes to the
API server; the operator's gates read its metrics. Prompts and answers stay in memory for one judgement and
are never logged; of the last few per rollout a redacted, shortened sample is kept in memory for the decision
report (`GET /v1/samples/{namespace}/{rollout}`, see `samples`), until the rollout is deleted or starts a new
pair.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeGuard

import httpx
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelrollout import api
from modelrollout.judge.blind import Pair, outcome, shown
from modelrollout.judge.budget import HourlyBudget
from modelrollout.judge.metrics import JudgeMetrics
from modelrollout.judge.rubric import MalformedVerdict, Rubric, judge_messages, parse_verdict
from modelrollout.judge.samples import Judged, SampleStore
from modelrollout.judge.targets import JudgeTarget, judge_target
from modelrollout.kubeclient import KubeClient, object_path

log = logging.getLogger(__name__)

MAX_LIVE_TEXT = 100_000  # characters of a live pair's prompt or answer
MAX_TOKENS = 512
KEY_REFRESH_SECONDS = 60.0


@dataclass(frozen=True)
class JudgeKey:
    url: str
    api_key: str


@dataclass
class KubeReads:
    """What the service reads from the API server, as coroutines (the kubernetes client runs off the loop)."""

    list_rollouts: Callable[[], Awaitable[list[dict[str, Any]]]]
    read_config_map: Callable[[str, str], Awaitable[Mapping[str, str]]]
    read_secret: Callable[[str, str], Awaitable[Mapping[str, str]]]


@dataclass
class _Work:
    target: JudgeTarget
    budget: HourlyBudget
    task: asyncio.Task[None] | None = None
    # The judge key as last read and when: one Secret read a minute, not one per pair.
    api_key: str | None = None
    api_key_read_at: float | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


class JudgeService:
    def __init__(
        self,
        reads: KubeReads,
        http: httpx.AsyncClient,
        metrics: JudgeMetrics | None = None,
        rng: random.Random | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        redact_patterns: Iterable[re.Pattern[str]] = (),
    ) -> None:
        self.reads = reads
        self.http = http
        self.metrics = metrics or JudgeMetrics()
        self.samples = SampleStore(redact_patterns)
        self.rng = rng or random.Random()  # noqa: S311  (the order shown to a judge, not a secret)
        self.clock = clock
        self.work: dict[tuple[str, str], _Work] = {}

    # ---- which rollouts ----

    async def sync(self) -> None:
        """Start judging new targets (a rollout under way, or a new pair of one), stop judging the rest."""
        wanted: dict[tuple[str, str], JudgeTarget] = {}
        listed = await self.reads.list_rollouts()
        for obj in listed:
            target = judge_target(obj)
            if target is not None:
                wanted[(target.namespace, target.name)] = target
        for key, work in list(self.work.items()):
            if wanted.get(key) != work.target:  # gone, a new pair, or its judge settings edited
                self._stop(key)
        # A finished rollout keeps its samples for its report; a deleted one does not.
        metadata = [obj.get("metadata") or {} for obj in listed]
        self.samples.retain({(str(m.get("namespace")), str(m.get("name"))) for m in metadata})
        for key, target in wanted.items():
            if key not in self.work:
                self.samples.forget(key)  # a new pair (or new judge settings): its own samples
                work = _Work(target, HourlyBudget(target.judge.budget_per_hour))
                work.task = asyncio.create_task(self._replay_loop(work), name=f"judge {key[0]}/{key[1]}")
                self.work[key] = work

    def _stop(self, key: tuple[str, str]) -> None:
        work = self.work.pop(key)
        for task in (work.task, *work.tasks):
            if task is not None:
                task.cancel()

    async def close(self) -> None:
        for key in list(self.work):
            self._stop(key)

    # ---- replay ----

    async def _replay_loop(self, work: _Work) -> None:
        target = work.target
        eval_set = target.judge.eval_set
        if eval_set is None:
            return  # live pairs only
        try:
            data = await self.reads.read_config_map(target.namespace, eval_set.config_map_ref.name)
        except Exception as error:
            log.warning("%s/%s: evaluation set not readable: %s", target.namespace, target.name, error)
            return
        prompts = [line.strip() for line in (data.get(eval_set.key) or "").splitlines() if line.strip()]
        if not prompts:
            log.warning(
                "%s/%s: evaluation set %s has no prompts", target.namespace, target.name, eval_set.key
            )
            return
        pause = target.interval.total_seconds()
        for prompt in itertools.cycle(prompts):
            started = self.clock()
            pair = await self.replay(target, prompt)
            if pair is not None:
                await self.judge(work, pair, "replay")
            await asyncio.sleep(max(0.0, pause - (self.clock() - started)))

    async def replay(self, target: JudgeTarget, prompt: str) -> Pair | None:
        """Both variants' answers to `prompt`, or None (counted) when either cannot answer."""
        messages = [{"role": "user", "content": prompt}]
        timeout = target.judge.timeout.total_seconds()
        answers = await asyncio.gather(
            self._complete(target.stable_url, target.stable_model, messages, timeout),
            self._complete(target.canary_url, target.canary_model, messages, timeout),
            return_exceptions=True,
        )
        stable, canary = answers
        if isinstance(stable, BaseException) or isinstance(canary, BaseException):
            self.metrics.errors.labels(target.namespace, target.name, "variant-unreachable").inc()
            return None
        return Pair(uuid.uuid4().hex, prompt, stable_answer=stable.text, canary_answer=canary.text)

    # ---- judging ----

    async def judge(self, work: _Work, pair: Pair, source: str) -> str | None:
        """The canary's result on `pair` (win, loss or tie), recorded in the metrics; None when not judged."""
        target = work.target
        labels = (target.namespace, target.name)
        self.metrics.pairs.labels(*labels, source).inc()
        rubric = Rubric(criteria=tuple(target.judge.criteria))
        shown_pair = shown(pair, self.rng)
        messages = judge_messages(rubric, pair.prompt, shown_pair.answer_a, shown_pair.answer_b)
        model = target.judge.model
        api_key = await self._api_key(work)
        for attempt in (1, 2):  # a malformed verdict is retried once, then counted as an error
            if not work.budget.take(self.clock()):
                self.metrics.errors.labels(*labels, "budget").inc()
                return None
            self.metrics.calls.labels(*labels).inc()
            try:
                answer = await self._complete(
                    model.url, model.name, messages, target.judge.timeout.total_seconds(), api_key
                )
            except (httpx.HTTPError, ValueError):
                self.metrics.errors.labels(*labels, "judge-unreachable").inc()
                return None
            self._count_usage(labels, answer.usage, model.pricing)
            text = answer.text
            try:
                verdict = parse_verdict(text, rubric)
            except MalformedVerdict as error:
                log.info("%s/%s: malformed verdict (attempt %d): %s", *labels, attempt, error)
                continue
            result = outcome(shown_pair, verdict)
            self.metrics.verdicts.labels(*labels, result.canary, model.name, rubric.version).inc()
            judged = Judged(
                pair=pair,
                outcome=result,
                verdict=verdict,
                source=source,
                at=datetime.now(UTC).isoformat(timespec="seconds"),
                judge_model=model.name,
                rubric=rubric.version,
            )
            # Redaction runs regular expressions over whole answers: off the event loop.
            self.samples.add(labels, await asyncio.to_thread(self.samples.sample_of, judged))
            for variant, scores in (("canary", result.canary_scores), ("stable", result.stable_scores)):
                for criterion, score in scores.items():
                    self.metrics.scores.labels(*labels, variant, criterion).observe(score)
            return result.canary
        self.metrics.errors.labels(*labels, "malformed").inc()
        return None

    async def _api_key(self, work: _Work) -> str | None:
        """The judge's key, read at most once every KEY_REFRESH_SECONDS (a rotated key is taken up within
        that), sent only to the URL its Secret names."""
        now = self.clock()
        if work.api_key_read_at is not None and now - work.api_key_read_at < KEY_REFRESH_SECONDS:
            return work.api_key
        work.api_key, work.api_key_read_at = await self._read_api_key(work.target), now
        return work.api_key

    async def _read_api_key(self, target: JudgeTarget) -> str | None:
        """The judge's key, only for the URL its Secret names (a spec edit cannot send it elsewhere)."""
        ref = target.judge.model.secret_ref
        if ref is None:
            return None
        try:
            data = await self.reads.read_secret(target.namespace, ref.name)
        except Exception as error:
            log.warning(
                "%s/%s: judge Secret %s not readable: %s", target.namespace, target.name, ref.name, error
            )
            return None
        if data.get("url", "").rstrip("/") != target.judge.model.url.rstrip("/"):
            log.warning(
                "%s/%s: judge Secret %s is for another URL; the key is not sent",
                target.namespace,
                target.name,
                ref.name,
            )
            return None
        return data.get("api-key")

    def _count_usage(
        self, labels: tuple[str, str], usage: tuple[int, int] | None, pricing: api.Pricing | None
    ) -> None:
        if usage is None:
            return
        read, written = usage
        self.metrics.tokens.labels(*labels, "input").inc(read)
        self.metrics.tokens.labels(*labels, "output").inc(written)
        if pricing is not None:
            cost = (read * pricing.input_per_million + written * pricing.output_per_million) / 1e6
            self.metrics.cost.labels(*labels).inc(cost)

    async def _complete(
        self,
        base_url: str,
        model: str,
        messages: list[dict[str, str]],
        seconds: float,
        api_key: str | None = None,
    ) -> _Answer:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        response = await self.http.post(
            f"{base_url.rstrip('/')}/chat/completions",
            json={"model": model, "messages": messages, "max_tokens": MAX_TOKENS},
            headers=headers,
            timeout=seconds,
        )
        response.raise_for_status()
        body = response.json()
        content = body["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise ValueError("the answer has no text")
        return _Answer(content, _usage(body.get("usage")))

    # ---- live pairs and metrics over HTTP ----

    async def post_pair(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            key = (str(body["namespace"]), str(body["rollout"]))
            texts = [str(body[name]) for name in ("prompt", "stableAnswer", "canaryAnswer")]
        except (ValueError, KeyError, TypeError):
            return web.json_response(
                {"error": "a pair needs namespace, rollout, prompt, stableAnswer, canaryAnswer"}, status=400
            )
        if any(len(text) > MAX_LIVE_TEXT for text in texts):
            return web.json_response(
                {"error": f"texts are limited to {MAX_LIVE_TEXT} characters"}, status=413
            )
        work = self.work.get(key)
        if work is None:
            return web.json_response({"error": f"{key[0]}/{key[1]} is not being judged"}, status=404)
        pair = Pair(str(body.get("requestId") or uuid.uuid4().hex), texts[0], texts[1], texts[2])
        task = asyncio.create_task(self.judge(work, pair, "live"))
        work.tasks.add(task)
        task.add_done_callback(work.tasks.discard)
        return web.json_response({"accepted": pair.request_id}, status=202)

    async def samples_page(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["rollout"])
        return web.json_response({"samples": [kept.as_json() for kept in self.samples.samples(key)]})

    async def metrics_page(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    def app(self) -> web.Application:
        application = web.Application(client_max_size=4 * MAX_LIVE_TEXT)
        application.router.add_get("/metrics", self.metrics_page)
        application.router.add_get("/healthz", _healthz)
        application.router.add_post("/v1/pairs", self.post_pair)
        application.router.add_get("/v1/samples/{namespace}/{rollout}", self.samples_page)
        return application


@dataclass(frozen=True)
class _Answer:
    text: str
    usage: tuple[int, int] | None  # tokens read and written, as the server reports them


def _usage(reported: Any) -> tuple[int, int] | None:
    """The answer's token counts, when the server reports them as non-negative integers."""
    if not isinstance(reported, dict):
        return None
    read, written = reported.get("prompt_tokens"), reported.get("completion_tokens")
    if not (_token_count(read) and _token_count(written)):
        return None
    return int(read), int(written)


def _token_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10_000_000


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def kube_reads(kube_client: KubeClient, namespaces: tuple[str, ...] = ()) -> KubeReads:
    """KubeReads over the API server."""

    async def list_rollouts() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for namespace in namespaces or (None,):
            found = await kube_client.get(object_path(api.GROUP, api.VERSION, api.PLURAL, namespace))
            items += found["items"]
        return items

    async def read_config_map(namespace: str, name: str) -> Mapping[str, str]:
        found = await kube_client.get(object_path("", "v1", "configmaps", namespace, name))
        return dict(found.get("data") or {})

    async def read_secret(namespace: str, name: str) -> Mapping[str, str]:
        found = await kube_client.get(object_path("", "v1", "secrets", namespace, name))
        return {key: base64.b64decode(value).decode() for key, value in (found.get("data") or {}).items()}

    return KubeReads(list_rollouts, read_config_map, read_secret)


async def serve(service: JudgeService, port: int, sync_interval: float, stop: asyncio.Event) -> None:
    """Serve metrics and live pairs on `port` and follow the rollouts every `sync_interval` seconds."""
    runner = web.AppRunner(service.app())
    await runner.setup()
    site = web.TCPSite(runner, "0.0.0.0", port)  # noqa: S104 - a Service in front of a Pod
    await site.start()
    try:
        while not stop.is_set():
            try:
                await service.sync()
            except Exception as error:
                log.warning("could not list ModelRollouts: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), sync_interval)
    finally:
        await service.close()
        await runner.cleanup()
