"""One test's GitOps setup: a git repository holding a ModelRollout and its VirtualService, followed by a Flux
GitRepository and Kustomization in the test's namespace, and readers of what Flux says about it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelrollout import api
from modelrollout_dev.devenv.flux import FluxControllers
from modelrollout_dev.devenv.git_server import GitRepository
from scenario_support import CANARY, STABLE, Kubectl, Rollout, wait_for

SOURCE_GROUP, SOURCE_VERSION = "source.toolkit.fluxcd.io", "v1"
KUSTOMIZE_GROUP, KUSTOMIZE_VERSION = "kustomize.toolkit.fluxcd.io", "v1"
KUSTOMIZATION = "llm"
PATH = "apps/llm"
# What docs/gitops.md tells Flux users to put on the VirtualService: create it, then leave it alone.
IF_NOT_PRESENT = {"kustomize.toolkit.fluxcd.io/ssa": "IfNotPresent"}


@dataclass(frozen=True)
class Readiness:
    """The Kustomization's Ready condition, with the revisions it speaks of."""

    status: str
    reason: str
    message: str
    last_applied: str
    last_attempted: str


class Fleet:
    def __init__(
        self,
        api_client: client.ApiClient,
        kubectl: Kubectl,
        namespace: str,
        repository: GitRepository,
        flux: FluxControllers,
    ) -> None:
        self.objects = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.repository = repository
        self.flux = flux
        self.rollout = Rollout(api_client, kubectl, namespace)

    # ---- what Git holds ----

    def virtual_service(self, annotations: dict[str, str] | None = None) -> dict[str, Any]:
        """Both destinations listed, the canary at weight 0, as docs/gitops.md asks."""
        return {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "llm", "namespace": self.namespace, "annotations": dict(annotations or {})},
            "spec": {
                "hosts": ["llm"],
                "http": [
                    {
                        "name": "primary",
                        "timeout": "120s",
                        "route": [
                            {"destination": {"host": STABLE}, "weight": 100},
                            {"destination": {"host": CANARY}, "weight": 0},
                        ],
                    }
                ],
            },
        }

    def model_rollout(
        self,
        stable: tuple[str, str],
        canary: tuple[str, str],
        stages: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        return {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": self.rollout.name, "namespace": self.namespace},
            "spec": {
                "stable": {"host": stable[0], "model": stable[1]},
                "canary": {"host": canary[0], "model": canary[1]},
                "trafficRouting": {"istio": {"virtualService": {"name": "llm"}, "routes": ["primary"]}},
                "stages": stages
                or [{"weight": 10, "duration": "3s"}, {"weight": 50, "duration": "3s"}, {"weight": 100}],
                "analysis": {
                    "interval": "1s",
                    "window": "5s",
                    "minRequests": 20,
                    "failureLimit": 0,
                    "gates": [{"name": "error-rate", "template": "istio-error-rate", "max": 0.02}],
                },
            },
        }

    def commit(self, message: str, *, rollout: dict[str, Any], vs: dict[str, Any]) -> str:
        """Commit both manifests; the revision as Flux names it (`main@sha1:<id>`)."""
        sha = self.repository.commit(
            {
                f"{PATH}/virtualservice.yaml": yaml.safe_dump(vs, sort_keys=False),
                f"{PATH}/modelrollout.yaml": yaml.safe_dump(rollout, sort_keys=False),
            },
            message,
        )
        return f"main@sha1:{sha}"

    def phase(self) -> str | None:
        """The rollout's phase; None while it has none, or Flux has not created it yet."""
        if self.rollout.gone():
            return None
        phase: str | None = self.rollout.status().get("phase")
        return phase

    # ---- Flux's objects ----

    def follow(self, *, health_check: bool = True, interval: str = "2s", timeout: str = "4s") -> None:
        """Create the GitRepository (polled every second) and the Kustomization: applied every `interval`,
        re-tried as often, health-checked on the ModelRollout for at most `timeout` when `health_check`."""
        source = {
            "apiVersion": f"{SOURCE_GROUP}/{SOURCE_VERSION}",
            "kind": "GitRepository",
            "metadata": {"name": "fleet", "namespace": self.namespace},
            "spec": {"interval": "1s", "url": self.repository.url, "ref": {"branch": "main"}},
        }
        spec: dict[str, Any] = {
            "interval": interval,
            "retryInterval": interval,
            "timeout": timeout,
            "path": f"./{PATH}",
            "prune": True,
            "sourceRef": {"kind": "GitRepository", "name": "fleet"},
        }
        if health_check:
            spec["healthChecks"] = [
                {
                    "apiVersion": api.API_VERSION,
                    "kind": api.KIND,
                    "name": self.rollout.name,
                    "namespace": self.namespace,
                }
            ]
        kustomization = {
            "apiVersion": f"{KUSTOMIZE_GROUP}/{KUSTOMIZE_VERSION}",
            "kind": "Kustomization",
            "metadata": {"name": KUSTOMIZATION, "namespace": self.namespace},
            "spec": spec,
        }
        self.objects.create_namespaced_custom_object(
            SOURCE_GROUP, SOURCE_VERSION, self.namespace, "gitrepositories", source
        )
        self.objects.create_namespaced_custom_object(
            KUSTOMIZE_GROUP, KUSTOMIZE_VERSION, self.namespace, "kustomizations", kustomization
        )

    def kustomization(self) -> dict[str, Any]:
        got: dict[str, Any] = self.objects.get_namespaced_custom_object(
            KUSTOMIZE_GROUP, KUSTOMIZE_VERSION, self.namespace, "kustomizations", KUSTOMIZATION
        )
        return got

    def readiness(self) -> Readiness | None:
        status = self.kustomization().get("status") or {}
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
        if ready is None:
            return None
        return Readiness(
            status=ready["status"],
            reason=ready["reason"],
            message=ready["message"],
            last_applied=status.get("lastAppliedRevision", ""),
            last_attempted=status.get("lastAttemptedRevision", ""),
        )

    def wait_readiness(self, revision: str, status: str, reason: str, timeout: float = 60.0) -> Readiness:
        """Ready with `status` and `reason` for an attempt at `revision`."""

        def reached() -> Readiness | None:
            now = self.readiness()
            matches = now is not None and (now.status, now.reason, now.last_attempted) == (
                status,
                reason,
                revision,
            )
            return now if matches else None

        found: Readiness = wait_for(
            f"Kustomization Ready={status} ({reason}) at {revision}", reached, timeout
        )
        return found

    def reconciliations(self) -> int:
        """How many reconciliations of this Kustomization kustomize-controller finished (its own log): each
        builds the manifests, dry-runs them server-side, and applies what differs from the live objects."""
        marker = f'"Kustomization": {{"name":"{KUSTOMIZATION}","namespace":"{self.namespace}"}}'
        return sum(
            1
            for line in self.flux.log_text("kustomize-controller").splitlines()
            if "Reconciliation finished in" in line and marker in line
        )

    def remove(self) -> None:
        """Delete the Kustomization (Flux prunes what it applied) and the GitRepository, and wait until Flux
        has let go of both (its finalizers)."""
        for group, version, plural, name in (
            (KUSTOMIZE_GROUP, KUSTOMIZE_VERSION, "kustomizations", KUSTOMIZATION),
            (SOURCE_GROUP, SOURCE_VERSION, "gitrepositories", "fleet"),
        ):
            try:
                self.objects.delete_namespaced_custom_object(group, version, self.namespace, plural, name)
            except ApiException as error:
                if error.status != 404:
                    raise
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    self.objects.get_namespaced_custom_object(group, version, self.namespace, plural, name)
                except ApiException as error:
                    if error.status == 404:
                        break
                    raise
                time.sleep(0.2)
