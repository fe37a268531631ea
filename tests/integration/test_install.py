"""The ways to install the operator are real: the Helm chart lints and renders with a helm built from its Go
module; what it renders (default and namespaced values) and the kustomize base and overlay apply to the real
API server (server-side dry run, so every object passes the server's own validation and admission); the two
agree on RBAC and the pod's hardening; the CRD copies are the generated CRD.

The API server runs no controllers, so a dry run is as far as a Deployment can go here; kind is for users
with Docker (docs/install.md)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from install_support import CHART, HELM_MODULE, REPO, Manifest, render, run_helm
from modelrollout_dev.devenv.binaries import pinned_version
from modelrollout_dev.devenv.prometheus import PrometheusServer
from scenario_support import Kubectl

# A cold helm build (module download and compile) takes minutes; it happens in the first test that asks.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CRD_NAME = "modelrollout.io_modelrollouts.yaml"
CRD = REPO / "crds" / CRD_NAME
CRD_COPIES = (CHART / "crds" / CRD_NAME, REPO / "manifests" / "base" / "crds" / CRD_NAME)


def kustomize(kubectl: Kubectl, directory: str) -> list[Manifest]:
    built = kubectl("kustomize", str(REPO / directory))
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def one(objects: list[Manifest], kind: str, namespace: str | None = None) -> Manifest:
    found = [
        o
        for o in objects
        if o["kind"] == kind and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"{len(found)} {kind} in {namespace or 'any namespace'}"
    return found[0]


def kinds(objects: list[Manifest]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def dry_run_apply(kubectl: Kubectl, objects: list[Manifest]) -> list[str]:
    """`kubectl apply --dry-run=server`: the API server validates, defaults and admits every object, and
    stores nothing. Where the namespace asks for Pod Security warnings, a pod template that breaks the
    `restricted` profile is warned about: that counts as a failure. Returns the server's lines, one per
    object."""
    applied = kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(objects))
    assert applied.returncode == 0, applied.stderr
    assert "would violate PodSecurity" not in applied.stderr, applied.stderr
    lines = applied.stdout.strip().splitlines()
    assert len(lines) == len(objects), applied.stdout
    assert all(line.endswith("(server dry run)") for line in lines), applied.stdout
    return lines


def warn_unless_restricted(kubectl: Kubectl, namespace: str) -> None:
    """Pod Security admission then checks every pod template applied in `namespace` against the
    `restricted` profile (the API server's own check, the one kubelet-side enforcement uses)."""
    labelled = kubectl(
        "label", "--overwrite", "namespace", namespace, "pod-security.kubernetes.io/warn=restricted"
    )
    assert labelled.returncode == 0, labelled.stderr


def ensure_namespace(kubectl: Kubectl, namespace: Manifest) -> None:
    """A dry run cannot create objects in a namespace that does not exist: the namespace is created for
    real (namespaces are never finalized here, so an existing one is reused, never deleted)."""
    applied = kubectl("apply", "-f", "-", input=yaml.safe_dump(namespace))
    assert applied.returncode == 0, applied.stderr


@pytest.fixture
def other_namespaces(api_client: client.ApiClient, namespace: str) -> Iterator[list[str]]:
    names = [f"{namespace}-a", f"{namespace}-b"]
    core = client.CoreV1Api(api_client)
    for name in names:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield names
    for name in names:
        core.delete_namespace(name)


def operator_container(deployment: Manifest) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    container: Manifest = containers[0]
    return container


def flag_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == flag]


# ---- helm itself ----


