"""The judge service in a test: on its own event loop in a thread, on a free port, reading one namespace."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from modelrollout.judge.metrics import JudgeMetrics
from modelrollout.judge.service import JudgeService, kube_reads, serve
from modelrollout.kubeclient import KubeClient
from modelrollout_dev.devenv.netutil import free_port


class RunningJudge:
    """The service on its own event loop in a thread, on a free port; `metric()` reads its /metrics."""

    def __init__(self, kube_client: KubeClient, namespace: str) -> None:
        self.port = free_port()
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, args=(kube_client, namespace), daemon=True)
        self._thread.start()
        assert self.ready.wait(10)

    def _run(self, kube_client: KubeClient, namespace: str) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            async with httpx.AsyncClient() as http:
                service = JudgeService(kube_reads(kube_client, (namespace,)), http, JudgeMetrics())
                self.ready.set()
                await serve(service, self.port, 0.5, self._stop)

        asyncio.run(main())

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def metric(self, name: str, scrape: dict[Any, float] | None = None, **labels: str) -> float:
        """The sum of `name`'s samples with these labels, in `scrape` or in a new one."""
        wanted = set(labels.items())
        samples = scrape if scrape is not None else self.samples()
        return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def running_judge(kube_client: KubeClient, namespace: str) -> Iterator[RunningJudge]:
    running = RunningJudge(kube_client, namespace)
    try:
        yield running
    finally:
        running.stop()
