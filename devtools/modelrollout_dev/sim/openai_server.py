"""Fake OpenAI-compatible model servers for tests and the demo: `POST /v1/chat/completions` (plain and
`stream: true` server-sent events, as OpenAI and vLLM answer), `GET /v1/models`, over real HTTP on loopback.

Two kinds of model:
- an **answering model** has a quality knob in [0, 1]. Its answer to a prompt is deterministic text that
  carries the quality in a marker, `[q=0.80]`, so that a judge can grade it; a real model's quality is what
  the judge has to find out, here the test sets it and checks that the judging pipeline recovers it.
- a **judge model** grades the two answers of a pairwise rubric prompt: it reads the markers in the order the
  answers appear (the first is A, the second B), scores each criterion as 10 x quality plus Gaussian noise,
  adds `position_bias` points to whichever answer is shown first (real judges favour a position, which is
  why a judging pipeline must balance the order, not assume it fair), and answers the rubric's JSON
  (`{"accuracy": .., "clarity": .., "completeness": .., "winner": "A"|"B"|"tie"}`). A share `garbage_rate`
  of its answers are not JSON at all, for the judge-error path.

Either kind fails a share `error_rate` of requests with HTTP 500. Every request is counted per model
(`calls`), so a call budget can be checked. Draws come from one seeded generator per server.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CRITERIA = ("accuracy", "clarity", "completeness")
_MARKER = re.compile(r"\[q=([01](?:\.\d+)?)\]")


@dataclass(frozen=True)
class FakeModel:
    quality: float = 0.8
    judge: bool = False
    noise: float = 0.5  # standard deviation of a judge's score, in points of 10
    position_bias: float = 0.0  # points a judge adds to the answer shown first
    tie_margin: float = 0.5  # a judge calls a tie when the mean scores differ by less
    garbage_rate: float = 0.0
    error_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("quality", "garbage_rate", "error_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], not {getattr(self, name)}")


def answer_text(model: str, quality: float, prompt: str) -> str:
    """An answering model's reply: the same for the same model, quality and prompt."""
    digest = hashlib.sha256(f"{model}\0{prompt}".encode()).hexdigest()[:12]
    return f"Answer {digest} from a model of quality [q={quality:.2f}]: " + " ".join(
        ["point"] * (3 + round(quality * 7))
    )


def qualities(prompt: str) -> list[float]:
    """The quality markers of the answers in a judge prompt, in the order they appear."""
    return [float(match) for match in _MARKER.findall(prompt)]


def judge_verdict(prompt: str, model: FakeModel, rng: random.Random) -> dict[str, Any]:
    """The rubric JSON a judge model answers for a pairwise prompt (draws: one per criterion per answer)."""
    found = qualities(prompt)
    if len(found) < 2:
        raise ValueError("a judge prompt must hold two graded answers (A first, then B)")
    first, second = found[0], found[1]
    scores: dict[str, Any] = {}
    means = {"A": 0.0, "B": 0.0}
    for criterion in CRITERIA:
        a = 10 * first + model.position_bias + rng.gauss(0.0, model.noise)
        b = 10 * second + rng.gauss(0.0, model.noise)
        a, b = (min(10.0, max(0.0, round(s, 1))) for s in (a, b))
        scores[criterion] = {"A": a, "B": b}
        means["A"] += a / len(CRITERIA)
        means["B"] += b / len(CRITERIA)
    if abs(means["A"] - means["B"]) < model.tie_margin:
        winner, reasoning = "tie", "Both answers are about as accurate, clear and complete."
    else:
        winner = "A" if means["A"] > means["B"] else "B"
        reasoning = (
            f"{winner} is more accurate and complete (mean {max(means.values()):.1f} against "
            f"{min(means.values()):.1f})."
        )
    return {**scores, "winner": winner, "reasoning": reasoning}


@dataclass
class _State:
    models: dict[str, FakeModel]
    rng: random.Random
    calls: dict[str, int] = field(default_factory=dict)
    authorizations: dict[str, list[str]] = field(default_factory=dict)  # the Authorization headers seen
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return

    def _json(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: int, message: str, kind: str) -> None:
        self._json(status, {"error": {"message": message, "type": kind}})

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/v1/models":
            self._error(404, f"no route {self.path}", "not_found")
            return
        names = sorted(self.server.state.models)
        self._json(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]})

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route {self.path}", "not_found")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            name = str(request["model"])
            messages = request["messages"]
            prompt = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        except (ValueError, KeyError, TypeError) as error:
            self._error(400, f"bad request: {error}", "invalid_request_error")
            return
        state = self.server.state
        with state.lock:
            model = state.models.get(name)
            if model is None:
                self._error(404, f"the model {name!r} does not exist", "not_found")
                return
            state.calls[name] = state.calls.get(name, 0) + 1
            state.authorizations.setdefault(name, []).append(self.headers.get("Authorization", ""))
            failed = model.error_rate > 0 and state.rng.random() < model.error_rate
            garbage = model.judge and model.garbage_rate > 0 and state.rng.random() < model.garbage_rate
            refusal = ""
            try:
                content = self._content(name, model, prompt, garbage, state.rng)
            except ValueError as error:
                content, refusal = "", str(error)
        if failed:
            self._error(500, "the model failed to answer", "server_error")
            return
        if refusal:
            self._error(400, refusal, "invalid_request_error")
            return
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(content.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if request.get("stream"):
            self._stream(
                name, content, usage, bool((request.get("stream_options") or {}).get("include_usage"))
            )
        else:
            self._json(
                200,
                {
                    "id": f"chatcmpl-{hashlib.sha256(content.encode()).hexdigest()[:16]}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": name,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )

    @staticmethod
    def _content(name: str, model: FakeModel, prompt: str, garbage: bool, rng: random.Random) -> str:
        if not model.judge:
            return answer_text(name, model.quality, prompt)
        if garbage:
            return "I think both answers have merit; it is hard to say."
        return json.dumps(judge_verdict(prompt, model, rng))

    def _stream(self, name: str, content: str, usage: dict[str, int], include_usage: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        created = int(time.time())
        base = {"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": created, "model": name}
        pieces = re.findall(r"\S+\s*", content)
        chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}]
        chunks += [
            {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            for piece in pieces
        ]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if include_usage:
            chunks.append({**base, "choices": [], "usage": usage})
        for chunk in chunks:
            self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: _State) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class FakeOpenAIServer:
    """The models by name, served at `url` (`http://127.0.0.1:PORT/v1`) once started."""

    def __init__(self, models: dict[str, FakeModel], seed: int = 0) -> None:
        self._state = _State(models=dict(models), rng=random.Random(seed))  # noqa: S311  (not secrets)
        self._server: _Server | None = None
        self.url = ""

    def start(self) -> FakeOpenAIServer:
        self._server = _Server(self._state)
        threading.Thread(target=self._server.serve_forever, name="fake-openai", daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        return self

    def update(self, name: str, **changes: Any) -> FakeModel:
        """Change a model while it serves (a quality drop mid-rollout, a judge that starts answering junk)."""
        with self._state.lock:
            model = replace(self._state.models[name], **changes)
            self._state.models[name] = model
            return model

    def calls(self, name: str) -> int:
        with self._state.lock:
            return self._state.calls.get(name, 0)

    def authorizations(self, name: str) -> list[str]:
        """The Authorization header of each request to `name` ("" when none was sent)."""
        with self._state.lock:
            return list(self._state.authorizations.get(name, []))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
