"""Quality gates end to end. The operator drives a rollout whose mesh metrics are perfect (no errors,
200 ms); the judge service replays an evaluation set to the simulator's fake OpenAI-compatible models
over real HTTP and has a fake judge model compare the answers; Prometheus scrapes the judge's verdicts;
the judge-win-rate gate decides on them. A worse canary is rolled back on quality alone, an equal one is
promoted, and a judge that answers garbage half the time holds the rollout Inconclusive."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from judge_support import RunningJudge, running_judge
from modelrollout import plugin
from modelrollout.kubeclient import KubeClient
from modelrollout_dev.browser import rendered_dom, screenshot
from modelrollout_dev.devenv.environment import EnvironmentState
from modelrollout_dev.devenv.prometheus import PrometheusServer
from modelrollout_dev.sim.openai_server import FakeModel, FakeOpenAIServer
from scenario_support import Kubectl, Rollout, prepared_rollout, remove_rollouts, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("modelrollout_crd", "operator")]

PROMPTS = "\n".join(f"support question {i}: how do I rotate my keys?" for i in range(20))
QUALITY_GATE = {"name": "quality", "template": "judge-win-rate", "test": {"alpha": 0.01, "margin": "10%"}}
MESH_GATES = [
    {"name": "error-rate", "template": "istio-error-rate", "max": 0.02},
    {"name": "p99-latency-ms", "template": "istio-latency-p99", "max": 1000},
]


class JudgedRollout:
    """A rollout on synthetic, healthy mesh metrics, its stable and canary models served by a fake OpenAI
    server, judged by the judge service that Prometheus scrapes."""

    def __init__(self, rollout: Rollout, judge: RunningJudge, models: FakeOpenAIServer) -> None:
        self.rollout = rollout
        self.judge = judge
        self.models = models

    def create(self, stages: list[dict[str, Any]]) -> None:
        self.rollout.core.create_namespaced_config_map(
            self.rollout.namespace,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name="eval"), data={"prompts": PROMPTS}),
        )
        self.rollout.create(
            stages,
            models=("chat-stable", "chat-canary"),
            minRequests=20,
            inconclusiveLimit=200,
            gates=[*MESH_GATES, QUALITY_GATE],
            judge={
                "model": {"url": self.models.url, "name": "judge"},
                "evalSet": {"configMapRef": {"name": "eval"}},
                "endpoints": {"stable": self.models.url, "canary": self.models.url},
                "ratePerMinute": 600,
                "budgetPerHour": 100_000,
                "timeout": "5s",
            },
        )

    def judge_metric(self, name: str, **labels: str) -> float:
        return self.judge.metric(
            name, rollout_namespace=self.rollout.namespace, rollout=self.rollout.name, **labels
        )


@pytest.fixture
def judged(
    request: pytest.FixtureRequest,
    api_client: client.ApiClient,
    kube_client: KubeClient,
    kubectl: Kubectl,
    namespace: str,
    exporter: Any,
    prometheus: PrometheusServer,
) -> Iterator[JudgedRollout]:
    """The test's parameter: the canary's quality and the judge's garbage rate."""
    canary_quality, garbage_rate = request.param
    served = {
        "chat-stable": FakeModel(quality=0.8),
        "chat-canary": FakeModel(quality=canary_quality),
        "judge": FakeModel(judge=True, noise=0.5, position_bias=1.0, garbage_rate=garbage_rate),
    }
    with (
        FakeOpenAIServer(served, seed=7) as models,
        running_judge(kube_client, namespace) as judge,
        prepared_rollout(api_client, kubectl, namespace, exporter) as rollout,
    ):
        prometheus.set_targets("judge-service", [judge.address])
        prometheus.wait_for_job_up("judge-service")
        try:
            yield JudgedRollout(rollout, judge, models)
        finally:
            prometheus.remove_targets("judge-service")
            remove_rollouts(api_client, namespace)


