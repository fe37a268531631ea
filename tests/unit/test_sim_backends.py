"""Fake LLM backends: the latency and time-to-first-token distributions honour the median and p99 they are
given, errors and truncations come at the configured rates, and settings change safely while requests are
served.

Tolerances, for 50,000 seeded samples: the median within 3% and the p99 within 5% (their standard errors for
these log-normals are about 0.4% and 1.2%); an error rate within 0.005 (standard deviation <= 0.0022); a
truncation share of the ~40,000 successes within 0.01 (standard deviation <= 0.0025).
"""

from __future__ import annotations

import random
import re
import statistics
import threading
import time

import pytest

from modelrollout_dev.sim.backends import MAX_MODEL_NAME, Backend, Backends, BackendSettings, Served

SAMPLES = 50_000


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311  (simulated traffic: repeatable draws, not secrets)


def latencies(backend: Backend, rng: random.Random, n: int = SAMPLES) -> list[float]:
    return [backend.serve(rng).latency_ms for _ in range(n)]


def median_and_p99(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98]


@pytest.mark.parametrize(
    ("median", "p99"),
    [
        (200.0, 800.0),
        (1500.0, 12000.0),  # a slow reasoning model with a long tail
        (50.0, 60.0),  # a tight one
        (30000.0, 90000.0),
    ],
)
def test_latency_fits_median_and_p99(median: float, p99: float) -> None:
    backend = Backend(BackendSettings(latency_median_ms=median, latency_p99_ms=p99))
    observed_median, observed_p99 = median_and_p99(latencies(backend, seeded(11)))
    assert observed_median == pytest.approx(median, rel=0.03)
    assert observed_p99 == pytest.approx(p99, rel=0.05)


def test_p99_equal_to_median_is_a_constant_latency() -> None:
    backend = Backend(BackendSettings(latency_median_ms=250.0, latency_p99_ms=250.0))
    assert latencies(backend, seeded(1), 100) == [pytest.approx(250.0)] * 100


@pytest.mark.parametrize("error_rate", [0.0, 0.01, 0.05, 0.3, 1.0])
def test_error_rate(error_rate: float) -> None:
    backend = Backend(BackendSettings(error_rate=error_rate, tokens_in=300, tokens_out=120))
    rng = seeded(5)
    replies = [backend.serve(rng) for _ in range(SAMPLES)]
    errors = [reply for reply in replies if reply.status != 200]
    assert len(errors) / SAMPLES == pytest.approx(error_rate, abs=0.005)
    # A failed request sent its prompt but produced nothing: no first token, aborted to vLLM.
    assert {(e.status, e.tokens_in, e.tokens_out, e.ttft_ms, e.finished_reason) for e in errors} <= {
        (503, 300, 0, None, "abort")
    }
    assert {(r.tokens_in, r.tokens_out, r.finished_reason) for r in replies if r.status == 200} <= {
        (300, 120, "stop")
    }


def test_error_code_is_configurable() -> None:
    backend = Backend(BackendSettings(error_rate=1.0, error_code=429))
    assert backend.serve(seeded(1)).status == 429


def test_runtime_changes_apply_to_the_next_request() -> None:
    backends = Backends()
    rng = seeded(2)
    assert all(backends.serve("llm-claude", "llm", rng).status == 200 for _ in range(1000))
    settings = backends.update("llm-claude", "llm", error_rate=1.0, latency_median_ms=900, latency_p99_ms=900)
    assert settings == BackendSettings(error_rate=1.0, latency_median_ms=900.0, latency_p99_ms=900.0)
    served = backends.serve("llm-claude", "llm", rng)
    assert (served.status, served.latency_ms) == (503, pytest.approx(900.0))
    # Only that backend changed; a partial update keeps the other settings.
    assert backends.serve("llm-gpt4o", "llm", rng).status == 200
    assert backends.serve("llm-claude", "other-namespace", rng).status == 200
    backends.update("llm-claude", "llm", error_rate=0.0)
    assert backends.get("llm-claude", "llm").settings.latency_median_ms == 900.0
    assert backends.serve("llm-claude", "llm", rng).status == 200
    assert list(backends.snapshot()) == ["llm/llm-claude", "llm/llm-gpt4o", "other-namespace/llm-claude"]