def test_helm_is_the_pinned_build_and_make_uses_the_same(helm: Path) -> None:
    shown = run_helm(helm, "version", "--template", "{{ .Version }}")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == pinned_version(HELM_MODULE, "helm.sh/helm/v3")
    # `make helm` builds into the very same cache directory, so either one serves the other.
    path = subprocess.run(
        ["make", "-s", "--no-print-directory", "helm-path"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert path.returncode == 0, path.stderr
    assert path.stdout.strip() == str(helm)


@pytest.mark.parametrize(
    "values",
    [
        [],
        [
            "--set",
            "watchNamespaces={llm,llm-eval}",
            "--set",
            "notifySecretName=webhook",
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "prometheusUrl=http://prometheus.monitoring:9090",
        ],
        ["--set", "judge.enabled=true", "--set", "judge.secrets={llm/judge-key}"],
        [
            "--set",
            "alerts.enabled=true",
            "--set",
            "alerts.tokenSecretName=t",
            "--set",
            "alerts.prometheusRule.enabled=true",
        ],
    ],
    ids=["defaults", "namespaced", "judge", "alerts"],
)
def test_chart_lints(helm: Path, values: list[str]) -> None:
    linted = run_helm(helm, "lint", "--strict", str(CHART), *values)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in linted.stdout


def test_crd_copies_are_the_generated_crd() -> None:
    """One source: crds/ is generated from the models; `make chart-crds` copies it where Helm and kustomize
    can read it."""
    generated = CRD.read_bytes()
    for copy in CRD_COPIES:
        assert copy.read_bytes() == generated, f"{copy} differs from {CRD}: run `make chart-crds`"


# ---- the chart against the API server ----


def test_chart_with_defaults_applies_to_the_api_server(helm: Path, kubectl: Kubectl, namespace: str) -> None:
    objects = render(helm, namespace, "--set", "prometheusUrl=http://prometheus.monitoring:9090")
    assert kinds(objects) == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]

    deployment = one(objects, "Deployment")
    spec = deployment["spec"]
    assert (spec["replicas"], spec["strategy"]) == (1, {"type": "Recreate"})
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(deployment)
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    args = container["args"]
    assert flag_values(args, "--liveness") == ["http://0.0.0.0:8080/healthz"]
    assert flag_values(args, "--prometheus-url") == ["http://prometheus.monitoring:9090"]
    assert flag_values(args, "--namespace") == []
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # noqa: S108 - the pod's /tmp
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]

    service = one(objects, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    binding = one(objects, "ClusterRoleBinding")
    account = one(objects, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": namespace}
    ]
    assert pod["serviceAccountName"] == account["metadata"]["name"]

    warn_unless_restricted(kubectl, namespace)
    lines = dry_run_apply(kubectl, objects)
    assert any(line.startswith("deployment.apps/") for line in lines)


def test_chart_with_watched_namespaces_applies_to_the_api_server(
    helm: Path, kubectl: Kubectl, namespace: str, other_namespaces: list[str]
) -> None:
    watched = ",".join(other_namespaces)
    objects = render(
        helm, namespace, "--set", f"watchNamespaces={{{watched}}}", "--set", "notifySecretName=webhook"
    )
    assert "ClusterRole" not in kinds(objects)
    assert "ClusterRoleBinding" not in kinds(objects)
    account = one(objects, "ServiceAccount")["metadata"]["name"]
    cluster_rules = one(render(helm, namespace), "ClusterRole")["rules"]
    for watched_namespace in other_namespaces:
        role = one(objects, "Role", watched_namespace)
        # The same rules as cluster-wide, less the CRD watch that only a ClusterRole can grant.
        assert role["rules"] == [r for r in cluster_rules if r["apiGroups"] != ["apiextensions.k8s.io"]]
        binding = one(objects, "RoleBinding", watched_namespace)
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
    # The notification Secret: get on that one name, in the operator's own namespace.
    notify = one(objects, "Role", namespace)
    assert notify["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["webhook"], "verbs": ["get"]}
    ]
    container = operator_container(one(objects, "Deployment"))
    assert flag_values(container["args"], "--namespace") == other_namespaces
    assert {"name": "MODELROLLOUT_NOTIFY_SECRET", "value": "webhook"} in container["env"]

    warn_unless_restricted(kubectl, namespace)
    dry_run_apply(kubectl, objects)


def secret_rules(role: Manifest) -> list[Manifest]:
    return [r for r in role["rules"] if "secrets" in r["resources"]]


def test_the_chart_reads_only_the_secrets_it_is_told_about(
    helm: Path, kubectl: Kubectl, namespace: str, other_namespaces: list[str]
) -> None:
    """No Secret by default; a bare name is readable where rollouts are watched, NAMESPACE/NAME only in that
    namespace, and never any other Secret (resourceNames)."""
    defaults = render(helm, namespace)
    assert all(not secret_rules(o) for o in defaults if o["kind"] in ("ClusterRole", "Role"))

    team = other_namespaces[0]
    objects = render(
        helm,
        namespace,
        "--set",
        f"rbac.prometheusSecrets={{prometheus-auth,{team}/team-prometheus,{team}/team-thanos}}",
        "--set",
        "prometheusCredentialsAllow={https://thanos.example.com}",
    )
    assert secret_rules(one(objects, "ClusterRole")) == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["prometheus-auth"], "verbs": ["get"]}
    ]
    assert one(objects, "Role", team)["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["team-prometheus", "team-thanos"],
            "verbs": ["get"],
        }
    ]
    binding = one(objects, "RoleBinding", team)
    assert binding["roleRef"]["name"] == one(objects, "Role", team)["metadata"]["name"]
    account = one(objects, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
    args = operator_container(one(objects, "Deployment"))["args"]
    assert flag_values(args, "--prometheus-credentials-allow") == ["https://thanos.example.com"]
    dry_run_apply(kubectl, objects)

    # Watching namespaces: the bare name in each watched namespace's Role, nothing cluster-wide.
    watched = render(
        helm, namespace, "--set", f"watchNamespaces={{{team}}}", "--set", "rbac.prometheusSecrets={p-auth}"
    )
    [role] = [o for o in watched if o["kind"] == "Role" and o["metadata"]["namespace"] == team]
    assert secret_rules(role) == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["p-auth"], "verbs": ["get"]}
    ]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("rbac.prometheusSecrets=true", "no longer true/false"),
        ("rbac.prometheusSecrets={a/b/c}", "neither NAME nor NAMESPACE/NAME"),
        ("rbac.prometheusSecrets={llm/}", "neither NAME nor NAMESPACE/NAME"),
    ],
)
def test_the_chart_refuses_secret_access_it_cannot_scope(helm: Path, value: str, says: str) -> None:
    rendered = run_helm(helm, "template", "modelrollout", str(CHART), "--set", value)
    assert rendered.returncode != 0
    assert says in rendered.stderr


