"""The control plane is real: a kube-apiserver that reports its version, serves Istio's own CRDs, validates
VirtualServices with Istio's schema, and enforces RBAC."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from modelrollout_dev.devenv.binaries import kubernetes_version
from modelrollout_dev.devenv.environment import EnvironmentState
from scenario_support import Kubectl

pytestmark = pytest.mark.integration


def virtual_service(name: str, namespace: str, weights: tuple[Any, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "hosts": ["llm"],
            "http": [
                {
                    "name": "primary",
                    "timeout": "30s",
                    "route": [
                        {"destination": {"host": "llm-gpt4o"}, "weight": weights[0]},
                        {"destination": {"host": "llm-claude"}, "weight": weights[1]},
                    ],
                }
            ],
        },
    }


def test_api_server_reports_its_version(api_client: client.ApiClient, kubectl: Kubectl) -> None:
    info = client.VersionApi(api_client).get_code()
    if os.environ.get("KUBEBUILDER_ASSETS"):
        assert info.major == "1"
    else:
        assert info.git_version == kubernetes_version()
        assert (info.major, info.minor) == ("1", kubernetes_version().split(".")[1])
    shown = kubectl("version", "-o", "yaml")
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["serverVersion"]["gitVersion"] == info.git_version


@pytest.mark.parametrize(
    "crd", ["virtualservices.networking.istio.io", "destinationrules.networking.istio.io"]
)
def test_istio_crds_are_established_with_every_served_version(api_client: client.ApiClient, crd: str) -> None:
    found = client.ApiextensionsV1Api(api_client).read_custom_resource_definition(crd)
    conditions = {c.type: c.status for c in found.status.conditions}
    assert conditions["Established"] == "True"
    served = sorted(v.name for v in found.spec.versions if v.served)
    assert served == ["v1", "v1alpha3", "v1beta1"]
    schema = next(v for v in found.spec.versions if v.name == "v1").schema.open_apiv3_schema
    assert "spec" in schema.properties  # Istio's real schema, not a permissive stand-in


def test_valid_virtual_service_applies_and_reads_back(
    namespace: str, kubectl: Kubectl, api_client: client.ApiClient
) -> None:
    manifest = virtual_service("llm", namespace, (90, 10))
    applied = kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    assert applied.returncode == 0, applied.stderr
    live = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        "networking.istio.io", "v1", namespace, "virtualservices", "llm"
    )
    route = live["spec"]["http"][0]
    assert [d["weight"] for d in route["route"]] == [90, 10]
    assert route["timeout"] == "30s"
    # The same object is served under the older versions too, as a mesh with v1beta1 clients sees it.
    old = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        "networking.istio.io", "v1beta1", namespace, "virtualservices", "llm"
    )
    assert old["spec"]["http"][0]["route"][1]["weight"] == 10


def test_istio_schema_rejects_a_string_weight(
    namespace: str, kubectl: Kubectl, api_client: client.ApiClient
) -> None:
    manifest = virtual_service("bad", namespace, ("90", 10))
    applied = kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    assert applied.returncode != 0
    assert "spec.http[0].route[0].weight in body must be of type integer" in applied.stderr

    with pytest.raises(ApiException) as refused:
        client.CustomObjectsApi(api_client).create_namespaced_custom_object(
            "networking.istio.io", "v1", namespace, "virtualservices", manifest
        )
    assert refused.value.status == 422
    assert (
        "spec.http[0].route[0].weight in body must be of type integer"
        in json.loads(refused.value.body)["message"]
    )


def test_istio_schema_rejects_an_unknown_field(namespace: str, api_client: client.ApiClient) -> None:
    manifest = virtual_service("typo", namespace, (50, 50))
    manifest["spec"]["http"][0]["route"][0]["wieght"] = 50
    with pytest.raises(ApiException) as refused:
        client.CustomObjectsApi(api_client).create_namespaced_custom_object(
            "networking.istio.io", "v1", namespace, "virtualservices", manifest, field_validation="Strict"
        )
    assert refused.value.status == 400  # strict field validation answers BadRequest, not Invalid
    assert 'unknown field "spec.http[0].route[0].wieght"' in json.loads(refused.value.body)["message"]


def _grant_virtual_service_reader(kubectl: Kubectl, namespace: str) -> None:
    manifests = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "reader", "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "vs-reader", "namespace": namespace},
            "rules": [
                {
                    "apiGroups": ["networking.istio.io"],
                    "resources": ["virtualservices"],
                    "verbs": ["get", "list"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "vs-reader", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "vs-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    ]
    applied = kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))
    assert applied.returncode == 0, applied.stderr


def test_rbac_limits_an_impersonated_service_account(
    namespace: str, kubectl: Kubectl, api_client: client.ApiClient
) -> None:
    _grant_virtual_service_reader(kubectl, namespace)
    other = f"{namespace}-other"
    client.CoreV1Api(api_client).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=other))
    )
    assert (
        kubectl(
            "apply", "-f", "-", input=yaml.safe_dump(virtual_service("llm", namespace, (100, 0)))
        ).returncode
        == 0
    )
    as_reader = f"--as=system:serviceaccount:{namespace}:reader"

    allowed = kubectl(as_reader, "-n", namespace, "get", "virtualservices", "-o", "name")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.strip() == "virtualservice.networking.istio.io/llm"

    patched = kubectl(
        as_reader,
        "-n",
        namespace,
        "patch",
        "virtualservice",
        "llm",
        "--type=json",
        "-p",
        '[{"op":"replace","path":"/spec/http/0/route/0/weight","value":50}]',
    )
    assert patched.returncode != 0
    assert (
        f'User "system:serviceaccount:{namespace}:reader" cannot patch resource "virtualservices" '
        f'in API group "networking.istio.io" in the namespace "{namespace}"'
    ) in patched.stderr

    elsewhere = kubectl(as_reader, "-n", other, "get", "virtualservices")
    assert elsewhere.returncode != 0
    assert "forbidden" in elsewhere.stderr
    client.CoreV1Api(api_client).delete_namespace(other)


def test_rbac_limits_a_service_account_token(
    namespace: str, kubectl: Kubectl, env_state: EnvironmentState, tmp_path: Any
) -> None:
    """The token path: the API server signs a bound token (TokenRequest) and authenticates it back."""
    _grant_virtual_service_reader(kubectl, namespace)
    issued = kubectl("-n", namespace, "create", "token", "reader", "--duration=10m")
    assert issued.returncode == 0, issued.stderr
    admin = yaml.safe_load(open(env_state.kubeconfig))  # noqa: SIM115
    cluster = admin["clusters"][0]
    token_config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "reader", "user": {"token": issued.stdout.strip()}}],
        "contexts": [{"name": "reader", "context": {"cluster": cluster["name"], "user": "reader"}}],
        "current-context": "reader",
    }
    path = tmp_path / "reader.kubeconfig"
    path.write_text(yaml.safe_dump(token_config))

    whoami = kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=str(path))
    assert whoami.returncode == 0, whoami.stderr
    assert whoami.stdout == f"system:serviceaccount:{namespace}:reader"
    assert kubectl("-n", namespace, "get", "virtualservices", kubeconfig=str(path)).returncode == 0
    denied = kubectl("-n", namespace, "get", "secrets", kubeconfig=str(path))
    assert denied.returncode != 0
    assert 'cannot list resource "secrets"' in denied.stderr