def test_unknown_backend_is_healthy_with_200ms_median() -> None:
    backend = Backends().get("never-configured", "llm")
    assert backend.settings.error_rate == 0.0
    observed_median, _ = median_and_p99(latencies(backend, seeded(3), 20_000))
    assert observed_median == pytest.approx(200.0, rel=0.03)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"error_rate": 1.5}, "error_rate must be in [0, 1]"),
        ({"error_rate": -0.1}, "error_rate must be in [0, 1]"),
        ({"latency_median_ms": 0}, "latency_median_ms must be > 0"),
        ({"latency_p99_ms": 100}, "latency_p99_ms (100.0) must be >= latency_median_ms (200.0)"),
        ({"tokens_out": -1}, "token counts must be >= 0"),
        ({"tokens_in": 1.5}, "tokens_in must be an integer"),
        ({"error_rate": "0.1"}, "error_rate must be a number"),
        ({"error_rate": True}, "error_rate must be a number"),
        ({"error_code": 200}, "error_code must be a 4xx or 5xx status"),
        ({"latency": 5}, "unknown backend setting(s) latency"),
        ({"model_name": ""}, "model_name must be a non-empty string (or null for the default), got ''"),
        ({"model_name": 5}, "model_name must be a non-empty string"),
        ({"model_name": True}, "model_name must be a non-empty string"),
        ({"model_name": ["m"]}, "model_name must be a non-empty string"),
        ({"model_name": "m" * (MAX_MODEL_NAME + 1)}, "model_name must be a string of at most 253 characters"),
        ({"ttft_median_ms": 0}, "ttft_median_ms must be > 0 and finite"),
        ({"ttft_median_ms": float("nan")}, "ttft_median_ms must be > 0 and finite"),
        ({"ttft_median_ms": "150"}, "ttft_median_ms must be a number"),
        ({"ttft_p99_ms": 100}, "ttft_p99_ms (100.0) must be finite and >= ttft_median_ms (150.0)"),
        ({"ttft_p99_ms": float("inf")}, "ttft_p99_ms (inf) must be finite and >= ttft_median_ms (150.0)"),
        ({"itl_ms": -1}, "itl_ms must be >= 0 and finite"),
        ({"itl_ms": float("inf")}, "itl_ms must be >= 0 and finite"),
        ({"itl_ms": False}, "itl_ms must be a number"),
        ({"truncation_rate": 1.01}, "truncation_rate must be in [0, 1]"),
        ({"truncation_rate": "0.1"}, "truncation_rate must be a number"),
        ({"tokens_out_jitter": -0.1}, "tokens_out_jitter must be in [0, 1]"),
        ({"tokens_out_jitter": 2}, "tokens_out_jitter must be in [0, 1]"),
        ({"tokens_out_jitter": None}, "tokens_out_jitter must be a number"),
    ],
)
def test_bad_changes_are_refused_and_change_nothing(changes: dict[str, object], message: str) -> None:
    backend = Backend()
    with pytest.raises(ValueError, match=re.escape(message)):
        backend.update(**changes)
    assert backend.settings == BackendSettings()


def test_changes_while_serving_never_mix_settings() -> None:
    """Each request sees one whole set of settings: with median == p99 in every set, a latency of one set
    paired with the status of another would show."""
    backend = Backend(BackendSettings(latency_median_ms=100, latency_p99_ms=100))
    sets = [
        {"error_rate": 0.0, "latency_median_ms": 100.0, "latency_p99_ms": 100.0},
        {"error_rate": 1.0, "latency_median_ms": 5000.0, "latency_p99_ms": 5000.0},
    ]
    stop = threading.Event()

    def flip() -> None:
        i = 0
        while not stop.is_set():
            backend.update(**sets[i % 2])  # all three at once: one validated, atomic swap
            i += 1
            time.sleep(0)  # let the serving thread have the GIL between flips

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        rng = seeded(9)
        seen = {
            (served.status, round(served.latency_ms))
            for served in (backend.serve(rng) for _ in range(20_000))
        }
    finally:
        stop.set()
        flipper.join()
    assert seen == {(200, 100), (503, 5000)}  # both sets served, never a mix


