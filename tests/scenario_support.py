"""Shared pieces of the tiers that run the operator for real: the operator as a process, the synthetic Istio
exporter registered with the session's Prometheus, and a handle on one ModelRollout with its VirtualService.
Fixtures are imported by the test modules that use them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelrollout import api
from modelrollout_dev.devenv.controlplane import audit_log_path
from modelrollout_dev.devenv.environment import EnvironmentState
from modelrollout_dev.devenv.prometheus import PrometheusServer
from modelrollout_dev.local_operator import local_command
from modelrollout_dev.sim.istio_exporter import IstioTrafficExporter
from modelrollout_dev.sim.simulator import Simulator

Kubectl = Callable[..., subprocess.CompletedProcess[str]]

STABLE, CANARY = "llm-gpt4o", "llm-claude"
RPS = 40.0
ServedT = TypeVar("ServedT", bound="ServedRollout")


def mark_tier(items: list[Any], directory: Path, *marks: Any) -> None:
    """Give every collected test under `directory` the tier's marks (for a conftest's
    pytest_collection_modifyitems)."""
    for item in items:
        if Path(str(item.fspath)).is_relative_to(directory):
            for mark in marks:
                item.add_marker(mark)


class OperatorProcess:
    def __init__(self, env_state: EnvironmentState, prometheus_url: str, log_dir: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": env_state.kubeconfig}
        self.prometheus_url = prometheus_url
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, *extra_args: str) -> None:
        """Start `modelrollout run`; flags in `extra_args` override the defaults (e.g. a metrics port)."""
        self.starts += 1
        log = (self.log_dir / f"operator-{self.starts}.log").open("wb")
        argv = [*local_command(self.prometheus_url, tick=0.5), *extra_args]
        self.proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def log_text(self) -> str:
        return "".join(
            path.read_text(errors="replace") for path in sorted(self.log_dir.glob("operator-*.log"))
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def virtual_service_writes(env_state: EnvironmentState, namespace: str) -> list[tuple[datetime, str]]:
    """(when, by which replica) for every VirtualService write an operator replica made in `namespace`."""
    writes = []
    for line in audit_log_path(Path(env_state.run_dir)).read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        agent = event.get("userAgent", "")
        if ref.get("resource") != "virtualservices" or ref.get("namespace") != namespace:
            continue
        if event.get("verb") not in ("update", "patch") or not agent.startswith("modelrollout-operator/"):
            continue
        if (event.get("responseStatus") or {}).get("code") != 200:
            continue  # refused (e.g. a conflict): nothing written
        at = datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00"))
        writes.append((at, agent.removeprefix("modelrollout-operator/").rsplit("-", 1)[0]))
    return sorted(writes)


def operator_metric(port: int, metric_name: str, **labels: str) -> float:
    """The sum of an operator's series of `metric_name` with these labels, from its /metrics on `port`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(metric_name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


