"""The Istio EnvoyFilter that computes a user's sticky bucket in the mesh (`stickiness.userHeader`).

One filter per rollout, in the rollout's namespace, named after it. Its single patch inserts the Lua filter
of `bucket_lua` into the HTTP connection manager of the outbound listeners of every client sidecar in that
namespace, just before the router: the bucket header is set before Envoy picks the route (the Lua also
clears the route cache, for Envoy versions that chose it earlier). The Lua acts only on requests to the
VirtualService's hosts, in the forms a client in the namespace may call them (`chat`, `chat.llm`,
`chat.llm.svc`, `chat.llm.svc.cluster.local`), so other services' requests pass unchanged.

The filter is owned by the ModelRollout (ownerReference, so Kubernetes' garbage collector removes it with the
rollout even if the operator is not running) and labelled as the operator's. Pure: builds objects, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelrollout import api
from modelrollout.routing.bucket_lua import bucket_filter_lua

GROUP = "networking.istio.io"
VERSION = "v1alpha3"
PLURAL = "envoyfilters"
KIND = "EnvoyFilter"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "modelrollout"
ROLLOUT_LABEL = "modelrollout.io/rollout"
LUA_FILTER = "envoy.filters.http.lua"
_SUFFIX = "-modelrollout-buckets"
_NAME_LIMIT = 253
_CLUSTER_DOMAIN = "svc.cluster.local"


@dataclass(frozen=True)
class BucketFilter:
    """The desired EnvoyFilter: where, for whom, and the Lua it runs."""

    namespace: str
    name: str
    rollout: str  # the ModelRollout's name, for the label and the ownerReference
    rollout_uid: str
    lua: str

    def manifest(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {MANAGED_BY_LABEL: MANAGED_BY, ROLLOUT_LABEL: self.rollout},
                "ownerReferences": [
                    {
                        "apiVersion": api.API_VERSION,
                        "kind": api.KIND,
                        "name": self.rollout,
                        "uid": self.rollout_uid,
                        "controller": True,
                        "blockOwnerDeletion": False,
                    }
                ],
            },
            "spec": self.spec(),
        }

    def spec(self) -> dict[str, Any]:
        return {
            "configPatches": [
                {
                    "applyTo": "HTTP_FILTER",
                    "match": {
                        "context": "SIDECAR_OUTBOUND",
                        "listener": {
                            "filterChain": {
                                "filter": {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "subFilter": {"name": "envoy.filters.http.router"},
                                }
                            }
                        },
                    },
                    "patch": {
                        "operation": "INSERT_BEFORE",
                        "value": {
                            "name": LUA_FILTER,
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                                "inlineCode": self.lua,
                            },
                        },
                    },
                }
            ]
        }

    def matches(self, live: Mapping[str, Any] | None) -> bool:
        """Whether the live object is this filter (spec and our labels), so a write would change nothing."""
        if live is None:
            return False
        labels = (live.get("metadata") or {}).get("labels") or {}
        return live.get("spec") == self.spec() and all(
            labels.get(key) == value
            for key, value in ((MANAGED_BY_LABEL, MANAGED_BY), (ROLLOUT_LABEL, self.rollout))
        )


def filter_name(rollout: str) -> str:
    """`<rollout>-modelrollout-buckets`, shortened with a hash when the rollout's name is long."""
    name = rollout + _SUFFIX
    if len(name) <= _NAME_LIMIT:
        return name
    digest = hashlib.sha256(rollout.encode()).hexdigest()[:10]
    return f"{rollout[: _NAME_LIMIT - len(_SUFFIX) - 11]}-{digest}{_SUFFIX}"


def authority_hosts(hosts: Sequence[str], vs_namespace: str, client_namespace: str) -> list[str]:
    """The authorities (without port) by which a client in `client_namespace` reaches the hosts of a
    VirtualService in `vs_namespace`.

    A short name `chat` means `chat.<vs_namespace>.svc.cluster.local`; a service of the cluster is reached as
    `chat.<ns>`, `chat.<ns>.svc` and `chat.<ns>.svc.cluster.local`, and as `chat` only from its own
    namespace; any other host is taken as written. Wildcard hosts are skipped: the filter cannot tell which
    requests they route."""
    found: list[str] = []
    for raw in hosts:
        host = raw.lower()
        if "*" in host:
            continue
        if "." not in host:
            service, service_namespace = host, vs_namespace
        elif host.endswith("." + _CLUSTER_DOMAIN) and host.count(".") == 4:
            service, service_namespace = host.split(".")[:2]
        else:
            found.append(host)
            continue
        forms = [f"{service}.{service_namespace}", f"{service}.{service_namespace}.svc"]
        forms.append(f"{service}.{service_namespace}.{_CLUSTER_DOMAIN}")
        if service_namespace == client_namespace:
            forms.insert(0, service)
        found.extend(forms)
    return sorted(set(found))


def bucket_filter(
    *,
    namespace: str,
    rollout: str,
    rollout_uid: str,
    bucket_header: str,
    user_header: str,
    experiment_id: str,
    hosts: Sequence[str],
    vs_namespace: str,
) -> BucketFilter:
    return BucketFilter(
        namespace=namespace,
        name=filter_name(rollout),
        rollout=rollout,
        rollout_uid=rollout_uid,
        lua=bucket_filter_lua(
            bucket_header, user_header, experiment_id, authority_hosts(hosts, vs_namespace, namespace)
        ),
    )