def operator_args(objects: list[Manifest]) -> list[str]:
    deployment = one(objects, "Deployment")
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_a_shard_is_one_release_with_its_flag_and_lease(helm: Path, namespace: str) -> None:
    unsharded = operator_args(render(helm, namespace, "--set", "replicas=2"))
    assert "--shard" not in unsharded
    sharded = operator_args(
        render(helm, namespace, "--set", "shard=team-a", "--set", "replicas=2", release="team-a")
    )
    assert sharded[sharded.index("--shard") + 1] == "team-a"
    # Each release's replicas elect their leader on a Lease named after the release: one per shard.
    leases = [args[args.index("--leader-election-id") + 1] for args in (unsharded, sharded)]
    assert leases == ["modelrollout-modelrollout-operator", "team-a-modelrollout-operator"]


@pytest.mark.parametrize("shard", ["Team-A", "-a", "a_b", "a" * 41])
def test_the_chart_refuses_a_shard_name_the_operator_would_refuse(helm: Path, shard: str) -> None:
    rendered = run_helm(helm, "template", "modelrollout", str(CHART), "--set", f"shard={shard}")
    assert rendered.returncode != 0
    assert f"shard \"{shard}\": lowercase letters, digits and '-'" in rendered.stderr


def test_service_monitor_renders_for_the_metrics_service(helm: Path, namespace: str) -> None:
    """The API server here has no ServiceMonitor CRD (it comes with the Prometheus Operator), so the
    ServiceMonitor is checked for shape and for selecting the metrics Service, not applied."""
    assert "ServiceMonitor" not in kinds(render(helm, namespace))
    objects = render(
        helm, namespace, "--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.interval=15s"
    )
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == namespace
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [namespace]}
    service = one(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]