class Rollout:
    """One ModelRollout and its VirtualService in a namespace of its own."""

    def __init__(
        self, api_client: client.ApiClient, kubectl: Kubectl, namespace: str, name: str = "chat"
    ) -> None:
        self.objects = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.kubectl = kubectl
        self.namespace = namespace
        self.name = name

    def create_vs(self) -> None:
        vs = {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "llm", "namespace": self.namespace},
            "spec": {
                "hosts": ["llm"],
                "http": [
                    {
                        "name": "eval-pinned",
                        "match": [{"headers": {"x-llm-eval": {"exact": "canary"}}}],
                        "route": [{"destination": {"host": CANARY}}],
                    },
                    {
                        "name": "primary",
                        "timeout": "120s",
                        "retries": {"attempts": 2, "perTryTimeout": "60s"},
                        "route": [{"destination": {"host": STABLE}, "weight": 100}],
                    },
                ],
            },
        }
        self.objects.create_namespaced_custom_object(
            "networking.istio.io", "v1", self.namespace, "virtualservices", vs
        )

    def create(
        self,
        stages: list[dict[str, Any]] | None = None,
        *,
        models: tuple[str, str] = ("gpt-4o", "claude-opus-4-8"),
        experiment: dict[str, Any] | None = None,
        **analysis: Any,
    ) -> None:
        spec = {
            "stable": {"host": STABLE, "model": models[0]},
            "canary": {"host": CANARY, "model": models[1]},
            "trafficRouting": {"istio": {"virtualService": {"name": "llm"}, "routes": ["primary"]}},
            "stages": stages
            or [{"weight": 10, "duration": "2s"}, {"weight": 50, "duration": "2s"}, {"weight": 100}],
            "analysis": {
                "interval": "1s",
                "window": "5s",
                "minRequests": 20,
                "failureLimit": 0,
                "inconclusiveLimit": 60,
                "gates": [
                    {"name": "error-rate", "template": "istio-error-rate", "max": 0.02},
                    {"name": "p99-latency-ms", "template": "istio-latency-p99", "max": 1000},
                ],
                **analysis,
            },
        }
        if experiment is not None:
            spec["experiment"] = experiment
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }
        self.objects.create_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.PLURAL, body)

    def get(self) -> dict[str, Any]:
        got: dict[str, Any] = self.objects.get_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, self.name
        )
        return got

    def status(self) -> dict[str, Any]:
        return self.get().get("status") or {}

    def vs(self) -> dict[str, Any]:
        got: dict[str, Any] = self.objects.get_namespaced_custom_object(
            "networking.istio.io", "v1", self.namespace, "virtualservices", "llm"
        )
        return got

    def managed_route(self) -> dict[str, Any]:
        route: dict[str, Any] = next(r for r in self.vs()["spec"]["http"] if r.get("name") == "primary")
        return route

    def weights(self) -> tuple[int, int]:
        route = self.managed_route()["route"]
        by_host = {d["destination"]["host"]: d.get("weight", 100 if len(route) == 1 else 0) for d in route}
        return by_host.get(STABLE, 0), by_host.get(CANARY, 0)

    def edit_weights(self, stable: int, canary: int) -> None:
        """Set the managed route's weights by hand (kubectl, as a person would): drift for the operator."""
        edited = self.kubectl(
            "-n", self.namespace, "patch", "virtualservice", "llm", "--type=json", "-p",
            f'[{{"op":"replace","path":"/spec/http/1/route/1/weight","value":{canary}}},'
            f'{{"op":"replace","path":"/spec/http/1/route/0/weight","value":{stable}}}]',
        )  # fmt: skip
        assert edited.returncode == 0, edited.stderr

    def events(self) -> list[tuple[str, str, str]]:
        listed = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={self.name}"
        )
        # Event timestamps have one-second resolution; etcd's revision orders them exactly.
        ordered = sorted(listed.items, key=lambda e: int(e.metadata.resource_version))
        return [(e.type, e.reason, e.message) for e in ordered]

    def wait_reasons(self, *expected: str, timeout: float = 15.0) -> list[str]:
        """The Event reasons once every one of `expected` is among them. The operator posts Events after its
        VirtualService and status writes, so a test that saw those must still wait for the Events."""

        def arrived() -> list[str] | None:
            reasons = self.reasons()
            return reasons if all(reason in reasons for reason in expected) else None

        found: list[str] = wait_for(f"events {', '.join(expected)}", arrived, timeout)
        return found

    def gone(self) -> bool:
        """Whether the ModelRollout is gone (its finalizer done)."""
        try:
            self.get()
        except ApiException as missing:
            return missing.status == 404
        return False

    def vs_gone(self) -> bool:
        try:
            self.vs()
        except ApiException as missing:
            return missing.status == 404
        return False

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events()]

    def wait_status(
        self, what: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        def matching() -> dict[str, Any] | None:
            current = self.status()
            return current if predicate(current) else None

        try:
            result: dict[str, Any] = wait_for(what, matching, timeout)
        except AssertionError as timed_out:
            # Say where the rollout stood: a timeout alone does not tell a slow test from a wrong decision.
            status = self.status()
            gates = [(g.get("name"), g.get("verdict"), g.get("message")) for g in
                     (status.get("lastAnalysis") or {}).get("gates", [])]  # fmt: skip
            conditions = [(c.get("type"), c.get("reason")) for c in status.get("conditions", [])
                          if c.get("status") == "True"]  # fmt: skip
            raise AssertionError(
                f"{timed_out}; status: phase {status.get('phase')}, message {status.get('message')!r}, "
                f"gates {gates}, true conditions {conditions}"
            ) from None
        return result

    def wait_phase(self, phase: str, timeout: float = 30.0) -> dict[str, Any]:
        return self.wait_status(f"phase {phase}", lambda s: s.get("phase") == phase, timeout)

    def act(self, action: str) -> None:
        done = self.kubectl(
            "-n",
            self.namespace,
            "annotate",
            "--overwrite",
            "modelrollout",
            self.name,
            f"modelrollout.io/action={action}",
        )
        assert done.returncode == 0, done.stderr


@contextmanager
def prepared_rollout(
    api_client: client.ApiClient,
    kubectl: Kubectl,
    namespace: str,
    exporter: IstioTrafficExporter,
    *,
    synthetic_traffic: bool = True,
) -> Iterator[Rollout]:
    """Healthy traffic for both services in the exporter (unless `synthetic_traffic` is False: the test
    brings its own) and the VirtualService in place; the test creates the ModelRollout. Traffic stops
    afterwards."""
    if synthetic_traffic:
        exporter.set_traffic(CANARY, namespace, rps=RPS, error_ratio=0.0, latency_ms=200)
        exporter.set_traffic(STABLE, namespace, rps=RPS, error_ratio=0.0, latency_ms=200)
    subject = Rollout(api_client, kubectl, namespace)
    subject.create_vs()
    try:
        yield subject
    finally:
        exporter.stop_traffic(CANARY, namespace)
        exporter.stop_traffic(STABLE, namespace)


class ServedRollout:
    """A rollout on the simulated mesh: its two backends serve uniquely named models (the vLLM families are
    labelled by model only, and one mesh serves every test of a module); load goes to its host."""

    def __init__(self, rollout: Rollout, mesh: Simulator) -> None:
        self.rollout = rollout
        self.mesh = mesh
        suffix = uuid.uuid4().hex[:6]
        self.models = (f"gpt-4o-{suffix}", f"claude-{suffix}")
        self.host = f"llm.{rollout.namespace}.svc.cluster.local"
        self.stable_key = f"{rollout.namespace}/{STABLE}"
        self.canary_key = f"{rollout.namespace}/{CANARY}"
        for host, model in zip((STABLE, CANARY), self.models, strict=True):
            mesh.backends.update(host, rollout.namespace, model_name=model)
        self.loads = [self.host]

    def backend(self, host: str, **settings: Any) -> None:
        self.mesh.backends.update(host, self.rollout.namespace, **settings)

    def load(self, rps: float, host: str | None = None, **flow: Any) -> None:
        target = host or self.host
        if target not in self.loads:
            self.loads.append(target)
        self.mesh.set_load(target, rps, source_namespace=self.rollout.namespace, **flow)

    def stop(self) -> None:
        for host in self.loads:
            self.mesh.set_load(host, 0, source_namespace=self.rollout.namespace)


@contextmanager
def served_rollout(
    kind: Callable[[Rollout, Simulator], ServedT],
    api_client: client.ApiClient,
    kubectl: Kubectl,
    namespace: str,
    exporter: IstioTrafficExporter,
    mesh: Simulator,
) -> Iterator[ServedT]:
    """A `kind` of ServedRollout in the test's namespace, its load stopped and its rollouts removed after."""
    with prepared_rollout(api_client, kubectl, namespace, exporter, synthetic_traffic=False) as rollout:
        subject = kind(rollout, mesh)
        try:
            yield subject
        finally:
            subject.stop()
    remove_rollouts(api_client, namespace)


@contextmanager
def simulated_mesh(
    api_client: client.ApiClient, prometheus: PrometheusServer, job: str, seed: int = 11
) -> Iterator[Simulator]:
    """The simulated data plane, following every VirtualService, scraped by the session's Prometheus as
    `job`."""
    simulator = Simulator(api_client, None, seed=seed).start()
    assert simulator.wait_synced(30)
    prometheus.set_targets(job, [simulator.address])
    prometheus.wait_for_job_up(job)
    try:
        yield simulator
    finally:
        prometheus.remove_targets(job)
        simulator.stop()


@contextmanager
def serving_exporter(prometheus: PrometheusServer, job: str) -> Iterator[IstioTrafficExporter]:
    """Synthetic Istio metrics that the session's Prometheus scrapes as `job`; tests set each service's
    traffic."""
    serving = IstioTrafficExporter()
    prometheus.set_targets(job, [serving.address])
    prometheus.wait_for_job_up(job)
    try:
        yield serving
    finally:
        prometheus.remove_targets(job)
        serving.close()


def remove_rollouts(api_client: client.ApiClient, namespace: str) -> None:
    """Delete what a test left, so the next module's operator does not keep driving it (a namespace is never
    finalized here). The operator still running finishes the finalizers; any it could not are dropped."""
    objects = client.CustomObjectsApi(api_client)
    listed = objects.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL)
    for item in listed["items"]:
        objects.delete_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, item["metadata"]["name"]
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not objects.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL)["items"]:
            return
        time.sleep(0.2)
    for item in objects.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL)["items"]:
        objects.patch_namespaced_custom_object(
            api.GROUP,
            api.VERSION,
            namespace,
            api.PLURAL,
            item["metadata"]["name"],
            {"metadata": {"finalizers": []}},
        )
