"""A real Kubernetes control plane on loopback: etcd and kube-apiserver, started the way envtest starts them.

Secure serving with generated certificates, an admin client certificate in `system:masters`, RBAC
authorization, service-account token signing, and `--advertise-address=127.0.0.1` because a sandbox may have
no default route. There is no controller-manager: nothing reconciles Pods, namespaces are never finalized and
ServiceAccounts are not created by themselves (the ServiceAccount admission plugin is off for that reason).
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelrollout_dev.devenv.binaries import Binaries
from modelrollout_dev.devenv.netutil import free_port, wait_until
from modelrollout_dev.devenv.pki import ADMIN_USER, Pki, generate_pki
from modelrollout_dev.devenv.processes import ProcessRecord, ProcessSet

_START_ATTEMPTS = 3  # a free port can be taken by someone else between probing and binding


class StartError(RuntimeError):
    """A component did not start; the message carries the reason and the tail of its log."""


@dataclass(frozen=True)
class ControlPlaneInfo:
    api_url: str
    etcd_url: str
    kubeconfig: Path
    ca_cert: Path
    admin_cert: Path
    admin_key: Path
    kubectl: Path


def build_kubeconfig(api_url: str, pki: Pki, context: str = "modelrollout-local") -> dict[str, Any]:
    """A kubeconfig with the credentials embedded, usable by kubectl and the Python client alike."""

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": context, "cluster": {"server": api_url, "certificate-authority-data": b64(pki.ca_cert)}}
        ],
        "users": [
            {
                "name": ADMIN_USER,
                "user": {
                    "client-certificate-data": b64(pki.admin_cert),
                    "client-key-data": b64(pki.admin_key),
                },
            }
        ],
        "contexts": [{"name": context, "context": {"cluster": context, "user": ADMIN_USER}}],
        "current-context": context,
    }


def etcd_argv(binary: Path, data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    client = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    return [
        str(binary),
        "--name=default",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=default={peer}",
        # Test data is thrown away after the run; fsync would only make every write slow.
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]


# Writes to VirtualServices and Leases, with who made them (user, user agent) and when: the tests check from
# it that two operator replicas never both write. And reads of one rollout by name (the operator's read before
# it moves traffic): the scale benchmark splits a breach's time to the write between the operator and the API
# server with them. Nothing else is audited.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete]
    resources:
      - group: networking.istio.io
        resources: [virtualservices]
      - group: coordination.k8s.io
        resources: [leases]
  - level: Metadata
    verbs: [get]
    resources:
      - group: modelrollout.io
        resources: [modelrollouts]
  - level: None
"""


def audit_log_path(run_dir: Path) -> Path:
    return run_dir / "apiserver-audit.log"


def apiserver_argv(
    binary: Path, pki: Pki, etcd_url: str, secure_port: int, cert_dir: Path, *, audit_dir: Path | None = None
) -> list[str]:
    audit = (
        [
            f"--audit-policy-file={audit_dir / 'audit-policy.yaml'}",
            f"--audit-log-path={audit_log_path(audit_dir)}",
        ]
        if audit_dir is not None
        else []
    )
    return [
        str(binary),
        f"--etcd-servers={etcd_url}",
        "--advertise-address=127.0.0.1",
        "--bind-address=127.0.0.1",
        f"--secure-port={secure_port}",
        f"--cert-dir={cert_dir}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        "--authorization-mode=RBAC",
        f"--service-account-issuer=https://127.0.0.1:{secure_port}",
        f"--service-account-key-file={pki.service_account_pub}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--allow-privileged=true",
        # No controller-manager creates ServiceAccounts or their tokens here.
        "--disable-admission-plugins=ServiceAccount",
        # The `kubernetes` Service endpoints may not be loopback; nothing here needs them.
        "--endpoint-reconciler-type=none",
        *audit,
    ]