def test_the_alert_receiver_renders_with_its_service_token_and_rule(
    helm: Path, kubectl: Kubectl, namespace: str, prometheus: PrometheusServer
) -> None:
    """Off by default; on, the operator serves /alerts behind a Service of its own, takes its token from the
    Secret named, and the PrometheusRule's expression is one the real Prometheus accepts."""
    default = render(helm, namespace)
    assert "--alerts-port" not in operator_container(one(default, "Deployment"))["args"]
    assert "PrometheusRule" not in kinds(default)
    objects = render(
        helm, namespace, "--set", "alerts.enabled=true", "--set", "alerts.tokenSecretName=alerts-token",
        "--set", "alerts.prometheusRule.enabled=true", "--set", "alerts.prometheusRule.errorRatio=0.1",
    )  # fmt: skip
    container = operator_container(one(objects, "Deployment"))
    assert flag_values(container["args"], "--alerts-port") == ["8081"]
    assert {"name": "alerts", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    token = next(e for e in container["env"] if e["name"] == "MODELROLLOUT_ALERTS_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "alerts-token", "key": "token"}
    services = {s["metadata"]["name"]: s for s in objects if s["kind"] == "Service"}
    alerts = next(s for name, s in services.items() if name.endswith("-alerts"))
    assert alerts["spec"]["ports"] == [
        {"name": "alerts", "port": 8081, "targetPort": "alerts", "protocol": "TCP"}
    ]
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert alerts["spec"]["selector"].items() <= pod_labels.items()
    rule = one(objects, "PrometheusRule")["spec"]["groups"][0]["rules"][0]
    assert rule["expr"].endswith("> 0.1")
    parsed = prometheus.api_get("/api/v1/query", {"query": rule["expr"]})
    assert parsed["status"] == "success", parsed
    # The API server here has no PrometheusRule CRD (it comes with the Prometheus Operator).
    dry_run_apply(kubectl, [o for o in objects if o["kind"] != "PrometheusRule"])


# ---- kustomize against the API server ----


def test_kustomize_base_applies_to_the_api_server(kubectl: Kubectl) -> None:
    objects = kustomize(kubectl, "manifests/base")
    assert kinds(objects) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "Namespace",
        "Service",
        "ServiceAccount",
    ]
    crd = one(objects, "CustomResourceDefinition")
    generated = yaml.safe_load(CRD.read_text())
    assert crd["spec"] == generated["spec"]
    namespace = one(objects, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/warn"] == "restricted"
    ensure_namespace(kubectl, namespace)
    dry_run_apply(kubectl, objects)


def test_kustomize_namespaced_overlay_applies_to_the_api_server(kubectl: Kubectl) -> None:
    objects = kustomize(kubectl, "manifests/overlays/namespaced")
    assert "ClusterRole" not in kinds(objects)
    assert "ClusterRoleBinding" not in kinds(objects)
    role = one(objects, "Role", "llm")
    binding = one(objects, "RoleBinding", "llm")
    assert binding["subjects"][0]["namespace"] == "modelrollout-system"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    args = operator_container(one(objects, "Deployment"))["args"]
    assert flag_values(args, "--namespace") == ["llm"]
    ensure_namespace(kubectl, one(objects, "Namespace"))
    ensure_namespace(kubectl, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "llm"}})
    dry_run_apply(kubectl, objects)


def test_kustomize_and_chart_agree(helm: Path, kubectl: Kubectl) -> None:
    """Two ways to install, one operator: the same RBAC rules and the same hardened pod."""
    chart = render(helm, "modelrollout-system")
    chart_namespaced = render(helm, "modelrollout-system", "--set", "watchNamespaces={llm}")
    base = kustomize(kubectl, "manifests/base")
    overlay = kustomize(kubectl, "manifests/overlays/namespaced")
    assert one(base, "ClusterRole")["rules"] == one(chart, "ClusterRole")["rules"]
    assert one(overlay, "Role", "llm")["rules"] == one(chart_namespaced, "Role", "llm")["rules"]

    chart_deployment, base_deployment = one(chart, "Deployment"), one(base, "Deployment")
    assert base_deployment["spec"]["strategy"] == chart_deployment["spec"]["strategy"]
    chart_pod, base_pod = (
        chart_deployment["spec"]["template"]["spec"],
        base_deployment["spec"]["template"]["spec"],
    )
    for key in ("securityContext", "volumes", "terminationGracePeriodSeconds"):
        assert base_pod[key] == chart_pod[key], key
    chart_container, base_container = (
        operator_container(chart_deployment),
        operator_container(base_deployment),
    )
    for key in (
        "securityContext",
        "livenessProbe",
        "readinessProbe",
        "resources",
        "ports",
        "volumeMounts",
        "args",
        "env",
    ):
        assert base_container[key] == chart_container[key], key


def test_grafana_dashboard_ships_with_the_chart(helm: Path, kubectl: Kubectl, namespace: str) -> None:
    assert "ConfigMap" not in kinds(render(helm, namespace))  # opt-in
    objects = render(helm, namespace, "--set", "grafanaDashboard.enabled=true")
    dashboard = one(objects, "ConfigMap", namespace)
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (CHART / "dashboards" / "modelrollout.json").read_text()
    assert json.loads(dashboard["data"]["modelrollout.json"]) == json.loads(shipped)
    assert dry_run_apply(kubectl, [dashboard])


