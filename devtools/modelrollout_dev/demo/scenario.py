"""What the demo rolls out: three services in one namespace, each with its own VirtualService and rollout.
Durations are compressed to seconds so all finish in about two minutes.

The third rollout is an experiment: a shadow stage first (users get the stable's answers only, the canary a
mirrored copy), then sticky per-user buckets: the load generator sends each user's id, the operator's
EnvoyFilter computes the user's bucket in the (simulated) sidecar, so a user stays on one model and only ever
moves to the canary.

The fourth is judged: its canary is as healthy as its stable by every mesh and vLLM metric, but answers
worse. The judge service replays an evaluation set to both models (the simulator's fake OpenAI-compatible
servers) and has a fake judge model compare the answers blind; the judge-win-rate gate rolls it back on
quality alone, and judge-score gates (advisory) put each criterion's mean scores in the report.

Each rollout gates on the mesh's error rate and latency and on the vLLM metrics its backends export: time to
first token, output tokens compared with the stable, a sequential test of errors against the stable, and the
cost per request (advisory: reported, never deciding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelrollout import api

NAMESPACE = "llm-demo"
RPS = 40.0
REGRESSION_ERROR_RATE = 0.05
STABLE_PRICING = {"inputPerMillion": 2.5, "outputPerMillion": 10}  # USD
CANARY_PRICING = {"inputPerMillion": 5, "outputPerMillion": 25}


@dataclass(frozen=True)
class DemoRollout:
    name: str
    host: str  # the VirtualService host clients call
    stable: str
    canary: str
    stable_model: str
    canary_model: str
    regress_at_stage: int | None  # 0-based stage at which the canary starts failing; None: stays healthy
    expected_phase: str
    experiment_id: str | None = None  # an experiment: a shadow stage first, then sticky buckets
    # A judged rollout: the answer quality (0-1) of the stable's and the canary's fake models.
    qualities: tuple[float, float] | None = None


USER_HEADER = "x-user-id"  # what the load generator sends each user's id in
EXPERIMENT_USERS = 400


ROLLOUTS = (
    DemoRollout("chat", "chat", "chat-gpt4o", "chat-claude", "gpt-4o", "claude-opus-4-8", None, "Promoted"),
    DemoRollout(
        "summarize", "summarize", "sum-v12", "sum-v13", "summarizer-v12", "summarizer-v13", 1, "RolledBack"
    ),
    DemoRollout(
        "translate",
        "translate",
        "tr-v3",
        "tr-v4",
        "translator-v3",
        "translator-v4",
        None,
        "Promoted",
        experiment_id="demo-translate-v4",
    ),
    DemoRollout(
        "support",
        "support",
        "support-v1",
        "support-v2",
        "support-v1",
        "support-v2",
        None,
        "RolledBack",
        qualities=(0.85, 0.6),
    ),
)

EVAL_SET = "support-eval"
EVAL_PROMPTS = "\n".join(
    f"customer question {i}: how do I {task}?"
    for i, task in enumerate(
        ("reset my password", "rotate an API key", "export my data", "change my plan", "close my account") * 4
    )
)
JUDGE_MODEL = "judge"


def stages(rollout: DemoRollout) -> list[dict[str, Any]]:
    if rollout.experiment_id is not None:
        return [
            {"shadow": 100, "duration": "15s"},
            {"weight": 10, "duration": "15s"},
            {"weight": 50, "duration": "15s"},
            {"weight": 100},
        ]
    return [
        {"weight": 5, "duration": "15s"},
        {"weight": 25, "duration": "20s"},
        {"weight": 50, "duration": "20s"},
        {"weight": 100},
    ]


def experiment(rollout: DemoRollout) -> dict[str, Any]:
    if rollout.experiment_id is None:
        return {}
    return {
        "experiment": {
            "id": rollout.experiment_id,
            "stickiness": {"userHeader": USER_HEADER},
            "overrides": [{"header": "x-experiment", "value": "canary", "variant": "canary"}],
        }
    }


def virtual_service(rollout: DemoRollout) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": rollout.host, "namespace": NAMESPACE},
        "spec": {
            "hosts": [rollout.host],
            "http": [
                {
                    "name": "primary",
                    "timeout": "120s",
                    "route": [{"destination": {"host": rollout.stable}, "weight": 100}],
                }
            ],
        },
    }


def judged(rollout: DemoRollout, models_url: str) -> dict[str, Any]:
    """The judge block and gates of a judged rollout: replay to both fake models, a pair a second (slow
    enough that the mesh's gates pass the first stage before the quality evidence is in)."""
    if rollout.qualities is None:
        return {}
    scores = [
        {
            "name": f"{criterion}-score",
            "template": "judge-score",
            "criterion": criterion,
            "compare": {"maxDecrease": "10%"},
            "advisory": True,
        }
        for criterion in api.DEFAULT_CRITERIA
    ]
    return {
        "judge": {
            "model": {"url": models_url, "name": JUDGE_MODEL},
            "evalSet": {"configMapRef": {"name": EVAL_SET}},
            "endpoints": {"stable": models_url, "canary": models_url},
            "ratePerMinute": 60,
            "budgetPerHour": 2_000,
            "timeout": "5s",
        },
        "gates": [
            {"name": "quality", "template": "judge-win-rate", "test": {"alpha": 0.01, "margin": "10%"}},
            *scores,
        ],
    }


def model_rollout(rollout: DemoRollout, models_url: str = "") -> dict[str, Any]:
    quality = judged(rollout, models_url)
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": rollout.name, "namespace": NAMESPACE},
        "spec": {
            "stable": {"host": rollout.stable, "model": rollout.stable_model, "pricing": STABLE_PRICING},
            "canary": {"host": rollout.canary, "model": rollout.canary_model, "pricing": CANARY_PRICING},
            "trafficRouting": {"istio": {"virtualService": {"name": rollout.host}, "routes": ["primary"]}},
            "stages": stages(rollout),
            **experiment(rollout),
            "analysis": {
                "interval": "2s",
                "window": "10s",
                "minRequests": 10,
                "failureLimit": 1,
                "gates": [
                    {"name": "error-rate", "template": "istio-error-rate", "max": 0.02},
                    {"name": "p99-latency-ms", "template": "istio-latency-p99", "max": 5000},
                    {"name": "ttft-p99", "template": "llm-ttft-p99", "source": "vllm", "max": 2.0},
                    {
                        "name": "output-tokens",
                        "template": "llm-output-tokens",
                        "source": "vllm",
                        "compare": {"maxIncrease": "20%"},
                    },
                    {
                        "name": "errors-vs-stable",
                        "template": "llm-error-events",
                        "source": "vllm",
                        "test": {"kind": "sequential", "alpha": 0.01, "margin": "10%"},
                    },
                    {
                        "name": "cost-per-request",
                        "template": "llm-cost-per-request",
                        "source": "vllm",
                        "max": 0.01,
                        "advisory": True,
                    },
                    *quality.get("gates", []),
                ],
                **({"judge": quality["judge"]} if quality else {}),
            },
        },
    }