class ControlPlane:
    def __init__(
        self, run_dir: Path, binaries: Binaries, processes: ProcessSet, *, die_with_parent: bool
    ) -> None:
        self.run_dir = run_dir
        self.binaries = binaries
        self.processes = processes
        self.die_with_parent = die_with_parent
        self.info: ControlPlaneInfo | None = None
        self._records: list[ProcessRecord] = []
        self._pki: Pki | None = None
        self._apiserver: ProcessRecord | None = None

    def start(self, timeout: float = 90.0) -> ControlPlaneInfo:
        pki = self._pki = generate_pki(self.run_dir / "pki")
        etcd_url = self._start_with_retries("etcd", lambda: self._start_etcd(timeout))
        api_url = self._start_with_retries(
            "kube-apiserver", lambda: self._start_apiserver(pki, etcd_url, timeout)
        )
        kubeconfig = self.run_dir / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(build_kubeconfig(api_url, pki), sort_keys=False))
        kubeconfig.chmod(0o600)
        self.info = ControlPlaneInfo(
            api_url=api_url,
            etcd_url=etcd_url,
            kubeconfig=kubeconfig,
            ca_cert=pki.ca_cert,
            admin_cert=pki.admin_cert,
            admin_key=pki.admin_key,
            kubectl=self.binaries.kubectl,
        )
        return self.info

    def stop(self) -> None:
        for record in reversed(self._records):
            self.processes.stop(record)
        self._records.clear()

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver (etcd keeps running): clients see connections refused until it is back."""
        if self._apiserver is None:
            raise RuntimeError("the control plane is not running")
        self.processes.stop(self._apiserver)
        self._records.remove(self._apiserver)
        self._apiserver = None

    def start_apiserver(self, timeout: float = 90.0) -> None:
        """Start kube-apiserver again on the same port, certificates and etcd: the same cluster, so every
        kubeconfig and client made before works again once it is ready."""
        if self.info is None or self._pki is None or self._apiserver is not None:
            raise RuntimeError("start the control plane first, and stop kube-apiserver before restarting it")
        port = int(self.info.api_url.rsplit(":", 1)[1])
        self._start_apiserver(self._pki, self.info.etcd_url, timeout, port=port)

    def _start_with_retries(self, component: str, start: Any) -> str:
        last: StartError | None = None
        for _ in range(_START_ATTEMPTS):
            try:
                url: str = start()
                return url
            except _PortTaken as taken:
                last = StartError(f"{component}: port taken: {taken}")
        raise last or StartError(f"{component} did not start")

    def _spawn(self, name: str, argv: list[str]) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
        proc, record = self.processes.spawn(name, argv, die_with_parent=self.die_with_parent)
        self._records.append(record)
        return proc, record

    def _fail(self, record: ProcessRecord, why: str) -> StartError:
        tail = self.processes.log_tail(record)
        self.processes.stop(record, grace_seconds=2.0)
        self._records.remove(record)
        if record is self._apiserver:
            self._apiserver = None
        if "address already in use" in tail:
            return _PortTaken(tail.splitlines()[-1] if tail else why)
        return StartError(f"{record.name} {why}; log {record.log}:\n{tail}")

    def _start_etcd(self, timeout: float) -> str:
        client_port, peer_port = free_port(), free_port()
        data_dir = self.run_dir / "etcd-data"
        proc, record = self._spawn("etcd", etcd_argv(self.binaries.etcd, data_dir, client_port, peer_port))
        url = f"http://127.0.0.1:{client_port}"

        def healthy() -> bool:
            if proc.poll() is not None:
                raise self._fail(record, f"exited with code {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    return bool(json.load(response).get("health") == "true")
            except (urllib.error.URLError, OSError, ValueError):
                return False

        if not wait_until(healthy, timeout):
            raise self._fail(record, f"was not healthy within {timeout:.0f}s")
        return url

    def _start_apiserver(self, pki: Pki, etcd_url: str, timeout: float, port: int | None = None) -> str:
        port = port or free_port()
        (self.run_dir / "audit-policy.yaml").write_text(AUDIT_POLICY)
        argv = apiserver_argv(
            self.binaries.kube_apiserver,
            pki,
            etcd_url,
            port,
            self.run_dir / "apiserver-certs",
            audit_dir=self.run_dir,
        )
        proc, record = self._spawn("kube-apiserver", argv)
        self._apiserver = record
        url = f"https://127.0.0.1:{port}"
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))

        def ready() -> bool:
            if proc.poll() is not None:
                raise self._fail(record, f"exited with code {proc.returncode}")
            try:
                # /readyz turns 200 only after every post-start hook, RBAC's bootstrap roles included.
                with urllib.request.urlopen(f"{url}/readyz", timeout=2, context=context) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        if not wait_until(ready, timeout):
            raise self._fail(record, f"was not ready within {timeout:.0f}s")
        return url


class _PortTaken(StartError):
    pass
