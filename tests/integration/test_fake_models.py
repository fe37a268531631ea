"""The simulator's fake OpenAI-compatible model servers over real HTTP on loopback: what the judge service and
the demo talk to instead of a hosted model. Plain and streamed completions, the judge's rubric JSON, its
garbage and error answers, unknown models, and the call count a budget is checked against."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from modelrollout_dev.sim.openai_server import CRITERIA, FakeModel, FakeOpenAIServer, answer_text, qualities

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    models = {
        "stable-model": FakeModel(quality=0.8),
        "canary-model": FakeModel(quality=0.5),
        "judge": FakeModel(judge=True, noise=0.0),
    }
    with FakeOpenAIServer(models, seed=3) as running:
        yield running


def chat(server: FakeOpenAIServer, model: str, prompt: str, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}
    return httpx.post(f"{server.url}/chat/completions", json=body, timeout=10)


def test_a_completion_is_openai_shaped_and_carries_the_models_quality(server: FakeOpenAIServer) -> None:
    answer = chat(server, "canary-model", "summarize this")
    assert answer.status_code == 200
    body = answer.json()
    assert (body["object"], body["model"]) == ("chat.completion", "canary-model")
    (choice,) = body["choices"]
    assert (choice["message"]["role"], choice["finish_reason"]) == ("assistant", "stop")
    assert choice["message"]["content"] == answer_text("canary-model", 0.5, "summarize this")
    assert qualities(choice["message"]["content"]) == [0.5]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    listed = httpx.get(f"{server.url}/models", timeout=10).json()
    assert [m["id"] for m in listed["data"]] == ["canary-model", "judge", "stable-model"]


def test_a_streamed_completion_is_server_sent_events_ending_in_done(server: FakeOpenAIServer) -> None:
    events = []
    body = {
        "model": "stable-model",
        "messages": [{"role": "user", "content": "summarize this"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body, timeout=10) as response:
        assert response.headers["content-type"] == "text/event-stream"
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == answer_text("stable-model", 0.8, "summarize this")
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == len(text.split())


def test_the_judge_answers_its_rubric_json_from_the_answers_it_is_shown(server: FakeOpenAIServer) -> None:
    stable = chat(server, "stable-model", "q").json()["choices"][0]["message"]["content"]
    canary = chat(server, "canary-model", "q").json()["choices"][0]["message"]["content"]
    verdict = json.loads(
        chat(server, "judge", f"Answer A:\n{canary}\nAnswer B:\n{stable}").json()["choices"][0]["message"][
            "content"
        ]
    )
    assert {c: verdict[c] for c in CRITERIA} == {c: {"A": 5.0, "B": 8.0} for c in CRITERIA}
    assert verdict["winner"] == "B"


def test_garbage_errors_unknown_models_and_the_call_count(server: FakeOpenAIServer) -> None:
    prompt = f"A: {answer_text('x', 0.6, 'q')} B: {answer_text('y', 0.6, 'q')}"
    server.update("judge", garbage_rate=1.0)
    junk = chat(server, "judge", prompt).json()["choices"][0]["message"]["content"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(junk)
    server.update("canary-model", error_rate=1.0)
    failed = chat(server, "canary-model", "q")
    assert (failed.status_code, failed.json()["error"]["type"]) == (500, "server_error")
    missing = chat(server, "no-such-model", "q")
    assert (missing.status_code, missing.json()["error"]["type"]) == (404, "not_found")
    refused = chat(server, "judge", "no answers to grade")
    assert refused.status_code == 200  # garbage_rate 1: the junk answer comes before any grading
    server.update("judge", garbage_rate=0.0)
    assert chat(server, "judge", "no answers to grade").status_code == 400
    assert (server.calls("judge"), server.calls("canary-model"), server.calls("no-such-model")) == (3, 1, 0)
