"""Sharding against the real API server: an operator of shard `a` and one without a shard, side by side in one
namespace. A rollout without the label is driven by the unsharded operator alone; labelled `a`, it moves to
the other (which corrects drift on it from then on, holds its finalizer and returns its traffic when it is
deleted), and the API server's audit log shows no VirtualService write by the operator it left after it
let it go."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from modelrollout import handlers
from modelrollout.shards import SHARD_LABEL
from modelrollout_dev.devenv.environment import EnvironmentState
from modelrollout_dev.devenv.netutil import free_port
from modelrollout_dev.devenv.prometheus import PrometheusServer
from scenario_support import (
    Kubectl,
    OperatorProcess,
    Rollout,
    operator_metric,
    virtual_service_writes,
    wait_for,
)


class NamedOperator(OperatorProcess):
    """An operator process whose identity (its user agent in the audit log) starts with `name`."""

    def __init__(self, env_state: EnvironmentState, prometheus_url: str, log_dir: Path, name: str) -> None:
        super().__init__(env_state, prometheus_url, log_dir / name)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env["POD_NAME"] = name


@pytest.fixture
def operators(
    env_state: EnvironmentState, prometheus: PrometheusServer, tmp_path: Path, modelrollout_crd: str
) -> Iterator[dict[str, NamedOperator]]:
    started = {
        name: NamedOperator(env_state, prometheus.url, tmp_path, name) for name in ("unsharded", "shard-a")
    }
    yield started
    for operator in started.values():
        operator.stop()


def finalizers(rollout: Rollout) -> list[str]:
    found: list[str] = rollout.get()["metadata"].get("finalizers", [])
    return found


def test_each_rollout_is_driven_by_its_shards_operator_and_relabelling_hands_it_over(
    operators: dict[str, NamedOperator],
    subject: Rollout,
    kubectl: Kubectl,
    env_state: EnvironmentState,
    namespace: str,
) -> None:
    unsharded, shard_a = operators["unsharded"], operators["shard-a"]
    ports = {"unsharded": free_port(), "shard-a": free_port()}
    unsharded.start("--namespace", namespace, "--metrics-port", str(ports["unsharded"]))
    shard_a.start("--namespace", namespace, "--shard", "a", "--metrics-port", str(ports["shard-a"]))

    def weight_series(operator: str) -> float:
        """The rollout's canary weight as the operator's /metrics shows it (0: no such series)."""
        return operator_metric(
            ports[operator], "modelrollout_canary_weight_percent", namespace=namespace, name=subject.name
        )

    wait_for("shard-a to start", lambda: f"{SHARD_LABEL}=a only" in shard_a.log_text(), timeout=30)

    subject.create(stages=[{"weight": 10, "duration": "600s"}, {"weight": 100}])
    wait_for("stage 1 weights", lambda: subject.weights() == (90, 10), timeout=30)
    wait_for("the unsharded finalizer", lambda: finalizers(subject) == [handlers.FINALIZER])
    writers = {who for _, who in virtual_service_writes(env_state, namespace)}
    assert writers == {"unsharded"}
    # Neither operator fights the other over the rollout: its status is written, and stays.
    wait_for("the phase", lambda: subject.status().get("phase") == "Progressing", timeout=15)
    wait_for("the unsharded operator's series", lambda: weight_series("unsharded") == 10)
    assert weight_series("shard-a") == 0

    labelled = kubectl("-n", namespace, "label", "modelrollout", subject.name, f"{SHARD_LABEL}=a")
    assert labelled.returncode == 0, labelled.stderr
    wait_for(
        "the unsharded operator to let it go", lambda: "now in shard a" in unsharded.log_text(), timeout=30
    )
    let_go = datetime.now(UTC)

    # Drift on it is corrected by shard-a now, from its VirtualService watch.
    subject.edit_weights(30, 70)
    wait_for("weights put back by shard-a", lambda: subject.weights() == (90, 10), timeout=30)
    # The finalizer is shard-a's own now (the unsharded operator took its own off).
    wait_for("shard-a's finalizer", lambda: finalizers(subject) == [f"{handlers.FINALIZER}-a"])
    assert subject.status()["phase"] == "Progressing"
    # Its /metrics series moved with it: one operator shows it at a time.
    wait_for("shard-a's series", lambda: weight_series("shard-a") == 10)
    wait_for("the unsharded operator to drop its series", lambda: weight_series("unsharded") == 0)
    conflicts = [log.count("kept changing") for log in (unsharded.log_text(), shard_a.log_text())]
    assert conflicts == [0, 0], conflicts

    deleted = kubectl("-n", namespace, "delete", "modelrollout", subject.name, "--wait=false")
    assert deleted.returncode == 0, deleted.stderr
    wait_for("traffic back to stable", lambda: subject.weights() == (100, 0), timeout=30)
    wait_for("the rollout to be gone", subject.gone, timeout=30)

    writes = virtual_service_writes(env_state, namespace)
    after = [who for at, who in writes if at > let_go]
    print(f"\nVirtualService writes after the relabel: {after}")
    assert after, "shard-a wrote nothing after the relabel"
    assert set(after) == {"shard-a"}  # the drift put back and the return to stable
