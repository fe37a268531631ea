"""Fixtures of the gitops tier: GitOps tools' own code against the real API server, Prometheus and the
operator as a process. Flux's source-controller and kustomize-controller (built from their Go modules,
cached) run for the whole session; each test commits to a git repository of its own, served on loopback,
that a GitRepository and a Kustomization in the test's namespace follow. Part of `make test`;
`make test-gitops` runs it alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flux_fleet import Fleet
from kubernetes import client

from modelrollout_dev.devenv.environment import DevEnvironment, EnvironmentState
from modelrollout_dev.devenv.established import wait_established
from modelrollout_dev.devenv.flux import FluxControllers, ensure_flux
from modelrollout_dev.devenv.git_server import GitRepository
from scenario_support import Kubectl, OperatorProcess, mark_tier


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, Path(__file__).parent, pytest.mark.integration, pytest.mark.gitops)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gitops: GitOps tools' own code driving and reading rollouts")


@pytest.fixture(scope="session")
def flux(dev_env: DevEnvironment, env_state: EnvironmentState, kubectl: Kubectl) -> Iterator[FluxControllers]:
    """Flux's controllers, their CRDs installed. A build or start that fails errors every test that needs
    them, with the reason."""
    binaries = ensure_flux(log=lambda message: print(f"[flux] {message}"))
    for crd in binaries.crds:
        applied = kubectl("apply", "--server-side", "-f", str(crd))
        assert applied.returncode == 0, applied.stderr
    for crd in binaries.crds:
        established = wait_established([env_state.kubectl, f"--kubeconfig={env_state.kubeconfig}"], crd)
        assert established.returncode == 0, established.stderr
    controllers = FluxControllers(binaries, env_state.kubeconfig, dev_env.run_dir, dev_env.processes)
    controllers.start()
    yield controllers
    controllers.stop()


@pytest.fixture
def fleet(
    flux: FluxControllers,
    api_client: client.ApiClient,
    kubectl: Kubectl,
    namespace: str,
    modelrollout_crd: str,
    operator: OperatorProcess,
    tmp_path: Path,
) -> Iterator[Fleet]:
    """A git repository of the test's own and the Flux objects that follow it; the Kustomization is created by
    `fleet.follow(...)` once the first commit is made. Flux's objects (and with them, by pruning, what they
    applied) are deleted afterwards while the operator still runs."""
    repository = GitRepository(tmp_path / "git").start()
    subject = Fleet(api_client, kubectl, namespace, repository, flux)
    try:
        yield subject
    finally:
        subject.remove()
        repository.stop()