def _gate(status: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(g for g in status["lastAnalysis"]["gates"] if g["name"] == name)
    return found


STAGES = [{"weight": 20, "duration": "8s"}, {"weight": 50, "duration": "8s"}, {"weight": 100}]


@pytest.mark.parametrize("judged", [(0.4, 0.0)], indirect=True)
def test_a_canary_perfect_on_errors_and_latency_is_rolled_back_on_quality(
    judged: JudgedRollout, env_state: EnvironmentState, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    judged.create(STAGES)
    status = judged.rollout.wait_phase("RolledBack", timeout=60)
    assert status["rollback"]["gate"] == "quality", status["rollback"]
    quality = _gate(status, "quality")
    assert quality["verdict"] == "Fail"
    evidence = quality["evidence"]
    assert evidence["canaryShare"] == 0.5  # even odds under equal quality, whatever the weight
    assert evidence["canaryEvents"] > 3 * evidence["stableEvents"]  # losses against wins
    assert evidence["pValue"] <= 0.01
    assert "the canary lost" in quality["message"]
    for mesh_gate in MESH_GATES:  # the mesh saw nothing wrong
        assert _gate(status, mesh_gate["name"])["verdict"] == "Pass"
    assert judged.rollout.weights() == (100, 0)
    assert judged.judge_metric("modelrollout_judge_verdicts_total", outcome="loss") > 0
    assert judged.judge_metric("modelrollout_judge_errors_total") == 0

    # status.report, compact, says so; the full report adds the judge's redacted samples and a timeline
    compact = judged.rollout.status()["report"]
    assert compact["decision"].startswith("RolledBack: rolled back at stage")
    [quality_line] = [line for line in compact["gates"] if line.startswith("quality:")]
    assert "control won " in quality_line
    assert quality_line.endswith("Fail: worse")
    where = ["--kubeconfig", env_state.kubeconfig, "-n", judged.rollout.namespace]
    code = plugin.main(
        ["report", "chat", *where, "-o", "html", "--judge-url", f"http://{judged.judge.address}"]
    )
    page = capsys.readouterr().out
    assert code == 0
    saved = tmp_path / "report.html"
    saved.write_text(page)
    dom = rendered_dom(saved.as_uri())
    assert '<svg id="timeline"' in dom
    samples = re.search(r'<table id="samples">(.*?)</table>', dom, re.S)
    assert samples is not None
    outcomes = re.findall(r"<tr><td>(\w+) \(replay\)</td>", samples.group(1))
    assert outcomes, samples.group(1)[:500]
    assert outcomes[0] == "loss"  # losses first: they explain the rollback
    assert "support question" in samples.group(1)
    print(f"the report as Chromium renders it: {screenshot(saved.as_uri(), tmp_path / 'report.png')}")


@pytest.mark.parametrize("judged", [(0.8, 0.0)], indirect=True)
def test_an_equal_quality_canary_is_promoted(judged: JudgedRollout) -> None:
    judged.create(STAGES)
    status = judged.rollout.wait_phase("Promoted", timeout=90)
    assert judged.rollout.weights() == (0, 100)
    history = status["stageHistory"]
    assert [record["outcome"].split(" ")[0] for record in history][:2] == ["Advanced", "Advanced"]
    verdicts = [g["verdict"] for record in history[:2] for g in record["gates"] if g["name"] == "quality"]
    assert verdicts == ["Pass", "Pass"]
    assert judged.judge_metric("modelrollout_judge_verdicts_total") >= 20


@pytest.mark.parametrize("judged", [(0.8, 0.5)], indirect=True)
def test_a_judge_answering_garbage_half_the_time_holds_the_rollout_inconclusive(
    judged: JudgedRollout,
) -> None:
    judged.create([{"weight": 20, "duration": "30s"}, {"weight": 100}])

    def held() -> dict[str, Any] | None:
        status = judged.rollout.status()
        analysis = status.get("lastAnalysis") or {}
        gates = {g["name"]: g for g in analysis.get("gates", [])}
        quality = gates.get("quality")
        if quality and quality["verdict"] == "Inconclusive" and "the judge failed" in quality["message"]:
            return status
        return None

    wait_for("the quality gate held by the judge's failures", lambda: held() is not None, timeout=40)
    wait_for(
        "malformed verdicts counted",
        lambda: judged.judge_metric("modelrollout_judge_errors_total", reason="malformed") >= 5,
        timeout=30,
    )
    status = held()
    assert status is not None, judged.rollout.status().get("lastAnalysis")
    assert status["phase"] == "Progressing"
    assert status.get("stage", 0) == 0  # neither rolled back nor advanced
    assert "rollback" not in status
    assert judged.rollout.weights() == (80, 20)
    assert _gate(status, "error-rate")["verdict"] == "Pass"
