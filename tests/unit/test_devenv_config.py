"""Pure pieces of the local environment: pins, binary resolution, generated configs."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from modelrollout_dev.devenv import binaries, gitops
from modelrollout_dev.devenv.controlplane import apiserver_argv, build_kubeconfig, etcd_argv
from modelrollout_dev.devenv.istio import istio_api_version
from modelrollout_dev.devenv.pki import ADMIN_GROUP, generate_pki
from modelrollout_dev.devenv.prometheus import prometheus_config, target_group


@pytest.mark.parametrize(
    ("go_mod", "module", "expected"),
    [
        ("module m\n\nrequire k8s.io/kubernetes v1.36.3\n", "k8s.io/kubernetes", "v1.36.3"),
        (
            "module m\n\nrequire (\n\tfoo v1.0.0\n\tk8s.io/kubernetes v1.37.0 // indirect\n)\n",
            "k8s.io/kubernetes",
            "v1.37.0",
        ),
        ("module m\n\nrequire go.etcd.io/etcd/server/v3 v3.6.8\n", "go.etcd.io/etcd/server/v3", "v3.6.8"),
    ],
)
def test_pinned_version_reads_the_wrapper_go_mod(
    tmp_path: Path, go_mod: str, module: str, expected: str
) -> None:
    (tmp_path / "go.mod").write_text(go_mod)
    assert binaries.pinned_version(tmp_path, module) == expected


def test_pinned_version_names_a_missing_module(tmp_path: Path) -> None:
    (tmp_path / "go.mod").write_text("module m\n\nrequire k8s.io/kubernetes v1.36.3\n")
    with pytest.raises(binaries.BinariesError, match=r"does not require go\.etcd\.io/etcd/server/v3"):
        binaries.pinned_version(tmp_path, "go.etcd.io/etcd/server/v3")


def test_shipped_pins_are_the_documented_versions() -> None:
    assert binaries.kubernetes_version().startswith("v1.36.")
    assert binaries.etcd_version().startswith("v3.6.")
    assert istio_api_version().startswith("v1.")


def test_every_staging_module_is_pinned_to_the_kubernetes_minor() -> None:
    go_mod = (binaries.GOMOD_DIR / "kube" / "go.mod").read_text()
    minor = binaries.kubernetes_version().split(".")[1]
    replaces = [line.split() for line in go_mod.splitlines() if "=>" in line]
    assert len(replaces) >= 30
    for parts in replaces:
        assert parts[0] == parts[2], parts  # k8s.io/x => k8s.io/x v0.N.p
        assert parts[3].startswith(f"v0.{minor}."), parts


def _executable(path: Path) -> None:
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)


def test_kubebuilder_assets_with_all_binaries_are_used_as_they_are(tmp_path: Path) -> None:
    for name in binaries.BINARY_NAMES:
        _executable(tmp_path / name)
    found = binaries.from_kubebuilder_assets(str(tmp_path))
    assert (found.etcd, found.kube_apiserver, found.kubectl) == (
        tmp_path / "etcd",
        tmp_path / "kube-apiserver",
        tmp_path / "kubectl",
    )
    assert "KUBEBUILDER_ASSETS" in found.source


def test_kubebuilder_assets_missing_a_binary_is_an_error_naming_it(tmp_path: Path) -> None:
    _executable(tmp_path / "etcd")
    (tmp_path / "kubectl").write_text("not executable")
    with pytest.raises(binaries.BinariesError, match="lacks executable kube-apiserver, kubectl"):
        binaries.from_kubebuilder_assets(str(tmp_path))


def test_resolve_prefers_kubebuilder_assets_and_builds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in binaries.BINARY_NAMES:
        _executable(tmp_path / name)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")  # no Go: a build attempt would fail
    assert binaries.resolve_binaries().etcd == tmp_path / "etcd"


def test_builds_are_cached_per_pinned_version(tmp_path: Path) -> None:
    etcd_build, kube_build = binaries.planned_builds(tmp_path)
    assert etcd_build.target_dir == tmp_path / "bin" / f"etcd-{binaries.etcd_version()}"
    assert kube_build.target_dir == tmp_path / "bin" / f"kubernetes-{binaries.kubernetes_version()}"
    assert kube_build.tags == "selinux,notest"
    assert f"gitVersion={binaries.kubernetes_version()}" in kube_build.ldflags
    assert not kube_build.is_cached()
    kube_build.target_dir.mkdir(parents=True)
    for name in kube_build.outputs:
        _executable(kube_build.target_dir / name)
    assert kube_build.is_cached()


def test_the_gitops_readers_are_cached_per_module_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "gitops"
    module.mkdir()
    for name in gitops.SOURCES:
        (module / name).write_bytes((gitops.MODULE_DIR / name).read_bytes())
    monkeypatch.setattr(gitops, "MODULE_DIR", module)
    build = gitops.gitops_build(tmp_path)
    assert build.sources == ("go.mod", "go.sum", "main.go")  # ours is built from source, not only pins
    assert build.target_dir.parent == tmp_path / "bin"
    assert build.target_dir.name.startswith("gitops-")
    seen = {build.target_dir}
    for name in gitops.SOURCES:  # an edit to any of the three builds again, beside the old build
        (module / name).write_text((module / name).read_text() + "\n// edited\n")
        seen.add(gitops.gitops_build(tmp_path).target_dir)
    assert len(seen) == 4


def test_cache_root_honours_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MODELROLLOUT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert binaries.cache_root() == tmp_path / "xdg" / "modelrollout"
    monkeypatch.setenv("MODELROLLOUT_CACHE", str(tmp_path / "explicit"))
    assert binaries.cache_root() == tmp_path / "explicit"


def test_kubeconfig_embeds_the_admin_credentials(tmp_path: Path) -> None:
    pki = generate_pki(tmp_path)
    kubeconfig = build_kubeconfig("https://127.0.0.1:6443", pki)
    cluster = kubeconfig["clusters"][0]["cluster"]
    user = kubeconfig["users"][0]["user"]
    assert cluster["server"] == "https://127.0.0.1:6443"
    assert base64.b64decode(cluster["certificate-authority-data"]) == pki.ca_cert.read_bytes()
    assert base64.b64decode(user["client-key-data"]) == pki.admin_key.read_bytes()
    assert kubeconfig["current-context"] == kubeconfig["contexts"][0]["name"]
    assert oct(pki.admin_key.stat().st_mode & 0o777) == "0o600"


def test_admin_certificate_is_in_system_masters(tmp_path: Path) -> None:
    pki = generate_pki(tmp_path)
    cert = x509.load_pem_x509_certificate(pki.admin_cert.read_bytes())
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == [ADMIN_GROUP]
    serving = x509.load_pem_x509_certificate(pki.serving_cert.read_bytes())
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]


def test_apiserver_is_loopback_only_with_rbac(tmp_path: Path) -> None:
    pki = generate_pki(tmp_path)
    argv = apiserver_argv(Path("/bin/kube-apiserver"), pki, "http://127.0.0.1:2379", 6443, tmp_path)
    assert "--authorization-mode=RBAC" in argv
    assert "--bind-address=127.0.0.1" in argv
    assert "--advertise-address=127.0.0.1" in argv
    assert f"--client-ca-file={pki.ca_cert}" in argv
    etcd = etcd_argv(Path("/bin/etcd"), tmp_path, 2379, 2380)
    urls = [a.split("=", 1)[1] for a in etcd if "-urls=" in a]
    assert urls
    assert all(url.startswith("http://127.0.0.1:") for url in urls)


def test_prometheus_scrapes_every_second_from_target_files(tmp_path: Path) -> None:
    config = prometheus_config(tmp_path)
    assert config["global"]["scrape_interval"] == "1s"
    assert config["scrape_configs"][0]["file_sd_configs"][0]["files"] == [str(tmp_path / "*.json")]
    assert "query_log_file" not in config["global"]


def test_prometheus_logs_its_queries_where_told(tmp_path: Path) -> None:
    config = prometheus_config(tmp_path, query_log=tmp_path / "queries.log")
    assert config["global"]["query_log_file"] == str(tmp_path / "queries.log")


def test_target_groups_carry_job_and_path() -> None:
    group = target_group("sim", ["127.0.0.1:9000"], {"team": "ml"}, metrics_path="/stats")
    assert group == [
        {"targets": ["127.0.0.1:9000"], "labels": {"job": "sim", "__metrics_path__": "/stats", "team": "ml"}}
    ]


@pytest.mark.parametrize("address", ["10.0.0.1:9000", "192.168.1.2:80", "example.com:9090"])
def test_targets_off_loopback_are_refused(address: str) -> None:
    with pytest.raises(ValueError, match="not on loopback"):
        target_group("x", [address])


def test_go_builds_never_use_cgo_or_another_toolchain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CGO_ENABLED", "1")
    env = binaries.go_environment()
    assert env["CGO_ENABLED"] == "0"
    assert env["GOTOOLCHAIN"] == "local"
    assert env["PATH"] == os.environ["PATH"]
