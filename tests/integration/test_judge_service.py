"""The judge service (`modelrollout.judge.service`) against the real API server, the simulator's fake
OpenAI-compatible models over real HTTP, and its own HTTP endpoints: it reads rollouts, evaluation sets and
keys from the API server, replays prompts to both variants, judges them blind, and its /metrics say what
happened. The rollouts' status is written through the status subresource, as the operator would: no operator
runs here, so nothing else acts on them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from kubernetes import client

from judge_support import RunningJudge, running_judge
from modelrollout import api
from modelrollout.kubeclient import KubeClient
from modelrollout_dev.devenv.netutil import free_port
from modelrollout_dev.sim.openai_server import FakeModel, FakeOpenAIServer, answer_text
from scenario_support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("modelrollout_crd")]

PROMPTS = "\n".join(f"question number {i}: explain it" for i in range(5))


@pytest.fixture
def models() -> Iterator[FakeOpenAIServer]:
    served = {
        "gpt-4o": FakeModel(quality=0.8),
        "claude-worse": FakeModel(quality=0.4),
        "judge": FakeModel(judge=True, noise=0.5, position_bias=1.0),
        "junk-judge": FakeModel(judge=True, garbage_rate=1.0),
    }
    with FakeOpenAIServer(served, seed=11) as server:
        yield server


@pytest.fixture
def judge_service(kube_client: KubeClient, namespace: str) -> Iterator[RunningJudge]:
    with running_judge(kube_client, namespace) as running:
        yield running


def judged_rollout(
    api_client: client.ApiClient, namespace: str, models: FakeOpenAIServer, name: str, **judge: Any
) -> None:
    """A ModelRollout whose judge replays to the fake models, put under way as the operator would."""
    spec = {
        "stable": {"host": "llm-gpt4o", "model": "gpt-4o"},
        "canary": {"host": "llm-claude", "model": "claude-worse"},
        "trafficRouting": {"istio": {"virtualService": {"name": "llm"}}},
        "stages": [{"weight": 10, "duration": "10m"}, {"weight": 100}],
        "analysis": {
            "judge": {
                "model": {"url": models.url, "name": "judge"},
                "endpoints": {"stable": models.url, "canary": models.url},
                "ratePerMinute": 600,
                **judge,
            }
        },
    }
    objects = client.CustomObjectsApi(api_client)
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": spec}
    objects.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, body)
    objects.patch_namespaced_custom_object_status(
        api.GROUP,
        api.VERSION,
        namespace,
        api.PLURAL,
        name,
        {"status": {"phase": "Progressing", "pairHash": uuid.uuid4().hex[:12], "observedGeneration": 1}},
    )


def config_map(api_client: client.ApiClient, namespace: str, name: str, data: dict[str, str]) -> None:
    client.CoreV1Api(api_client).create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data=data)
    )


def eventually(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    wait_for(what, check, timeout)


def test_a_worse_canary_loses_blind_and_order_balanced(
    api_client: client.ApiClient, namespace: str, models: FakeOpenAIServer, judge_service: RunningJudge
) -> None:
    config_map(api_client, namespace, "eval", {"prompts": PROMPTS})
    priced = {"url": models.url, "name": "judge", "pricing": {"inputPerMillion": 3, "outputPerMillion": 15}}
    judged_rollout(
        api_client, namespace, models, "chat", evalSet={"configMapRef": {"name": "eval"}}, model=priced
    )
    verdicts = {"rollout_namespace": namespace, "rollout": "chat"}
    eventually(
        "60 verdicts", lambda: judge_service.metric("modelrollout_judge_verdicts_total", **verdicts) >= 60
    )
    wins = judge_service.metric("modelrollout_judge_verdicts_total", outcome="win", **verdicts)
    losses = judge_service.metric("modelrollout_judge_verdicts_total", outcome="loss", **verdicts)
    print(f"canary (quality 0.4) against stable (0.8): {losses:.0f} losses, {wins:.0f} wins")
    assert losses > 10 * max(wins, 1)
    canary = judge_service.metric(
        "modelrollout_judge_score_sum", variant="canary", criterion="accuracy", **verdicts
    )
    canary_n = judge_service.metric(
        "modelrollout_judge_score_count", variant="canary", criterion="accuracy", **verdicts
    )
    stable = judge_service.metric(
        "modelrollout_judge_score_sum", variant="stable", criterion="accuracy", **verdicts
    )
    # Scores are 10 x quality plus noise, and one point for whichever answer was shown first, half the time.
    assert 4.0 < canary / canary_n < 5.0
    assert 8.0 < stable / canary_n < 9.0
    assert judge_service.metric("modelrollout_judge_pairs_total", source="replay", **verdicts) >= 60
    assert judge_service.metric("modelrollout_judge_errors_total", **verdicts) == 0
    assert models.calls("gpt-4o") >= 60
    assert models.calls("claude-worse") >= 60
    # the judge's tokens as its answers reported them, and their price
    scrape = judge_service.samples()
    read = judge_service.metric("modelrollout_judge_tokens_total", scrape, kind="input", **verdicts)
    written = judge_service.metric("modelrollout_judge_tokens_total", scrape, kind="output", **verdicts)
    assert read > 60 * 20
    assert written > 0
    cost = judge_service.metric("modelrollout_judge_cost_usd_total", scrape, **verdicts)
    assert cost == pytest.approx((read * 3 + written * 15) / 1e6)


def test_live_pairs_count_like_replayed_ones(
    api_client: client.ApiClient, namespace: str, models: FakeOpenAIServer, judge_service: RunningJudge
) -> None:
    judged_rollout(api_client, namespace, models, "live-only")  # no evaluation set: live pairs only
    pair = {
        "namespace": namespace,
        "rollout": "live-only",
        "requestId": "r-1",
        "prompt": "why? (mail me at jane.doe@example.com)",
        "stableAnswer": answer_text("old", 0.3, "why?"),
        "canaryAnswer": answer_text("new", 0.9, "why?") + " Use the key sk-live-4f9a8b7c6d5e4f3a2b1c0d9e.",
    }
    url = f"http://127.0.0.1:{judge_service.port}/v1/pairs"

    def accepted() -> bool:
        return httpx.post(url, json=pair, timeout=5).status_code == 202

    eventually("the service to judge the rollout", accepted)
    labels = {"rollout_namespace": namespace, "rollout": "live-only"}
    eventually(
        "the live verdict", lambda: judge_service.metric("modelrollout_judge_verdicts_total", **labels) >= 1
    )
    assert judge_service.metric("modelrollout_judge_verdicts_total", outcome="win", **labels) == 1
    assert judge_service.metric("modelrollout_judge_pairs_total", source="live", **labels) == 1
    judged_by = {"judge_model": "judge", "rubric": "pairwise-v1"}
    assert judge_service.metric("modelrollout_judge_verdicts_total", **labels, **judged_by) == 1
    # the sample kept for the report: redacted, with the judge's verdict beside it
    kept = httpx.get(f"http://127.0.0.1:{judge_service.port}/v1/samples/{namespace}/live-only", timeout=5)
    [sample] = kept.json()["samples"]
    assert (sample["request_id"], sample["source"], sample["outcome"]) == ("r-1", "live", "win")
    assert sample["prompt"] == "why? (mail me at [redacted:email])"
    assert "sk-live" not in sample["canary_answer"]
    assert "[redacted:" in sample["canary_answer"]
    assert (sample["judge_model"], sample["rubric"]) == ("judge", "pairwise-v1")
    assert sample["canary_scores"]["accuracy"] > sample["stable_scores"]["accuracy"]
    assert "jane.doe" not in kept.text
    unknown = httpx.post(url, json={**pair, "rollout": "nobody"}, timeout=5)
    assert unknown.status_code == 404
    assert httpx.post(url, json={"rollout": "x"}, timeout=5).status_code == 400
    too_big = httpx.post(url, json={**pair, "prompt": "x" * 100_001}, timeout=5)
    assert too_big.status_code == 413


def test_the_budget_holds_and_a_garbage_judge_wins_nothing(
    api_client: client.ApiClient, namespace: str, models: FakeOpenAIServer, judge_service: RunningJudge
) -> None:
    config_map(api_client, namespace, "eval", {"prompts": PROMPTS})
    evalset = {"configMapRef": {"name": "eval"}}
    judged_rollout(api_client, namespace, models, "thrifty", evalSet=evalset, budgetPerHour=5)
    judged_rollout(
        api_client,
        namespace,
        models,
        "junk",
        evalSet=evalset,
        model={"url": models.url, "name": "junk-judge"},
    )
    thrifty = {"rollout_namespace": namespace, "rollout": "thrifty"}
    junk = {"rollout_namespace": namespace, "rollout": "junk"}
    eventually(
        "the budget to run out",
        lambda: judge_service.metric("modelrollout_judge_errors_total", reason="budget", **thrifty) >= 5,
    )
    assert judge_service.metric("modelrollout_judge_calls_total", **thrifty) == 5
    eventually(
        "malformed verdicts",
        lambda: judge_service.metric("modelrollout_judge_errors_total", reason="malformed", **junk) >= 3,
    )
    scrape = judge_service.samples()
    malformed = judge_service.metric("modelrollout_judge_errors_total", scrape, reason="malformed", **junk)
    calls = judge_service.metric("modelrollout_judge_calls_total", scrape, **junk)
    # Each pair: the answer and one retry; one pair may be between its calls at the scrape.
    assert 2 * malformed <= calls <= 2 * malformed + 2
    assert judge_service.metric("modelrollout_judge_verdicts_total", **junk) == 0


def test_the_judge_key_goes_only_to_the_url_its_secret_names(
    api_client: client.ApiClient, namespace: str, models: FakeOpenAIServer, judge_service: RunningJudge
) -> None:
    client.CoreV1Api(api_client).create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="judge-key"),
            string_data={"api-key": "k-123", "url": models.url},
        ),
    )
    pair = {
        "prompt": "p",
        "stableAnswer": answer_text("a", 0.5, "p"),
        "canaryAnswer": answer_text("b", 0.5, "p"),
    }
    url = f"http://127.0.0.1:{judge_service.port}/v1/pairs"
    # A spec edit that points the judge elsewhere while naming the same Secret: the key stays home.
    with FakeOpenAIServer({"judge": FakeModel(judge=True)}) as elsewhere:
        for rollout, judge_url in (("keyed", models.url), ("redirected", elsewhere.url)):
            judged_rollout(
                api_client,
                namespace,
                models,
                rollout,
                model={"url": judge_url, "name": "judge", "secretRef": {"name": "judge-key"}},
            )
            body = {"namespace": namespace, "rollout": rollout, **pair}
            eventually(
                f"{rollout} judged", lambda b=body: httpx.post(url, json=b, timeout=5).status_code == 202
            )
        eventually("both judged", lambda: models.calls("judge") >= 1 and elsewhere.calls("judge") >= 1)
        assert models.authorizations("judge") == ["Bearer k-123"]
        assert elsewhere.authorizations("judge") == [""]


def test_unreachable_models_are_counted_not_judged(
    api_client: client.ApiClient, namespace: str, models: FakeOpenAIServer, judge_service: RunningJudge
) -> None:
    config_map(api_client, namespace, "eval", {"prompts": PROMPTS})
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    evalset = {"configMapRef": {"name": "eval"}}
    judged_rollout(
        api_client,
        namespace,
        models,
        "no-canary",
        evalSet=evalset,
        endpoints={"stable": models.url, "canary": closed},
    )
    judged_rollout(
        api_client, namespace, models, "no-judge", evalSet=evalset, model={"url": closed, "name": "judge"}
    )
    no_canary = {"rollout_namespace": namespace, "rollout": "no-canary"}
    no_judge = {"rollout_namespace": namespace, "rollout": "no-judge"}
    eventually(
        "unreachable canaries counted",
        lambda: (
            judge_service.metric("modelrollout_judge_errors_total", reason="variant-unreachable", **no_canary)
            >= 3
        ),
    )
    eventually(
        "an unreachable judge counted",
        lambda: (
            judge_service.metric("modelrollout_judge_errors_total", reason="judge-unreachable", **no_judge)
            >= 3
        ),
    )
    scrape = judge_service.samples()
    assert judge_service.metric("modelrollout_judge_verdicts_total", scrape, **no_canary) == 0
    assert judge_service.metric("modelrollout_judge_calls_total", scrape, **no_canary) == 0  # never asked
    assert judge_service.metric("modelrollout_judge_verdicts_total", scrape, **no_judge) == 0