def test_the_chart_grants_envoyfilters_only_when_told(helm: Path, namespace: str) -> None:
    """An EnvoyFilter runs code in every sidecar of its namespace: the right to write one is opt-in."""

    def filter_rules(objects: list[Manifest]) -> list[Manifest]:
        return [r for r in one(objects, "ClusterRole")["rules"] if "envoyfilters" in r["resources"]]

    assert filter_rules(render(helm, namespace)) == []
    assert filter_rules(render(helm, namespace, "--set", "rbac.bucketFilters=true")) == [
        {
            "apiGroups": ["networking.istio.io"],
            "resources": ["envoyfilters"],
            "verbs": ["get", "create", "patch", "delete"],
        }
    ]


def test_the_judge_is_off_by_default_and_read_only_when_on(
    helm: Path, kubectl: Kubectl, namespace: str, other_namespaces: list[str]
) -> None:
    """The judge service gets its own ServiceAccount: reading rollouts and evaluation sets, the key Secrets it
    is told about and nothing else; its pods are not selected by the operator's Services."""
    assert not [o for o in render(helm, namespace) if "judge" in o["metadata"]["name"]]

    team = other_namespaces[0]
    objects = render(
        helm, namespace, "--set", "judge.enabled=true", "--set", f"judge.secrets={{{team}/judge-key}}"
    )
    judge = [
        o for o in objects if o["metadata"]["name"].endswith("-judge") or "-judge-" in o["metadata"]["name"]
    ]
    role = one(judge, "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": ["modelrollout.io"], "resources": ["modelrollouts"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
    ]
    account = one(judge, "ServiceAccount")["metadata"]["name"]
    assert one(judge, "ClusterRoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": namespace}
    ]
    assert one(judge, "Role", team)["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["judge-key"], "verbs": ["get"]}
    ]
    deployment = one(judge, "Deployment")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert (container["command"], container["args"]) == (["modelrollout", "judge"], ["--port", "8090"])
    assert pod["spec"]["serviceAccountName"] == account
    operator_services = [o for o in objects if o["kind"] == "Service" and o not in judge]
    labels = pod["metadata"]["labels"]
    for service in operator_services:
        selector = service["spec"]["selector"]
        assert not all(labels.get(k) == v for k, v in selector.items()), service["metadata"]["name"]
    assert one(judge, "Service")["spec"]["selector"].items() <= labels.items()
    dry_run_apply(kubectl, objects)

    watched = render(helm, namespace, "--set", "judge.enabled=true", "--set", f"watchNamespaces={{{team}}}")
    judge_watched = [o for o in watched if "-judge" in o["metadata"]["name"]]
    assert not [o for o in judge_watched if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    assert one(judge_watched, "Role", team)["rules"] == role["rules"]
    assert one(judge_watched, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "--port",
        "8090",
        "--namespace",
        team,
    ]

    patterns = render(
        helm,
        namespace,
        "--set",
        "judge.enabled=true",
        "--set-json",
        'judge.redactPatterns=["\\\\bACME-\\\\d{6}\\\\b", "order #\\\\d+"]',
    )
    (args,) = {
        tuple(o["spec"]["template"]["spec"]["containers"][0]["args"])
        for o in patterns
        if o["kind"] == "Deployment" and "-judge" in o["metadata"]["name"]
    }
    assert args == ("--port", "8090", "--redact", "\\bACME-\\d{6}\\b", "--redact", "order #\\d+")


def test_the_variant_label_telemetry_is_off_by_default_and_the_plain_manifest_matches_the_chart(
    helm: Path, kubectl: Kubectl, namespace: str
) -> None:
    assert not [o for o in render(helm, namespace) if o["kind"] == "Telemetry"]
    [mesh_wide] = [
        o for o in render(helm, namespace, "--set", "variantLabel.enabled=true") if o["kind"] == "Telemetry"
    ]
    plain = yaml.safe_load((REPO / "manifests" / "optional" / "telemetry-variant-label.yaml").read_text())
    assert (plain["metadata"]["name"], plain["metadata"]["namespace"]) == (
        "modelrollout-variant",
        "istio-system",
    )
    assert (mesh_wide["metadata"]["name"], mesh_wide["metadata"]["namespace"]) == (
        plain["metadata"]["name"],
        plain["metadata"]["namespace"],
    )
    assert plain["spec"] == mesh_wide["spec"]
    # Istio's own schema accepts it (in a namespace that exists here)
    in_namespace = {**plain, "metadata": {**plain["metadata"], "namespace": namespace}}
    dry_run_apply(kubectl, [in_namespace])
