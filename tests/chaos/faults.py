"""Faults to put between the operator and what it talks to. Each one is a real loopback server in a thread of
its own, so the operator under test sees real connections, not a mock."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class ProxyStats:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    upstream_seconds: list[float] = field(default_factory=list)

    def summary(self) -> str:
        upstream = self.upstream_seconds
        mean_ms = statistics.fmean(upstream) * 1000 if upstream else float("nan")
        return (
            f"{self.requests} requests, at most {self.max_in_flight} at once, upstream answered in "
            f"{mean_ms:.2f} ms on average"
        )


class DelayingProxy:
    """An HTTP proxy on 127.0.0.1 in front of one upstream (e.g. Prometheus): every request is held `delay`
    seconds, then forwarded (with `Connection: close`), and the upstream's answer is passed back as it
    came. Pure asyncio in a thread: thousands of held requests cost no threads."""

    def __init__(self, upstream: str, delay: float) -> None:
        parts = urlsplit(upstream)
        if not parts.hostname or not parts.port:
            raise ValueError(f"upstream needs a host and a port: {upstream}")
        self.upstream = (parts.hostname, parts.port)
        self.delay = delay
        self.stats = ProxyStats()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._serve, name="delaying-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the delaying proxy did not start")
        assert self._server is not None
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = [line for line in lines[1:] if line and not line.lower().startswith("connection:")]
            length = next(
                (int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")), 0
            )
            body = await reader.readexactly(length) if length else b""
            self.stats.requests += 1
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            try:
                await asyncio.sleep(self.delay)
                started = time.monotonic()
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
                request = "\r\n".join([lines[0], *headers, "Connection: close", "", ""]).encode("latin-1")
                up_writer.write(request + body)
                await up_writer.drain()
                answer = await up_reader.read()  # to EOF: the upstream closes after its answer
                self.stats.upstream_seconds.append(time.monotonic() - started)
                up_writer.close()
            finally:
                self.stats.in_flight -= 1
            writer.write(answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client gave up (its own timeout) or sent nothing
        except asyncio.CancelledError:
            pass  # the proxy is closing: end the connection quietly
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