def test_defaults_keep_the_existing_settings() -> None:
    settings = BackendSettings()
    assert (settings.error_rate, settings.latency_median_ms, settings.latency_p99_ms) == (0.0, 200.0, 800.0)
    assert (settings.tokens_in, settings.tokens_out, settings.error_code) == (400, 200, 503)
    assert (settings.model_name, settings.ttft_median_ms, settings.ttft_p99_ms, settings.itl_ms) == (
        "",
        150.0,
        600.0,
        20.0,
    )
    assert (settings.truncation_rate, settings.tokens_out_jitter) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"model_name": "meta-llama/Llama-3.1-8B-Instruct"},
            {"model_name": "meta-llama/Llama-3.1-8B-Instruct"},
        ),
        ({"model_name": "m" * MAX_MODEL_NAME}, {"model_name": "m" * MAX_MODEL_NAME}),
        ({"ttft_median_ms": 90, "ttft_p99_ms": 90}, {"ttft_median_ms": 90.0, "ttft_p99_ms": 90.0}),
        ({"itl_ms": 0}, {"itl_ms": 0.0}),
        (
            {"truncation_rate": 1, "tokens_out_jitter": 0.5},
            {"truncation_rate": 1.0, "tokens_out_jitter": 0.5},
        ),
    ],
)
def test_llm_changes_are_typed(changes: dict[str, object], expected: dict[str, object]) -> None:
    settings = Backend().update(**changes)
    assert {name: getattr(settings, name) for name in expected} == expected
    assert all(type(getattr(settings, name)) is type(value) for name, value in expected.items())
    assert {name: value for name, value in settings.as_dict().items() if name in expected} == expected


def test_model_name_null_goes_back_to_the_host_name() -> None:
    backend = Backend()
    assert backend.update(model_name="qwen3-8b").model_name == "qwen3-8b"
    assert backend.serve(seeded(1)).model_name == "qwen3-8b"
    assert backend.update(model_name=None).model_name == ""
    assert backend.serve(seeded(1)).model_name == ""


def test_ttft_fits_median_and_p99() -> None:
    backend = Backend(BackendSettings(ttft_median_ms=120.0, ttft_p99_ms=900.0, latency_median_ms=50.0))
    rng = seeded(13)
    ttfts = [backend.serve(rng).ttft_ms for _ in range(SAMPLES)]
    assert None not in ttfts
    observed_median, observed_p99 = median_and_p99([ttft for ttft in ttfts if ttft is not None])
    assert observed_median == pytest.approx(120.0, rel=0.03)
    assert observed_p99 == pytest.approx(900.0, rel=0.05)
    # Independent of the end-to-end latency: nothing ties them (documented).
    assert median_and_p99(latencies(backend, seeded(13), 20_000))[0] == pytest.approx(50.0, rel=0.03)


@pytest.mark.parametrize("truncation_rate", [0.0, 0.05, 0.3, 1.0])
def test_truncation_share_of_successes(truncation_rate: float) -> None:
    backend = Backend(BackendSettings(error_rate=0.2, truncation_rate=truncation_rate))
    rng = seeded(17)
    replies = [backend.serve(rng) for _ in range(SAMPLES)]
    successes = [reply for reply in replies if reply.status == 200]
    truncated = sum(reply.finished_reason == "length" for reply in successes)
    assert truncated / len(successes) == pytest.approx(truncation_rate, abs=0.01)
    assert {reply.finished_reason for reply in successes} <= {"stop", "length"}
    # Errors are aborted whatever the truncation rate: no token, no first token.
    assert {(r.finished_reason, r.tokens_out, r.ttft_ms) for r in replies if r.status != 200} == {
        ("abort", 0, None)
    }


def test_output_token_jitter() -> None:
    rng = seeded(19)
    exact = Backend(BackendSettings(tokens_out=200))
    assert {exact.serve(rng).tokens_out for _ in range(1000)} == {200}
    spread = Backend(BackendSettings(tokens_out=200, tokens_out_jitter=0.25))
    counts = [spread.serve(rng).tokens_out for _ in range(20_000)]
    assert (min(counts), max(counts)) == (150, 250)
    assert statistics.fmean(counts) == pytest.approx(200, rel=0.01)
    # A jitter of 1 can produce nothing: a success with no output token has no first token.
    empty = Backend(BackendSettings(tokens_out=1, tokens_out_jitter=1.0))
    replies = [empty.serve(rng) for _ in range(1000)]
    assert {(r.tokens_out, r.ttft_ms is None) for r in replies} == {(0, True), (1, False), (2, False)}


def test_served_is_reproducible_from_the_generator() -> None:
    settings = BackendSettings(error_rate=0.1, truncation_rate=0.2, tokens_out_jitter=0.3, model_name="m")

    def replies(seed: int) -> list[Served]:
        backend, rng = Backend(settings), seeded(seed)
        return [backend.serve(rng) for _ in range(2000)]

    first = replies(23)
    assert first == replies(23)
    assert first != replies(24)
    assert all(isinstance(served, Served) and served.itl_ms == 20.0 for served in first)
