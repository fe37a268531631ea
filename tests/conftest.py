"""Session fixtures: one real control plane (etcd + kube-apiserver + Istio CRDs) and one real Prometheus per
test session, a fresh namespace per test.

They start only when a test asks for them, so the unit tier runs without them. When they cannot start, the
tests that need them error with the reason; nothing is skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from modelrollout.kubeclient import KubeClient, Kubeconfig
from modelrollout_dev.devenv.environment import DevEnvironment, EnvironmentState, runs_root
from modelrollout_dev.devenv.established import wait_established
from modelrollout_dev.devenv.gitops import GitopsTool, gitops_tool
from modelrollout_dev.devenv.prometheus import PrometheusServer
from modelrollout_dev.sim.istio_exporter import IstioTrafficExporter
from scenario_support import Kubectl, OperatorProcess, serving_exporter

_started: dict[str, Any] = {}


@pytest.fixture(scope="session")
def dev_env(request: pytest.FixtureRequest) -> Iterator[DevEnvironment]:
    environment = DevEnvironment(runs_root() / f"pytest-{os.getpid()}", detached=False)
    environment.start(log=lambda message: print(f"[dev env] {message}"))
    _started["environment"] = environment
    yield environment
    environment.stop()
    failed = request.session.testsfailed
    if failed:
        print(f"\n[dev env] {failed} test(s) failed; logs kept in {environment.run_dir / 'logs'}")
    else:
        environment.remove()


@pytest.fixture(scope="session")
def env_state(dev_env: DevEnvironment) -> EnvironmentState:
    assert dev_env.state is not None
    return dev_env.state


@pytest.fixture(scope="session")
def prometheus(dev_env: DevEnvironment) -> PrometheusServer:
    assert dev_env.prometheus is not None
    return dev_env.prometheus


@pytest.fixture(scope="session")
def api_client(env_state: EnvironmentState) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=env_state.kubeconfig)
    yield api
    api.close()


@pytest.fixture(scope="session")
def kube_client(env_state: EnvironmentState) -> KubeClient:
    """The operator's own client against the control plane (one session per event loop that uses it)."""
    credentials = Kubeconfig.load([Path(env_state.kubeconfig)]).credentials()
    return KubeClient(credentials, user_agent="modelrollout-tests")


@pytest.fixture(scope="session")
def kubectl(env_state: EnvironmentState) -> Kubectl:
    """Run the control plane's own kubectl against it; returns the completed process (never raises)."""

    def run(
        *args: str, input: str | None = None, kubeconfig: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [env_state.kubectl, f"--kubeconfig={kubeconfig or env_state.kubeconfig}", *args]
        return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=60, check=False)

    return run


@pytest.fixture(scope="session")
def modelrollout_crd(kubectl: Kubectl, env_state: EnvironmentState) -> str:
    """The generated ModelRollout CRD from crds/, installed once per session and served."""
    crd = Path(__file__).resolve().parents[1] / "crds" / "modelrollout.io_modelrollouts.yaml"
    applied = kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    assert applied.returncode == 0, applied.stderr
    established = wait_established([env_state.kubectl, f"--kubeconfig={env_state.kubeconfig}"], crd)
    assert established.returncode == 0, established.stderr
    return str(crd)


@pytest.fixture(scope="session")
def gitops() -> GitopsTool:
    """The GitOps readers (kstatus, Argo CD's Lua runtime), built from gomod/gitops once and cached. A build
    that fails errors every test that needs them, with the compiler's output."""
    return gitops_tool(log=lambda message: print(f"[gitops readers] {message}"))


@pytest.fixture(scope="module")
def exporter(prometheus: PrometheusServer) -> Iterator[IstioTrafficExporter]:
    """Synthetic Istio metrics the session's Prometheus scrapes; tests set each service's traffic."""
    with serving_exporter(prometheus, "scenario-istio") as serving:
        yield serving


@pytest.fixture(scope="module")
def operator(
    env_state: EnvironmentState, prometheus: PrometheusServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """`modelrollout run` as a process against the session's control plane and Prometheus, per module."""
    process = OperatorProcess(env_state, prometheus.url, tmp_path_factory.mktemp("operator"))
    process.start()
    yield process
    process.stop()


@pytest.fixture
def namespace(request: pytest.FixtureRequest, api_client: client.ApiClient) -> Iterator[str]:
    """A namespace of its own for each test. Without a controller-manager a deleted namespace is never
    finalized, so names are unique rather than reused."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    name = f"{slug}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    environment: DevEnvironment | None = _started.get("environment")
    if environment is None or environment.state is None:
        return
    state = environment.state
    timings = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in state.started_seconds.items())
    terminalreporter.write_sep("-", "local environment")
    terminalreporter.write_line(f"start: {timings}")
    terminalreporter.write_line(f"binaries: {state.binaries_source}")
